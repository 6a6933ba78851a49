"""AMI event correlation: Asterisk events in, call lifecycle facts out.

Pure: no I/O, no asyncio, no clock. Every time comes from the events' own
`Timestamp: sec.usec` (manager.conf `timestampevents=yes`), as integer
microseconds. A call is keyed by its billing id: the Uniqueid of the caller's
IVR channel, which the dialplan copies into `__EXTBILL_ID` so that every
channel of the call carries it in `ChanVariable` (`channelvars=EXTBILL_ID`).

Talk time (never ANSWEREDTIME or CDR billsec: both include the IVR):
- starts at the callee's answer: the earliest of a DialEnd ANSWER on the
  caller channel and a BridgeEnter of a non-caller channel carrying the id;
- ends when the caller channel leaves its bridge for good (a BridgeLeave not
  followed by a BridgeEnter: a Local channel optimisation or a transfer moves
  the caller between bridges and must not stop the clock), or hangs up.
  Only if the caller was never bridged after the answer (the callee hung up
  before the bridge formed) does the first BridgeLeave/Hangup of another
  channel carrying the id end it. Ends of non-caller channels are not used
  otherwise: losers of a parallel Dial and optimised-away Local halves hang up
  while the talk goes on.
A CallEnd is emitted once, at the caller channel's Hangup.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

VARIABLE = "EXTBILL_ID"
CALLS_TRACKED_MAX = 100_000  # live calls; the oldest is evicted beyond this
ENDED_IDS_MAX = 100_000  # ids already ended, kept so late/duplicate events emit nothing
MALFORMED_KEPT_MAX = 100  # recent Malformed reasons kept for the I/O shell to log
SIGNALS_PER_CALL_MAX = 64  # non-caller end timestamps kept per call
BILLING_ID_CHARS_MAX = 150  # AST_MAX_UNIQUEID
TIMESTAMP_RE = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,6}))?")  # Asterisk writes "%ld.%06lu"

ANSWER = "ANSWER"
_RELEVANT = frozenset({"dialend", "bridgeenter", "bridgeleave", "hangup"})


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The callee answered; emitted once per call, when first seen."""

    billing_id: str
    answered_us: int


@dataclass(frozen=True, slots=True)
class CallEnd:
    """The call is over; emitted once per call.

    answered_us is the earliest answer seen (None: never answered), ended_us
    the end of talk (or the caller's hangup when unanswered); talk_ms is
    (ended_us - answered_us) // 1000, 0 when unanswered. reconciled: the end
    was inferred by `end_missing` (events lost), not seen.
    """

    billing_id: str
    answered_us: int | None
    ended_us: int
    talk_ms: int
    dial_status: str | None
    hangup_cause: int | None
    cause_txt: str | None
    hangup_us: int
    reconciled: bool = False


Fact = CallAnswered | CallEnd


@dataclass(frozen=True, slots=True)
class Malformed:
    """An event that carried a billing id but could not be used, and why."""

    reason: str
    event: str | None
    billing_id: str | None


@dataclass(slots=True)
class Counters:
    """Monotonic counts, for metrics and tests."""

    events: int = 0
    ignored: int = 0  # no billing id, or an event kind that does not matter
    malformed: int = 0
    late: int = 0  # for an id already ended, forgotten or evicted
    evicted: int = 0
    forgotten: int = 0
    signals_dropped: int = 0


@dataclass(slots=True)
class _Call:
    last_seen_us: int
    answered_us: int | None = None
    answered_emitted: bool = False
    dial_status: str | None = None
    caller_enter_us: int | None = None  # latest caller BridgeEnter
    caller_leave_us: int | None = None  # latest caller BridgeLeave
    other_ends_us: list[int] = field(default_factory=list)  # non-caller BridgeLeave/Hangup


class _Bad(Exception):
    """Internal: the event is malformed; never escapes `feed`."""


def parse_timestamp_us(text: object) -> int | None:
    """'1732650000.123456' -> 1732650000123456; None if not a valid timestamp."""
    if not isinstance(text, str):
        return None
    m = TIMESTAMP_RE.fullmatch(text.strip())
    if m is None:
        return None
    frac = (m.group(2) or "").ljust(6, "0")
    return int(m.group(1)) * 1_000_000 + int(frac)


