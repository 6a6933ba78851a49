"""The only SQL: operations are plain functions of a DB-API connection, run in one write
transaction by a Store (base.py, sqlite.py); the schema, its migrations, the demo data."""
