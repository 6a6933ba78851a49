"""The three FastAGI requests of a call, as the dialplan makes them.

    lookup,<400 number>                     -> collect | prompt
    route,<400 number>,<digits>,<try>       -> dial | retry | prompt   (reserves money for a dial)
    hangup,<billing id>,<DIALSTATUS>,<HANGUPCAUSE>,<answered at>,<ended at>   -> settles

Each handler validates its input, asks the store (which runs the pure policy of
calls.py), and answers with channel variables. EXTBILL_RESULT is set last: a
half-delivered answer leaves it empty, and the dialplan fails closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import structlog

from fastagi.asterisk.agi_server import AgiChannel, ChannelClosed, CommandFailed, NotSent, ReplyTimeout
from fastagi.core.calls import Decision
from fastagi.core.clock import iso_from_ms
from fastagi.core.ids import is_billing_id
from fastagi.core.money import format_amount
from fastagi.core.numbers import KEY_DIGITS_MAX, is_key, is_number
from fastagi.core.quota import QUOTA_S_DEFAULT
from fastagi.core.records import CallFacts
from fastagi.core.vocab import SettledBy
from fastagi.runtime.clock import now_ms
from fastagi.runtime.config import DIAL_TIMEOUT_S
from fastagi.service.settlement import Settlement
from fastagi.store import tx_calls
from fastagi.store.base import Store

log = structlog.get_logger("extbill.call")

CALLER_CHARS_MAX = 32
TRY_MAX = 10
DIAL_STATUSES = frozenset(
    {
        "ANSWER",
        "BUSY",
        "NOANSWER",
        "CANCEL",
        "CONGESTION",
        "CHANUNAVAIL",
        "DONTCALL",
        "TORTURE",
        "INVALIDARGS",
        "",
    }
)
TIME_RE = re.compile(r"^(\d{9,11})(?:\.(\d{1,6}))?$")


class BadRequest(ValueError):
    """The dialplan sent arguments we cannot act on; we answer nothing (it fails closed)."""


def clean_caller(callerid: str) -> str:
    """Caller number as digits (and a leading +), for prefix rating and records."""
    kept = "".join(c for c in callerid if c.isdigit() or c == "+")[:CALLER_CHARS_MAX]
    return kept or "unknown"


def parse_time_ms(text: str, what: str) -> int | None:
    """'1732650000.123' (seconds with a fraction) -> ms; empty -> None."""
    if text == "":
        return None
    m = TIME_RE.match(text)
    if m is None:
        raise BadRequest(f"{what} {text!r} is not a Unix time like 1732650000.123")
    return int(m.group(1)) * 1000 + int((m.group(2) or "0").ljust(3, "0")[:3])


def _number_arg(ch: AgiChannel) -> str:
    number = ch.request.args[0] if ch.request.args else ch.request.extension
    if not is_number(number):
        raise BadRequest(f"{number!r} is not a 400 number")
    return number


async def _answer(ch: AgiChannel, variables: list[tuple[str, str]]) -> None:
    """Set the answer's variables in one round trip (no money at stake: prompts, retries, lookups)."""
    try:
        await ch.set_variables(variables)
    except CommandFailed as exc:
        if exc.reply.code != 511:
            raise
        # The caller hung up while we answered (HANGUP, then 511): nobody is left to
        # hear the prompt. An ordinary event, not a handler error.
        log.info("call.answer_undelivered", hung_up=ch.hung_up)


