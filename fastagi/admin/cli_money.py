"""HQ's money tasks on the command line: `period close`, `reclaim`, `ext remove`,
`recharge --csv`, and the operator's `events list` / `events retry`.

Every refusal exits 2 with one line per problem on stderr and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from fastagi.core.money import AmountError, format_amount, parse_amount
from fastagi.core.period import check_month
from fastagi.runtime.clock import now_ms
from fastagi.store import bulk_file, tx_money, tx_outbox
from fastagi.store.base import StoreError

EXIT_REFUSED = 2


def _month(text: str) -> str:
    try:
        check_month(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _event_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise argparse.ArgumentTypeError(f"{text!r} is not an event number (see extbill events list)")
    return int(text)


def _amount(text: str) -> int:
    try:
        return parse_amount(text)
    except AmountError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---- the monthly minimum -------------------------------------------------------------------


async def cmd_period_close(store: Any, a: argparse.Namespace) -> int:
    closes = await store.run(tx_money.close_period, a.month, now_ms(), a.number)
    if not closes:
        print(f"month {a.month}: no numbers to close")
    for c in closes:
        if not c["closed_now"]:
            print(f"{c['number']} {c['month']}: already closed on {c['closed_at'][:10]}; nothing changed")
        elif c["charge"] == 0:
            print(
                f"{c['number']} {c['month']}: spent {format_amount(c['spent'])}, minimum "
                f"{format_amount(c['minimum'])}: nothing to charge"
            )
        else:
            owed = f", {format_amount(c['owed'])} owed: number suspended until paid" if c["owed"] else ""
            print(
                f"{c['number']} {c['month']}: spent {format_amount(c['spent'])} of a minimum of "
                f"{format_amount(c['minimum'])}: charged {format_amount(c['charge'])}, main paid "
                f"{format_amount(c['paid'])}{owed}"
            )
    return 0


async def cmd_period_list(store: Any, a: argparse.Namespace) -> int:
    rows = await store.read(tx_money.periods, a.number)
    money = ("minimum", "spent", "charge", "paid", "owed", "owed_left")
    rows = [
        {k: format_amount(v) if k in money else v for k, v in r.items() if k != "number_id"} for r in rows
    ]
    if a.json:
        print(json.dumps(rows, ensure_ascii=False, indent=2))
        return 0
    print(f"{'month':<9}{'minimum':>12}{'spent':>12}{'charged':>12}{'paid':>12}{'still owed':>12}  closed")
    for r in rows:
        print(
            f"{r['month']:<9}{r['minimum']:>12}{r['spent']:>12}{r['charge']:>12}{r['paid']:>12}"
            f"{r['owed_left']:>12}  {r['closed_at'][:10]} by {r['closed_by']}"
        )
    return 0


# ---- claw-back and removal -----------------------------------------------------------------


def _collected(amount: int) -> str:
    return f"; {format_amount(amount)} of it paid what the number owed" if amount else ""


async def cmd_reclaim(store: Any, a: argparse.Namespace) -> int:
    r = await store.run(tx_money.reclaim, a.number, a.key, a.amount, a.ref)
    if not r["created"]:
        print(f"reclaim {a.ref} was already done; nothing changed")
    else:
        print(
            f"reclaimed {format_amount(r['amount'])} from extension {a.key} to the main account of "
            f"{a.number}{_collected(r['collected'])}"
        )
    return 0


async def cmd_ext_remove(store: Any, a: argparse.Namespace) -> int:
    r = await store.run(tx_money.remove_extension, a.number, a.key)
    print(
        f"extension {a.key} of {a.number} removed; {format_amount(r['returned'])} returned to the main "
        f"account{_collected(r['collected'])} (its history: extbill statement {a.number} {a.key})"
    )
    return 0


# ---- bulk recharge -------------------------------------------------------------------------


def read_bulk_file(path: str) -> tuple[list[tuple[int, str]], list[tx_money.BulkRow]]:
    """Parse `number,key,amount,ref` rows (a header line is optional): (bad rows, good rows)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(bulk_file.CSV_BYTES_MAX + 1)
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror}") from None
    return bulk_file.parse(bulk_file.decode(raw, path))


