"""The bulk recharge file (`number,key,amount,ref` rows) read from its bytes: the same rows and
the same words for `extbill recharge --csv FILE`, the console's upload and the API's rows.

Parsing only; what the rows refer to is checked by tx_money.check_bulk.
"""

from __future__ import annotations

import csv

from fastagi.core.money import AmountError, parse_amount
from fastagi.store.base import StoreError
from fastagi.store.tx_money import BulkRow

CSV_FIELDS = ("number", "key", "amount", "ref")
CSV_BYTES_MAX = 4 * 1024 * 1024  # a bulk file larger than this is not a quota list
REF_CHARS_MAX = 100


def decode(raw: bytes, name: str) -> str:
    """The file's text (UTF-8, a BOM allowed); `raw` may be one byte over the limit to tell."""
    if len(raw) > CSV_BYTES_MAX:
        raise StoreError(f"{name} is larger than {CSV_BYTES_MAX // 1024 // 1024} MB")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise StoreError(f"{name} is not UTF-8 text") from None


def check_ref(ref: str) -> str | None:
    if not ref or len(ref) > REF_CHARS_MAX:
        return f"ref is required (1 to {REF_CHARS_MAX} characters): it makes the row idempotent"
    return None


def parse(text: str) -> tuple[list[tuple[int, str]], list[BulkRow]]:
    """Rows of `number,key,amount,ref` (a header line is optional): (bad rows, good rows)."""
    errors: list[tuple[int, str]] = []
    rows: list[BulkRow] = []
    reader = csv.reader(text.splitlines())
    for fields in reader:
        line = reader.line_num
        cells = [c.strip() for c in fields]
        if not any(cells) or (line == 1 and [c.lower() for c in cells] == list(CSV_FIELDS)):
            continue
        if len(cells) != len(CSV_FIELDS):
            errors.append((line, f"expected 4 fields number,key,amount,ref, found {len(cells)}"))
            continue
        number, key, amount_text, ref = cells
        try:
            amount = parse_amount(amount_text)
        except AmountError as exc:
            errors.append((line, str(exc)))
            continue
        bad_ref = check_ref(ref)
        if bad_ref is not None:
            errors.append((line, bad_ref))
            continue
        rows.append(BulkRow(line, number, key or None, amount, ref))
    return errors, rows
