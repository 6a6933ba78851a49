"""The PostgreSQL store: the same operations as sqlite.py, on a database several serve
processes (on several machines) share. Selected by a URL: --db postgresql://...

Driver: psycopg 3 with psycopg-pool. Maintained by PostgreSQL's own driver authors, it
binds parameters on the server (no client-side quoting), prepares repeated statements
by itself, types results strictly (an integer column is an int, never a string), and
works behind PgBouncer; the pool keeps connections warm and checks them on return.

Each operation is the same plain function of a connection as on SQLite (tx_*.py, through
pg_conn.PgConn), run whole on a worker thread inside one transaction on a pooled
connection: no transaction is ever open across FastAGI or AMI I/O, which happens on the
event loop between operations. Writes run at READ COMMITTED: account counters change by
guarded increments (tx_ledger.py) that PostgreSQL re-checks after any lock wait, rows are
locked in one order (tx_ledger.LOCK_ORDER), and lock_timeout bounds every wait. A write
that lost a race (tx_ledger.Contended, a deadlock, a unique key another transaction just
took) is run again from the start, at most WRITE_ATTEMPTS_MAX times: it then reads what
the winner committed. Reads run in one REPEATABLE READ READ ONLY snapshot.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors

from fastagi.store.base import Contended, NotADatabase, StoreError
from fastagi.store.factory import redact
from fastagi.store.pg_conn import PgConn, configure_types, row_factory
from fastagi.store.sqlite import SCHEMA_VERSION

T = TypeVar("T")

POOL_MIN = 1  # connections kept open
POOL_MAX = 8  # connections (and worker threads) at most per process
CONNECT_TIMEOUT_S = 5  # connecting, or waiting for a free pooled connection
LOCK_TIMEOUT_MS = 5000  # a row lock waited for at most this long, then the operation fails
IDLE_IN_TRANSACTION_MS = 30_000  # the server ends a transaction left open this long (a bug)
WRITE_ATTEMPTS_MAX = 8  # runs of one write that lost a race to another transaction
RETRY_PAUSE_S_MAX = 0.02  # random pause before running a lost write again
# pg_advisory_xact_lock key held while migrating: two processes never migrate at once
MIGRATION_LOCK_KEY = 0x65787462696C6C  # "extbill"

# PostgreSQL's twin of every SQLite schema version: pg_migrations/NNNN_<same name>.sql,
# 0001_schema.sql being schema.sql's (tests/test_pg_store.py checks every twin exists).
PG_MIGRATIONS_DIR = Path(__file__).resolve().parent / "pg_migrations"


def pg_migrations() -> dict[int, Path]:
    return {int(p.name[:4]): p for p in sorted(PG_MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))}


def _lost_race(exc: BaseException) -> bool:
    return isinstance(
        exc,
        Contended | pg_errors.DeadlockDetected | pg_errors.SerializationFailure | pg_errors.UniqueViolation,
    )


class PgStore:
    """An open extbill database on PostgreSQL. Use `await PgStore.open(url)`."""

    def __init__(self, pool: psycopg_pool.ConnectionPool, url: str, created: bool) -> None:
        self.path = redact(url)
        self.url = url
        self.created = created
        self._pool = pool
        self._threads = ThreadPoolExecutor(max_workers=POOL_MAX, thread_name_prefix="extbill-pg")
        self._in_flight: set[asyncio.Future[Any]] = set()
        self.reruns = 0  # writes run again after losing a race (a figure for tests and bench)

    @classmethod
    async def open(cls, url: str, *, create: bool = True, **_sqlite_only: Any) -> PgStore:
        """Connect, and create or migrate the schema (create=False: refuse a database without it)."""
        return await asyncio.to_thread(cls._open_sync, url, create)

    @classmethod
    def _open_sync(cls, url: str, create: bool) -> PgStore:
        shown = redact(url)
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
                created = migrate(conn, create=create, shown=shown)
        except psycopg.OperationalError as exc:
            raise NotADatabase(f"cannot connect to {shown}: {_first_line(exc)}") from None
        except psycopg.Error as exc:
            raise NotADatabase(f"{shown}: {_first_line(exc)}") from None
        pool = psycopg_pool.ConnectionPool(
            url,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            timeout=CONNECT_TIMEOUT_S,
            kwargs={"autocommit": True, "row_factory": row_factory, "connect_timeout": CONNECT_TIMEOUT_S},
            configure=_configure,
            open=False,
        )
        pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        return cls(pool, url, created)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(conn, *args, **kwargs) in one READ COMMITTED transaction, committed when this returns."""
        return await self._submit(fn, args, kwargs, True)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(conn, *args, **kwargs) in one read-only snapshot; it sees every write whose run() returned."""
        return await self._submit(fn, args, kwargs, False)

    async def _submit(self, fn: Callable[..., T], args: tuple, kwargs: dict, write: bool) -> T:
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        fut = asyncio.get_running_loop().run_in_executor(self._threads, self._call, fn, args, write)
        self._in_flight.add(fut)
        fut.add_done_callback(self._in_flight.discard)
        return await fut

    def _call(self, fn: Callable[..., T], args: tuple, write: bool) -> T:
        """On a worker thread: one transaction, run again if it lost a race (see the module)."""
        for attempt in range(1, WRITE_ATTEMPTS_MAX + 1):
            try:
                with self._pool.connection() as raw:
                    return _in_transaction(raw, fn, args, write)
            except Exception as exc:
                if write and _lost_race(exc) and attempt < WRITE_ATTEMPTS_MAX:
                    self.reruns += 1
                    time.sleep(random.uniform(0, RETRY_PAUSE_S_MAX * attempt))
                    continue
                if isinstance(exc, psycopg.OperationalError):
                    raise _plain(exc) from None
                raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        # every operation already asked for runs first
        if self._in_flight:
            await asyncio.gather(*list(self._in_flight), return_exceptions=True)
        await asyncio.to_thread(self._pool.close)
        self._threads.shutdown(wait=False)


def _configure(conn: psycopg.Connection[Any]) -> None:
    configure_types(conn)
    conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
    conn.execute(f"SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}")


def _in_transaction(raw: psycopg.Connection[Any], fn: Callable[..., T], args: tuple, write: bool) -> T:
    raw.execute(
        "BEGIN ISOLATION LEVEL READ COMMITTED" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    )
    try:
        result = fn(PgConn(raw), *args)
    except BaseException:
        raw.execute("ROLLBACK")
        raise
    raw.execute("COMMIT" if write else "ROLLBACK")
    return result


def _plain(exc: psycopg.OperationalError) -> StoreError:
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StoreError(f"the database is busy: a row stayed locked longer than {LOCK_TIMEOUT_MS} ms")
    return StoreError(f"database error: {_first_line(exc)}")


def scalar(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...] = ()) -> Any:
    """The first column of a query's one row (psycopg's own %s placeholders)."""
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql  # every caller's query returns one row
    return row[0]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ---- schema versions ------------------------------------------------------------------------

_VERSIONS_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)


def migrate(conn: psycopg.Connection[Any], *, create: bool, shown: str) -> bool:
    """Create or upgrade the schema in one transaction under an advisory lock; True when new."""
    scripts = pg_migrations()
    missing = sorted(set(range(1, SCHEMA_VERSION + 1)) - set(scripts))
    if missing:
        raise StoreError(f"store/pg_migrations has no PostgreSQL version of schema version(s) {missing}")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
        has_versions = scalar(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL")
        version = 0
        if has_versions:
            version = scalar(conn, "SELECT coalesce(max(version), 0) FROM schema_migrations")
        else:
            tables = scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()")
            if tables:
                raise NotADatabase(f"{shown} has tables, but is not an extbill database")
            if not create:
                raise NotADatabase(f"no extbill schema in {shown} (create it with: extbill db init --db URL)")
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this extbill ({SCHEMA_VERSION})"
            )
        conn.execute(_VERSIONS_TABLE)
        for v in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute(scripts[v].read_text())
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (v, scripts[v].stem[5:])
            )
    return version == 0