def chan_variable(value: object, name: str = VARIABLE) -> str | None:
    """The value of `name` in a ChanVariable header: "K=V", ["K=V", ...] or {K: V}.

    None when absent or empty; raises _Bad when the header is unparsable.
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        pairs = [(str(k), v) for k, v in value.items()]
    else:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list):
            raise _Bad("bad_chanvariable")
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise _Bad("bad_chanvariable")
            k, _, v = item.partition("=")
            pairs.append((k, v))
    for k, v in pairs:
        if k.strip().upper() == name:
            if not isinstance(v, str):
                raise _Bad("bad_chanvariable")
            v = v.strip()
            if not v:
                return None
            if len(v) > BILLING_ID_CHARS_MAX or not v.isprintable() or " " in v:
                raise _Bad("bad_billing_id")
            return v
    return None


def _lower_keys(event: Mapping[str, object]) -> dict[str, object]:
    # Asterisk spells keys one way, panoramisk's Message is case-insensitive,
    # recorded JSON may be either: normalise once.
    return {str(k).lower(): v for k, v in event.items()}


def _text(ev: Mapping[str, object], key: str, required: bool = True) -> str | None:
    v = ev.get(key)
    if v is None:
        if required:
            raise _Bad(f"missing_{key}")
        return None
    if not isinstance(v, str):
        raise _Bad(f"bad_{key}")
    return v.strip()


def live_ids_from_core_show_channels(events: Iterable[Mapping[str, object]]) -> set[str]:
    """Billing ids of the live channels listed by a CoreShowChannels action.

    Each CoreShowChannel event contributes its Uniqueid and its EXTBILL_ID
    (a call is live while any of its channels is); other messages of the
    list (the response, CoreShowChannelsComplete) and bad entries are skipped.
    """
    live: set[str] = set()
    for raw in events:
        if not isinstance(raw, Mapping):
            continue
        ev = _lower_keys(raw)
        if str(ev.get("event", "")).strip().lower() != "coreshowchannel":
            continue
        uid = ev.get("uniqueid")
        if isinstance(uid, str) and uid.strip():
            live.add(uid.strip())
        try:
            bid = chan_variable(ev.get("chanvariable"))
        except _Bad:
            bid = None
        if bid:
            live.add(bid)
    return live


class Correlator:
    """Feeds on AMI events, one at a time, in arrival order; emits Facts.

    Never raises on bad input: malformed events are counted and their reason
    kept (`take_malformed`). Memory is bounded by CALLS_TRACKED_MAX live calls
    and ENDED_IDS_MAX remembered ended ids.
    """

    def __init__(self, calls_tracked_max: int = CALLS_TRACKED_MAX,
                 ended_ids_max: int = ENDED_IDS_MAX) -> None:
        assert calls_tracked_max > 0 and ended_ids_max > 0
        self._calls_max = calls_tracked_max
        self._ended_max = ended_ids_max
        self._calls: OrderedDict[str, _Call] = OrderedDict()  # first seen first
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._malformed: deque[Malformed] = deque(maxlen=MALFORMED_KEPT_MAX)
        self.counters = Counters()
        self.last_event_us: int | None = None  # newest Timestamp of a used event

    # -- queries --------------------------------------------------------
    def tracked_ids(self) -> set[str]:
        """Ids of calls seen and not yet ended."""
        return set(self._calls)

    def take_malformed(self) -> list[Malformed]:
        """The Malformed reasons recorded since the last call (at most MALFORMED_KEPT_MAX)."""
        out = list(self._malformed)
        self._malformed.clear()
        return out

    # -- commands -------------------------------------------------------
    def forget(self, billing_id: str) -> bool:
        """Drop a live call (settled another way); its later events emit nothing."""
        if self._calls.pop(billing_id, None) is None:
            return False
        self.counters.forgotten += 1
        self._remember_ended(billing_id)
        return True

    def end_missing(self, live_ids: AbstractSet[str], ended_us: int) -> list[CallEnd]:
        """End every tracked call absent from `live_ids` (its Hangup was lost).

        Call it with the ids from `live_ids_from_core_show_channels` after a
        reconnect, once all events received before that snapshot were fed.
        `ended_us` is the caller's choice of when the unseen end happened
        (disconnect time: a lower bound; reconnect time: an upper bound).
        """
        out: list[CallEnd] = []
        for bid in [b for b in self._calls if b not in live_ids]:
            call = self._calls.pop(bid)
            self._remember_ended(bid)
            out.append(self._call_end(bid, call, max(ended_us, call.last_seen_us),
                                      None, None, reconciled=True))
        return out

    def feed(self, event: Mapping[str, object]) -> list[Fact]:
        """Take one AMI event; return the facts it completes (usually none)."""
        self.counters.events += 1
        bid: str | None = None
        name: str | None = None
        try:
            if not isinstance(event, Mapping):
                raise _Bad("not_a_mapping")
            ev = _lower_keys(event)
            name = _text(ev, "event", required=False)
            bid = chan_variable(ev.get("chanvariable")) or chan_variable(ev.get("destchanvariable"))
            kind = (name or "").lower()
            if bid is None or kind not in _RELEVANT:
                self.counters.ignored += 1
                return []
            if bid in self._ended:
                self.counters.late += 1
                return []
            ts = parse_timestamp_us(ev.get("timestamp"))
            if ts is None:
                raise _Bad("bad_timestamp")
            uid = _text(ev, "uniqueid")
            return self._apply(kind, ev, bid, uid == bid, ts)
        except _Bad as bad:
            self.counters.malformed += 1
            self._malformed.append(Malformed(str(bad), name, bid))
            return []

    # -- internals ------------------------------------------------------
    def _apply(self, kind: str, ev: Mapping[str, object], bid: str,
               is_caller: bool, ts: int) -> list[Fact]:
        # Validate everything before touching state: a malformed event changes nothing.
        status = (_text(ev, "dialstatus") or "").upper() if kind == "dialend" and is_caller else ""
        cause_txt = _text(ev, "cause-txt", required=False) if kind == "hangup" else None
        cause_text = _text(ev, "cause", required=False) if kind == "hangup" else None
        cause = int(cause_text) if cause_text and re.fullmatch(r"[0-9]{1,4}", cause_text) else None
        call = self._track(bid, ts)
        out: list[Fact] = []
        if kind == "dialend":
            if not is_caller:
                return out  # a dial made further down the chain (e.g. a Local ;2)
            if status == ANSWER or call.dial_status != ANSWER:
                call.dial_status = status or None  # ANSWER wins over a fork's CANCEL
            if status == ANSWER:
                out += self._answered(bid, call, ts)
        elif kind == "bridgeenter":
            if is_caller:
                call.caller_enter_us = _later(call.caller_enter_us, ts)
            else:
                out += self._answered(bid, call, ts)
        elif kind == "bridgeleave":
            if is_caller:
                call.caller_leave_us = _later(call.caller_leave_us, ts)
            else:
                self._other_end(call, ts)
        elif kind == "hangup":
            if not is_caller:
                self._other_end(call, ts)
                return out
            del self._calls[bid]
            self._remember_ended(bid)
            out.append(self._call_end(bid, call, ts, cause, cause_txt))
        return out

    def _track(self, bid: str, ts: int) -> _Call:
        call = self._calls.get(bid)
        if call is None:
            call = self._calls[bid] = _Call(last_seen_us=ts)
            while len(self._calls) > self._calls_max:
                old, _ = self._calls.popitem(last=False)
                self._remember_ended(old)  # a late Hangup must not bill it as unanswered
                self.counters.evicted += 1
        call.last_seen_us = max(call.last_seen_us, ts)
        self.last_event_us = _later(self.last_event_us, ts)
        return call

    def _answered(self, bid: str, call: _Call, ts: int) -> list[Fact]:
        first = not call.answered_emitted
        call.answered_us = ts if call.answered_us is None else min(call.answered_us, ts)
        call.answered_emitted = True
        return [CallAnswered(bid, ts)] if first else []

    def _other_end(self, call: _Call, ts: int) -> None:
        if len(call.other_ends_us) >= SIGNALS_PER_CALL_MAX:
            self.counters.signals_dropped += 1
            return
        call.other_ends_us.append(ts)

    def _remember_ended(self, bid: str) -> None:
        self._ended[bid] = None
        self._ended.move_to_end(bid)
        while len(self._ended) > self._ended_max:
            self._ended.popitem(last=False)

    def _call_end(self, bid: str, call: _Call, hangup_us: int, cause: int | None,
                  cause_txt: str | None, reconciled: bool = False) -> CallEnd:
        answered = call.answered_us
        if answered is None or answered > hangup_us:
            return CallEnd(bid, None, hangup_us, 0, call.dial_status, cause, cause_txt,
                           hangup_us, reconciled)
        ended = _talk_end(call, answered, hangup_us)
        return CallEnd(bid, answered, ended, (ended - answered) // 1000, call.dial_status,
                       cause, cause_txt, hangup_us, reconciled)


def _talk_end(call: _Call, answered: int, hangup_us: int) -> int:
    enter, leave = call.caller_enter_us, call.caller_leave_us
    if leave is not None and leave >= answered and (enter is None or leave > enter):
        return min(leave, hangup_us)  # left the bridge for good
    if enter is not None and enter >= answered:
        return hangup_us  # still bridged at hangup (its BridgeLeave not seen yet)
    others = [t for t in call.other_ends_us if t >= answered]
    return min(min(others, default=hangup_us), hangup_us)


def _later(a: int | None, b: int) -> int:
    return b if a is None else max(a, b)
