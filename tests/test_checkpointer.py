"""The WAL checkpointer that replaces SQLite's automatic checkpoints: under sustained
writes the WAL stays bounded, and a checkpointer held back by a reader says so."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

from structlog.testing import capture_logs

from fastagi.core.ledger import AccountKind
from fastagi.store import tx_ledger
from fastagi.store.checkpointer import WAL_BYTES_MAX, Checkpointer
from fastagi.store.sqlite import SqliteStore

WRITERS = 50  # operations in flight at once, as call setups are under load
WAIT_S = 20.0  # generous: an event on a busy 2-core machine, not a timing


def _wal(db: Path) -> int:
    try:
        return os.path.getsize(f"{db}-wal")
    except OSError:
        return 0


async def _write(store: SqliteStore, seconds: float, sample: list[int], db: Path) -> int:
    """Recharges from WRITERS tasks for `seconds`; the WAL's size sampled all along."""
    accounts = [await store.run(tx_ledger.new_account, AccountKind.EXT) for _ in range(100)]
    stop = time.monotonic() + seconds
    n = 0
    run = time.monotonic_ns()  # each call's ids its own

    async def writer(k: int) -> None:
        nonlocal n
        while time.monotonic() < stop:
            n += 1
            await store.run(
                tx_ledger.transfer, f"w{run}-{k}-{n}", 1, accounts[n % 100], 1000, "recharge", None
            )

    async def sampler() -> None:
        while time.monotonic() < stop:
            sample.append(_wal(db))
            await asyncio.sleep(0.02)

    await asyncio.gather(sampler(), *(writer(k) for k in range(WRITERS)))
    return n


def test_wal_stays_bounded_under_sustained_writes(tmp_path: Path) -> None:
    """Three seconds of back-to-back writes (about ten times serve's rate): the WAL is
    emptied again and again as it passes its limit (before: it only grew, to 150 MB), and
    is back under the limit once the writes stop. The peak depends on how fast this
    machine writes between two looks at the WAL: the bound on it is generous."""
    db = tmp_path / "w.db"
    sizes: list[int] = []

    async def main() -> tuple[int, int]:
        store = await SqliteStore.open(str(db))
        try:
            n = await _write(store, 3.0, sizes, db)
            deadline = time.monotonic() + WAIT_S
            while _wal(db) > WAL_BYTES_MAX and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return n, _wal(db)
        finally:
            await store.close()

    writes, after = asyncio.run(main())
    print(f"{writes} writes; WAL peak {max(sizes) / 1e6:.1f} MB, after {after / 1e6:.1f} MB")
    assert writes > 1000
    shrank = sum(1 for a, b in zip(sizes, sizes[1:]) if b < a)
    assert shrank >= 2, f"the WAL never shrank in {writes} writes: {max(sizes) / 1e6:.0f} MB"
    assert max(sizes) <= 8 * WAL_BYTES_MAX, f"WAL reached {max(sizes) / 1e6:.0f} MB in {writes} writes"
    assert after <= WAL_BYTES_MAX, f"WAL still {after / 1e6:.0f} MB after the writes"


def test_a_stalled_checkpointer_is_logged_and_so_is_its_recovery(tmp_path: Path) -> None:
    """A reader holding an old snapshot keeps every checkpoint from finishing: logged as a
    stall with the WAL's size; when the reader lets go, the WAL is emptied and that is logged."""
    db = tmp_path / "s.db"

    async def main(logs: list[dict]) -> tuple[int, int]:
        store = await SqliteStore.open(str(db), checkpoints=False)
        ckpt = Checkpointer(str(db), interval_s=0.05, wal_bytes_max=64 * 1024, stall_ticks=5)
        reader = sqlite3.connect(db, isolation_level=None)
        try:
            ckpt.start()
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM accounts").fetchone()  # holds this snapshot
            sizes: list[int] = []
            deadline = time.monotonic() + WAIT_S
            while not _event(logs, "store.checkpoint_stalled") and time.monotonic() < deadline:
                await _write(store, 0.2, sizes, db)
            held = _wal(db)
            reader.execute("ROLLBACK")
            while not _event(logs, "store.checkpoint_recovered") and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            while _wal(db) > 64 * 1024 and time.monotonic() < deadline:
                await store.run(tx_ledger.new_account, AccountKind.EXT)  # a writer resets the WAL
                await asyncio.sleep(0.05)
            return held, _wal(db)
        finally:
            reader.close()
            await asyncio.to_thread(ckpt.stop)
            await store.close()

    with capture_logs() as logs:
        held, after = asyncio.run(main(logs))
    stalled = _event(logs, "store.checkpoint_stalled")
    assert stalled, [e["event"] for e in logs]
    assert stalled["log_level"] == "warning" and stalled["wal_bytes"] > 64 * 1024
    assert stalled["checkpointed_frames"] < stalled["wal_frames"]
    assert _event(logs, "store.checkpoint_recovered"), [e["event"] for e in logs]
    assert held > 64 * 1024 >= after


def _event(logs: list[dict], name: str) -> dict | None:
    return next((e for e in logs if e.get("event") == name), None)


def test_the_wal_restarts_without_holding_up_the_stores_writer(tmp_path: Path) -> None:
    """While the store writes, the WAL is restarted by the store's own writer between two
    batches, never by the checkpointer's connection: a writer that found the write lock
    taken by it would sleep in SQLite's busy handler (measured: a 19 ms BEGIN about every
    0.7 s at half the bench's steady rate). Here the writer may not wait at all (busy
    timeout 0): any lock held elsewhere fails a write. The WAL still stays bounded, and
    once the writes stop the checkpointer empties the file itself."""
    db = tmp_path / "r.db"
    limit = 256 * 1024  # a small limit: many restarts in a few seconds

    def no_waiting(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA busy_timeout = 0")

    async def main() -> tuple[int, int, int, int]:
        store = await SqliteStore.open(str(db))
        ckpt = store._checkpointer  # noqa: SLF001
        assert ckpt is not None
        ckpt.wal_bytes_max = limit
        try:
            await store.run(no_waiting)  # the writer's connection only
            sizes: list[int] = []
            n = await _write(store, 3.0, sizes, db)  # any "database is locked" fails the test
            restarts_while_writing = ckpt.writer_restarts
            deadline = time.monotonic() + WAIT_S
            while _wal(db) > limit and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return n, restarts_while_writing, max(sizes), _wal(db)
        finally:
            await store.close()

    writes, restarts, peak, after = asyncio.run(main())
    print(f"{writes} writes, {restarts} restarts by the writer; WAL peak {peak / 1e6:.1f} MB")
    assert writes > 1000
    assert restarts >= 2, f"the writer restarted the WAL {restarts} times in {writes} writes"
    # bounded, not small: each restart waits for the checkpointer's next look (every 50 ms
    # when over the limit), and this writes about 100 MB/s: 7-44 MB peaks seen here
    assert peak <= 8 * WAL_BYTES_MAX, f"WAL reached {peak / 1e6:.1f} MB"
    assert after <= limit, f"WAL still {after / 1e6:.1f} MB after the writes"
