"""Call supervision: renew answered calls' grants mid-call and move Asterisk's cut-off.

One supervisor per serve, in the process that holds AMI. While AMI is up it holds the
supervisor lease (store/tx_quota.py), so call setup (in any process) grants one chunk
instead of everything the account can pay (docs/rules.md rule 9). For each answered call
it wakes renew_before_s before the granted end, reserves the next chunk in one
transaction and, only after that commits, moves the callee channel's hangup time (AMI
Setvar of TIMEOUT(absolute), funcs/func_timeout.c): Asterisk never allows a second that
is not reserved. A final grant is warned (a prompt whispered to the caller through
ChanSpy, without breaking the bridge) and re-checked for a recharge until just before
its end, so a branch topped up in time keeps its caller.

One timer heap for every call (no task and no read per answered call: a call that ends
within its first chunk, most of them, costs a heap push). Steps that are due run as
tasks, at most STEPS_IN_FLIGHT_MAX at once.

Faults: AMI lost mid-call -> nothing is reserved while it is down, and the callee is cut
at the reserved end by Asterisk itself; serve restarted -> `resume` takes the live
answered calls back from the store (answer time, callee) after the AMI snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from fastagi.core.clock import ms_from_iso
from fastagi.core.quota import renew_at_ms, warning_before_ms
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_quota
from fastagi.store.base import Store, StoreError
from fastagi.store.tx_quota import Renewal

log = structlog.get_logger("extbill.supervisor")

LEASE_TTL_S = 6.0  # setup grants chunks while the lease is this fresh
LEASE_REFRESH_S = 2.0  # how often the holder extends it
FINAL_RECHECK_MS = 5_000  # a final grant looks for a recharge this often (a read; more often near its end)
FINAL_RECHECK_MS_MIN = 250
FINAL_LAST_CHECK_MS = 300  # too close to the cut to move it: the call ends as granted
WATCHED_CALLS_MAX = 100_000  # answered calls supervised at once; beyond, a call keeps its grant
GRANTS_KEPT_MAX = 100_000  # grants noted at setup, waiting for the answer
RESUME_CALLS_MAX = 20_000  # calls taken back from the store after a (re)connect
HEAP_SLACK = 1024  # stale timer entries tolerated before the heap is rebuilt
STEPS_IN_FLIGHT_MAX = 64  # renewals / warnings being carried out at once
RETRY_MS_MAX = 1_000  # a renewal that could not be made (store or AMI down) is tried again after this
RETRY_MS_MIN = 50
WHISPER_CONTEXT = "extbill-whisper"  # dialplan/extensions.conf: plays the warning into ChanSpy


class AmiActions(Protocol):
    @property
    def connected(self) -> bool: ...

    async def send_action(self, fields: dict[str, str], timeout_s: float | None = None) -> Any: ...


@dataclass(slots=True)
class _Watch:
    """What the supervisor knows of one answered call; None fields are read from the store."""

    billing_id: str
    answer_ms: int
    callee: str | None
    granted_s: int | None = None
    renewals: int = 0
    final: bool = False
    last_chunk_s: int = 0  # the latest chunk's length: a final one is warned at its half
    warned_for: int = -1  # the grant (granted_s) a warning was played for
    channel: str | None = None
    lang: str = "zh"
    wake_ms: int = 0  # the heap entry that is current for this call
    busy: bool = False  # a step is running

    @property
    def end_ms(self) -> int:
        return self.answer_ms + (self.granted_s or 0) * 1000

    def take(self, g: Renewal, previous_granted_s: int | None) -> None:
        if previous_granted_s is not None and g.granted_s > previous_granted_s:
            self.last_chunk_s = g.granted_s - previous_granted_s
        elif not self.last_chunk_s:
            self.last_chunk_s = g.granted_s
        self.granted_s, self.renewals, self.final = g.granted_s, g.renewals, g.final
        self.channel, self.lang = g.channel, g.lang
        self.callee = self.callee or g.callee


class Supervisor:
    def __init__(
        self,
        store: Store,
        ami: AmiActions,
        *,
        quota_s: int,
        renew_before_s: int,
        holder: str,
        system: str = "",
    ) -> None:
        self.store = store
        self.system = system  # the systemname of the Asterisk whose AMI this supervisor holds
        self.ami = ami
        self.quota_s = quota_s
        self.renew_before_s = renew_before_s
        self.holder = holder
        self._watches: dict[str, _Watch] = {}
        self._grants: dict[str, tuple[int, bool, str | None, str]] = {}  # noted at setup
        self._heap: list[tuple[int, int, str]] = []  # (wake ms, tie-breaker, billing id)
        self._ticket = itertools.count()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(STEPS_IN_FLIGHT_MAX)
        self._steps: set[asyncio.Task[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._held = False

    # -- life -----------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._lease_loop(), name="supervisor-lease"),
            asyncio.create_task(self._timer_loop(), name="supervisor-timers"),
        ]

    async def stop(self) -> None:
        tasks = self._tasks + list(self._steps)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks, self._watches, self._heap = [], {}, []
        with contextlib.suppress(Exception):
            await self.store.run(tx_quota.drop_lease, self.holder, self.system)

    async def _lease_loop(self) -> None:
        while True:
            await self._refresh_lease()
            await asyncio.sleep(LEASE_REFRESH_S)

    async def _refresh_lease(self) -> None:
        """Hold the lease while AMI is up, drop it when AMI is down."""
        try:
            if self.ami.connected:
                await self.store.run(
                    tx_quota.take_lease, self.holder, now_ms() + int(LEASE_TTL_S * 1000), self.system
                )
                if not self._held:
                    log.info("supervisor.lease_taken", note="new calls get chunks, renewed mid-call")
                self._held = True
            elif self._held:
                await self.store.run(tx_quota.drop_lease, self.holder, self.system)
                log.warning(
                    "supervisor.lease_dropped",
                    note="AMI is down: new calls get all they can pay, cut by Dial's L()",
                )
                self._held = False
        except Exception as exc:  # noqa: BLE001  (the lease must outlive one failed write)
            log.error("supervisor.lease_failed", error=repr(exc))

    # -- what call setup, AMI and settlement tell us --------------------------------------
    def note_grant(
        self, billing_id: str, granted_s: int, final: bool, channel: str | None, lang: str
    ) -> None:
        """A grant this process just made: saves reading it back when the call is answered."""
        if len(self._grants) >= GRANTS_KEPT_MAX:
            self._grants.pop(next(iter(self._grants)))  # the oldest: it will be read instead
        self._grants[billing_id] = (granted_s, final, channel, lang)

    def on_answered(self, billing_id: str, answered_ms: int, callee: str | None) -> None:
        if billing_id in self._watches:
            return
        if len(self._watches) >= WATCHED_CALLS_MAX:
            log.warning("supervisor.full", billing_id=billing_id, limit=WATCHED_CALLS_MAX)
            return
        w = _Watch(billing_id, answered_ms, callee)
        noted = self._grants.pop(billing_id, None)
        if noted is not None:
            w.granted_s, w.final, w.channel, w.lang = noted
            w.last_chunk_s = w.granted_s
        self._watches[billing_id] = w
        self._schedule(w, self._next_wake(w, now_ms()) if noted else now_ms())

    def on_ended(self, billing_id: str) -> None:
        self._grants.pop(billing_id, None)
        self._watches.pop(billing_id, None)  # its heap entry is skipped when it comes up

    async def resume(self, live_ids: set[str]) -> int:
        """After an AMI (re)connect or a restart: supervise the live answered calls again."""
        await self._refresh_lease()  # at once: calls set up from now on get chunks
        resumed = 0
        for call in await self.store.read(tx_quota.supervised_calls, RESUME_CALLS_MAX):
            if call.billing_id not in live_ids or call.billing_id in self._watches or not call.answer_at:
                continue
            self.on_answered(call.billing_id, ms_from_iso(call.answer_at), call.callee)
            resumed += 1
        if resumed:
            log.info("supervisor.resumed", calls=resumed)
        return resumed

    def watched(self) -> set[str]:
        return set(self._watches)

    # -- the timers -------------------------------------------------------------------
    def _schedule(self, w: _Watch, at_ms: int) -> None:
        w.wake_ms = at_ms
        if len(self._heap) > 2 * len(self._watches) + HEAP_SLACK:
            # Ended calls leave their entries behind (skipped when they come up): drop them
            # now and then, so the heap stays proportional to the calls being supervised.
            live = [(x.wake_ms, b) for b, x in self._watches.items() if not x.busy and x is not w]
            self._heap = [(at, next(self._ticket), b) for at, b in live]
            heapq.heapify(self._heap)
        heapq.heappush(self._heap, (at_ms, next(self._ticket), w.billing_id))
        if self._heap[0][2] == w.billing_id:
            self._wakeup.set()  # earlier than what the loop sleeps for

    async def _timer_loop(self) -> None:
        while True:
            self._wakeup.clear()
            delay_s = None
            now = now_ms()
            while self._heap:
                at, _, bid = self._heap[0]
                if at > now:
                    delay_s = (at - now) / 1000
                    break
                heapq.heappop(self._heap)
                w = self._watches.get(bid)
                if w is None or w.wake_ms != at or w.busy:
                    continue  # ended, rescheduled, or a step of it is running
                w.busy = True
                await self._slots.acquire()
                task = asyncio.create_task(self._step(w))
                self._steps.add(task)
                task.add_done_callback(self._step_done)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), delay_s)

    def _step_done(self, task: asyncio.Task[None]) -> None:
        self._steps.discard(task)
        self._slots.release()

    def _next_wake(self, w: _Watch, now: int) -> int:
        """When this call next needs us: its renewal, its warning, or a recharge check."""
        assert w.granted_s is not None
        if not w.final:
            return renew_at_ms(w.answer_ms, w.granted_s, self.renew_before_s)
        end = w.end_ms
        warn_at = end - warning_before_ms(w.last_chunk_s)
        step = min(FINAL_RECHECK_MS, max((end - now) // 3, FINAL_RECHECK_MS_MIN))
        wake = min(now + step, end - FINAL_LAST_CHECK_MS)
        return min(wake, warn_at) if w.warned_for != w.granted_s else wake

    # -- one step of one call ---------------------------------------------------------
    async def _step(self, w: _Watch) -> None:
        structlog.contextvars.bind_contextvars(billing_id=w.billing_id)
        try:
            wake = await self._act(w)
        except Exception as exc:  # noqa: BLE001  (one call's fault must not stop the others)
            log.error("supervisor.call_failed", error=repr(exc), note="the call ends at its reserved end")
            wake = None
        finally:
            w.busy = False
            structlog.contextvars.unbind_contextvars("billing_id")
        if self._watches.get(w.billing_id) is not w:
            return  # ended meanwhile
        if wake is None:
            del self._watches[w.billing_id]
        else:
            self._schedule(w, wake)

    async def _act(self, w: _Watch) -> int | None:
        """Do what is due; the next wake-up, or None when the call needs us no more."""
        if w.granted_s is None:
            grant = await self.store.read(tx_quota.call_grant, w.billing_id)
            if grant is None or not grant.live or not grant.supervised:
                return None  # settled, or granted without a supervisor: Dial's L(x:y) ends it
            w.take(grant, None)
        assert w.granted_s is not None  # taken above
        now = now_ms()
        end = w.end_ms
        if now >= end - (FINAL_LAST_CHECK_MS if w.final else 0):
            return None  # Asterisk cuts the call at its reserved end; settlement closes it
        if w.final:
            if w.warned_for != w.granted_s and now >= end - warning_before_ms(w.last_chunk_s):
                await self._warn(w)
                w.warned_for = w.granted_s
                return self._next_wake(w, now_ms())
            if not await self.store.read(tx_quota.can_renew, w.billing_id, self.quota_s):
                return self._next_wake(w, now_ms())  # nothing new to pay with: no write
        elif now < renew_at_ms(w.answer_ms, w.granted_s, self.renew_before_s):
            return self._next_wake(w, now)
        return await self._renew(w, end)

    async def _renew(self, w: _Watch, end_ms: int) -> int | None:
        retry = now_ms() + max(min(RETRY_MS_MAX, (end_ms - now_ms()) // 4), RETRY_MS_MIN)
        if not self.ami.connected:
            return retry  # nothing could move the cut-off: reserve nothing until AMI is back
        try:
            grant = await self.store.run(tx_quota.renew, w.billing_id, w.renewals + 1, self.quota_s)
        except StoreError as exc:
            log.error("supervisor.renew_failed", error=str(exc))
            return retry
        if not grant.live:
            return None
        was_final, before = w.final, w.granted_s
        w.take(grant, before)
        if grant.extended:
            log.info("call.renewed", renewal=grant.renewals, granted_s=grant.granted_s, final=grant.final)
            if not await self._move_cutoff(w):
                return None
        elif grant.final and not was_final:
            log.info("call.final_grant", granted_s=grant.granted_s, note="account cannot pay another block")
        return self._next_wake(w, now_ms())

    async def _move_cutoff(self, w: _Watch) -> bool:
        """Move the call's end to the new granted end; False when the call is gone.

        The caller's EXTBILL_LIMIT_MS first: the dialplan's hangup handler caps the talk it
        reports at that limit, so it must never be behind the real cut-off (ahead is harmless:
        the talk measured is never longer than Asterisk allowed). Then the callee's
        TIMEOUT(absolute), which is the cut-off itself.
        """
        remaining_ms = w.end_ms - now_ms()
        if remaining_ms <= 0:
            return False
        if w.callee is None:
            log.warning(
                "supervisor.no_callee", note="cannot move the cut-off; the call ends at its first grant"
            )
            return False
        limit = {"Variable": "EXTBILL_LIMIT_MS", "Value": str((w.granted_s or 0) * 1000)}
        timeout = {"Variable": "TIMEOUT(absolute)", "Value": f"{remaining_ms / 1000:.3f}"}
        for channel, change in ((w.channel or w.billing_id, limit), (w.callee, timeout)):
            try:
                reply = await self.ami.send_action({"Action": "Setvar", "Channel": channel, **change})
            except Exception as exc:  # noqa: BLE001  (AMI down or slow: the old cut-off stands)
                log.warning(
                    "supervisor.cutoff_not_moved", error=repr(exc), note="the call ends at its old end"
                )
                return True
            if not _success(reply):
                log.info("supervisor.call_gone", reply=_message(reply), note="settlement releases the rest")
                return False
        return True

    async def _warn(self, w: _Watch) -> None:
        """Whisper the balance warning to the caller without breaking the bridge."""
        if not w.channel:
            return
        try:
            reply = await self.ami.send_action(
                {
                    "Action": "Originate",
                    "Channel": f"Local/warn@{WHISPER_CONTEXT}/n",
                    "Application": "ChanSpy",
                    "Data": f"{w.channel},qwEsS",
                    "Variable": f"EXTBILL_LANG={w.lang}",
                    "Async": "true",
                }
            )
            log.info("call.warned", granted_s=w.granted_s, ok=_success(reply))
        except Exception as exc:  # noqa: BLE001  (a missed warning must not stop the supervision)
            log.warning("call.warning_failed", error=repr(exc))


def _success(reply: Any) -> bool:
    ok = getattr(reply, "success", None)
    if ok is not None:
        return bool(ok)
    return str(reply.get("Response", "")).lower() == "success"


def _message(reply: Any) -> str:
    try:
        return str(reply.get("Message", ""))
    except AttributeError:
        return ""
