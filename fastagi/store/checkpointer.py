"""WAL checkpoints off the hot path, and a WAL that stays bounded.

With SQLite's automatic checkpoint, every ~1000 WAL pages one committing call setup
copies the WAL back into the database and fsyncs it (measured: a third of a setup's
time on average). The store turns the automatic checkpoint off and this thread, with a
connection of its own, runs PASSIVE checkpoints (they never block writers) on a timer.

A PASSIVE checkpoint copies back the frames written before it began; under sustained
writes new frames always follow, the WAL is never reset and grows without end (measured:
150 MB in 3 s of recharges). So once the WAL file is over WAL_BYTES_MAX and the passive
pass has copied everything it could (or the WAL is over twice the limit), a TRUNCATE
checkpoint copies the frames left and empties the file: writers wait for it, briefly. When a reader pins old frames (a
long read transaction), no checkpoint can finish: after STALL_TICKS ticks in a row the
stall is logged with the WAL's size, and its end too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import structlog

log = structlog.get_logger("extbill.store")

CHECKPOINT_INTERVAL_S = 0.5  # WAL is folded back into the database this often
# A TRUNCATE waits this long for the write lock (writers go on meanwhile), then for readers
# to finish their (short) reads while writers wait.
CHECKPOINT_BUSY_TIMEOUT_MS = 1000
WAL_BYTES_MAX = 16 * 1024 * 1024  # above this, the WAL is emptied (TRUNCATE) once it can be
WAL_POLL_S = 0.05  # the WAL's size is looked at this often (a stat call)
STALL_TICKS = 20  # ticks in a row with frames left behind: the checkpointer is stalled (10 s)
WRITER_TRUNCATE_WAIT_MS = 200  # the writer waits this long for readers before giving up
WRITER_RETRY_S = 10.0  # after the writer's TRUNCATE failed, it is not asked again for this long


class Checkpointer:
    def __init__(
        self,
        path: str,
        interval_s: float = CHECKPOINT_INTERVAL_S,
        *,
        wal_bytes_max: int = WAL_BYTES_MAX,
        stall_ticks: int = STALL_TICKS,
    ) -> None:
        self.path = path
        self.interval_s = interval_s
        self.wal_bytes_max = wal_bytes_max
        self.stall_ticks = stall_ticks
        self.checkpoints = 0
        self.truncates = 0
        self.errors = 0
        self.behind = 0  # ticks in a row that left frames in the WAL
        # set here, cleared by the store's writer when it runs the TRUNCATE (writer_truncate)
        self.truncate_wanted = threading.Event()
        self.writer_retry_at = 0.0  # monotonic; the writer is not asked again before this
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extbill-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
            poll_s = min(self.interval_s, WAL_POLL_S)
            due = time.monotonic() + self.interval_s
            while not self._stop.wait(poll_s):
                # a tick every interval, and at once when writes push the WAL over its limit
                if time.monotonic() >= due or self._wal_bytes() > self.wal_bytes_max:
                    self._tick(conn)
                    due = time.monotonic() + self.interval_s
            self._checkpoint(conn, "TRUNCATE")  # leave a small WAL behind at shutdown
        finally:
            conn.close()

    def _wal_bytes(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal")
        except OSError:
            return 0

    def _tick(self, conn: sqlite3.Connection) -> None:
        res = self._checkpoint(conn, "PASSIVE")
        caught_up = res is not None and res[1] == res[2]  # every frame of the WAL is in the database
        wal = self._wal_bytes()
        # Over the limit: empty the WAL once the passive pass caught up (the TRUNCATE is then
        # short); over twice the limit, the writer does it between two batches (writers
        # committing during every passive pass on a busy machine), so the WAL stays bounded.
        emptied = False
        if wal > self.wal_bytes_max and caught_up:
            res = self._checkpoint(conn, "TRUNCATE")
            emptied = res is not None and res[0] == 0
            self.truncates += emptied
        if not emptied and wal > 2 * self.wal_bytes_max and time.monotonic() >= self.writer_retry_at:
            self.truncate_wanted.set()
        if caught_up:
            if self.behind >= self.stall_ticks:
                log.info("store.checkpoint_recovered", stalled_s=round(self.behind * self.interval_s, 1))
            self.behind = 0
            return
        self.behind += 1
        if self.behind % self.stall_ticks == 0:  # once per STALL_TICKS while it lasts
            log.warning(
                "store.checkpoint_stalled",
                stalled_s=round(self.behind * self.interval_s, 1),
                wal_bytes=self._wal_bytes(),
                wal_frames=res[1] if res else None,
                checkpointed_frames=res[2] if res else None,
                hint="a long read transaction holds old pages; the WAL grows until it ends",
            )

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> tuple[int, int, int] | None:
        """(busy, frames in the WAL, frames copied back), or None when it failed."""
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            self.checkpoints += 1
            return (row[0], row[1], row[2])
        except sqlite3.Error:
            self.errors += 1  # busy or locked: the next tick tries again
            return None

    def writer_truncate(self, conn: sqlite3.Connection) -> None:
        """On the store's writer thread, between batches: empty the WAL if this thread asked."""
        if not self.truncate_wanted.is_set():
            return
        self.truncate_wanted.clear()
        before = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {WRITER_TRUNCATE_WAIT_MS}")
        try:
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            done = row[0] == 0
        except sqlite3.Error:
            done = False
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(before)}")
        if done:
            self.truncates += 1
        else:  # a reader pins old frames: do not make writers wait for it again soon
            self.writer_retry_at = time.monotonic() + WRITER_RETRY_S

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
