"""serve's extra FastAGI processes: one Python process is bound to one core by the GIL.

The first process (the one the admin starts) listens, runs the AMI consumer, the
sweeper and the WAL checkpoints, and starts `workers - 1` more processes here. Each
of those accepts from the same listening socket (handed over at start) and answers
FastAGI requests on its own connection to the same database; writing
batches are serialised across processes by a flock (store/sqlite.py). The store
settles each call exactly once whichever process hears of its end.

A worker that dies is started again, at most WORKER_RESTARTS_MAX times in
WORKER_RESTART_WINDOW_S; beyond that the server goes on with fewer processes and says so.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import signal
import socket
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess

import structlog

from fastagi.runtime.config import Settings

log = structlog.get_logger("extbill.workers")

WORKER_STOP_EXTRA_S = 5.0  # beyond drain_timeout_s, then SIGKILL
WORKER_RESTARTS_MAX = 5  # restarts within WORKER_RESTART_WINDOW_S, then give up on that slot
WORKER_RESTART_WINDOW_S = 60.0
WORKER_WATCH_INTERVAL_S = 0.5


def worker_main(settings: Settings, index: int, sock: socket.socket) -> None:
    """Entry point of a worker process (multiprocessing spawn: a fresh interpreter)."""
    from fastagi.runtime.log import configure as configure_logging  # noqa: PLC0415

    configure_logging(settings.log_format, settings.log_level)
    # A terminal's Ctrl-C reaches the whole process group: the first process stops the
    # workers itself (SIGTERM), so a worker is not seen dying and started again meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    structlog.contextvars.bind_contextvars(worker=index)
    import uvloop  # noqa: PLC0415

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker(settings, index, sock))


async def _worker(settings: Settings, index: int, sock: socket.socket) -> None:
    from fastagi.service.serve import Service  # noqa: PLC0415  (imports the store; keep the parent light)

    service = Service(settings, worker=index, sock=sock)
    await service.start()
    await service.run_until_stopped()


class Workers:
    """The extra processes of one serve: start, watch, restart, stop."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self._ctx = multiprocessing.get_context("spawn")  # no fork of a running loop or threads
        self._procs: dict[int, BaseProcess] = {}
        self._restarts: dict[int, list[float]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._sock: socket.socket | None = None

    def start(self, sock: socket.socket) -> None:
        """Start the workers on `sock`, the first process's listening socket (passed as a file descriptor)."""
        self._sock = sock
        self.settings = replace(self.settings, demo=False)
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._watch = asyncio.create_task(self._watch_loop(), name="workers")

    def _spawn(self, index: int) -> None:
        proc = self._ctx.Process(
            target=worker_main,
            args=(self.settings, index, self._sock),
            name=f"extbill-worker-{index}",
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
        deadline = time.monotonic() + self.settings.drain_timeout_s + WORKER_STOP_EXTRA_S
        for index, proc in self._procs.items():
            await asyncio.to_thread(proc.join, max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.error("serve.worker_killed", worker=index, pid=proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.join, 1.0)
        self._procs.clear()
