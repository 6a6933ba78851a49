"""Quota grants: how much of an account one call may hold, and when to ask for more.

The model is Diameter credit control (RFC 4006 / RFC 8506): a call holds one chunk of
talk time (its next few minutes), not everything the account could pay, so calls in
parallel share the money (docs/rules.md rule 9). Before a chunk is used up the call
asks for the next one; a grant that is smaller than a chunk (the account cannot pay
more) or that reaches the plan's maximum call is final: warned, then cut.

Invariant, kept by every function here: a call's reserved money is exactly
cost(granted_s), so settlement can always post the real cost of any talk up to the
grant. Pure: times and balances come in as data.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastagi.core.rating import Tariff, cost, seconds_max

QUOTA_S_DEFAULT = 300  # one chunk: five minutes of talk
RENEW_BEFORE_S_DEFAULT = 30  # ask for the next chunk this long before the granted end
WARNING_BEFORE_END_MS = 60_000  # a final grant is warned about a minute before the cut


@dataclass(frozen=True, slots=True)
class Grant:
    """A call's total grant after a setup or a renewal."""

    granted_s: int  # total talk time allowed, counted from the callee's answer
    reserved: int  # total money held for it: always cost(granted_s)
    final: bool  # nothing more will be granted (unless the account is recharged)


def align_to_blocks(seconds: int, t: Tariff) -> int:
    """The shortest whole-block talk time covering `seconds`: the initial block, then increments."""
    if seconds <= t.initial_s:
        return t.initial_s
    return t.initial_s + -(-(seconds - t.initial_s) // t.increment_s) * t.increment_s


def chunk_end(granted_s: int, quota_s: int, t: Tariff) -> int:
    """Where the next chunk after `granted_s` ends: quota_s more, whole blocks, within max_call_s."""
    return min(align_to_blocks(granted_s + quota_s, t), t.max_call_s)


def first_grant(available: int, t: Tariff, quota_s: int, *, renewable: bool) -> Grant | None:
    """The grant at call setup; None when the account cannot pay the first block.

    renewable=False (nothing can renew the call, e.g. AMI is down): everything the account
    can pay, capped by the plan's maximum call, and final - as before chunks existed.
    """
    most = seconds_max(available, t)
    if most == 0:
        return None
    if not renewable:
        return Grant(most, cost(most, t), final=True)
    target = chunk_end(0, quota_s, t)
    granted = min(most, target)
    return Grant(granted, cost(granted, t), final=granted < target or granted >= t.max_call_s)


def next_grant(granted_s: int, reserved: int, available: int, t: Tariff, quota_s: int) -> Grant | None:
    """The grant after one renewal; None when not one more second can be paid (or the plan's
    maximum is reached). `available` is the account's money not held by anyone, this call
    included; the extra money to hold is the result's reserved - `reserved`."""
    if granted_s >= t.max_call_s:
        return None
    target = chunk_end(granted_s, quota_s, t)
    # The longest total whose cost the money already held plus the available money covers.
    most = seconds_max(available + reserved, t)
    granted = min(most, target)
    if granted <= granted_s:
        return None
    return Grant(granted, cost(granted, t), final=granted < target or granted >= t.max_call_s)


def warning_before_ms(last_chunk_s: int) -> int:
    """How long before the cut a final grant is warned: a minute, or half of a short final chunk."""
    return min(WARNING_BEFORE_END_MS, last_chunk_s * 1000 // 2)


def renew_at_ms(answer_ms: int, granted_s: int, renew_before_s: int) -> int:
    """When to ask for the next chunk: renew_before_s before the granted end, or halfway
    through a grant shorter than twice that."""
    granted_ms = granted_s * 1000
    return answer_ms + granted_ms - min(renew_before_s * 1000, granted_ms // 2)
