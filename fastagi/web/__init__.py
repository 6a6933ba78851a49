"""The web layer: the console (server-rendered pages), the JSON API and /metrics."""
