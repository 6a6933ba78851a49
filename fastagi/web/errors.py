"""Refusals as HTTP: which status each of the product's errors gets. The words stay the
product's own (the CLI prints the same text after "extbill: error:")."""

from __future__ import annotations

from fastagi.core.ledger import LedgerError
from fastagi.core.money import AmountError
from fastagi.core.numbers import NumberRuleError
from fastagi.runtime.credentials import PasswordRuleError
from fastagi.store.base import Conflict, NotFound, StoreError
from fastagi.store.tx_web_actions import IdempotencyMismatch


class BadRequest(ValueError):
    """Input the web edge refuses before any store operation (a bad date, limit, cursor)."""


class Forbidden(Exception):
    """A request that fails the CSRF token or Origin check."""


REFUSALS = (BadRequest, AmountError, NumberRuleError, StoreError, LedgerError, PasswordRuleError)


def status_of(exc: BaseException) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, IdempotencyMismatch):
        return 422
    if isinstance(exc, Conflict | LedgerError):
        return 409
    if isinstance(exc, Forbidden):
        return 403
    return 400
