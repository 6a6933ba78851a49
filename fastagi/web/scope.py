"""The one way the web layer reaches data: every page, export, form and API call goes
through an Access bound to who is asking, and each method checks that scope first.

Outside its scope a user or an API key gets exactly the refusal an unknown number or
extension gets (404, the store's words), so nothing tells it that the other one exists.
Reads go to `reads` (serve gives the web its own SQLite reader, so an export of a year
never queues in front of a call's lookup); writes to the shared store's writer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastagi.store import tx_admin, tx_outbox, tx_web_actions, tx_web_money, tx_web_reads
from fastagi.store.base import NotFound
from fastagi.store.tx_web_actions import Actor


@dataclass(frozen=True, slots=True)
class Principal:
    who: str  # a login, or "apikey:NAME"
    role: str  # operator | hq | branch | apikey
    number: str | None  # None: every number (operator)
    ext: str | None  # a branch user's one extension
    address: str | None = None
    user_id: int | None = None
    key_id: int | None = None
    lang: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.who, self.role, self.address)


class Access:
    def __init__(self, store: Any, reads: Any, principal: Principal) -> None:
        self.store, self.reads, self.p = store, reads, principal

    # ---- the checks ---------------------------------------------------------------------

    def check_number(self, number: str) -> None:
        """The whole number (its page, main account, money, settings): operator, hq, API key."""
        if self.p.role == "branch" or (self.p.number is not None and number != self.p.number):
            raise NotFound(f"unknown number {number}")

    def check_ext(self, number: str, ext: str) -> None:
        if self.p.number is not None and number != self.p.number:
            raise NotFound(f"unknown number {number}")
        if self.p.role == "branch" and ext != self.p.ext:
            raise NotFound(f"number {number} has no extension {ext}")

    def _either(self, number: str, ext: str | None) -> None:
        if ext is None:
            self.check_number(number)
        else:
            self.check_ext(number, ext)

    # ---- reads --------------------------------------------------------------------------

    async def numbers(self) -> list[dict[str, Any]]:
        if self.p.role == "branch":
            return []
        found = await self.reads.read(tx_web_reads.numbers)
        return [n for n in found if self.p.number is None or n["number"] == self.p.number]

    async def balance(self, number: str) -> dict[str, Any]:
        self.check_number(number)
        return await self.reads.read(tx_admin.balance, number)

    async def extension(self, number: str, ext: str) -> dict[str, Any]:
        self.check_ext(number, ext)
        return await self.reads.read(tx_web_reads.extension_info, number, ext)

    async def calls(self, number: str, ext: str | None, **filters: Any) -> tuple[list[dict[str, Any]], Any]:
        self._either(number, ext)
        return await self.reads.read(
            tx_web_reads.calls_page,
            number,
            ext,
            filters.get("since"),
            filters.get("until_before"),
            filters.get("state"),
            filters.get("after"),
            filters["limit"],
        )

    async def statement(
        self, number: str, ext: str | None, before: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        self._either(number, ext)
        return await self.reads.read(tx_web_reads.statement_page, number, ext, before, limit)

    async def daily_spend(self, number: str, ext: str, since_day: str) -> dict[str, int]:
        self.check_ext(number, ext)
        return await self.reads.read(tx_web_reads.daily_spend, number, ext, since_day)

    async def in_progress(self, number: str) -> list[dict[str, Any]]:
        self.check_number(number)
        return await self.reads.read(tx_web_reads.in_progress, number, None)

    async def audit(self, number: str, before_id: int | None) -> list[dict[str, Any]]:
        self.check_number(number)
        return await self.reads.read(tx_web_actions.audit_page, number, before_id)

    # ---- money and settings (the CLI's operations, audited) ------------------------------

    def recharge_op(self, number: str, ext: str | None, amount: int, ref: str) -> tuple[Any, ...]:
        """(fn, args) for store.run: checked now, run by the caller (maybe with a token)."""
        self.check_number(number)
        return (tx_web_actions.recharge, self.p.actor, number, ext, amount, ref)

    def transfer_op(self, number: str, ext: str, amount: int, ref: str) -> tuple[Any, ...]:
        self.check_number(number)
        return (tx_web_actions.transfer, self.p.actor, number, ext, amount, ref)

    def set_number_op(self, number: str, ref: str | None, **changes: Any) -> tuple[Any, ...]:
        self.check_number(number)
        return (tx_web_actions.set_number, self.p.actor, number, ref, changes)

    def set_low_balance_op(self, number: str, ext: str, low: int, ref: str | None) -> tuple[Any, ...]:
        self.check_ext(number, ext)
        return (tx_web_actions.set_low_balance, self.p.actor, number, ext, low, ref)

    # ---- HQ's money tasks (tx_money's rules and words, audited) ---------------------------

    def check_operator(self) -> None:
        """The platform's own pages (the notification outbox): anyone else finds nothing there."""
        if self.p.role != "operator":
            raise NotFound("no such page")

    async def periods(self, number: str) -> list[dict[str, Any]]:
        self.check_number(number)
        return await self.reads.read(tx_web_money.periods, number)

    async def removed_extensions(self, number: str) -> list[dict[str, Any]]:
        self.check_number(number)
        return await self.reads.read(tx_web_money.removed_extensions, number)

    async def check_bulk(self, number: str, rows: list[Any]) -> list[tuple[int, str]]:
        """Every bad row of a bulk file for `number` (rows of other numbers are unknown here)."""
        self.check_number(number)
        return await self.reads.read(tx_web_money.check_bulk, number, rows)

    async def events(self, failed_only: bool) -> list[dict[str, Any]]:
        self.check_operator()
        return await self.reads.read(tx_outbox.list_events, failed_only)

    def set_monthly_minimum_op(self, number: str, amount: int, ref: str | None) -> tuple[Any, ...]:
        self.check_number(number)
        return (tx_web_money.set_monthly_minimum, self.p.actor, number, amount, ref)

    def reclaim_op(self, number: str, ext: str, amount: int | None, ref: str) -> tuple[Any, ...]:
        self.check_number(number)
        return (tx_web_money.reclaim, self.p.actor, number, ext, amount, ref)

    def remove_extension_op(self, number: str, ext: str, ref: str | None) -> tuple[Any, ...]:
        self.check_number(number)
        return (tx_web_money.remove_extension, self.p.actor, number, ext, ref)

    def bulk_recharge_op(self, number: str, rows: list[Any], ref: str | None) -> tuple[Any, ...]:
        self.check_number(number)
        return (tx_web_money.bulk_recharge, self.p.actor, number, rows, ref)

    def retry_event_op(self, outbox_id: int, ref: str | None) -> tuple[Any, ...]:
        self.check_operator()
        return (tx_web_money.retry_event, self.p.actor, outbox_id, ref)
