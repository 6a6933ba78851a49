"""HQ's operations in SQL: plans, numbers, extensions, recharges, moves, statements.

Each function runs inside one transaction (sqlite.py); rules come from numbers.py,
rating.py and ledger.py, so this module only reads and writes rows.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import uuid
from types import MappingProxyType
from typing import Any

from fastagi.core.calls import ExtView, NumberView, PlanView, extension_status
from fastagi.core.ledger import AccountKind, InsufficientFunds
from fastagi.core.money import format_amount
from fastagi.core.numbers import (
    OWING_MIN_BALANCE,
    NumberRuleError,
    NumberSettings,
    check_dest,
    check_digit_timeout,
    check_lang,
    check_name,
    check_new_key,
    check_number,
    check_settings,
)
from fastagi.core.period import check_time_zone
from fastagi.core.rating import Tariff, first_block_cost
from fastagi.runtime.clock import now_iso
from fastagi.store.archive_read import archived_statement
from fastagi.store.base import Conflict, NotFound, StoreError, TransferResult
from fastagi.store.pages import check_limit, parse_statement_cursor, statement_rows
from fastagi.store.tx_ledger import (
    FUNDING_ACCOUNT_ID,
    account_at,
    account_cols,
    load_account,
    new_account,
    transfer,
    update_suspension,
)
from fastagi.store.tx_owed import collect_owed

STATEMENT_ROWS_MAX = 1000


# ---- plans -------------------------------------------------------------------------------


def add_plan(conn: sqlite3.Connection, name: str, t: Tariff) -> int:
    if not name or len(name) > 64:
        raise StoreError("plan name must be 1 to 64 characters")
    if conn.execute("SELECT 1 FROM plans WHERE name=?", (name,)).fetchone():
        raise Conflict(f"plan {name!r} already exists")
    new_id: int = conn.execute(
        "INSERT INTO plans (name, per_minute, initial_s, increment_s, connect_fee, grace_s, max_call_s) "
        "VALUES (?,?,?,?,?,?,?) RETURNING id",
        (name, t.per_minute, t.initial_s, t.increment_s, t.connect_fee, t.grace_s, t.max_call_s),
    ).fetchall()[0][0]
    return new_id


def plan_id(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM plans WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"unknown plan {name!r}")
    return row[0]


def set_plan_rate(conn: sqlite3.Connection, name: str, prefix: str, per_minute: int) -> None:
    if not re.fullmatch(r"[0-9]{0,20}", prefix):  # ASCII digits: what a caller number holds
        raise StoreError(f"prefix {prefix!r} must be up to 20 digits (empty for the default)")
    pid = plan_id(conn, name)
    if prefix == "":
        conn.execute("UPDATE plans SET per_minute=? WHERE id=?", (per_minute, pid))
    else:
        conn.execute(
            "INSERT INTO plan_rates (plan_id, prefix, per_minute) VALUES (?,?,?) "
            "ON CONFLICT (plan_id, prefix) DO UPDATE SET per_minute=excluded.per_minute",
            (pid, prefix, per_minute),
        )


# A plan's tariff columns, in Tariff's field order (what tariff_of takes); other reads join
# them in prefixed: tariff_cols("p").
TARIFF_COLS = ("per_minute", "initial_s", "increment_s", "connect_fee", "grace_s", "max_call_s")


def tariff_cols(alias: str) -> str:
    return ", ".join(f"{alias}.{c}" for c in TARIFF_COLS)


@functools.lru_cache(maxsize=1024)
def tariff_of(values: tuple[int, ...]) -> Tariff:
    """Tariff(*values), built and validated once per distinct set of values.

    Safe to share: a Tariff is immutable and depends on nothing but these values.
    Call setup loads a plan several times per call; validating it each time was a
    measurable share of the benchmark's setup cost (docs/rules.md rule 21).
    """
    return Tariff(*values)


def load_plan(conn: sqlite3.Connection, pid: int | None) -> PlanView | None:
    if pid is None:
        return None
    r = conn.execute(f"SELECT {', '.join(TARIFF_COLS)} FROM plans WHERE id=?", (pid,)).fetchone()
    rates = {
        p: m for p, m in conn.execute("SELECT prefix, per_minute FROM plan_rates WHERE plan_id=?", (pid,))
    }
    return PlanView(tariff_of(tuple(r)), rates)


def list_plans(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    out = []
    for r in conn.execute("SELECT * FROM plans ORDER BY name"):
        rates = [
            {"prefix": p, "per_minute": m}
            for p, m in conn.execute(
                "SELECT prefix, per_minute FROM plan_rates WHERE plan_id=? ORDER BY prefix", (r["id"],)
            )
        ]
        out.append({**dict(r), "rates": rates})
    return out


# ---- numbers and extensions ---------------------------------------------------------------


def _number_row(conn: sqlite3.Connection, number: str) -> sqlite3.Row:
    row = conn.execute("SELECT * FROM numbers WHERE number=?", (number,)).fetchone()
    if row is None:
        raise NotFound(f"unknown number {number}")
    return row


def add_number(
    conn: sqlite3.Connection,
    number: str,
    name: str,
    plan: str | None,
    min_balance: int,
    lang: str,
    default_dest: str | None,
    digit_timeout_s: int,
) -> None:
    check_number(number)
    name = check_name(name)
    check_lang(lang)
    check_digit_timeout(digit_timeout_s)
    if default_dest is not None:
        check_dest(default_dest)
    if conn.execute("SELECT 1 FROM numbers WHERE number=?", (number,)).fetchone():
        raise Conflict(f"number {number} already exists")
    pid = plan_id(conn, plan) if plan else None
    account_id = new_account(conn, AccountKind.MAIN)
    nid = conn.execute(
        "INSERT INTO numbers (number, name, lang, ivr, ext_billing, min_balance, default_dest, "
        "digit_timeout_s, plan_id, account_id, suspended, created_at) VALUES (?,?,?,1,0,?,?,?,?,?,0,?) "
        "RETURNING id",
        (number, name, lang, min_balance, default_dest, digit_timeout_s, pid, account_id, now_iso()),
    ).fetchall()[0][0]
    update_suspension(conn, load_account(conn, account_id), reason="created", number_id=nid)


def set_number(
    conn: sqlite3.Connection,
    number: str,
    *,
    ivr: bool | None = None,
    ext_billing: bool | None = None,
    plan: str | None = None,
    min_balance: int | None = None,
    lang: str | None = None,
    default_dest: str | None = None,
    digit_timeout_s: int | None = None,
    name: str | None = None,
    monthly_minimum: int | None = None,
    time_zone: str | None = None,
    low_balance: int | None = None,
) -> None:
    row = _number_row(conn, number)
    settings = check_settings(NumberSettings(bool(row["ivr"]), bool(row["ext_billing"])), ivr, ext_billing)
    changes: dict[str, Any] = {"ivr": int(settings.ivr), "ext_billing": int(settings.ext_billing)}
    if plan is not None:
        changes["plan_id"] = plan_id(conn, plan)
    if min_balance is not None:
        changes["min_balance"] = min_balance
    if lang is not None:
        changes["lang"] = check_lang(lang)
    if default_dest is not None:
        changes["default_dest"] = check_dest(default_dest)
    if digit_timeout_s is not None:
        changes["digit_timeout_s"] = check_digit_timeout(digit_timeout_s)
    if name is not None:
        changes["name"] = check_name(name)
    if monthly_minimum is not None:
        changes["monthly_minimum"] = monthly_minimum
    if time_zone is not None:
        changes["time_zone"] = check_time_zone(time_zone)
    if low_balance is not None:
        changes["low_balance"] = low_balance
    conn.execute(
        f"UPDATE numbers SET {', '.join(f'{k}=?' for k in changes)} WHERE id=?",
        (*changes.values(), row["id"]),
    )
    if min_balance is not None:
        update_suspension(
            conn, load_account(conn, row["account_id"]), reason="min-balance-changed", number_id=row["id"]
        )


def add_extension(
    conn: sqlite3.Connection, number: str, key: str, name: str, dest: str, plan: str | None
) -> None:
    row = _number_row(conn, number)
    keys = [
        k
        for (k,) in conn.execute(
            "SELECT key FROM extensions WHERE number_id=? AND removed_at IS NULL", (row["id"],)
        )
    ]
    try:
        check_new_key(key, keys)
    except NumberRuleError as exc:
        if key in keys:
            raise Conflict(str(exc)) from None
        raise
    name, dest = check_name(name), check_dest(dest)
    pid = plan_id(conn, plan) if plan else None
    # a removed extension with this key steps aside (KEY~ID); its history stays readable
    conn.execute(
        "UPDATE extensions SET key = key || '~' || id WHERE number_id=? AND key=? AND removed_at IS NOT NULL",
        (row["id"], key),
    )
    account_id = new_account(conn, AccountKind.EXT)
    conn.execute(
        "INSERT INTO extensions (number_id, key, name, dest, plan_id, account_id, created_at) "
        "VALUES (?,?,?,?,?,?,?)",
        (row["id"], key, name, dest, pid, account_id, now_iso()),
    )


def _ext_row(
    conn: sqlite3.Connection, number_id: int, number: str, key: str, *, removed_ok: bool = False
) -> sqlite3.Row:
    """The extension with this key; a removed one only when removed_ok (its history)."""
    row = conn.execute("SELECT * FROM extensions WHERE number_id=? AND key=?", (number_id, key)).fetchone()
    if row is None:
        raise NotFound(f"number {number} has no extension {key}")
    if row["removed_at"] is not None and not removed_ok:
        raise NotFound(f"extension {key} of {number} was removed on {row['removed_at'][:10]}")
    return row


def set_extension(
    conn: sqlite3.Connection,
    number: str,
    key: str,
    *,
    name: str | None = None,
    dest: str | None = None,
    plan: str | None = None,
    low_balance: int | None = None,
) -> None:
    nrow = _number_row(conn, number)
    erow = _ext_row(conn, nrow["id"], number, key)
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = check_name(name)
    if dest is not None:
        changes["dest"] = check_dest(dest)
    if plan is not None:
        changes["plan_id"] = plan_id(conn, plan)
    if low_balance is not None:
        changes["low_balance"] = low_balance
    if changes:
        conn.execute(
            f"UPDATE extensions SET {', '.join(f'{k}=?' for k in changes)} WHERE id=?",
            (*changes.values(), erow["id"]),
        )


# ---- money in and between accounts --------------------------------------------------------


def _transfer_id(kind: str, ref: str | None) -> str:
    return f"{kind}:{ref}" if ref else f"{kind}:auto:{uuid.uuid4().hex}"


def recharge(
    conn: sqlite3.Connection, number: str, key: str | None, amount: int, ref: str | None
) -> TransferResult:
    nrow = _number_row(conn, number)
    account_id = nrow["account_id"] if key is None else _ext_row(conn, nrow["id"], number, key)["account_id"]
    result = transfer(conn, _transfer_id("ref", ref), FUNDING_ACCOUNT_ID, account_id, amount, "recharge", ref)
    if key is None and result.created:
        # what the number owes of a monthly minimum is paid first (tx_owed.py)
        collected = collect_owed(conn, nrow["id"], result.transfer_id)
        return TransferResult(result.transfer_id, True, amount, collected)
    return result


def move(conn: sqlite3.Connection, number: str, key: str, amount: int, ref: str | None) -> TransferResult:
    nrow = _number_row(conn, number)
    erow = _ext_row(conn, nrow["id"], number, key)
    try:
        return transfer(
            conn, _transfer_id("ref", ref), nrow["account_id"], erow["account_id"], amount, "move", ref
        )
    except InsufficientFunds:
        main = load_account(conn, nrow["account_id"])
        raise InsufficientFunds(
            f"transfer of {format_amount(amount)} refused: the main account of {number} has only "
            f"{format_amount(main.available)} available"
        ) from None


# ---- views --------------------------------------------------------------------------------

# Call setup reads a number, its main account, its plan with the plan's prefix rates and
# (route) the pressed extension with its account and plan in ONE statement: per call the
# statements, not the rows, are what costs (each execute is a round of Python and SQLite
# work). Reads still go to the database every time, so an `extbill plan` or `number`
# change by another process is seen by the next call; only parsing is memoised.


def _plan_cols(alias: str) -> str:
    """The plan's id, its tariff (load_plan's columns) and its prefix rates as one JSON object."""
    return (
        f"{alias}.id, {tariff_cols(alias)}"
        + f", (SELECT json_group_object(prefix, per_minute) FROM plan_rates WHERE plan_id = {alias}.id)"
    )


@functools.lru_cache(maxsize=1024)
def _plan_view(values: tuple[int, ...], rates_json: str) -> PlanView:
    """A PlanView built once per distinct plan row and rates (a pure function of the two).

    Shared between calls, so its rates are a read-only view.
    """
    return PlanView(tariff_of(values), MappingProxyType(json.loads(rates_json)))


def _plan_at(row: sqlite3.Row, i: int, pid: int | None) -> PlanView | None:
    """The plan in row[i:i+8] (_plan_cols order) of plan id `pid`, None when pid is None."""
    if pid is None:
        return None
    if row[i] is None:
        raise NotFound(f"plan {pid} does not exist")
    return _plan_view(tuple(row[i + 1 : i + 7]), row[i + 7])


# numbers n: columns 0..9, main account a: 10..15, plan p: 16..23
# A number that owes part of a monthly minimum is read with an unreachable minimum balance:
# call setup's own comparison then finds it suspended (core/numbers.py, OWING_MIN_BALANCE).
_NUMBER_COLS = (
    "n.id, n.number, n.lang, n.ivr, n.ext_billing, "
    f"CASE WHEN n.owed > 0 THEN {OWING_MIN_BALANCE} ELSE n.min_balance END, n.default_dest, "
    f"n.digit_timeout_s, n.account_id, n.plan_id, {account_cols('a')}, {_plan_cols('p')}"
)
_NUMBER_FROM = (
    "FROM numbers n LEFT JOIN accounts a ON a.id = n.account_id LEFT JOIN plans p ON p.id = n.plan_id"
)
_NUMBER_WIDTH = 24
# extensions e: columns 0..4, account ea: 5..10, own plan ep: 11..18 (after the number's)
_EXT_COLS = f"e.id, e.key, e.dest, e.account_id, e.plan_id, {account_cols('ea')}, {_plan_cols('ep')}"
_EXT_JOINS = "LEFT JOIN accounts ea ON ea.id = e.account_id LEFT JOIN plans ep ON ep.id = e.plan_id"

_NUMBER_VIEW_SQL = (
    f"SELECT {_NUMBER_COLS}, (SELECT max(length(key)) FROM extensions "
    f"WHERE number_id = n.id AND removed_at IS NULL) {_NUMBER_FROM} WHERE n.number = ?"
)
# The extension is joined on the pressed key; NULL for no key matches no extension.
_ROUTE_VIEWS_SQL = (
    f"SELECT {_NUMBER_COLS}, {_EXT_COLS} {_NUMBER_FROM} "
    f"LEFT JOIN extensions e ON e.number_id = n.id AND e.key = ? AND e.removed_at IS NULL {_EXT_JOINS} "
    "WHERE n.number = ?"
)


def _number_at(row: sqlite3.Row, max_key_len: int | None) -> NumberView:
    main = account_at(row, 10)
    if main is None:
        raise NotFound(f"account {row[8]} does not exist")
    return NumberView(
        number_id=row[0],
        number=row[1],
        lang=row[2],
        ivr=bool(row[3]),
        ext_billing=bool(row[4]),
        min_balance=row[5],
        default_dest=row[6],
        digit_timeout_s=row[7],
        main=main,
        plan=_plan_at(row, 16, row[9]),
        max_key_len=max_key_len,
    )


def _ext_at(row: sqlite3.Row, i: int) -> ExtView | None:
    if row[i] is None:
        return None
    account = account_at(row, i + 5)
    if account is None:
        raise NotFound(f"account {row[i + 3]} does not exist")
    return ExtView(
        extension_id=row[i],
        key=row[i + 1],
        dest=row[i + 2],
        account=account,
        plan=_plan_at(row, i + 11, row[i + 4]),
    )


def number_view(conn: sqlite3.Connection, number: str) -> NumberView | None:
    """The call-control snapshot of a number (None when unknown), with its longest key's length."""
    row = conn.execute(_NUMBER_VIEW_SQL, (number,)).fetchone()
    if row is None:
        return None
    return _number_at(row, row[_NUMBER_WIDTH])


