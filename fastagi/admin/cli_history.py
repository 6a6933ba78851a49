"""History at scale in the CLI: page options of `calls` and `statement`, and `db archive`.

(`db check`, admin/cli_db.py, also checks the kept counters: store/counters.py.)"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from fastagi.runtime.clock import now_ms
from fastagi.store import archive
from fastagi.store.pages import PAGE_ROWS_DEFAULT, PAGE_ROWS_MAX


def _limit(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= PAGE_ROWS_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} must be a whole number from 1 to {PAGE_ROWS_MAX}")
    return int(text)


def _day(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-01-01") from None


class _Once(argparse.Action):
    """An option that may be given once: a second --archive would otherwise replace the
    first without a word, and show a history with a hole in it."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise argparse.ArgumentTypeError(f"{option} may be given once (archive a store to one file)")
        setattr(namespace, self.dest, values)


def add_page_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit", type=_limit, default=PAGE_ROWS_DEFAULT, help=f"rows per page (default {PAGE_ROWS_DEFAULT})"
    )
    p.add_argument("--before", metavar="CURSOR", help="the next page: the cursor the previous page printed")
    p.add_argument(
        "--archive",
        metavar="FILE",
        action=_Once,
        help="also read the calls and transfers archived to FILE (one file: archive a store to one file)",
    )


def print_next(rows: int, limit: int, cursor: Callable[[], str]) -> None:
    """A full page may have a next one: say how to ask for it (stderr: stdout stays data)."""
    if rows == limit:
        print(f"more: --before {cursor()}", file=sys.stderr)


async def cmd_db_archive(store: Any, a: argparse.Namespace) -> int:
    # refused, nothing moved: a FILE that cannot take this store's calls, a call not settled
    await store.read(archive.check_target, a.file)
    await store.read(archive.check_archivable, a.before)
    done = {"calls": 0, "transfers": 0, "summaries": 0}
    while True:  # each batch moves calls, so this ends
        batch = await store.run(archive.archive_batch, a.before, a.file)
        if not batch["calls"]:
            break
        done = {k: done[k] + batch[k] for k in done}
    if date.fromisoformat(a.before) > datetime.fromtimestamp(now_ms() / 1000, UTC).date():
        # allowed (balances are kept either way), but a mistyped year moves every call
        print(
            f"note: --before {a.before} is after today: settled calls of today were archived too",
            file=sys.stderr,
        )
    print(
        f"archived {done['calls']} settled calls started before {a.before} and their "
        f"{done['transfers']} transfers to {a.file}; {done['summaries']} summary transfers keep every balance"
    )
    return 0


def add_db_parsers(db: Any, sub: Callable[..., argparse.ArgumentParser]) -> None:
    p = sub(db, "archive", cmd_db_archive, "move settled calls started before a date to an archive file")
    p.add_argument("--before", type=_day, required=True, metavar="YYYY-MM-DD", help="UTC day")
    p.add_argument("file", help="the archive (an SQLite file; created, or added to)")