class CallRoutes:
    def __init__(
        self,
        store: Store,
        settlement: Settlement,
        *,
        dial_timeout_s: int = DIAL_TIMEOUT_S,
        quota_s: int = QUOTA_S_DEFAULT,
    ) -> None:
        self.store = store
        self.settlement = settlement
        self.dial_timeout_s = dial_timeout_s
        self.quota_s = quota_s
        # told of each supervised grant (the supervisor, when it runs in this process)
        self.on_grant: Callable[[str, int, bool, str | None, str], None] | None = None
        self._unsupervised = False  # inside an episode of grants nobody can renew (logged once)

    def routes(self) -> dict[str, Any]:
        return {"lookup": self.lookup, "route": self.route, "hangup": self.hangup}

    async def lookup(self, ch: AgiChannel) -> None:
        try:
            number = _number_arg(ch)
        except BadRequest as exc:
            log.warning("agi.bad_request", route="lookup", error=str(exc))
            return
        structlog.contextvars.bind_contextvars(number=number, caller=clean_caller(ch.request.callerid))
        d: Decision = await self.store.read(tx_calls.lookup, number)
        log.info("call.lookup", action=d.action, reason=d.reason, prompt=d.prompt, lang=d.lang)
        if d.action == "collect":
            await _answer(
                ch,
                [
                    ("EXTBILL_LANG", d.lang),
                    ("EXTBILL_DIGIT_TIMEOUT", str(d.digit_timeout_s)),
                    ("EXTBILL_MAXDIGITS", str(d.max_digits)),
                    ("EXTBILL_RESULT", "collect"),
                ],
            )
        else:
            await _answer(
                ch,
                [
                    ("EXTBILL_LANG", d.lang),
                    ("EXTBILL_PROMPT", d.prompt or "service-unavailable"),
                    ("EXTBILL_RESULT", "prompt"),
                ],
            )

    async def route(self, ch: AgiChannel) -> None:
        req = ch.request
        try:
            # The dialplan always sends all three (digits empty on a timeout): fewer is a
            # broken dialplan, and guessing "no key" would Dial and charge main on its behalf.
            if len(req.args) < 3:
                raise BadRequest(f"route needs <400 number>,<digits>,<try>, got {len(req.args)} argument(s)")
            number = _number_arg(ch)
            digits, try_text = req.args[1], req.args[2]
            if not try_text.isdigit() or not 1 <= int(try_text) <= TRY_MAX:
                raise BadRequest(f"try {try_text!r} must be a number 1..{TRY_MAX}")
            if not is_billing_id(req.uniqueid):
                raise BadRequest(f"agi_uniqueid {req.uniqueid!r} is not an Asterisk uniqueid")
        except BadRequest as exc:
            log.warning("agi.bad_request", route="route", error=str(exc))
            return
        # A key is digits only; '*', letters or an over-long entry match no extension.
        if digits and not is_key(digits):
            digits = digits[: KEY_DIGITS_MAX + 1] if digits.isdigit() else "?" + digits[:KEY_DIGITS_MAX]
        caller = clean_caller(req.callerid)
        structlog.contextvars.bind_contextvars(number=number, ext=digits or None, caller=caller)
        d: Decision = await self.store.run(
            tx_calls.route,
            req.uniqueid,
            number,
            digits,
            int(try_text),
            caller,
            req.channel,
            req.headers.get("agi_linkedid"),
            self.quota_s,
        )
        if d.action == "dial":
            self._note_supervision(d.supervised)
            if d.supervised and self.on_grant is not None:
                self.on_grant(req.uniqueid, d.granted_s, d.final, req.channel, d.lang)
        log.info(
            "call.decision",
            action=d.action,
            reason=d.reason,
            prompt=d.prompt,
            charged=d.charged,
            dest=d.dest,
            granted_s=d.granted_s,
            final=d.final if d.action == "dial" else None,
            reserved=format_amount(d.reserve),
            limit_ms=d.limit_ms or None,
        )
        if d.action == "dial":
            await self._deliver_dial(ch, d)
        elif d.action == "retry":
            await _answer(ch, [("EXTBILL_RESULT", "retry")])
        else:
            await _answer(
                ch, [("EXTBILL_PROMPT", d.prompt or "service-unavailable"), ("EXTBILL_RESULT", "prompt")]
            )

    def _note_supervision(self, supervised: bool) -> None:
        if not supervised and not self._unsupervised:
            log.warning(
                "call.unsupervised_grants",
                note="no supervisor holds the lease (AMI down?): calls get all their account can pay, "
                "final, cut by Dial's L()",
            )
        elif supervised and self._unsupervised:
            log.info("call.supervised_grants", note="calls get chunks again, renewed mid-call")
        self._unsupervised = not supervised

    async def _deliver_dial(self, ch: AgiChannel, d: Decision) -> None:
        billing_id = ch.request.uniqueid
        variables = [
            ("EXTBILL_ID", billing_id),
            ("EXTBILL_DEST", d.dest or ""),
            ("EXTBILL_LIMIT_MS", str(d.limit_ms)),
            ("EXTBILL_WARN_MS", str(d.warning_ms)),
            ("EXTBILL_DIAL_TIMEOUT", str(self.dial_timeout_s)),
            ("EXTBILL_RESULT", "dial"),
        ]
        try:
            await ch.set_variables(variables)  # EXTBILL_RESULT=dial last: all or nothing
        except (CommandFailed, NotSent) as exc:
            # Asterisk refused it (511 after HANGUP) or never got it: EXTBILL_RESULT is not
            # "dial", so the dialplan will not Dial. Release the money now.
            await self._release_undelivered(billing_id, str(exc))
        except (ChannelClosed, ReplyTimeout) as exc:
            # Sent, but no reply: Asterisk may have set EXTBILL_RESULT=dial and be dialling
            # now. Releasing would leave that call unbilled; keep the reservation. The hangup
            # handler settles it either way (an undialled call is voided), the sweeper is
            # the backstop.
            log.warning(
                "call.grant_unconfirmed",
                error=str(exc),
                note="reservation kept until the hangup handler, AMI or the sweeper settles it",
            )

    async def _release_undelivered(self, billing_id: str, error: str) -> None:
        log.warning("call.grant_undelivered", error=error)
        await self.settlement.settle(
            CallFacts(
                billing_id=billing_id,
                answered=False,
                talk_ms=0,
                answer_at=None,
                end_at=iso_from_ms(now_ms()),
                disposition="NOTDIALED",
                cause=None,
                settled_by=SettledBy.SETUP,
            )
        )

    async def hangup(self, ch: AgiChannel) -> None:
        args = ch.request.args + [""] * 5
        billing_id, status, cause, answered_text, ended_text = args[:5]
        try:
            if not is_billing_id(billing_id):
                raise BadRequest(f"billing id {billing_id!r} is not an Asterisk uniqueid")
            if status not in DIAL_STATUSES:
                raise BadRequest(f"DIALSTATUS {status!r} is not one Asterisk sets")
            if cause and not cause.isdigit():
                raise BadRequest(f"HANGUPCAUSE {cause!r} is not a number")
            answered_ms = parse_time_ms(answered_text, "answered at")
            ended_ms = parse_time_ms(ended_text, "ended at") or now_ms()
        except BadRequest as exc:
            log.warning("agi.bad_request", route="hangup", error=str(exc))
            return
        structlog.contextvars.bind_contextvars(billing_id=billing_id)
        if status == "ANSWER" and answered_ms is None:
            # Answered, but the channel did not record when: the AMI path knows; guessing would not.
            log.warning("hangup.no_answer_time", note="left to the AMI path and the sweeper")
            return
        answered = answered_ms is not None and status in ("ANSWER", "")
        talk_ms = max(ended_ms - answered_ms, 0) if answered and answered_ms is not None else 0
        await self.settlement.settle(
            CallFacts(
                billing_id=billing_id,
                answered=answered,
                talk_ms=talk_ms,
                answer_at=iso_from_ms(answered_ms) if answered and answered_ms else None,
                end_at=iso_from_ms(ended_ms),
                disposition=status or ("ANSWER" if answered else "NOANSWER"),
                cause=cause or None,
                settled_by=SettledBy.HANGUP,
            )
        )