def route_views(conn: sqlite3.Connection, number: str, key: str) -> tuple[NumberView | None, ExtView | None]:
    """number_view (without max_key_len) and, for a non-empty key, that extension, in one statement."""
    row = conn.execute(_ROUTE_VIEWS_SQL, (key or None, number)).fetchone()
    if row is None:
        return None, None
    return _number_at(row, None), _ext_at(row, _NUMBER_WIDTH)


def low_balance_threshold_of(tariff: Tariff | None, configured: int | None) -> int:
    """Default: ten first billing blocks at the plan's base tariff (docs/rules.md rule 13); no prefix rates."""
    if configured is not None:
        return configured
    return 10 * first_block_cost(tariff) if tariff else 0


def balance(conn: sqlite3.Connection, number: str) -> dict[str, Any]:
    nrow = _number_row(conn, number)
    main = load_account(conn, nrow["account_id"])
    number_plan = load_plan(conn, nrow["plan_id"])
    exts = []
    for e in conn.execute(
        "SELECT * FROM extensions WHERE number_id=? AND removed_at IS NULL ORDER BY key", (nrow["id"],)
    ).fetchall():
        acc = load_account(conn, e["account_id"])
        plan = load_plan(conn, e["plan_id"]) or number_plan
        spent = spent_of(conn, acc.id)
        exts.append(
            {
                "key": e["key"],
                "name": e["name"],
                "dest": e["dest"],
                "plan": _plan_name(conn, e["plan_id"]),
                "balance": acc.balance,
                "reserved": acc.reserved,
                "available": acc.available,
                "spent": spent,
                "status": extension_status(acc, plan),
            }
        )
    main_spent = spent_of(conn, main.id)
    return {
        "number": nrow["number"],
        "name": nrow["name"],
        "status": "suspended" if nrow["suspended"] else "active",
        "ivr": bool(nrow["ivr"]),
        "ext_billing": bool(nrow["ext_billing"]),
        "min_balance": nrow["min_balance"],
        "monthly_minimum": nrow["monthly_minimum"],
        "time_zone": nrow["time_zone"],
        "owed": nrow["owed"],
        "owed_months": [
            m
            for (m,) in conn.execute(
                "SELECT month FROM period_closes WHERE number_id=? AND owed_left > 0 ORDER BY month",
                (nrow["id"],),
            )
        ],
        "low_balance": nrow["low_balance"],
        "lang": nrow["lang"],
        "plan": _plan_name(conn, nrow["plan_id"]),
        "default_dest": nrow["default_dest"],
        "digit_timeout_s": nrow["digit_timeout_s"],
        "main": {
            "balance": main.balance,
            "reserved": main.reserved,
            "available": main.available,
            "spent": main_spent,
        },
        "extensions": exts,
    }


