"""AMI event correlation: Asterisk events in, call lifecycle facts out.

Pure: no I/O, no asyncio, no clock. Every time comes from the events' own
`Timestamp: sec.usec` (manager.conf `timestampevents=yes`), as integer
microseconds. A call is keyed by its billing id, which the dialplan copies into
`__EXTBILL_ID` so every channel of the call carries it in `ChanVariable`
(`channelvars=EXTBILL_ID`).

The caller channel: the one whose Uniqueid is the billing id (the server hands
out the IVR channel's Uniqueid, core/ids.py). No other channel is ever taken for
the caller: an id that names no channel ends no call.

Talk time (never ANSWEREDTIME or CDR billsec: both include the IVR):
- starts at the callee's answer: the earliest of a DialEnd ANSWER on the
  caller channel and a BridgeEnter of another channel carrying the id;
- ends when the caller's bridge last stops holding another channel of the call
  (replayed from BridgeEnter/BridgeLeave/Hangup in timestamp order): a callee
  leaving at the L() limit ends it even if the caller leaves later, while
  parallel-Dial losers and Local halves swapped out by optimisation (never
  alone with the caller) do not. If the caller was never bridged with the
  callee, the first BridgeLeave/Hangup of another channel after the answer ends it.
A CallEnd is emitted once, at the caller channel's Hangup.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TypeVar

from fastagi.core.ids import is_billing_id

VARIABLE = "EXTBILL_ID"
CALLS_TRACKED_MAX = 100_000  # live calls; the oldest is evicted beyond this
ENDED_IDS_MAX = 100_000  # ids already ended, kept so late/duplicate events emit nothing
MALFORMED_KEPT_MAX = 100  # recent Malformed reasons kept for the I/O shell to log
TIMELINE_PER_CALL_MAX = 256  # bridge/hangup signals kept per call (a call has a handful)
DIAL_ENDS_PER_CALL_MAX = 32
TIMESTAMP_RE = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,6}))?")  # Asterisk writes "%ld.%06lu"
CAUSE_RE = re.compile(r"[0-9]{1,4}")  # a Hangup's Cause; compiled once, not looked up per event

ANSWER = "ANSWER"
_RELEVANT = frozenset({"dialbegin", "dialend", "bridgeenter", "bridgeleave", "hangup"})
_ENTER, _LEAVE, _HANGUP = 0, 1, 2  # timeline ranks: at one instant, enter first
_RANKS = {"bridgeenter": _ENTER, "bridgeleave": _LEAVE, "hangup": _HANGUP}
_Item = TypeVar("_Item")  # one entry of a per-call bucket (a dial end, a timeline signal)


class AmiEvent(dict[str, str | list[str]]):
    """An AMI event whose keys are already lowercase (values as sent: str, or a list of str
    for a repeated header).

    The AMI client's parser builds these, so `Correlator.feed` can use one as is;
    any other Mapping (recorded JSON, panoramisk Messages, tests) gets its keys
    lowercased into a copy first. Only build one with lowercase keys.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class CallAnswered:
    """The callee answered; emitted once per call, when first seen."""

    billing_id: str
    answered_us: int
    # The callee channel's Uniqueid (DialEnd's DestUniqueid, else the first other channel
    # to enter a bridge): the channel whose hangup time mid-call renewals move.
    callee: str | None = field(default=None, compare=False)


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
    """An event that could not be used (a bad Timestamp, a missing field, ...), and why."""

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
    # Sets: a duplicated event adds nothing.
    dial_ends: set[tuple[int, str, str]] = field(default_factory=set)  # (ts, dialer, status)
    timeline: set[tuple[int, int, str, str]] = field(default_factory=set)  # (ts, rank, uid, bridge)
    answered_emitted: bool = False
    callee: str | None = None  # see CallAnswered.callee

    @staticmethod
    def caller(bid: str) -> str:
        return bid  # the billing id is the caller channel's Uniqueid

    def answered_us(self, caller: str | None) -> int | None:
        dialled = [t for t, d, st in self.dial_ends if d == caller and st == ANSWER]
        entered = [t for t, rank, u, _ in self.timeline if rank == _ENTER and u != caller]
        return min(dialled + entered, default=None)

    def dial_status(self, caller: str | None) -> str | None:
        mine = sorted((t, st) for t, d, st in self.dial_ends if d == caller)
        if any(st == ANSWER for _, st in mine):
            return ANSWER  # a parallel Dial's losers report CANCEL after the winner
        return mine[-1][1] if mine else None


