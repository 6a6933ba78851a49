"""`extbill serve`: the FastAGI server, the AMI consumer and the sweeper on one store.

The asyncio shell: it wires the parts, runs until SIGTERM/SIGINT, then drains.
With `workers` > 1 this first process (the one the admin starts) listens, runs the AMI
consumer, the sweeper and the WAL checkpoints, and has workers.py start `workers - 1`
more processes (worker_main). Each accepts from the same listening socket and answers
FastAGI on its own connection to the same database; writing batches are serialised
across processes by a flock (store/sqlite.py), and the store settles each call exactly
once whichever process hears of its end. One Python process is bound to one core by the GIL.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
from dataclasses import replace
from typing import Any

import structlog

from fastagi.asterisk.agi_server import AgiServer, ServerLimits
from fastagi.asterisk.ami_client import AmiClient, AmiLimits
from fastagi.asterisk.call_routes import CallRoutes
from fastagi.core.ami import CallAnswered, CallEnd, Correlator
from fastagi.runtime.config import ConfigError, Settings, parse_hostport
from fastagi.runtime.log import configure as configure_logging
from fastagi.runtime.peers import PeerAllowlist
from fastagi.service.money_tasks import MoneyTasks
from fastagi.service.settlement import Settlement
from fastagi.service.supervisor import Supervisor
from fastagi.service.workers import Workers
from fastagi.store.base import Store
from fastagi.store.demo import DEMO_NUMBER, seed
from fastagi.store.factory import open_store, redact

log = structlog.get_logger("extbill.serve")

AMI_FACTS_IN_FLIGHT_MAX = 256  # AMI facts being settled at once; the event queue waits beyond
GC_THRESHOLDS = (20_000, 20, 20)  # generation 0, 1, 2 (CPython's default: 700, 10, 10)


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    """The one FastAGI socket all of serve's processes accept from.

    Shared rather than one per process (SO_REUSEPORT): the kernel would then hash each
    connection to a process whether it is busy or not, and the first process, which
    also consumes AMI, would hold everyone back. From one socket, whoever is free accepts.
    """
    # libuv otherwise accepts every pending connection in one go: one at a time, the
    # other processes get their share. Read when this process first listens.
    os.environ["UV_TCP_SINGLE_ACCEPT"] = "1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        raise ConfigError(f"agi_bind: cannot listen on {host}:{port}: {exc.strerror}") from None


def worker_main(settings: Settings, sock: socket.socket, index: int) -> None:
    """Entry point of a worker process (workers.py spawns it: a fresh interpreter)."""
    configure_logging(settings.log_format, settings.log_level)
    # A terminal's Ctrl-C reaches the whole process group: the first process stops the
    # workers itself (SIGTERM), so a worker is not seen dying and started again meanwhile.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    structlog.contextvars.bind_contextvars(worker=index)
    import uvloop  # noqa: PLC0415  (the event loop serve runs on)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_worker(settings, index, sock))


async def _worker(settings: Settings, index: int, sock: socket.socket) -> None:
    service = Service(settings, worker=index, sock=sock)
    await service.start()
    await service.run_until_stopped()


class Service:
    """Everything `serve` runs; tests and the benchmark start it in-process or as a subprocess."""

    def __init__(self, settings: Settings, *, worker: int = 0, sock: socket.socket | None = None) -> None:
        self.settings = settings
        self.worker = worker  # 0: the first process; others only answer FastAGI
        self.sock = sock  # a worker's listening socket, shared with the first
        self.workers: Workers | None = None
        self.store: Store | None = None
        self.agi: AgiServer | None = None
        self.ami: AmiClient | None = None
        self.correlator = Correlator()
        self.settlement: Settlement | None = None
        self.supervisor: Supervisor | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.money_tasks: MoneyTasks | None = None  # month closes and webhooks (first process)
        self._stop = asyncio.Event()
        self._facts_slots = asyncio.Semaphore(AMI_FACTS_IN_FLIGHT_MAX)
        self._fact_tasks: set[asyncio.Task[None]] = set()
        # Front ends started with the first process and stopped with it (the web console and
        # API when http_bind is set): made by the caller, which may depend on layers above this.
        self.front_ends: list[Any] = []

    async def start(self) -> None:
        s = self.settings
        shared = s.workers > 1
        self.store = await open_store(s.db, checkpoints=self.worker == 0, shared=shared)
        if self.store.created:
            log.info("db.created", path=redact(s.db))
            if s.demo:
                await self.store.run(seed)
                log.info(
                    "db.demo_seeded",
                    number=DEMO_NUMBER,
                    note="demo 400 number with extensions 1 (funded), 2 (in arrears), 3 (low)",
                )
        self.settlement = Settlement(
            self.store,
            unsettled_policy=s.unsettled_policy,
            dial_timeout_s=s.dial_timeout_s,
            sweep_grace_s=s.sweep_grace_s,
            system_name=s.asterisk_system_name,
        )
        routes = CallRoutes(self.store, self.settlement, dial_timeout_s=s.dial_timeout_s, quota_s=s.quota_s)
        host, port = parse_hostport(s.agi_bind, "agi_bind")
        limits = ServerLimits(
            header_timeout_s=s.header_timeout_s,
            connections_max=s.connections_max,
            drain_timeout_s=s.drain_timeout_s,
        )
        if shared and self.sock is None:
            self.sock = listening_socket(host, port, limits.backlog)
        allow = PeerAllowlist.parse(s.agi_allow)  # validated with the settings
        self.agi = AgiServer(routes.routes(), host, port, limits=limits, sock=self.sock, allow=allow)
        await self.agi.start()
        if self.worker:
            log.info("serve.worker_listening", agi=f"{host}:{self.agi.port}")
            self._tune_gc()
            return
        log.info("serve.listening", agi=f"{host}:{self.agi.port}", db=redact(s.db), workers=s.workers)
        if shared:
            assert self.sock is not None
            # the workers share this socket (passed as a file descriptor); only this process seeds
            worker_settings = replace(s, demo=False)
            self.workers = Workers(
                worker_main, (worker_settings, self.sock), s.workers - 1, drain_timeout_s=s.drain_timeout_s
            )
            self.workers.start()
        if s.ami_secret:
            self.ami = AmiClient(
                s.ami_host,
                s.ami_port,
                s.ami_user,
                s.ami_secret,
                on_event=self._on_ami_event,
                on_connected=self._on_ami_connected,
                limits=AmiLimits(),
            )
            self.supervisor = Supervisor(
                self.store,
                self.ami,
                quota_s=s.quota_s,
                renew_before_s=s.renew_before_s,
                holder=f"{socket.gethostname()}:{os.getpid()}",
                system=s.asterisk_system_name,
            )
            await self.supervisor.start()
            routes.on_grant = self.supervisor.note_grant
            await self.ami.start()
            log.info(
                "serve.ami_waiting",
                ami=f"{s.ami_host}:{s.ami_port}",
                user=s.ami_user,
                note="rating from AMI starts once Asterisk accepts the login; "
                "calls are still settled by the dialplan's hangup handler",
            )
        else:
            log.warning(
                "serve.ami_disabled",
                note="no AMI secret set (EXTBILL_AMI_SECRET): calls are "
                "settled by the dialplan's hangup handler and the sweeper only",
            )
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="sweeper")
        self.money_tasks = MoneyTasks(self.store, s)
        self.money_tasks.start()
        for front_end in self.front_ends:
            await front_end.start()
        self._tune_gc()

    @staticmethod
    def _tune_gc() -> None:
        # What exists now lives as long as the server: keep it out of every GC pass, and
        # collect young objects less often (each call makes thousands; full passes over a
        # large heap are what show up as latency spikes).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    async def _on_ami_event(self, event: Any) -> None:
        assert self.settlement is not None
        for fact in self.correlator.feed(event):
            # Settle concurrently (the store group-commits them), bounded: one fact at a
            # time would let the AMI queue overflow under load. Order within a call does
            # not matter: the store settles each call once, and a late answer is a no-op.
            await self._facts_slots.acquire()
            task = asyncio.create_task(self._apply_fact(fact))
            self._fact_tasks.add(task)
            task.add_done_callback(self._fact_done)
        for bad in self.correlator.take_malformed():
            log.warning(
                "ami.malformed_event", reason=bad.reason, ami_event=bad.event, billing_id=bad.billing_id
            )

    async def _apply_fact(self, fact: Any) -> None:
        assert self.settlement is not None
        try:
            await self.settlement.on_ami_fact(fact)
        except Exception as exc:  # noqa: BLE001  (one bad fact must not stop the consumer)
            log.error("settle.ami_fact_failed", billing_id=fact.billing_id, error=repr(exc))
            return
        if self.supervisor is not None:
            # after the answer time is stored: a restarted supervisor finds it there
            if isinstance(fact, CallAnswered):
                self.supervisor.on_answered(fact.billing_id, fact.answered_us // 1000, fact.callee)
            elif isinstance(fact, CallEnd):
                self.supervisor.on_ended(fact.billing_id)

    def _fact_done(self, task: asyncio.Task[None]) -> None:
        self._fact_tasks.discard(task)
        self._facts_slots.release()

    async def _on_ami_connected(self, live_ids: set[str]) -> None:
        assert self.settlement is not None
        # Calls we tracked whose channels are gone ended while we were deaf: their end
        # time is unknown here, so the hangup handler's report (or the policy) settles them.
        for billing_id in self.correlator.tracked_ids() - live_ids:
            self.correlator.forget(billing_id)
        await self.settlement.reconcile(live_ids)
        if self.supervisor is not None:
            await self.supervisor.resume(live_ids)

    async def _sweep_loop(self) -> None:
        assert self.settlement is not None
        while True:
            await asyncio.sleep(self.settings.sweep_interval_s)
            try:
                closed = await self.settlement.sweep()
                if closed:
                    log.warning("sweeper.closed", count=closed)
            except Exception as exc:  # noqa: BLE001  (the sweeper must outlive one bad pass)
                log.error("sweeper.failed", error=repr(exc))

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        # a worker leaves Ctrl-C to the first process, which stops it with SIGTERM
        for sig in (signal.SIGTERM,) if self.worker else (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self._stop.wait()
        log.info("serve.stopping", note="no new calls; calls in setup may finish")
        await self.stop()

    async def stop(self) -> None:
        # the workers drain their calls while this process drains its own
        workers = asyncio.create_task(self.workers.stop()) if self.workers is not None else None
        for front_end in reversed(self.front_ends):
            await front_end.stop()
        if self.agi is not None:
            await self.agi.stop()
        if workers is not None:
            await workers
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.money_tasks is not None:
            await self.money_tasks.stop()
        if self.supervisor is not None:
            await self.supervisor.stop()
        if self.ami is not None:
            await self.ami.stop()
        if self._fact_tasks:
            await asyncio.gather(*self._fact_tasks, return_exceptions=True)
        if self.store is not None:
            await self.store.close()
        log.info("serve.stopped")
