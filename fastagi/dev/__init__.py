"""Development tools, never imported by product code: the sandbox, the real-Asterisk test
harness and the benchmark (registered as CLI commands through entry points)."""
