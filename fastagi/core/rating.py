"""Tariffs and the two pieces of call arithmetic: cost(seconds) and seconds_max(available).

Pure: no I/O. Money in minor units (see money.py), time in whole seconds.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

BLOCK_S_MAX = 3600  # an initial block or increment longer than an hour is a typo
CALL_S_MAX = 24 * 3600  # no plan may grant a call longer than a day
PER_MINUTE_MAX = 1_000_000  # 1000 CNY a minute


class PlanError(ValueError):
    """A rate plan whose settings make no sense (refused before it is stored)."""


@dataclass(frozen=True, slots=True)
class Tariff:
    """The price of one call: a plan with its per-minute price resolved for the caller."""

    per_minute: int  # minor units per 60 billed seconds
    initial_s: int = 60  # first billing block: any answered call past grace pays this much
    increment_s: int = 60  # later blocks
    connect_fee: int = 0  # once per billed call
    grace_s: int = 0  # talk time this short or shorter is free
    max_call_s: int = 7200  # no grant is ever longer

    def __post_init__(self) -> None:
        validate_tariff(self)


def validate_tariff(t: Tariff) -> None:
    """Refuse a tariff that cannot be rated: raise PlanError naming the bad field."""
    for name in ("per_minute", "initial_s", "increment_s", "connect_fee", "grace_s", "max_call_s"):
        value = getattr(t, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise PlanError(f"{name} must be a whole number >= 0, got {value!r}")
    if not 1 <= t.initial_s <= BLOCK_S_MAX:
        raise PlanError(f"initial block must be 1..{BLOCK_S_MAX} s, got {t.initial_s}")
    if not 1 <= t.increment_s <= BLOCK_S_MAX:
        raise PlanError(f"increment must be 1..{BLOCK_S_MAX} s, got {t.increment_s}")
    if not t.initial_s <= t.max_call_s <= CALL_S_MAX:
        raise PlanError(
            f"maximum call must be {t.initial_s}..{CALL_S_MAX} s (at least the initial block), got {t.max_call_s}"
        )
    if t.grace_s >= t.max_call_s:
        raise PlanError(f"grace ({t.grace_s} s) must be shorter than the maximum call ({t.max_call_s} s)")
    if t.per_minute > PER_MINUTE_MAX:
        raise PlanError(f"per-minute price is over the maximum of {PER_MINUTE_MAX} minor units")


def billed_seconds(talk_s: int, t: Tariff) -> int:
    """Seconds billed for talk_s seconds of talk: grace is free, then whole blocks."""
    if talk_s < 0:
        raise ValueError(f"talk time cannot be negative: {talk_s}")
    if talk_s == 0 or talk_s <= t.grace_s:
        return 0
    if talk_s <= t.initial_s:
        return t.initial_s
    extra_blocks = -(-(talk_s - t.initial_s) // t.increment_s)  # ceiling division
    return t.initial_s + extra_blocks * t.increment_s


def cost_of_billed(billed_s: int, t: Tariff) -> int:
    """Cost of billed seconds, rounded up to the minor unit once per call."""
    if billed_s == 0:
        return 0
    return t.connect_fee + -(-(billed_s * t.per_minute) // 60)


def cost(talk_s: int, t: Tariff) -> int:
    """What talk_s seconds of talk cost under t, in minor units."""
    return cost_of_billed(billed_seconds(talk_s, t), t)


def first_block_cost(t: Tariff) -> int:
    """What the shortest billed call costs: below this an account is in arrears."""
    return cost_of_billed(t.initial_s, t)


def seconds_max(available: int, t: Tariff) -> int:
    """Longest talk time (s) that `available` pays for: whole blocks, capped by max_call_s.

    0 means the account cannot pay the first block: the caller gets a prompt, not a Dial.
    """
    if available < first_block_cost(t):
        return 0
    if t.per_minute == 0:
        return t.max_call_s
    budget = available - t.connect_fee
    # Largest S with ceil(S * per_minute / 60) <= budget  <=>  S * per_minute <= 60 * budget.
    affordable_s = (60 * budget) // t.per_minute
    blocks = (affordable_s - t.initial_s) // t.increment_s
    granted = t.initial_s + blocks * t.increment_s
    # Talk up to grace_s is free: when grace is longer than the blocks paid for, it is the grant.
    return min(max(granted, t.grace_s), t.max_call_s)


def match_rate(
    caller: str, default_per_minute: int, rates: Mapping[str, int] | Iterable[tuple[str, int]]
) -> int:
    """Per-minute price for a caller number: the longest matching prefix wins, '' is the default."""
    pairs = rates.items() if isinstance(rates, Mapping) else rates
    best_len, best = -1, default_per_minute
    for prefix, per_minute in pairs:
        if len(prefix) > best_len and caller.startswith(prefix):
            best_len, best = len(prefix), per_minute
    return best


def tariff_for_caller(base: Tariff, caller: str, rates: Mapping[str, int]) -> Tariff:
    """The plan's tariff with the caller's prefix rate applied."""
    per_minute = match_rate(caller, base.per_minute, rates)
    return base if per_minute == base.per_minute else _with_rate(base, per_minute)


@functools.lru_cache(maxsize=1024, typed=True)
def _with_rate(base: Tariff, per_minute: int) -> Tariff:
    """replace(base, per_minute=...), built and validated once per pair, not per call.

    Safe to share: a Tariff is immutable. typed: 1 and True (or 1.0) stay apart, so a bad
    value still fails validation as it would uncached.
    """
    return replace(base, per_minute=per_minute)