class _Bad(Exception):
    """Internal: the event is malformed; never escapes `feed`."""


def parse_timestamp_us(text: object) -> int | None:
    """'1732650000.123456' -> 1732650000123456; None if not a valid timestamp."""
    if not isinstance(text, str):
        return None
    # Exactly TIMESTAMP_RE.fullmatch, without the regex and match object (once per event):
    # isascii() + isdigit() is [0-9] (isdigit alone takes other scripts' digits).
    sec, dot, frac = text.strip().partition(".")
    if not (0 < len(sec) <= 12 and sec.isascii() and sec.isdigit()):
        return None
    if not dot:
        return int(sec) * 1_000_000
    if not (0 < len(frac) <= 6 and frac.isascii() and frac.isdigit()):
        return None
    return int(sec) * 1_000_000 + int(frac.ljust(6, "0"))


def chan_variable(value: object, name: str = VARIABLE) -> str | None:
    """The value of `name` in a ChanVariable header: "K=V", ["K=V", ...] or {K: V}.

    None when absent or empty; raises _Bad when the header is unparsable.
    """
    if value is None:
        return None
    if type(value) is str:
        # The usual shape (one channelvar): skip building the pairs list.
        k, sep, v = value.partition("=")
        if not sep:
            raise _Bad("bad_chanvariable")
        return _billing_id(v) if k.strip().upper() == name else None
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
            return _billing_id(v)
    return None


def _billing_id(v: str) -> str | None:
    v = v.strip()
    if not v:
        return None
    if not is_billing_id(v):
        raise _Bad("bad_billing_id")
    return v


