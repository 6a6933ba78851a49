"""The ledger rebuilt from its transfers and compared with what the rows say, pure.

store/ledger_check.py reads the facts (account rows, the same counters summed again from
the immutable transfers, resolutions counted per reservation, each call against its
reservations); this module says what disagrees, one line per discrepancy. `extbill db
check` and the benchmark's check both use it: one implementation, see docs/rules.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fastagi.core.ledger import Account

COUNTERS = ("debits_pending", "debits_posted", "credits_pending", "credits_posted")


@dataclass(frozen=True, slots=True)
class Sums:
    """An account's four counters as its transfers add up to."""

    debits_pending: int = 0
    debits_posted: int = 0
    credits_pending: int = 0
    credits_posted: int = 0


@dataclass(frozen=True, slots=True)
class CallMismatch:
    """A call whose row disagrees with its reservations (the SQL keeps only these)."""

    billing_id: str
    state: str
    cost: int  # the call row's cost (0 when unset)
    reservations: int  # pending transfers of this call
    open: int  # ... not resolved yet
    posted: int  # what their resolutions posted


@dataclass(slots=True)
class LedgerFacts:
    accounts: list[Account]  # the rows
    rebuilt: dict[int, Sums]  # account id -> the counters summed from transfers
    reservations: int = 0
    resolutions: int = 0
    open_reservations: int = 0
    resolved_twice: list[tuple[str, int]] = field(default_factory=list)  # (pending id, resolutions)
    transfer_problems: list[str] = field(default_factory=list)  # worded by the SQL side
    calls: int = 0
    calls_by_state: dict[str, int] = field(default_factory=dict)
    calls_by_path: dict[str, int] = field(default_factory=dict)
    talk_s_rated: int = 0
    costs: int = 0
    call_mismatches: list[CallMismatch] = field(default_factory=list)
    revenue_account_id: int = 2

    @property
    def open_calls(self) -> int:
        return self.calls_by_state.get("reserved", 0)

    @property
    def revenue(self) -> Account:
        return next(a for a in self.accounts if a.id == self.revenue_account_id)


def ledger_discrepancies(f: LedgerFacts, *, quiescent: bool = False) -> list[str]:
    """Every disagreement between the rows and the transfers; [] when consistent.

    quiescent: no call may be in progress (the benchmark after its run), so an open
    reservation or call is a discrepancy too.
    """
    out = _account_lines(f)
    total = sum(a.credits_posted - a.debits_posted for a in f.accounts)
    if total:
        out.append(f"posted balances sum to {total}, not 0")
    pending = sum(a.credits_pending - a.debits_pending for a in f.accounts)
    if pending:
        out.append(f"pending credits minus pending debits is {pending}, not 0")
    for a in f.accounts:
        if a.guarded and a.debits_pending + a.debits_posted > a.credits_posted:
            out.append(f"account {a.id} ({a.kind}) is overdrawn")
    out += [f"reservation {pid} is resolved {n} times" for pid, n in f.resolved_twice]
    out += f.transfer_problems
    out += [_call_line(m) for m in f.call_mismatches]
    if quiescent:
        if f.open_reservations:
            out.append(f"{f.open_reservations} reservations are still open")
        if f.open_calls:
            out.append(f"{f.open_calls} calls are still reserved")
    return out


def _account_lines(f: LedgerFacts) -> list[str]:
    out = []
    rows = {a.id: a for a in f.accounts}
    for acc_id in sorted(set(rows) | set(f.rebuilt)):
        row, sums = rows.get(acc_id), f.rebuilt.get(acc_id, Sums())
        if row is None:
            out.append(f"transfers name account {acc_id}, which has no row")
            continue
        for name in COUNTERS:
            stored, summed = getattr(row, name), getattr(sums, name)
            if stored != summed:
                out.append(f"account {acc_id}: {name} is {stored} on its row, {summed} from its transfers")
    return out


def _call_line(m: CallMismatch) -> str:
    if m.reservations == 0:
        return f"call {m.billing_id} ({m.state}) has no reservation"
    if m.state == "reserved" and not m.open:
        return f"call {m.billing_id} is reserved but its reservation is resolved"
    if m.state != "reserved" and m.open:
        return f"call {m.billing_id} is {m.state} but {m.open} of its reservations are open"
    return f"call {m.billing_id} ({m.state}) costs {m.cost} but its transfers posted {m.posted}"


def expectation_discrepancies(f: LedgerFacts, expect: dict[str, int]) -> dict[str, list[str]]:
    """A finished run against what its load generator counted (granted, answered,
    unanswered, talk_s_total): by check, the lines that fail it."""
    granted, answered, unanswered = expect["granted"], expect["answered"], expect["unanswered"]
    by = f.calls_by_state
    out: dict[str, list[str]] = {"calls": [], "talk_time": [], "revenue": [], "states": []}
    if f.calls != granted:
        out["calls"].append(f"{f.calls} calls recorded, {granted} granted")
    if by.get("rated", 0) != answered:
        out["states"].append(f"{by.get('rated', 0)} calls rated, {answered} answered")
    if by.get("unanswered", 0) != unanswered:
        out["states"].append(f"{by.get('unanswered', 0)} calls unanswered, {unanswered} expected")
    if f.talk_s_rated != expect["talk_s_total"]:
        out["talk_time"].append(f"talk time rated {f.talk_s_rated} s, simulated {expect['talk_s_total']} s")
    rev = f.revenue
    if rev.credits_posted != f.costs or rev.credits_pending:
        out["revenue"].append(
            f"revenue posted {rev.credits_posted} (pending {rev.credits_pending}), calls cost {f.costs}"
        )
    return out