def spent_of(conn: sqlite3.Connection, account_id: int) -> int:
    """What the account's calls cost: the kept counter (tx_ledger.resolve), not a sum of transfers."""
    return conn.execute("SELECT spent FROM accounts WHERE id=?", (account_id,)).fetchone()[0]


def _plan_name(conn: sqlite3.Connection, pid: int | None) -> str | None:
    if pid is None:
        return None
    return conn.execute("SELECT name FROM plans WHERE id=?", (pid,)).fetchone()[0]


def statement(
    conn: sqlite3.Connection,
    number: str,
    key: str | None,
    limit: int = STATEMENT_ROWS_MAX,
    before: str | None = None,
    archive: str | None = None,
) -> list[dict[str, Any]]:
    """One page of the account's transfers, newest first, with the signed effect on the account.

    before: the cursor of the previous page (its last row's seq); archive: also read the
    transfers moved to this archive file (store/archive.py), in place of their summary.
    """
    nrow = _number_row(conn, number)
    account_id = (
        nrow["account_id"]
        if key is None
        else _ext_row(conn, nrow["id"], number, key, removed_ok=True)["account_id"]
    )
    check_limit(limit)
    before_seq = parse_statement_cursor(before)
    if archive is None:
        rows = statement_rows(conn, account_id, limit, before_seq)
    else:
        rows = archived_statement(conn, archive, account_id, limit, before_seq)
    return [statement_entry(r, account_id) for r in rows]


def statement_entry(r: Any, account_id: int) -> dict[str, Any]:
    """One transfer as an account's statement shows it (the CLI, the console, the API)."""
    sign = -1 if r["debit_account_id"] == account_id else 1
    # Reservations and their release move no posted money: only posted and post do.
    moves = r["kind"] in ("posted", "post")
    return {
        "seq": r["seq"],
        "id": r["id"],
        "at": r["created_at"],
        "kind": r["kind"],
        "code": r["code"],
        "ref": r["ref"],
        "amount": r["amount"],
        "effect": sign * r["amount"] if moves else 0,
        "pending_id": r["pending_id"],
    }
