"""`extbill calls`: the call records of a number, as a table, JSON or CSV."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from datetime import date
from typing import Any

from fastagi.admin.cli_history import add_page_args, print_next
from fastagi.core.money import format_amount
from fastagi.store import tx_calls
from fastagi.store.pages import calls_cursor

FIELDS = tx_calls.CSV_FIELDS


def _since(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-26") from None


MONEY_FIELDS = ("cost", "reserved")  # minor units in the store, decimal text at the edge


def _render(rec: dict[str, Any]) -> dict[str, Any]:
    return {**rec, **{k: None if rec[k] is None else format_amount(rec[k]) for k in MONEY_FIELDS if k in rec}}


async def cmd_calls(store: Any, a: argparse.Namespace) -> int:
    records = [
        _render(r)
        for r in await store.read(
            tx_calls.call_records, a.number, a.ext, a.since, a.limit, a.before, a.archive
        )
    ]
    if a.json:
        print(json.dumps(records, ensure_ascii=False, indent=2))
    elif a.csv:
        w = csv.DictWriter(sys.stdout, fieldnames=FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(records)
    else:
        # granted: the total talk time granted over all chunks (renewed mid-call N times)
        print(
            f"{'start':<25}{'ext':<6}{'caller':<16}{'talk':>6}{'billed':>7}{'granted':>8}{'renew':>6}"
            f"{'cost':>11}  state"
        )
        for r in records:
            print(
                f"{r['start']:<25}{(r['ext'] or 'main'):<6}{r['caller'][:15]:<16}{r['talk_s'] if r['talk_s'] is not None else '-':>6}"
                f"{r['billed_s'] if r['billed_s'] is not None else '-':>7}{r['granted_s']:>8}{r['renewals']:>6}"
                f"{r['cost'] or '-':>11}  {r['state']}"
                f"{' ' + r['disposition'] if r['disposition'] else ''}"
            )
    print_next(len(records), a.limit, lambda: calls_cursor(records[-1]["start"], records[-1]["id"]))
    return 0


def add_parser(subs: Any, sub: Callable) -> None:
    p = sub(subs, "calls", cmd_calls, "the call records of a number, newest first")
    p.add_argument("number")
    p.add_argument("--ext", help="only this extension's calls")
    p.add_argument("--since", type=_since, help="only calls started on or after this date (YYYY-MM-DD)")
    add_page_args(p)
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
