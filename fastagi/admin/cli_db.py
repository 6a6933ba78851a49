"""`extbill db check`: the ledger rebuilt from its transfers and compared with every row.
`extbill db copy`: move a ledger from an SQLite file to PostgreSQL (store/copy.py).

check: exit 0 and a summary when all agree; exit 1 and one line per discrepancy otherwise
(the same check the benchmark runs after its load, store/ledger_check.py).
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Callable
from typing import Any

from fastagi.core.ledger_check import ledger_discrepancies
from fastagi.store.counters import account_labels, check_counters
from fastagi.store.factory import is_pg, redact
from fastagi.store.ledger_check import SHOWN_MAX, ledger_facts

EXIT_DISCREPANCIES = 1
_ACCOUNT_ID = re.compile(r"\baccount (\d+)(?! \()")  # an account's id in a discrepancy line, not yet named


async def cmd_db_check(store: Any, a: argparse.Namespace) -> int:
    f = await store.read(ledger_facts)
    found = ledger_discrepancies(f)
    # the kept counters (spend, settled-call counts) too; the four balance counters it
    # shares with ledger_facts are worded the same, so they are listed once
    found += [line for line in await store.read(check_counters) if line not in found]
    if found:
        labels = await store.read(account_labels)
        for line in found:
            print(f"discrepancy: {_named(line, labels)}")
        print(
            f"extbill db check: {len(found)} {'discrepancy' if len(found) == 1 else 'discrepancies'} in {store.path} "
            f"(at most {SHOWN_MAX} of each kind are listed)"
        )
        return EXIT_DISCREPANCIES
    print(
        f"ledger consistent: {len(f.accounts)} accounts agree with their transfers; "
        f"{f.reservations} reservations, {f.resolutions} resolved once each, "
        f"{f.open_reservations} open; {f.calls} calls ({f.open_calls} in progress) "
        f"agree with their reservations"
    )
    return 0


def add_parsers(db: Any, sub: Callable[..., argparse.ArgumentParser]) -> None:
    sub(
        db,
        "check",
        cmd_db_check,
        "rebuild every balance from the transfers and compare (exit 1 if any differ)",
    )
    p = db.add_parser(
        "copy",
        help="copy an SQLite ledger into a new PostgreSQL database",
        description="copy every row of an SQLite extbill database into an empty PostgreSQL one "
        "(schema created), in one transaction, checking the ledger before it commits; stop serve first",
    )
    p.add_argument("source", metavar="SQLITE_FILE")
    p.add_argument("target", metavar="POSTGRESQL_URL")
    p.set_defaults(fn=cmd_db_copy, own_store=True)


async def cmd_db_copy(a: argparse.Namespace) -> int:
    from fastagi.admin.cli import UsageError  # noqa: PLC0415  (cli imports this module)

    if is_pg(a.source) or not is_pg(a.target):
        raise UsageError("db copy: SOURCE must be an SQLite file and TARGET a postgresql:// URL")
    from fastagi.store.copy import copy_sqlite_to_pg  # noqa: PLC0415  (psycopg only when asked for)

    counts = await asyncio.to_thread(copy_sqlite_to_pg, a.source, a.target)
    rows = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
    print(f"copied {a.source} to {redact(a.target)}: {rows}; ledger checked (db check: consistent)")
    return 0


def _named(line: str, labels: dict[int, str]) -> str:
    """'account 3: ...' -> 'account 3 (4008001234 ext 1): ...': the operator knows numbers, not ids."""
    return _ACCOUNT_ID.sub(
        lambda m: f"{m.group(0)} ({labels[int(m.group(1))]})" if int(m.group(1)) in labels else m.group(0),
        line,
    )
