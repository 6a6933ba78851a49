"""The admin's tools: the `extbill` CLI commands and doctor."""
