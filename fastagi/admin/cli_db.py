"""`extbill db copy`: move a ledger from an SQLite file to PostgreSQL (store/copy.py)."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from typing import Any

from fastagi.admin.cli import UsageError
from fastagi.store.factory import is_pg, redact


async def cmd_db_copy(a: argparse.Namespace) -> int:
    if is_pg(a.source) or not is_pg(a.target):
        raise UsageError("db copy: SOURCE must be an SQLite file and TARGET a postgresql:// URL")
    from fastagi.store.copy import copy_sqlite_to_pg  # noqa: PLC0415  (psycopg only when asked for)

    counts = await asyncio.to_thread(copy_sqlite_to_pg, a.source, a.target)
    rows = ", ".join(f"{n} {t}" for t, n in counts.items() if n)
    print(f"copied {a.source} to {redact(a.target)}: {rows}; ledger checked (balanced, no overdraw)")
    return 0


def add_copy(db_subs: Any, sub: Callable) -> None:
    p = db_subs.add_parser(
        "copy",
        help="copy an SQLite ledger into a new PostgreSQL database",
        description="copy every row of an SQLite extbill database into an empty PostgreSQL one "
        "(schema created), in one transaction, checking the ledger before it commits; stop serve first",
    )
    p.add_argument("source", metavar="SQLITE_FILE")
    p.add_argument("target", metavar="POSTGRESQL_URL")
    p.set_defaults(fn=cmd_db_copy, own_store=True)
