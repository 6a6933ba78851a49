"""CSV export of an extension's calls: exactly the filter the page shows, every page of it.

UTF-8 with a BOM (Excel then reads Chinese names right); a cell that a spreadsheet would
take for a formula (starting with = + - @, or a tab or carriage return) gets a leading
apostrophe. Rows stream a store page at a time, so a year of calls never sits in memory.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from typing import Any

from fastagi.core.money import format_amount
from fastagi.store import tx_calls
from fastagi.store.tx_web_reads import PAGE_ROWS_MAX
from fastagi.web.scope import Access

FIELDS = tx_calls.CSV_FIELDS  # the columns of `extbill calls --csv`
EXPORT_ROWS_MAX = 1_000_000  # one export at most; a longer one stops with a last line saying so
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _page_bytes(page: list[dict[str, Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    for r in page:
        r["cost"] = None if r["cost"] is None else format_amount(r["cost"])
        w.writerow([neutralise(r[f]) for f in FIELDS])
    return buf.getvalue().encode()


def _line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue()


async def rows(access: Access, number: str, ext: str, filters: dict[str, Any]) -> AsyncIterator[bytes]:
    yield ("\ufeff" + _line(list(FIELDS))).encode()
    after, sent = None, 0
    while sent < EXPORT_ROWS_MAX:
        page, after = await access.calls(number, ext, **filters, after=after, limit=PAGE_ROWS_MAX)
        sent += len(page)
        # formatted on a worker thread: call control shares this event loop
        yield await asyncio.to_thread(_page_bytes, page)
        if after is None:
            return
    yield _line([f"# stopped after {EXPORT_ROWS_MAX} rows; narrow the dates"]).encode()
