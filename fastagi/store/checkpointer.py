"""WAL checkpoints off the hot path.

With SQLite's automatic checkpoint, every ~1000 WAL pages one committing call setup
copies the WAL back into the database and fsyncs it (measured: a third of a setup's
time on average). The store turns the automatic checkpoint off and this thread, with a
connection of its own, runs PASSIVE checkpoints (they never block writers) on a timer.
"""

from __future__ import annotations

import sqlite3
import threading

CHECKPOINT_INTERVAL_S = 0.5  # WAL is folded back into the database this often
CHECKPOINT_BUSY_TIMEOUT_MS = 1000


class Checkpointer:
    def __init__(self, path: str, interval_s: float = CHECKPOINT_INTERVAL_S) -> None:
        self.path = path
        self.interval_s = interval_s
        self.checkpoints = 0
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="extbill-checkpointer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_BUSY_TIMEOUT_MS}")
            while not self._stop.wait(self.interval_s):
                self._checkpoint(conn, "PASSIVE")
            self._checkpoint(conn, "TRUNCATE")  # leave a small WAL behind at shutdown
        finally:
            conn.close()

    def _checkpoint(self, conn: sqlite3.Connection, mode: str) -> None:
        try:
            conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            self.checkpoints += 1
        except sqlite3.Error:
            self.errors += 1  # busy or locked: the next tick tries again

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
