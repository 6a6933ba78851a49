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


class Contended(StoreError):
    """An account changed between its read and its write (another transaction, PostgreSQL's
    READ COMMITTED): the PostgreSQL store runs the operation again; SQLite never raises it."""


@dataclass(frozen=True, slots=True)
class TransferResult:
    transfer_id: str
    created: bool  # False: the same transfer already existed (idempotent repeat)
    amount: int
    collected: int = 0  # of the money brought into main, what paid the number's owed minimum


class Store(Protocol):
    """What the server and the CLI use of a store; SqliteStore is one, a PostgreSQL store another.

    Each operation is a function of a DB-API connection run inside one transaction:
    `run` commits it, `read` never writes.
    """

    path: str  # what the database is called in messages (a URL without its password)
    created: bool  # open() created its schema

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    async def read(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...
    async def close(self) -> None: ...
