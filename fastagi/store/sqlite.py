"""The SQLite store: one file through aiosqlite, WAL, foreign keys, a busy timeout.

Each operation is a plain function of a sqlite3.Connection (in tx_*.py) that runs
whole on aiosqlite's worker thread, inside one BEGIN IMMEDIATE transaction: one
thread hop per operation instead of one per statement, and no interleaving.
"""
from __future__ import annotations

import functools
import os
import sqlite3
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiosqlite

from .base import NotADatabase, StoreError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 5000
SCHEMA_PATH = Path(__file__).resolve().parent.parent.parent / "schema.sql"
DEFAULT_DB = "extbill.db"

# Later versions: {2: "ALTER TABLE ...", ...}, applied in order by _migrate.
MIGRATIONS: dict[int, str] = {}

T = TypeVar("T")


def db_path(cli_value: str | None) -> str:
    """--db, else EXTBILL_DB, else ./extbill.db."""
    return cli_value or os.environ.get("EXTBILL_DB") or DEFAULT_DB


def _configure(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint, no fsync per commit


def _schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _check_is_database(conn: sqlite3.Connection, path: str) -> None:
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise NotADatabase(f"{path} is not an extbill database ({exc})") from None


def _migrate(conn: sqlite3.Connection) -> bool:
    """Create or upgrade the schema; True when the database was new."""
    version = _schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(f"database schema version {version} is newer than this extbill ({SCHEMA_VERSION})")
    fresh = version == 0
    if fresh:
        tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if tables:
            raise NotADatabase("the file is an SQLite database, but not an extbill one")
        conn.executescript("BEGIN IMMEDIATE;" + SCHEMA_PATH.read_text() +
                           f"; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        return True
    for v in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; PRAGMA user_version = {v}; COMMIT;")
    return False


class SqliteStore:
    """An open extbill database. Use `await SqliteStore.open(path)`."""

    def __init__(self, db: aiosqlite.Connection, path: str, created: bool):
        self._db = db
        self.path = path
        self.created = created

    @classmethod
    async def open(cls, path: str, *, create: bool = True) -> "SqliteStore":
        """Open (and create or migrate) the database; refuse a file that is not one of ours."""
        exists = os.path.exists(path)
        if not exists and not create:
            raise NotADatabase(f"no database at {path} (create it with: extbill db init --db {path})")
        if exists and os.path.isdir(path):
            raise NotADatabase(f"{path} is a directory, not a database file")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise NotADatabase(f"cannot create database {path}: directory {parent} does not exist")
        # Probe with plain sqlite3 first: a failed aiosqlite.connect leaves its worker thread
        # printing a traceback on a closed loop; this way the user gets one clear line.
        try:
            sqlite3.connect(path).close()
        except sqlite3.Error as exc:
            raise NotADatabase(f"cannot open database {path}: {exc}") from None
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise NotADatabase(f"cannot open database {path}: {exc}") from None
        try:
            await db._execute(_check_is_database, db._conn, path)  # noqa: SLF001
            await db._execute(_configure, db._conn)  # noqa: SLF001
            created = await db._execute(_migrate, db._conn)  # noqa: SLF001
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise NotADatabase(f"{path} is not an extbill database ({exc})") from None
        except BaseException:
            await db.close()
            raise
        return cls(db, path, created)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(conn, *args, **kwargs) on the database thread in one IMMEDIATE transaction."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await self._db._execute(_in_transaction, self._db._conn, fn, args)  # noqa: SLF001

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(conn, *args, **kwargs) on the database thread in one read transaction."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await self._db._execute(_in_read, self._db._conn, fn, args)  # noqa: SLF001

    async def close(self) -> None:
        await self._db.close()


def _in_transaction(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn, *args)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def _in_read(conn: sqlite3.Connection, fn: Callable[..., T], args: tuple) -> T:
    conn.execute("BEGIN")
    try:
        return fn(conn, *args)
    finally:
        conn.execute("ROLLBACK")
