"""Call supervision: renew answered calls' grants mid-call and move Asterisk's cut-off.

One supervisor per serve, in the process that holds AMI. While AMI is up it holds the
supervisor lease (store/tx_quota.py), so call setup (in any process) grants one chunk
instead of everything the account can pay. For each answered call it sleeps until
renew_before_s before the granted end, reserves the next chunk in one transaction and,
only after that commits, moves the callee channel's hangup time (AMI Setvar of
TIMEOUT(absolute), funcs/func_timeout.c): Asterisk never allows a second that is not
reserved. A final grant is warned (a prompt whispered to the caller through ChanSpy,
without breaking the bridge) and re-checked every FINAL_RECHECK_S, so a recharge in
time extends the call.

Faults: AMI lost mid-call -> the callee is cut at the reserved end by Asterisk itself;
on reconnect `resume` takes the live answered calls back from the store. serve
restarted -> the same, from the stored answer time and callee.
"""

from __future__ import annotations

import asyncio
import contextlib
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
FINAL_RECHECK_S = 5.0  # a final grant looks for a recharge this often (a read; more often near its end)
FINAL_RECHECK_MS_MIN = 250
FINAL_LAST_CHECK_MS = 300  # too close to the cut to move it: the call ends as granted
WATCHED_CALLS_MAX = 20_000  # calls supervised at once; beyond, a call keeps its grant (cut at its end)
RESUME_CALLS_MAX = 20_000  # calls taken back from the store after a (re)connect
STORE_RETRY_S = 1.0  # a renewal that could not be made (store or AMI down) is tried again after this
RETRY_S_MIN = 0.05
WHISPER_CONTEXT = "extbill-whisper"  # dialplan/extensions.conf: plays the warning into ChanSpy


class AmiActions(Protocol):
    @property
    def connected(self) -> bool: ...

    async def send_action(self, fields: dict[str, str], timeout_s: float | None = None) -> Any: ...


@dataclass(slots=True)
class _Watch:
    billing_id: str
    answer_ms: int
    callee: str | None
    task: asyncio.Task[None] | None = None


