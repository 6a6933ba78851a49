"""The admin's tools: the `extbill` CLI commands, doctor, the demo data."""
