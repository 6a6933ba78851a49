"""The SQLite store's two lanes (reads apart from writes) and the writers' lock of serve's processes."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastagi.dev.bench.seed import DataSet, seed_file
from fastagi.store import tx_admin, tx_calls
from fastagi.store.sqlite import SqliteStore
from fastagi.store.writers_lock import WritersLock
from fastagi.store.writers_lock import lock_path as writers_lock_path

NOT_DONE_WITHIN_S = 0.3


def _seeded(tmp_path: Path) -> tuple[str, DataSet]:
    db = str(tmp_path / "s.db")
    ds = DataSet(numbers=2, extensions=3)
    seed_file(db, ds)
    return db, ds


def test_a_lookup_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    """While another connection holds the write lock, reads answer at once and writes wait for it."""
    db, ds = _seeded(tmp_path)
    number = ds.number(0)

    async def main() -> None:
        store = await SqliteStore.open(db)
        other = sqlite3.connect(db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            write = asyncio.ensure_future(store.run(tx_admin.recharge, number, None, 1000, "r1"))
            await asyncio.sleep(NOT_DONE_WITHIN_S)
            assert not write.done()  # waiting for the other writer
            # asked after the write, answered before it: not queued behind it
            d = await asyncio.wait_for(store.read(tx_calls.lookup, number), NOT_DONE_WITHIN_S * 3)
            assert d.action == "collect" and not write.done()
            other.execute("COMMIT")
            assert (await write).created
        finally:
            other.close()
            await store.close()

    asyncio.run(main())


def test_a_read_sees_every_write_that_returned(tmp_path: Path) -> None:
    """Reads run on their own connection, yet each one sees the writes committed before it was asked."""
    db, ds = _seeded(tmp_path)
    number = ds.number(1)

    async def main() -> None:
        store = await SqliteStore.open(db)
        try:
            before = (await store.read(tx_admin.balance, number))["main"]["balance"]
            for i in range(1, 21):
                await store.run(tx_admin.recharge, number, None, 1000, f"seen-{i}")
                assert (await store.read(tx_admin.balance, number))["main"]["balance"] == before + 1000 * i
        finally:
            await store.close()

    asyncio.run(main())


def test_shared_stores_take_turns_through_the_writers_lock(tmp_path: Path) -> None:
    """With shared=True a write waits while the writers' lock is held elsewhere; reads do not."""
    db, ds = _seeded(tmp_path)
    number = ds.number(0)

    async def main() -> None:
        store = await SqliteStore.open(db, shared=True, checkpoints=False)
        fd = os.open(writers_lock_path(db), os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another serve process in the middle of a batch
            write = asyncio.ensure_future(store.run(tx_admin.recharge, number, None, 1000, "turn"))
            await asyncio.sleep(NOT_DONE_WITHIN_S)
            assert not write.done()
            assert (await asyncio.wait_for(store.read(tx_calls.lookup, number), 1.0)).action == "collect"
            fcntl.flock(fd, fcntl.LOCK_UN)
            assert (await asyncio.wait_for(write, 5.0)).created
        finally:
            os.close(fd)
            await store.close()

    asyncio.run(main())


def test_a_writer_killed_while_holding_the_lock_does_not_leave_it_held(tmp_path: Path) -> None:
    """kill -9 of a process in the middle of a batch: the kernel drops its lock and the next
    writer goes on at once."""
    db = str(tmp_path / "l.db")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, os, sys, time\n"
                f"fd = os.open({writers_lock_path(db)!r}, os.O_RDWR | os.O_CREAT)\n"
                "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('held', flush=True)\n"
                "time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    lock = WritersLock(db)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(BlockingIOError):
            fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # really held by the other process
        holder.kill()
        holder.wait(5)
        t0 = time.monotonic()
        lock.acquire()
        assert time.monotonic() - t0 < 5.0  # released with its holder, not held on
        lock.release()
    finally:
        holder.kill()
        holder.wait(5)
        lock.close()


def test_an_operation_raising_stop_iteration_answers_its_caller(tmp_path: Path) -> None:
    """A store operation that raises StopIteration (a bare next() on nothing) is reported to its
    caller as an error, and the store goes on serving; it never leaves the caller waiting."""

    def bad(conn: sqlite3.Connection) -> None:
        next(iter(()))

    async def main() -> None:
        store = await SqliteStore.open(str(tmp_path / "s.db"))
        try:
            with pytest.raises(RuntimeError, match="StopIteration"):
                await asyncio.wait_for(store.run(bad), 5)
            with pytest.raises(RuntimeError, match="StopIteration"):
                await asyncio.wait_for(store.read(bad), 5)
            assert await store.read(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
        finally:
            await store.close()

    asyncio.run(main())
