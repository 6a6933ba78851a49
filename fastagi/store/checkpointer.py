"""WAL checkpoints off the hot path, and a WAL that stays bounded.

With SQLite's automatic checkpoint, every ~1000 WAL pages one committing call setup
copies the WAL back into the database and fsyncs it (measured: a third of a setup's
time on average). The store turns the automatic checkpoint off and this thread, with a
connection of its own, runs PASSIVE checkpoints (they never block writers) on a timer.

A PASSIVE checkpoint copies back the frames written before it began, but the WAL starts
over from its first frame only when a writer finds every frame copied back and no reader
in the middle of a read: under steady load the reader lane is nearly always reading, so
the WAL grows without end (measured: 150 MB in 3 s of recharges). So once the WAL holds
more than WAL_BYTES_MAX of frames and the passive pass has copied them all (or at once
over twice the limit), the WAL is restarted: a RESTART checkpoint waits for the readers
of the moment (short reads) and the next write begins at the file's start again, so the
file stops growing. The store's own writer runs it, between two of its batches, whenever
it is writing: run from this thread's connection it holds the write lock, and a writer
that finds the lock held sleeps in SQLite's busy handler (1, 2, 5, 10 ms...), measured as
a 19 ms BEGIN IMMEDIATE about every 0.7 s at half the bench's steady rate (most of the
paced p99). When nobody has written for a while, this thread empties the file (TRUNCATE)
itself: there is nobody to block. When a reader pins old frames (a long read
transaction), no checkpoint can finish: after STALL_TICKS ticks in a row the stall is
logged with the WAL's size, and its end too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import structlog

log = structlog.get_logger("extbill.store")

CHECKPOINT_INTERVAL_S = 0.5  # WAL is folded back into the database this often
# This thread's TRUNCATE (writer idle) waits this long for the write lock, then for readers
# to finish their (short) reads.
CHECKPOINT_BUSY_TIMEOUT_MS = 1000
WAL_BYTES_MAX = 16 * 1024 * 1024  # frames beyond this in the WAL: it is restarted once it can be
WAL_POLL_S = 0.05  # the WAL file's size is looked at this often (a stat call)
STALL_TICKS = 20  # ticks in a row with frames left behind: the checkpointer is stalled (10 s)
WRITER_RESTART_WAIT_MS = 200  # the writer waits this long for readers before giving up
WRITER_RETRY_S = 10.0  # after the writer's restart failed, it is not asked again for this long
WRITER_IDLE_S = 1.0  # no writer batch began for this long: this thread empties the WAL itself
FRAME_HEADER_BYTES = 24  # each WAL frame: a header and one page


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
        self.writer_restarts = 0  # WAL restarted by the store's writer, between its batches
        self.idle_truncates = 0  # WAL file emptied by this thread, nobody writing
        self.errors = 0
        self.behind = 0  # ticks in a row that left frames in the WAL
        self.frame_bytes = 4096 + FRAME_HEADER_BYTES  # read from the database when the thread starts
        # set here, cleared by the store's writer when it restarts the WAL (writer_restart)
        self.restart_wanted = threading.Event()
        self.writer_retry_at = 0.0  # monotonic; the writer is not asked again before this
        self.writer_seen_at = float("-inf")  # monotonic; when the store's writer last began a batch
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extbill-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
            self.frame_bytes = conn.execute("PRAGMA page_size").fetchone()[0] + FRAME_HEADER_BYTES
            poll_s = min(self.interval_s, WAL_POLL_S)
            due = time.monotonic() + self.interval_s
            while not self._stop.wait(poll_s):
                # a tick every interval, and at once when writes push the file over twice the
                # limit (a restarted WAL reuses its file: only growth past that is news)
                if time.monotonic() >= due or self._wal_bytes() > 2 * self.wal_bytes_max:
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
        live = res[1] * self.frame_bytes if res is not None else self._wal_bytes()
        now = time.monotonic()
        if now - self.writer_seen_at >= WRITER_IDLE_S:
            # Nobody writing: nobody to block. Empty the file once everything is copied back
            # (a big file left by a burst, too).
            if caught_up and self._wal_bytes() > self.wal_bytes_max:
                res = self._checkpoint(conn, "TRUNCATE")
                self.idle_truncates += res is not None and res[0] == 0
        elif (live > 2 * self.wal_bytes_max or (live > self.wal_bytes_max and caught_up)) and (
            now >= self.writer_retry_at
        ):
            self.restart_wanted.set()  # the writer restarts it before its next batch
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

    def writer_restart(self, conn: sqlite3.Connection) -> None:
        """On the store's writer thread, before each batch: restart the WAL if this thread asked.

        The file is emptied too (TRUNCATE) when a burst grew it past twice the limit; else
        it is reused from its start (RESTART: no file to shrink and grow again)."""
        self.writer_seen_at = time.monotonic()
        if not self.restart_wanted.is_set():
            return
        self.restart_wanted.clear()
        mode = "TRUNCATE" if self._wal_bytes() > 2 * self.wal_bytes_max else "RESTART"
        before = conn.execute("PRAGMA busy_timeout").fetchone()[0]
        conn.execute(f"PRAGMA busy_timeout = {WRITER_RESTART_WAIT_MS}")
        try:
            row = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            done = row[0] == 0
        except sqlite3.Error:
            done = False
        finally:
            conn.execute(f"PRAGMA busy_timeout = {int(before)}")
        if done:
            self.writer_restarts += 1
        else:  # a reader pins old frames: do not make writers wait for it again soon
            self.writer_retry_at = time.monotonic() + WRITER_RETRY_S

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
