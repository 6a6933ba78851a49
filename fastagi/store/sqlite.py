"""The SQLite store: one file through aiosqlite, WAL, foreign keys, a busy timeout.

Each operation is a plain function of a sqlite3.Connection (in tx_*.py) that runs
whole on aiosqlite's worker thread, inside one BEGIN IMMEDIATE transaction: one
thread hop per operation instead of one per statement, and no interleaving.

Group commit: operations that queue up while the thread is busy run next as one
batch - one transaction, each operation inside its own SAVEPOINT (a failing one
rolls back only itself), one COMMIT, one thread hop back. No caller hears of its
operation before the COMMIT that made it durable. A lone operation runs exactly
as before (its own BEGIN ... COMMIT).

Several serve processes (`workers` > 1) share one file: each one's writing batches
hold the writers' lock (writers_lock.py) around BEGIN IMMEDIATE ... COMMIT.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from fastagi.store.base import NotADatabase, StoreError
from fastagi.store.checkpointer import Checkpointer
from fastagi.store.writers_lock import WritersLock

BUSY_TIMEOUT_MS = 5000
# SQLite's page cache per connection, KiB (its default is 2 MiB), filled only as pages are
# read. With a year of calls, a call's index entries land on pages spread over the indexes
# (one tail page per number, extension, account): a 2 MiB cache re-reads them from the OS on
# almost every setup (measured: setups with 2,000,000 calls of history at 0.3-0.4 of those
# without; 0.83-0.87 with 64 MiB). README.md, "History at scale".
PAGE_CACHE_KIB = 65_536
BATCH_OPS_MAX = 64  # operations committed together at most (group commit)
# schema.sql lives at the repository's top level; fastagi/schema.sql links to it so a
# wheel carries it too.
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"
DEFAULT_DB = "extbill.db"

# Version N > 1 is store/migrations/NNNN_<what>.sql, applied in order by _migrate; a fresh
# database gets schema.sql (version 1) and then every migration.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _migrations() -> dict[int, str]:
    found: dict[int, str] = {}
    for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        found[int(path.name[:4])] = path.read_text()
    return found


MIGRATIONS = _migrations()
SCHEMA_VERSION = max(MIGRATIONS, default=1)
if sorted(MIGRATIONS) != list(range(2, SCHEMA_VERSION + 1)):
    raise RuntimeError(f"store/migrations must number 0002..{SCHEMA_VERSION:04d} without gaps")

T = TypeVar("T")


def db_path(cli_value: str | None) -> str:
    """--db, else EXTBILL_DB, else ./extbill.db."""
    return cli_value or os.environ.get("EXTBILL_DB") or DEFAULT_DB


def _configure(conn: sqlite3.Connection) -> None:
    conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoint, no fsync per commit
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # checkpoints run in checkpointer.py, off the hot path


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
        conn.executescript(
            "BEGIN IMMEDIATE;" + SCHEMA_PATH.read_text() + "; PRAGMA user_version = 1; COMMIT;"
        )
        version = 1
    for v in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[v]}; PRAGMA user_version = {v}; COMMIT;")
    return fresh


class _Lane:
    """One connection on its own aiosqlite thread, and the operations queued for it.

    Operations that queue up while a batch runs go together as the next batch (group
    commit, see above)."""

    def __init__(
        self, db: aiosqlite.Connection, lock: WritersLock | None, checkpointer: Checkpointer | None = None
    ) -> None:
        self.db = db
        self.lock = lock
        self.checkpointer = checkpointer  # may ask this (writer) lane to restart the WAL
        self._waiting: list[_Op] = []  # queued while a batch runs: the next batch
        self._busy = False  # a batch is on the database thread
        self.idle = asyncio.Event()  # no batch running and none waiting
        self.idle.set()

    def submit(self, fn: Callable[..., Any], args: tuple, write: bool) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((fn, args, write, fut))
        if not self._busy:
            self._next_batch()
        return fut

    def _next_batch(self) -> None:
        batch = self._waiting[:BATCH_OPS_MAX]
        del self._waiting[:BATCH_OPS_MAX]
        self._busy = True
        self.idle.clear()
        ops = [(fn, args, write) for fn, args, write, _ in batch]
        task = asyncio.ensure_future(
            self.db._execute(  # noqa: SLF001
                _run_batch, self.db._conn, ops, self.lock, self.checkpointer
            )
        )  # noqa: SLF001
        task.add_done_callback(functools.partial(self._batch_done, batch))

    def _batch_done(self, batch: list[_Op], task: asyncio.Future[list[tuple[bool, Any]]]) -> None:
        if task.cancelled():
            outcomes: list[tuple[bool, Any]] = [(False, asyncio.CancelledError())] * len(batch)
        elif task.exception() is not None:  # e.g. the connection was closed under us
            outcomes = [(False, task.exception())] * len(batch)
        else:
            outcomes = task.result()
        for (_, _, _, fut), (ok, value) in zip(batch, outcomes):
            if fut.done():
                continue  # its caller was cancelled; the operation ran all the same, as it always did
            if ok:
                fut.set_result(value)
            elif isinstance(value, StopIteration):
                # a Future refuses StopIteration (it would end a coroutine silently): the
                # caller gets it as the error it is instead of waiting for ever
                fut.set_exception(RuntimeError(f"store operation raised StopIteration: {value!r}"))
            else:
                fut.set_exception(value)
        self._busy = False
        if self._waiting:
            self._next_batch()
        else:
            self.idle.set()


class SqliteStore:
    """An open extbill database. Use `await SqliteStore.open(path)`.

    Two connections, each on its own thread: writes (run) go to one, reads (read) to
    the other. In WAL mode a reader never waits for the writer, so a call's lookup does
    not queue behind reservations being committed, nor hold the writers' lock.
    """

    def __init__(
        self,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        path: str,
        created: bool,
        *,
        checkpoints: bool = True,
        shared: bool = False,
    ):
        self.path = path
        self.created = created
        # another serve process writes this file too: serialise writing batches (see above)
        self._writers_lock = WritersLock(path) if shared else None
        # one process per file folds the WAL back (the others leave it to that one)
        self._checkpointer = Checkpointer(path) if checkpoints else None
        self._writer = _Lane(writer, self._writers_lock, self._checkpointer)
        self._reader = _Lane(reader, None)
        if self._checkpointer is not None:
            self._checkpointer.start()

    @classmethod
    async def open(
        cls, path: str, *, create: bool = True, checkpoints: bool = True, shared: bool = False
    ) -> SqliteStore:
        """Open (and create or migrate) the database; refuse a file that is not one of ours.

        checkpoints=False: another process (serve's first) runs the WAL checkpoints.
        shared=True: other serve processes write this file too (writers take a flock).
        """
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
        opened: list[aiosqlite.Connection] = []
        try:
            writer = await aiosqlite.connect(path, isolation_level=None)
            opened.append(writer)
            await writer._execute(_check_is_database, writer._conn, path)  # noqa: SLF001
            await writer._execute(_configure, writer._conn)  # noqa: SLF001
            created = await writer._execute(_migrate, writer._conn)  # noqa: SLF001
            reader = await aiosqlite.connect(path, isolation_level=None)
            opened.append(reader)
            await reader._execute(_configure, reader._conn)  # noqa: SLF001
            return cls(writer, reader, path, created, checkpoints=checkpoints, shared=shared)
        except sqlite3.DatabaseError as exc:
            await _close_all(opened)
            raise NotADatabase(f"{path} is not an extbill database ({exc})") from None
        except sqlite3.Error as exc:
            await _close_all(opened)
            raise NotADatabase(f"cannot open database {path}: {exc}") from None
        except OSError as exc:
            await _close_all(opened)
            raise NotADatabase(f"cannot open the writers' lock of {path}: {exc.strerror}") from None
        except BaseException:
            await _close_all(opened)
            raise

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(conn, *args, **kwargs) on the writer's thread in one IMMEDIATE transaction
        (or one savepoint of a group-committed batch); return once it is committed."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await self._writer.submit(fn, args, True)

    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run fn(conn, *args, **kwargs) on the reader's thread in one read transaction
        (or one savepoint of a batch, rolled back: a read never writes). It sees every
        write whose run() has returned."""
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await self._reader.submit(fn, args, False)

    async def close(self) -> None:
        # every operation already asked for runs first
        await asyncio.gather(self._writer.idle.wait(), self._reader.idle.wait())
        await _close_all([self._writer.db, self._reader.db])
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.stop)
        if self._writers_lock is not None:
            self._writers_lock.close()
            self._writers_lock = None


