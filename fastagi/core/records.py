"""The domain records that cross layers: what is known of a call's end, how it was settled.

Plain frozen values: the settlement paths build CallFacts, the store turns them into a
SettleResult (docs/rules.md: each call is settled exactly once, by whichever path is first).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastagi.core.vocab import CallState, SettledBy


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What one settlement path knows about the end of a call."""

    billing_id: str
    answered: bool
    talk_ms: int  # callee answer to end; 0 when unanswered
    answer_at: str | None  # ISO 8601
    end_at: str  # ISO 8601
    disposition: str  # ANSWER, BUSY, NOANSWER, CANCEL, ...
    cause: str | None
    settled_by: SettledBy


@dataclass(frozen=True, slots=True)
class SettleResult:
    billing_id: str
    settled_now: bool  # False: another path settled it first
    state: CallState  # rated | unanswered | unrated (reserved: not settled yet)
    talk_s: int | None
    cost: int | None
    settled_by: SettledBy | None
    low_balance: dict[str, Any] | None = None  # set when an extension just crossed its threshold
    answer_at: str | None = None  # the stored answer and end times (ISO 8601), for comparisons
    end_at: str | None = None
