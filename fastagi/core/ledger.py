"""Double-entry ledger rules (TigerBeetle's model), pure: accounts in, accounts out.

An account keeps four counters. Customer accounts (a number's main account, an
extension) hold credit balances and may never be overdrawn:
    debits_pending + debits_posted <= credits_posted
Every balance change is an immutable transfer debiting one account and crediting
another by the same amount, so over all accounts sum(credits - debits) is zero.
The store applies these functions inside one SQL transaction; the SQL schema checks
the no-overdraw rule a second time (assertions in pairs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class AccountKind(StrEnum):
    FUNDING = "funding"  # the outside world: recharges come from here
    REVENUE = "revenue"  # call charges go here
    MAIN = "main"  # a 400 number's own balance
    EXT = "ext"  # one IVR extension's balance


GUARDED_KINDS = frozenset({AccountKind.MAIN, AccountKind.EXT})


class TransferKind(StrEnum):
    POSTED = "posted"  # a plain transfer: recharge, move main -> extension
    PENDING = "pending"  # a reservation (phase one of a call)
    POST = "post"  # phase two: commit part or all of a pending, release the rest
    VOID = "void"  # phase two: release all of a pending (unanswered call)
    EXPIRE = "expire"  # phase two, by the sweeper: release a pending nobody settled


RESOLVING_KINDS = frozenset({TransferKind.POST, TransferKind.VOID, TransferKind.EXPIRE})


class LedgerError(Exception):
    """A transfer the ledger refuses; nothing was changed."""


class InsufficientFunds(LedgerError):
    pass


class InvalidTransfer(LedgerError):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    kind: AccountKind
    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0

    @property
    def guarded(self) -> bool:
        return self.kind in GUARDED_KINDS

    @property
    def balance(self) -> int:
        """Posted money: what the account holds now."""
        return self.credits_posted - self.debits_posted

    @property
    def reserved(self) -> int:
        """Money held by calls in progress."""
        return self.debits_pending

    @property
    def available(self) -> int:
        """What a new reservation or transfer may take."""
        return self.balance - self.debits_pending


def _check_amount(amount: int) -> None:
    if not isinstance(amount, int) or isinstance(amount, bool) or amount <= 0:
        raise InvalidTransfer(f"transfer amount must be a positive integer, got {amount!r}")


def _check_pair(debit_id: int, credit_id: int) -> None:
    if debit_id == credit_id:
        raise InvalidTransfer("an account cannot pay itself")


def _check_funds(debit: Account, amount: int) -> None:
    if debit.guarded and amount > debit.available:
        raise InsufficientFunds(f"account {debit.id} has {debit.available} available, {amount} needed")


# The new accounts below are built field by field, not with dataclasses.replace: replace
# looks the fields up on every call, and call setup and settlement do this per call.


def apply_posted(debit: Account, credit: Account, amount: int) -> tuple[Account, Account]:
    """A one-phase transfer (recharge, move): both sides posted at once."""
    _check_amount(amount)
    _check_pair(debit.id, credit.id)
    _check_funds(debit, amount)
    return (
        replace(debit, debits_posted=debit.debits_posted + amount),
        replace(credit, credits_posted=credit.credits_posted + amount),
    )


def apply_pending_debit(debit: Account, credit_id: int, amount: int) -> Account:
    """The debit side of apply_pending, with all of its checks.

    For a store that adds `amount` to the credit account's credits_pending itself: no rule
    reads the credit account's counters (a credit never overdraws), only its id.
    A zero reservation is allowed: a free plan still grants a call that must be settled.
    """
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
        raise InvalidTransfer(f"reservation amount must be an integer >= 0, got {amount!r}")
    _check_pair(debit.id, credit_id)
    _check_funds(debit, amount)
    return Account(
        debit.id,
        debit.kind,
        debit.debits_pending + amount,
        debit.debits_posted,
        debit.credits_pending,
        debit.credits_posted,
    )


def apply_pending(debit: Account, credit: Account, amount: int) -> tuple[Account, Account]:
    """Reserve: the money leaves `available` now and moves only when posted."""
    return (
        apply_pending_debit(debit, credit.id, amount),
        Account(
            credit.id,
            credit.kind,
            credit.debits_pending,
            credit.debits_posted,
            credit.credits_pending + amount,
            credit.credits_posted,
        ),
    )


def apply_resolve(
    debit: Account, credit: Account, pending_amount: int, posted_amount: int
) -> tuple[Account, Account]:
    """Close a reservation: post `posted_amount` of it (0 for void/expire), release the rest."""
    if not 0 <= posted_amount <= pending_amount:
        raise InvalidTransfer(f"cannot post {posted_amount} of a reservation of {pending_amount}")
    if debit.debits_pending < pending_amount or credit.credits_pending < pending_amount:
        raise InvalidTransfer("reservation is larger than the accounts' pending counters")
    return (
        replace(
            debit,
            debits_pending=debit.debits_pending - pending_amount,
            debits_posted=debit.debits_posted + posted_amount,
        ),
        replace(
            credit,
            credits_pending=credit.credits_pending - pending_amount,
            credits_posted=credit.credits_posted + posted_amount,
        ),
    )


def invariant_holds(accounts: list[Account]) -> bool:
    """True when no guarded account is overdrawn and all balances sum to zero."""
    total = sum(a.credits_posted - a.debits_posted for a in accounts)
    pending = sum(a.credits_pending - a.debits_pending for a in accounts)
    overdrawn = any(a.guarded and a.debits_pending + a.debits_posted > a.credits_posted for a in accounts)
    return total == 0 and pending == 0 and not overdrawn