async def cmd_recharge_csv(store: Any, a: argparse.Namespace) -> int:
    errors, rows = read_bulk_file(a.csv)
    if not rows and not errors:
        raise StoreError(f"{a.csv} has no rows to recharge")
    # the rows that parsed are checked against the database too: every bad row is reported
    errors = sorted(errors + await store.read(tx_money.check_bulk, rows))
    if not errors:
        try:
            r = await store.run(tx_money.bulk_recharge, rows)
        except tx_money.BulkError as exc:  # changed between the check and the transaction
            errors = exc.errors
    if errors:
        for line, msg in errors:
            print(f"extbill: error: {a.csv} line {line}: {msg}", file=sys.stderr)
        return EXIT_REFUSED
    print(
        f"{a.csv}: {r['applied']} recharges applied ({format_amount(r['total'])}), "
        f"{r['already']} already done{_collected(r['collected'])}"
    )
    return 0


# ---- notifications -------------------------------------------------------------------------


async def cmd_events_list(store: Any, a: argparse.Namespace) -> int:
    events = await store.read(tx_outbox.list_events, a.failed)
    if a.json:
        print(json.dumps(events, ensure_ascii=False, indent=2))
        return 0
    print(f"{'id':>6}  {'type':<17}{'number':<12}{'state':<10}{'tries':>5}  {'written':<25}last error")
    for e in events:
        print(
            f"{e['id']:>6}  {e['type']:<17}{e['stream']:<12}{e['state']:<10}{e['attempts']:>5}  "
            f"{e['created_at']:<25}{e['last_error'] or ''}"
        )
    return 0


async def cmd_events_retry(store: Any, a: argparse.Namespace) -> int:
    r = await store.run(tx_outbox.retry_event, a.id)
    print(f"event {r['id']} ({r['event_id']}, was {r['was']}) will be sent again by serve")
    return 0


# ---- the parsers ---------------------------------------------------------------------------


def _group(subs: Any, name: str) -> Any:
    """The subcommand group `name` (e.g. `ext`) that cli.py built, to add a command to it."""
    parser = subs.choices[name]
    return next(act for act in parser._actions if isinstance(act, argparse._SubParsersAction))  # noqa: SLF001


def add_parsers(subs: Any, sub: Callable) -> None:
    period = subs.add_parser("period", help="monthly minimum consumption").add_subparsers(
        dest="period_command",
        required=True,
        parser_class=subs._parser_class,  # noqa: SLF001
    )
    p = sub(
        period, "close", cmd_period_close, "charge the monthly minimum of a month that is over (idempotent)"
    )
    p.add_argument("month", type=_month, help="YYYY-MM, in each number's time zone")
    p.add_argument("--number", help="only this number")
    p = sub(period, "list", cmd_period_list, "the closed months of a number")
    p.add_argument("number")
    p.add_argument("--json", action="store_true")

    p = sub(subs, "reclaim", cmd_reclaim, "move an extension's available money back to the main account")
    p.add_argument("number")
    p.add_argument("key")
    p.add_argument("amount", nargs="?", type=_amount, help="default: all of its available money")
    p.add_argument("--ref", help="idempotency key: repeating it changes nothing")

    p = sub(_group(subs, "ext"), "remove", cmd_ext_remove, "remove an extension; its money goes back to main")
    p.add_argument("number")
    p.add_argument("key")

    events = subs.add_parser("events", help="notifications (webhooks)").add_subparsers(
        dest="events_command",
        required=True,
        parser_class=subs._parser_class,  # noqa: SLF001
    )
    p = sub(events, "list", cmd_events_list, "the latest notifications and their delivery, newest first")
    p.add_argument("--failed", action="store_true", help="only those serve gave up on")
    p.add_argument("--json", action="store_true")
    p = sub(events, "retry", cmd_events_retry, "send a failed notification again")
    p.add_argument("id", type=_event_id)
