"""The lock serve's processes take around each writing batch on a shared database file.

An exclusive flock on `<db>-writers.lock`, taken by the database thread just before
BEGIN IMMEDIATE and let go after COMMIT. SQLite's own busy handler would serialise the
processes too, but by sleeping and retrying (1, 2, 5, 10 ... ms); a blocked flock wakes
the next writer as soon as the lock is free.

How long the wait can last: as long as one batch of the process holding it (at most
BATCH_OPS_MAX operations, each statement bounded by SQLite's busy timeout), or until that
process dies: the kernel drops a dead process's flock, so a killed worker never leaves it
held. A FastAGI request waiting behind it is bounded by the server's handler timeout and
fails closed. (flock has no timeout of its own. A helper thread making the call so that
the database thread could stop waiting raised the benchmark's paced p99 from about 25 to
46 ms: two more thread wake-ups per contended batch.)
"""

from __future__ import annotations

import fcntl
import os


def lock_path(db: str) -> str:
    return db + "-writers.lock"


class WritersLock:
    def __init__(self, db: str) -> None:
        self.fd: int | None = os.open(lock_path(db), os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self) -> None:
        assert self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # blocks without the GIL

    def release(self) -> None:
        assert self.fd is not None
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
