"""One door to a database: a file path opens SQLite, a postgresql:// URL PostgreSQL.

Everything that names a database (serve, every CLI command, doctor, bench) opens it here,
so `--db` / EXTBILL_DB / `db` in the config file take either form.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fastagi.store.base import Store, StoreError
from fastagi.store.sqlite import DEFAULT_DB, SqliteStore


def db_target(cli_value: str | None) -> str:
    """--db, else EXTBILL_DB, else ./extbill.db: a file path or a postgresql:// URL."""
    return cli_value or os.environ.get("EXTBILL_DB") or DEFAULT_DB


def is_pg(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


def redact(target: str) -> str:
    """The database's name for messages and logs: a URL without its password."""
    if not is_pg(target):
        return target
    parts = urlsplit(target)
    if parts.password is None:
        return target
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


async def open_store(
    target: str, *, create: bool = True, checkpoints: bool = True, shared: bool = False
) -> Any:
    """Open (and create or migrate) the database `target` names.

    checkpoints and shared concern SQLite's one file (sqlite.py); a PostgreSQL database is
    shared by design. The result has the Store interface (base.py) and `path`, `created`.
    """
    if is_pg(target):
        try:
            from fastagi.store.pg import PgStore  # noqa: PLC0415  (psycopg only when asked for)
        except ImportError as exc:
            raise StoreError(f"PostgreSQL needs the psycopg package ({exc.name} is missing)") from None
        return await PgStore.open(target, create=create)
    if create:
        parent = os.path.dirname(os.path.abspath(target))
        if not os.path.isdir(parent):
            # refuse here: a failed aiosqlite connect leaves its worker thread printing a traceback
            raise StoreError(f"cannot create database {target}: directory {parent} does not exist")
    return await SqliteStore.open(target, create=create, checkpoints=checkpoints, shared=shared)


__all__ = ["Store", "db_target", "is_pg", "open_store", "redact"]