class Supervisor:
    def __init__(
        self,
        store: Store,
        ami: AmiActions,
        *,
        quota_s: int,
        renew_before_s: int,
        holder: str,
    ) -> None:
        self.store = store
        self.ami = ami
        self.quota_s = quota_s
        self.renew_before_s = renew_before_s
        self.holder = holder
        self._watches: dict[str, _Watch] = {}
        self._lease_task: asyncio.Task[None] | None = None
        self._held = False
        self.renewals = 0  # chunks reserved mid-call (for the benchmark and tests)
        self.cutoff_moves = 0

    # -- lease ------------------------------------------------------------------
    async def start(self) -> None:
        self._lease_task = asyncio.create_task(self._lease_loop(), name="supervisor-lease")

    async def stop(self) -> None:
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        if self._lease_task is not None:
            tasks.append(self._lease_task)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        with contextlib.suppress(Exception):
            await self.store.run(tx_quota.drop_lease, self.holder)

    async def _lease_loop(self) -> None:
        while True:
            await self._refresh_lease()
            await asyncio.sleep(LEASE_REFRESH_S)

    async def _refresh_lease(self) -> None:
        """Hold the lease while AMI is up, drop it when AMI is down."""
        try:
            if self.ami.connected:
                await self.store.run(tx_quota.take_lease, self.holder, now_ms() + int(LEASE_TTL_S * 1000))
                if not self._held:
                    log.info("supervisor.lease_taken", note="new calls get chunks, renewed mid-call")
                self._held = True
            elif self._held:
                await self.store.run(tx_quota.drop_lease, self.holder)
                log.warning(
                    "supervisor.lease_dropped",
                    note="AMI is down: new calls get all they can pay, cut by Dial's L()",
                )
                self._held = False
        except Exception as exc:  # noqa: BLE001  (the lease must outlive one failed write)
            log.error("supervisor.lease_failed", error=repr(exc))

    # -- what AMI and settlement tell us ------------------------------------------
    def on_answered(self, billing_id: str, answered_ms: int, callee: str | None) -> None:
        if billing_id in self._watches:
            return
        if len(self._watches) >= WATCHED_CALLS_MAX:
            log.warning("supervisor.full", billing_id=billing_id, limit=WATCHED_CALLS_MAX)
            return
        w = _Watch(billing_id, answered_ms, callee)
        self._watches[billing_id] = w
        w.task = asyncio.create_task(self._watch(w), name=f"supervise-{billing_id}")

    def on_ended(self, billing_id: str) -> None:
        w = self._watches.pop(billing_id, None)
        if w is not None and w.task is not None:
            w.task.cancel()

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

    # -- one call -----------------------------------------------------------------
    async def _watch(self, w: _Watch) -> None:
        structlog.contextvars.bind_contextvars(billing_id=w.billing_id)
        try:
            await self._supervise(w)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001  (one call's fault must not stop the others)
            log.error("supervisor.call_failed", error=repr(exc), note="the call ends at its reserved end")
        finally:
            if self._watches.get(w.billing_id) is w:
                del self._watches[w.billing_id]

    async def _supervise(self, w: _Watch) -> None:
        grant = await self.store.read(tx_quota.call_grant, w.billing_id)
        last_chunk_s = grant.granted_s if grant is not None else 0
        warned_at_granted = -1  # the grant a warning was played for
        while grant is not None and grant.live:
            end_ms = w.answer_ms + grant.granted_s * 1000
            now = now_ms()
            if now >= end_ms:
                return  # Asterisk has cut the call at its reserved end; settlement closes it
            if not grant.final:
                await _sleep_until(renew_at_ms(w.answer_ms, grant.granted_s, self.renew_before_s))
            else:
                warn_at = end_ms - warning_before_ms(last_chunk_s)
                if warned_at_granted != grant.granted_s and now >= warn_at:
                    await self._warn(grant)
                    warned_at_granted = grant.granted_s
                    continue
                # Look for a recharge every FINAL_RECHECK_S, more often as the end nears, and
                # not in the last FINAL_LAST_CHECK_MS (the cut-off could not move in time).
                remaining = end_ms - now
                if remaining <= FINAL_LAST_CHECK_MS:
                    return
                step = min(int(FINAL_RECHECK_S * 1000), max(remaining // 3, FINAL_RECHECK_MS_MIN))
                wake = min(now + step, end_ms - FINAL_LAST_CHECK_MS)
                if warned_at_granted != grant.granted_s:
                    wake = min(wake, warn_at)
                await _sleep_until(wake)
                if now_ms() >= warn_at and warned_at_granted != grant.granted_s:
                    continue  # warn first
                if not await self.store.read(tx_quota.can_renew, w.billing_id, self.quota_s):
                    continue  # nothing new to pay with: no write
            renewed = await self._renew(w, grant, end_ms)
            if renewed is None:
                continue  # store or AMI trouble: try again shortly, the old cut-off stands
            if renewed.extended:
                last_chunk_s = renewed.granted_s - grant.granted_s
                if not await self._move_cutoff(w, renewed):
                    return
            grant = renewed

    async def _renew(self, w: _Watch, grant: Renewal, end_ms: int) -> Renewal | None:
        # A failed attempt is tried again soon: within a second, and several times before the end.
        retry_s = max(min(STORE_RETRY_S, (end_ms - now_ms()) / 4000), RETRY_S_MIN)
        if not self.ami.connected:
            # Nothing could move the cut-off: reserve nothing until AMI is back.
            await asyncio.sleep(retry_s)
            return None
        try:
            renewed = await self.store.run(tx_quota.renew, w.billing_id, grant.renewals + 1, self.quota_s)
        except StoreError as exc:
            log.error("supervisor.renew_failed", error=str(exc))
            await asyncio.sleep(retry_s)
            return None
        if renewed.extended:
            self.renewals += 1
            log.info(
                "call.renewed",
                renewal=renewed.renewals,
                granted_s=renewed.granted_s,
                final=renewed.final,
            )
        elif renewed.live and renewed.final and not grant.final:
            log.info("call.final_grant", granted_s=renewed.granted_s, note="account cannot pay another block")
        return renewed

    async def _move_cutoff(self, w: _Watch, grant: Renewal) -> bool:
        """Set the callee's hangup time to the new granted end; False when the call is gone."""
        end_ms = w.answer_ms + grant.granted_s * 1000
        remaining_ms = end_ms - now_ms()
        if remaining_ms <= 0:
            return False
        target = w.callee or grant.callee
        if target is None:
            log.warning(
                "supervisor.no_callee", note="cannot move the cut-off; the call ends at its first grant"
            )
            return False
        try:
            reply = await self.ami.send_action(
                {
                    "Action": "Setvar",
                    "Channel": target,
                    "Variable": "TIMEOUT(absolute)",
                    "Value": f"{remaining_ms / 1000:.3f}",
                }
            )
        except Exception as exc:  # noqa: BLE001  (AMI down or slow: the old cut-off stands)
            log.warning("supervisor.cutoff_not_moved", error=repr(exc), note="the call ends at its old end")
            return True
        if not _success(reply):
            log.info("supervisor.call_gone", reply=_message(reply), note="settlement releases the rest")
            return False
        self.cutoff_moves += 1
        # The caller's channel keeps the limit the dialplan checks after Dial (limit-reached
        # prompt) and its hangup handler caps the talk with: tell it the new total.
        with contextlib.suppress(Exception):
            await self.ami.send_action(
                {
                    "Action": "Setvar",
                    "Channel": grant.channel or w.billing_id,
                    "Variable": "EXTBILL_LIMIT_MS",
                    "Value": str(grant.granted_s * 1000),
                }
            )
        return True

    async def _warn(self, grant: Renewal) -> None:
        """Whisper the balance warning to the caller without breaking the bridge."""
        if not grant.channel:
            return
        try:
            reply = await self.ami.send_action(
                {
                    "Action": "Originate",
                    "Channel": f"Local/warn@{WHISPER_CONTEXT}/n",
                    "Application": "ChanSpy",
                    "Data": f"{grant.channel},qwEsS",
                    "Variable": f"EXTBILL_LANG={grant.lang}",
                    "Async": "true",
                }
            )
            log.info("call.warned", granted_s=grant.granted_s, ok=_success(reply))
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


async def _sleep_until(at_ms: int) -> None:
    delay = (at_ms - now_ms()) / 1000
    if delay > 0:
        await asyncio.sleep(delay)