def _lower_keys(event: object) -> Mapping[str, object] | None:
    """The event with lowercase keys; None when it is not a mapping at all.

    Asterisk spells keys one way, panoramisk's Message is case-insensitive, recorded
    JSON may be either: normalise once. An AmiEvent (the client's parser) already is.
    """
    if type(event) is AmiEvent:
        return event  # no copy per event
    if isinstance(event, Mapping):
        return {str(k).lower(): v for k, v in event.items()}
    return None


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
        ev = _lower_keys(raw)
        if ev is None:
            continue
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

    def __init__(
        self, calls_tracked_max: int = CALLS_TRACKED_MAX, ended_ids_max: int = ENDED_IDS_MAX
    ) -> None:
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
            out.append(
                self._call_end(bid, call, max(ended_us, call.last_seen_us), None, None, reconciled=True)
            )
        return out

    def feed(self, event: Mapping[str, object]) -> list[Fact]:
        """Take one AMI event; return the facts it completes (usually none)."""
        self.counters.events += 1
        bid: str | None = None
        name: str | None = None
        try:
            ev = _lower_keys(event)
            if ev is None:
                raise _Bad("not_a_mapping")
            name = _text(ev, "event", required=False)
            bid = chan_variable(ev.get("chanvariable")) or chan_variable(ev.get("destchanvariable"))
            if bid is None:
                self.counters.ignored += 1
                return []
            if bid in self._ended:
                self.counters.late += 1
                return []
            kind = (name or "").lower()
            if kind not in _RELEVANT:
                self.counters.ignored += 1
                return []
            ts = parse_timestamp_us(ev.get("timestamp"))
            if ts is None:
                raise _Bad("bad_timestamp")
            return self._apply(kind, ev, bid, _text(ev, "uniqueid") or "", ts)
        except _Bad as bad:
            self.counters.malformed += 1
            self._malformed.append(Malformed(str(bad), name, bid))
            return []

    # -- internals ------------------------------------------------------
    def _apply(self, kind: str, ev: Mapping[str, object], bid: str, uid: str, ts: int) -> list[Fact]:
        if not uid:
            raise _Bad("missing_uniqueid")
        # Validate everything before touching state: a malformed event changes nothing.
        status = (_text(ev, "dialstatus") or "").upper() if kind == "dialend" else ""
        bridge = _text(ev, "bridgeuniqueid") if kind.startswith("bridge") else ""
        cause_txt = _text(ev, "cause-txt", required=False) if kind == "hangup" else None
        cause_text = _text(ev, "cause", required=False) if kind == "hangup" else None
        cause = int(cause_text) if cause_text and CAUSE_RE.fullmatch(cause_text) else None

        call = self._track(bid, ts)
        if kind == "dialend":
            self._add(call.dial_ends, (ts, uid, status), DIAL_ENDS_PER_CALL_MAX)
            if status == ANSWER and call.callee is None:
                call.callee = _text(ev, "destuniqueid", required=False) or None
        elif kind != "dialbegin":
            self._add(call.timeline, (ts, _RANKS[kind], uid, bridge or ""), TIMELINE_PER_CALL_MAX)

        out: list[Fact] = []
        caller = call.caller(bid)
        if kind == "bridgeenter" and call.callee is None and uid != caller:
            call.callee = uid
        if not call.answered_emitted:
            answered = call.answered_us(caller)
            if answered is not None:
                call.answered_emitted = True
                out.append(CallAnswered(bid, answered, call.callee))
        if kind == "hangup" and uid == caller:
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
        self.last_event_us = ts if self.last_event_us is None else max(self.last_event_us, ts)
        return call

    def _add(self, bucket: set[_Item], item: _Item, limit: int) -> None:
        if item not in bucket and len(bucket) >= limit:
            self.counters.signals_dropped += 1
            return
        bucket.add(item)

    def _remember_ended(self, bid: str) -> None:
        self._ended[bid] = None
        self._ended.move_to_end(bid)
        while len(self._ended) > self._ended_max:
            self._ended.popitem(last=False)

    def _call_end(
        self,
        bid: str,
        call: _Call,
        hangup_us: int,
        cause: int | None,
        cause_txt: str | None,
        reconciled: bool = False,
    ) -> CallEnd:
        caller = call.caller(bid)
        answered = call.answered_us(caller)
        status = call.dial_status(caller)
        if answered is None or answered > hangup_us:
            return CallEnd(bid, None, hangup_us, 0, status, cause, cause_txt, hangup_us, reconciled)
        ended = _talk_end(call.timeline, caller, answered, hangup_us)
        return CallEnd(
            bid, answered, ended, (ended - answered) // 1000, status, cause, cause_txt, hangup_us, reconciled
        )


def _talk_end(
    timeline: set[tuple[int, int, str, str]], caller: str | None, answered: int, hangup_us: int
) -> int:
    """Replay bridge membership in time order; talk is on while the caller's
    bridge holds another channel of the call. The end is the last on->off edge
    (a caller moved between bridges is off only for an instant)."""
    where: dict[str, str] = {}  # channel -> bridge it is in
    was_on, on, off_at = False, False, None
    for ts, rank, uid, bridge in sorted(timeline):
        if rank == _ENTER:
            where[uid] = bridge
        elif rank == _HANGUP or where.get(uid) == bridge:
            where.pop(uid, None)  # a BridgeLeave of a bridge it already left changes nothing
        mine = where.get(caller) if caller is not None else None
        now_on = mine is not None and any(u != caller and b == mine for u, b in where.items())
        if ts >= answered:
            if on and not now_on:
                off_at = ts
            elif now_on:
                was_on, off_at = True, None
        on = now_on
    if was_on:
        return hangup_us if off_at is None else min(off_at, hangup_us)
    # Never bridged with the callee (it hung up first, or those events were lost).
    others = [
        ts
        for ts, rank, uid, _ in timeline
        if rank != _ENTER and uid != caller and answered <= ts <= hangup_us
    ]
    return min(others, default=hangup_us)