async def _close_all(conns: list[aiosqlite.Connection]) -> None:
    for conn in conns:
        await conn.close()


_Op = tuple[Callable[..., Any], tuple, bool, "asyncio.Future[Any]"]


def _run_batch(
    conn: sqlite3.Connection,
    ops: list[tuple[Callable[..., Any], tuple, bool]],
    lock: WritersLock | None = None,
    checkpointer: Checkpointer | None = None,
) -> list[tuple[bool, Any]]:
    """On the database thread: each (fn, args, write) -> (True, result) or (False, exception)."""
    if lock is not None and any(write for _, _, write in ops):
        lock.acquire()
        try:
            return _run_batch(conn, ops, None, checkpointer)
        finally:
            lock.release()
    if checkpointer is not None:
        checkpointer.writer_restart(conn)  # only when it asked (the WAL over its limit)
    if len(ops) == 1:  # nothing queued behind it: its own transaction, as always
        fn, args, write = ops[0]
        try:
            return [(True, (_in_transaction if write else _in_read)(conn, fn, args))]
        except Exception as exc:  # noqa: BLE001  (handed to the caller)
            return [(False, exc)]
    writes = any(write for _, _, write in ops)
    outcomes: list[tuple[bool, Any]] = []
    try:
        conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
        for fn, args, write in ops:
            conn.execute("SAVEPOINT extbill_op")
            try:
                result = fn(conn, *args)
            except Exception as exc:  # noqa: BLE001  (this operation fails alone)
                conn.execute("ROLLBACK TO extbill_op")
                conn.execute("RELEASE extbill_op")
                outcomes.append((False, exc))
                continue
            if not write:
                conn.execute("ROLLBACK TO extbill_op")  # a read changes nothing, as in _in_read
            conn.execute("RELEASE extbill_op")
            outcomes.append((True, result))
        conn.execute("COMMIT" if writes else "ROLLBACK")
    except BaseException as exc:
        # BEGIN or COMMIT failed, or SQLite rolled the whole transaction back (then the
        # ROLLBACK TO above fails too): nothing of the batch is committed, so every
        # operation in it fails.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if not isinstance(exc, Exception):
            raise
        return [(False, exc)] * len(ops)
    return outcomes


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
