"""A supervisor of worker processes: start `count` copies of a target, restart one that
dies, stop them all. It knows nothing of what they run (serve.py gives it its target).

Each process is started with the spawn method (a fresh interpreter: no fork of a running
event loop or threads) and runs `target(*args, index)`, index 1..count; target and args
must be picklable (a module-level function; a socket travels as a file descriptor).

A worker that dies is started again, at most WORKER_RESTARTS_MAX times in
WORKER_RESTART_WINDOW_S; beyond that the others go on without it and the log says so.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

log = structlog.get_logger("extbill.workers")

WORKER_STOP_EXTRA_S = 5.0  # beyond the caller's drain time, then SIGKILL
WORKER_RESTARTS_MAX = 5  # restarts within WORKER_RESTART_WINDOW_S, then give up on that slot
WORKER_RESTART_WINDOW_S = 60.0
WORKER_WATCH_INTERVAL_S = 0.5


class Workers:
    """`count` processes running `target(*args, index)`: start, watch, restart, stop.

    `drain_timeout_s`: how long stop() lets a worker finish its work after SIGTERM.
    """

    def __init__(
        self,
        target: Callable[..., None],
        args: tuple[Any, ...],
        count: int,
        *,
        drain_timeout_s: float,
        name: str = "extbill-worker",
    ) -> None:
        self.target = target
        self.args = args
        self.count = count
        self.drain_timeout_s = drain_timeout_s
        self.name = name
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a running loop or threads
        self._procs: dict[int, BaseProcess] = {}
        self._restarts: dict[int, list[float]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def start(self) -> None:
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._watch = asyncio.create_task(self._watch_loop(), name="workers")

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(
            target=self.target,
            args=(*self.args, index),
            name=f"{self.name}-{index}",
            daemon=False,
        )
        proc.start()
        self._procs[index] = proc
        log.info("serve.worker_started", worker=index, pid=proc.pid)

    async def _watch_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WORKER_WATCH_INTERVAL_S)
            for index, proc in list(self._procs.items()):
                if proc.is_alive() or self._stopping:
                    continue
                proc.join(0)
                del self._procs[index]
                now = time.monotonic()
                recent = [t for t in self._restarts.get(index, []) if now - t < WORKER_RESTART_WINDOW_S]
                if len(recent) >= WORKER_RESTARTS_MAX:
                    log.error(
                        "serve.worker_given_up",
                        worker=index,
                        exitcode=proc.exitcode,
                        restarts=len(recent),
                        window_s=WORKER_RESTART_WINDOW_S,
                        note="serving with fewer processes; see the worker's last log lines",
                    )
                    continue
                log.error("serve.worker_died", worker=index, exitcode=proc.exitcode, note="starting it again")
                self._restarts[index] = [*recent, now]
                self._spawn(index)

    async def stop(self) -> None:
        """SIGTERM every worker (each drains its calls), wait, then kill what is left."""
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for proc in self._procs.values():
            if proc.is_alive() and proc.pid is not None:
                try:
                    proc.terminate()  # SIGTERM
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + self.drain_timeout_s + WORKER_STOP_EXTRA_S
        for index, proc in self._procs.items():
            await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("serve.worker_killed", worker=index, pid=proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.join, 1.0)
        self._procs.clear()
