"""Settlement: every path that learns a call ended funnels through here, once per call.

Paths: the AMI correlator (events), the dialplan's hangup handler (a FastAGI request
with what the channel knows), reconcile on AMI (re)connect (calls gone while we were
deaf) and the sweeper (reservations older than their grant). The store resolves each
reservation at most once; the losers are compared against the winner.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import replace

import structlog

from fastagi.core.ami import CallAnswered, CallEnd
from fastagi.core.clock import iso_from_ms, ms_from_iso
from fastagi.core.ids import system_of
from fastagi.core.money import format_amount
from fastagi.core.records import CallFacts, SettleResult
from fastagi.core.vocab import CallState, SettledBy, UnsettledPolicy
from fastagi.runtime import clock
from fastagi.runtime.config import DIAL_TIMEOUT_S, SWEEP_GRACE_S, UNSETTLED_POLICY
from fastagi.store import tx_calls
from fastagi.store.base import NotFound, Store

log = structlog.get_logger("extbill.settle")

RECENT_SETTLED_MAX = 50_000  # settled calls remembered for the slower path's comparison
DISAGREEMENT_MS_MAX = 1000  # two paths' talk times further apart than this are logged
RECONCILE_MIN_AGE_MS = 2000  # a call granted this recently may not have its channel listed yet


def facts_from_ami(end: CallEnd) -> CallFacts:
    answered = end.answered_us is not None
    return CallFacts(
        billing_id=end.billing_id,
        answered=answered,
        talk_ms=end.talk_ms if answered else 0,
        answer_at=iso_from_ms(end.answered_us // 1000) if end.answered_us is not None else None,
        end_at=iso_from_ms(end.ended_us // 1000),
        disposition=end.dial_status or ("ANSWER" if answered else "NOANSWER"),
        cause=None if end.hangup_cause is None else str(end.hangup_cause),
        settled_by=SettledBy.RECONCILE if end.reconciled else SettledBy.AMI,
    )


class Settlement:
    def __init__(
        self,
        store: Store,
        *,
        unsettled_policy: UnsettledPolicy = UNSETTLED_POLICY,
        dial_timeout_s: int = DIAL_TIMEOUT_S,
        sweep_grace_s: int = SWEEP_GRACE_S,
        system_name: str = "",
    ) -> None:
        self.store = store
        # The systemname of the Asterisk whose AMI this process reads: reconcile closes only
        # that Asterisk's calls (others may be live on another Asterisk, another serve's).
        self.system_name = system_name
        self.unsettled_policy = unsettled_policy
        self.dial_timeout_s = dial_timeout_s
        self.sweep_grace_s = sweep_grace_s
        # Calls this process settled recently: the slower path compares against this
        # instead of asking the database again (every call is reported twice).
        self._recent: OrderedDict[str, SettleResult] = OrderedDict()
        # Answer times wait here while the previous write of them runs, then go in one
        # statement: one write per answered call had been a third of the writes under load.
        # Bounded by the AMI facts being handled at once (serve's AMI_FACTS_IN_FLIGHT_MAX).
        self._answers: dict[str, tuple[int, str | None]] = {}
        self._answers_written: asyncio.Future[None] | None = None  # for those in _answers
        self._answers_writer: asyncio.Task[None] | None = None

    def _remember(self, result: SettleResult) -> None:
        self._recent[result.billing_id] = replace(result, settled_now=False, low_balance=None)
        if len(self._recent) > RECENT_SETTLED_MAX:
            self._recent.popitem(last=False)

    async def settle(self, facts: CallFacts) -> SettleResult | None:
        known = self._recent.get(facts.billing_id)
        if known is not None:
            self._compare(facts, known)
            return known
        try:
            result = await self.store.run(tx_calls.settle, facts)
        except NotFound:
            log.info("settle.unknown_call", billing_id=facts.billing_id, settled_by=facts.settled_by)
            return None
        if result.state != CallState.RESERVED:
            self._remember(result)
        if result.settled_now:
            log.info(
                "call.settled",
                billing_id=facts.billing_id,
                state=result.state,
                talk_s=result.talk_s,
                cost=format_amount(result.cost or 0),
                disposition=facts.disposition,
                cause=facts.cause,
                settled_by=facts.settled_by,
            )
            self._log_low(result)
        else:
            self._compare(facts, result)
        return result

    def _compare(self, facts: CallFacts, winner: SettleResult) -> None:
        """The slower path checks the winner's talk time against its own, to the millisecond."""
        mine = facts.talk_ms if facts.answered else 0
        theirs = (
            self._winner_talk_ms(winner) if winner.state in (CallState.RATED, CallState.UNANSWERED) else None
        )
        if theirs is not None and abs(mine - theirs) > DISAGREEMENT_MS_MAX:
            log.warning(
                "settle.disagreement",
                billing_id=facts.billing_id,
                settled_by=winner.settled_by,
                talk_s=winner.talk_s,
                talk_ms=theirs,
                other_path=facts.settled_by,
                other_talk_ms=mine,
            )
        else:
            log.debug(
                "settle.confirmed",
                billing_id=facts.billing_id,
                settled_by=winner.settled_by,
                other_path=facts.settled_by,
            )

    def _winner_talk_ms(self, winner: SettleResult) -> int:
        """The winner's talk time in ms, from its stored answer and end times.

        talk_s is rounded to the second: comparing it with the other path's milliseconds
        would report 0.6 s disagreements and miss 1.4 s ones. Falls back to talk_s when the
        stored times do not give it (e.g. a grant charged by the sweeper).
        """
        rough = (winner.talk_s or 0) * 1000
        if winner.state != CallState.RATED or not winner.answer_at or not winner.end_at:
            return rough
        if winner.settled_by not in (SettledBy.AMI, SettledBy.HANGUP):
            return rough  # closed by policy: its times are not a measurement
        return max(ms_from_iso(winner.end_at) - ms_from_iso(winner.answer_at), 0)

    def _log_low(self, result: SettleResult) -> None:
        if result.low_balance:
            low = result.low_balance
            log.warning(
                "balance.low",
                number=low["number"],
                ext=low["ext"],
                available=format_amount(low["available"]),
                threshold=format_amount(low["threshold"]),
            )

    async def on_ami_fact(self, fact: CallAnswered | CallEnd) -> None:
        if isinstance(fact, CallAnswered):
            if fact.billing_id in self._recent:
                return  # already settled: the answer time changes nothing
            await self._mark_answered(fact.billing_id, fact.answered_us // 1000, fact.callee)
            return
        if fact.answered_us is None and fact.dial_status is None:
            # We did not see how the Dial ended (events lost, or we restarted mid-call):
            # "unanswered" would be a guess. Use the answer we stored, else leave it to
            # the hangup handler's path and the sweeper.
            await self._settle_from_stored_answer(fact)
            return
        await self.settle(facts_from_ami(fact))

    async def _mark_answered(self, billing_id: str, answer_ms: int, callee: str | None = None) -> None:
        """Store a call's answer time, Unix ms (and callee); returns once it is committed (or raises)."""
        self._answers.setdefault(billing_id, (answer_ms, callee))  # a call's first answer wins
        if self._answers_written is None:
            self._answers_written = asyncio.get_running_loop().create_future()
        written = self._answers_written
        if self._answers_writer is None:
            self._answers_writer = asyncio.create_task(self._write_answers())
        await asyncio.shield(written)  # a cancelled caller does not cancel the others' write

    async def _write_answers(self) -> None:
        try:
            while self._answers:
                answers = [(bid, at, callee) for bid, (at, callee) in self._answers.items()]
                self._answers = {}
                written, self._answers_written = self._answers_written, None
                assert written is not None
                try:
                    await self.store.run(tx_calls.mark_answered_many, answers)
                except Exception as exc:  # noqa: BLE001  (each waiting caller hears of it)
                    written.set_exception(exc)
                    written.exception()  # retrieved here too: no "never retrieved" noise
                else:
                    written.set_result(None)
        finally:
            self._answers_writer = None

    async def _settle_from_stored_answer(self, fact: CallEnd) -> None:
        call = await self.store.read(tx_calls.open_call, fact.billing_id)
        if call is None or not call["answer_at"]:
            log.info(
                "settle.ami_incomplete",
                billing_id=fact.billing_id,
                note="dial outcome not seen; waiting for the hangup handler or the sweeper",
            )
            return
        answer_ms, end_ms = ms_from_iso(call["answer_at"]), fact.ended_us // 1000
        await self.settle(
            CallFacts(
                billing_id=fact.billing_id,
                answered=True,
                talk_ms=max(end_ms - answer_ms, 0),
                answer_at=call["answer_at"],
                end_at=iso_from_ms(end_ms),
                disposition="ANSWER",
                cause=None if fact.hangup_cause is None else str(fact.hangup_cause),
                settled_by=SettledBy.RECONCILE if fact.reconciled else SettledBy.AMI,
            )
        )

    async def expire(self, billing_id: str, settled_by: SettledBy) -> SettleResult | None:
        try:
            result = await self.store.run(tx_calls.expire, billing_id, self.unsettled_policy, settled_by)
        except NotFound:
            return None
        if result.state != CallState.RESERVED:
            self._remember(result)
        if result.settled_now:
            log.warning(
                "call.unsettled_closed",
                billing_id=billing_id,
                policy=self.unsettled_policy,
                state=result.state,
                cost=format_amount(result.cost or 0),
                settled_by=settled_by,
            )
            self._log_low(result)
        return result

    async def reconcile(self, live_ids: set[str], now_ms: int | None = None) -> int:
        """After an AMI (re)connect: close this Asterisk's reservations whose channels are gone.

        Another Asterisk's calls (another systemname) are not in this AMI's list, live or not:
        they are left to their own serve, or to any serve's sweeper once past their grant
        (the takeover of a serve that is gone for good)."""
        now_ms = clock.now_ms() if now_ms is None else now_ms
        closed = 0
        for call in await self.store.read(tx_calls.open_calls):
            if call["billing_id"] in live_ids or now_ms - call["start_ms"] < RECONCILE_MIN_AGE_MS:
                continue
            if system_of(call["billing_id"]) != self.system_name:
                continue
            result = await self.expire(call["billing_id"], SettledBy.RECONCILE)
            closed += bool(result and result.settled_now)
        log.info("settle.reconciled", live=len(live_ids), closed=closed)
        return closed

    async def sweep(self, now_ms: int | None = None) -> int:
        """Close reservations older than ring time + grant + grace: never silently dropped.

        Whichever Asterisk they live on: no call outlives its grant, so past it one is over
        even if the serve that granted it is gone."""
        now_ms = clock.now_ms() if now_ms is None else now_ms
        closed = 0
        for call in await self.store.read(tx_calls.open_calls):
            deadline = (
                call["start_ms"] + (self.dial_timeout_s + call["granted_s"] + self.sweep_grace_s) * 1000
            )
            if now_ms > deadline:
                result = await self.expire(call["billing_id"], SettledBy.SWEEPER)
                closed += bool(result and result.settled_now)
        return closed
