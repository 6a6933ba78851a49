"""The store interface: everything call control and the CLI need from a database.

SQLite (sqlite.py) implements it; a PostgreSQL store implements the same methods.
Errors are typed so the CLI and the server can tell the user what went wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class StoreError(Exception):
    """A refused store operation; nothing was changed."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    """Duplicate, or an idempotency key reused for a different operation."""


class NotADatabase(StoreError):
    pass


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer_id: str
    created: bool  # False: the same transfer already existed (idempotent repeat)
    amount: int
    collected: int = 0  # of the money brought into main, what paid the number's owed minimum


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
    settled_by: str  # ami | hangup | reconcile | sweeper


@dataclass(frozen=True, slots=True)
class SettleResult:
    billing_id: str
    settled_now: bool  # False: another path settled it first
    state: str  # rated | unanswered | unrated
    talk_s: int | None
    cost: int | None
    settled_by: str | None
    low_balance: dict[str, Any] | None = None  # set when an extension just crossed its threshold
    answer_at: str | None = None  # the stored answer and end times (ISO 8601), for comparisons
    end_at: str | None = None


class Store(Protocol):
    """What the server and the CLI use of a store; SqliteStore is one, a PostgreSQL store another.

    Each operation is a function of a DB-API connection run inside one transaction:
    `run` commits it, `read` never writes.
    """

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    async def close(self) -> None: ...
