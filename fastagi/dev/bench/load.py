"""The load generator: simulated calls against a running `extbill serve`, in its own process.

It plays Asterisk twice over: the FastAGI client of the dialplan (lookup, route,
and the hangup handler's request) and the AMI server that extbill's consumer logs
into (answer, bridge and hangup events). Phases:
  ramp    setups only, until `in_flight` granted calls are reserved and not settled;
  steady  `seconds` of steady state: `concurrency` workers make call setups while
          settle workers end the oldest calls, keeping ~`in_flight` reserved: full
          calls per second (setup through settlement);
  paced   `paced_seconds` of steady state with setups arriving at a fixed rate
          (`paced_share` of the steady one), whatever the server does: the latency
          below saturation, after PACED_WARMUP_S at that rate that is not counted (the
          saturated window's queues drain first);
  burst   `burst_seconds` of setups only (callees still answer; nobody hangs up yet):
          call setups per second and setup latency at `concurrency` in setup at once;
  drain   no new calls; every granted call still open is ended and settled.
A call's talk time exists only in its timestamps: nothing sleeps for it.

Run by `extbill bench` as `python -m fastagi.dev.bench.load '<json settings>'`; it writes
one JSON object per line on stdout: {"ami_port": ...}, {"ready": ...}, then
{"phase": name} as each phase starts, then {"result": ...}; then it stays logged in
as serve's AMI peer until ended.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections import Counter, deque
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from typing import Any

from fastagi.dev.bench.agi_peer import HeaderTemplate, agi_request
from fastagi.dev.bench.ami_peer import CallChannels, FakeAmi
from fastagi.dev.bench.mix import Call, CallMix
from fastagi.dev.bench.seed import DataSet
from fastagi.runtime.config import AGI_HOST, AGI_PORT

READY_TIMEOUT_S = 20.0
RAMP_TIMEOUT_S = 10.0  # to `in_flight` reserved calls; a slower server starts the window with fewer
DRAIN_TIMEOUT_S = 40.0
BURST_POOL_MAX = 100_000  # granted calls held open at most while the burst runs
LINGER_S = 60.0
ERRORS_KEPT_MAX = 20
GC_YOUNG_THRESHOLD = 10_000
# Paced arrivals in this first stretch are made but not counted: the steady window leaves
# up to `concurrency` setups and a settlement backlog behind, and the first paced calls
# queued behind them (measured: p99 43-55 ms in the first 0.5 s, 20-27 ms in every later one).
PACED_WARMUP_S = 1.0


@dataclass(frozen=True)
class LoadSettings:
    agi_host: str = AGI_HOST
    agi_port: int = AGI_PORT
    seconds: float = 10.0  # the steady window
    burst_seconds: float = 5.0  # the setups-only window
    concurrency: int = 100  # setup workers: calls in setup at once
    settle_concurrency: int = 100  # settle workers: hangup requests at once
    in_flight: int = 1000  # granted calls kept reserved and unsettled during the window
    paced_seconds: float = 5.0  # then: setups arriving at a fixed rate (open loop), for latency
    paced_share: float = 0.5  # that rate, as a share of the window's setups per second
    numbers: int = 1000
    extensions: int = 20
    seed: int = 1
    ami_user: str = "bench"
    ami_secret: str = "bench"


@dataclass(slots=True)
class Granted:
    call: Call
    chans: CallChannels
    answer_ms: int
    end_ms: int


def _sec(ms: int) -> str:
    return f"{ms // 1000}.{ms % 1000:03d}"


@dataclass(slots=True)
class Window:
    """One measured phase: what ended inside [start, end)."""

    start: float = 0.0
    end: float = 0.0
    setups: int = 0
    completed: int = 0  # prompted, or settled
    latencies_ms: list[float] = field(default_factory=list)
    load_cpu_s: float = 0.0

    def holds(self, t: float) -> bool:
        return self.start <= t < self.end

    def figures(self, seconds: float) -> dict[str, float]:
        lat = sorted(self.latencies_ms)
        return {
            "setups_per_s": self.setups / seconds,
            "calls_per_s": self.completed / seconds,
            "setup_p50_ms": _percentile(lat, 0.50),
            "setup_p99_ms": _percentile(lat, 0.99),
            "setup_max_ms": lat[-1] if lat else 0.0,
            "setups": self.setups,
            "completed": self.completed,
            "seconds": seconds,
            "load_cpu_s": self.load_cpu_s,
        }


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


class Generator:
    def __init__(self, s: LoadSettings) -> None:
        self.s = s
        self.mix = CallMix(DataSet(s.numbers, s.extensions), seed=s.seed, epoch=int(time.time()))
        self.ami = FakeAmi(s.ami_user, s.ami_secret, self.live_channels)
        self.pool: deque[Granted] = deque()  # granted, reserved, not yet ended
        self.live: dict[str, CallChannels] = {}  # caller channels not yet destroyed (pool + ending)
        self.settling = 0
        self.phase = "ramp"
        self.steady, self.burst = Window(), Window()
        self.measured: Window | None = None  # the window running now, if any
        self.paced_ms: list[float] = []  # paced setups, from their scheduled arrival
        self.paced_late = 0  # arrivals that waited for a free setup slot
        self.headers = HeaderTemplate(s.agi_port)
        self.loop: asyncio.AbstractEventLoop | None = (
            None  # run()'s: get_running_loop() costs a getpid() on 3.11
        )
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.in_flight_max = 0
        self.idle_settlers: deque[asyncio.Future[None]] = deque()  # settle workers with nothing to end
        self.room = asyncio.Event()
        self.room.set()

    def live_channels(self) -> list[CallChannels]:
        """What CoreShowChannels lists: granted calls whose caller channel is not destroyed yet."""
        return list(self.live.values())

    def _error(self, what: str) -> None:
        self.counts["errors"] += 1
        if len(self.errors) < ERRORS_KEPT_MAX:
            self.errors.append(what)

    def _completed(self, t: float) -> None:
        w = self.measured
        if w is not None and w.holds(t):
            w.completed += 1

    def _pool_cap(self) -> int:
        return BURST_POOL_MAX if self.phase == "burst" else self.s.in_flight + 2 * self.s.concurrency

    def _agi(self, script: str, args: list[str], call: Call) -> Coroutine[Any, Any, dict[str, str]]:
        """The request, to await (not a coroutine itself: one frame less on every resumption)."""
        payload = self.headers.block(
            script, args, uniqueid=call.billing_id, callerid=call.caller, extension=call.number
        )
        return agi_request(self.s.agi_host, self.s.agi_port, payload, loop=self.loop)

    # -- setups ---------------------------------------------------------------
    async def setup_worker(self) -> None:
        while self.phase in ("ramp", "steady", "burst"):
            if len(self.pool) >= self._pool_cap():
                self.room.clear()
                await self.room.wait()
                continue
            call = self.mix.next()
            try:
                await self.setup(call)
            except (TimeoutError, OSError) as exc:
                self._error(f"setup {call.billing_id}: {exc!r}")

    async def setup(self, call: Call, arrived: float | None = None, counted: bool = True) -> None:
        """lookup + route; a paced call's latency counts from its scheduled arrival."""
        t0 = time.perf_counter() if arrived is None else arrived
        v1 = await self._agi("lookup", [call.number], call)
        if v1.get("EXTBILL_RESULT") != "collect":
            self._error(f"lookup {call.number}: {v1}")
            return
        v2 = await self._agi("route", [call.number, call.digits, "1"], call)
        t1 = time.perf_counter()
        w = self.measured
        if arrived is not None:
            if counted:
                self.paced_ms.append((t1 - t0) * 1000)
        elif w is not None and w.holds(t1):
            w.setups += 1
            w.latencies_ms.append((t1 - t0) * 1000)
        self.counts["setups"] += 1
        result = v2.get("EXTBILL_RESULT")
        if result != call.expect:
            self._error(f"route {call.kind} {call.number},{call.digits}: {v2}")
            return
        if result == "prompt":
            self.counts["prompted"] += 1
            if v2.get("EXTBILL_PROMPT") != "ext-in-arrears":
                self._error(f"arrears call {call.billing_id} heard {v2.get('EXTBILL_PROMPT')}")
            self._completed(t1)
            return
        limit_ms = int(v2.get("EXTBILL_LIMIT_MS") or 0)
        if v2.get("EXTBILL_ID") != call.billing_id or limit_ms <= 0:
            self._error(f"dial {call.billing_id}: {v2}")
            return
        self.counts["granted"] += 1
        chans = CallChannels(call.billing_id, self.counts["granted"])
        answer_ms = int(time.time() * 1000) + call.ring_ms
        if call.answered:
            call.talk_ms = min(call.talk_ms, limit_ms)  # Dial's L() cuts the call at the grant
            self.ami.send(chans.answered_events(answer_ms))
            end_ms = answer_ms + call.talk_ms
        else:
            end_ms = answer_ms
        self.pool.append(Granted(call, chans, answer_ms, end_ms))
        self.live[call.billing_id] = chans
        self.in_flight_max = max(self.in_flight_max, len(self.pool) + self.settling)
        if self.idle_settlers:
            excess = self._to_settle()
            if excess > 0:
                self._wake_settlers(excess)

    # -- settlement -----------------------------------------------------------
    def _to_settle(self) -> int:
        """How many calls to end now: the pool above its target, in a phase that ends calls."""
        phase = self.phase
        if phase in ("ramp", "burst"):
            return 0
        return len(self.pool) - (self.s.in_flight if phase in ("steady", "paced") else 0)

    def _wake_settlers(self, n: int | None = None) -> None:
        """Wake n idle settle workers (all: None) to look at the pool again.

        As many as there are calls to end, not all of them: an Event would wake every
        idle worker for each granted call, and all but one would go back to sleep.
        """
        idle = self.idle_settlers
        while idle and (n is None or n > 0):
            fut = idle.popleft()
            if not fut.done():
                fut.set_result(None)
                if n is not None:
                    n -= 1

    async def settle_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.phase == "done" and not self.pool:
                return
            if self._to_settle() <= 0:
                fut: asyncio.Future[None] = loop.create_future()
                self.idle_settlers.append(fut)
                await fut
                continue
            g = self.pool.popleft()
            self.room.set()
            self.settling += 1
            try:
                await self.settle(g)
            except (TimeoutError, OSError) as exc:
                self._error(f"hangup {g.call.billing_id}: {exc!r}")
            finally:
                self.settling -= 1

    async def settle(self, g: Granted) -> None:
        """End a call as Asterisk does: talk-end events, the hangup handler's request, the caller's Hangup."""
        call = g.call
        if call.answered:
            self.ami.send(g.chans.ended_events(g.end_ms))
            args = [call.billing_id, "ANSWER", "16", _sec(g.answer_ms), _sec(g.end_ms)]
        else:
            status, cause = ("BUSY", "17") if call.ring_ms % 3 == 0 else ("NOANSWER", "19")
            self.ami.send(g.chans.unanswered_events(g.end_ms, status))
            args = [call.billing_id, status, cause, "", _sec(g.end_ms)]
        try:
            await self._agi("hangup", args, call)
        finally:
            self.live.pop(call.billing_id, None)
            self.ami.send(g.chans.caller_hangup(g.end_ms + 5))
        t = time.perf_counter()
        self.counts["settled"] += 1
        self.counts["answered" if call.answered else "unanswered"] += 1
        self.counts["talk_s_total"] += (call.talk_ms + 500) // 1000 if call.answered else 0
        self._completed(t)

    async def paced(self, rate: float, seconds: float, warmup_s: float = PACED_WARMUP_S) -> None:
        """Open loop: a call arrives every 1/rate s whatever the server does; at most
        `concurrency` in setup at once (a later arrival waits, and its wait counts).
        Arrivals in the first `warmup_s` are not counted; `seconds` of them are."""
        slots = asyncio.Semaphore(self.s.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        counted_from = start + warmup_s
        n = 0
        while True:
            arrival = start + n / rate
            if arrival >= counted_from + seconds:
                break
            delay = arrival - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._paced_one(arrival, slots, arrival >= counted_from))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _paced_one(self, arrival: float, slots: asyncio.Semaphore, counted: bool) -> None:
        if slots.locked() and counted:
            self.paced_late += 1
        async with slots:
            while len(self.pool) >= self._pool_cap():
                self.room.clear()
                await self.room.wait()
            call = self.mix.next()
            try:
                await self.setup(call, arrived=arrival, counted=counted)
            except (TimeoutError, OSError) as exc:
                self._error(f"setup {call.billing_id}: {exc!r}")

    # -- the run --------------------------------------------------------------
    async def _measure(self, name: str, w: Window, seconds: float) -> None:
        emit({"phase": name})
        cpu0 = time.process_time()
        w.start = time.perf_counter()
        w.end = w.start + seconds
        self.measured = w
        await asyncio.sleep(seconds)
        w.load_cpu_s = time.process_time() - cpu0

    async def run(self) -> dict[str, object]:
        s = self.s
        self.loop = asyncio.get_running_loop()
        setups = [asyncio.create_task(self.setup_worker()) for _ in range(s.concurrency)]
        settlers = [asyncio.create_task(self.settle_worker()) for _ in range(s.settle_concurrency)]
        t_ramp = time.perf_counter()
        while len(self.pool) < s.in_flight and time.perf_counter() - t_ramp < RAMP_TIMEOUT_S:
            if self.counts["errors"] > 100:
                break
            await asyncio.sleep(0.01)
        ramp_s = time.perf_counter() - t_ramp
        in_flight_at_steady = len(self.pool)
        self.phase = "steady"
        self._wake_settlers()
        await self._measure("steady", self.steady, s.seconds)
        # Paced arrivals replace the closed-loop workers; settlement goes on as before.
        self.phase = "paced"
        self.measured = None
        self.room.set()
        await asyncio.gather(*setups, return_exceptions=True)
        paced_rate = s.paced_share * self.steady.setups / s.seconds
        if s.paced_seconds > 0 and paced_rate > 0:
            emit({"phase": "paced"})
            await self.paced(paced_rate, s.paced_seconds)
        # Setups only: what the server can admit when nothing else is asked of it.
        self.phase = "burst"
        self.room.set()
        setups = [asyncio.create_task(self.setup_worker()) for _ in range(s.concurrency)]
        await self._measure("burst", self.burst, s.burst_seconds)
        self.measured = None
        self.phase = "drain"
        emit({"phase": "drain"})
        await asyncio.gather(*setups, return_exceptions=True)
        t_drain = time.perf_counter()
        self.phase = "done"
        self._wake_settlers()
        try:
            await asyncio.wait_for(asyncio.gather(*settlers), DRAIN_TIMEOUT_S)
        except TimeoutError:
            self._error(f"drain: {len(self.pool) + self.settling} calls not settled in {DRAIN_TIMEOUT_S}s")
        drain_s = time.perf_counter() - t_drain
        await self.ami.drain()
        paced = sorted(self.paced_ms)
        return {
            "steady": self.steady.figures(s.seconds),
            "burst": self.burst.figures(s.burst_seconds),
            "paced_rate_per_s": paced_rate if s.paced_seconds > 0 else 0.0,
            "paced_setups": len(self.paced_ms),
            "paced_late": self.paced_late,
            "paced_setup_p50_ms": _percentile(paced, 0.50),
            "paced_setup_p99_ms": _percentile(paced, 0.99),
            "paced_setup_max_ms": paced[-1] if paced else 0.0,
            "in_flight_max": self.in_flight_max,
            "in_flight_at_steady_start": in_flight_at_steady,
            "ramp_s": ramp_s,
            "drain_s": drain_s,
            "counts": dict(self.counts),
            "errors": self.errors,
            "ami_logins": self.ami.logins,
            "ami_bytes_sent": self.ami.bytes_sent,
            "event_loop": type(self.loop).__module__.split(".")[0],
        }


def emit(doc: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


async def main_async(s: LoadSettings) -> None:
    gen = Generator(s)
    await gen.ami.start()
    emit({"ami_port": gen.ami.port})
    # serve listens for FastAGI before it connects to AMI: logged in means ready.
    await asyncio.wait_for(gen.ami.logged_in.wait(), READY_TIMEOUT_S)
    emit({"ready": True})
    result = await gen.run()
    result["settings"] = asdict(s)
    emit({"result": result})
    # Stay logged in to serve until `extbill bench` has stopped it (then it ends us with
    # SIGTERM): an AMI peer vanishing under a running serve is not part of the run.
    await asyncio.sleep(LINGER_S)
    await gen.ami.stop()


def main(argv: list[str]) -> int:
    s = LoadSettings(**json.loads(argv[0]))
    try:
        # The generator shares the machine with the server it measures: the cheaper it is
        # per call, the more CPU is left for serve. uvloop is optional.
        import uvloop  # noqa: PLC0415

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]  # the same call, without loop_factory
    # Fewer, cheaper collections: what was loaded at start-up is never scanned again, and the
    # young generation is collected every 10,000 allocations instead of 700 (cycles are rare here).
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD)
    runner(main_async(s))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
