"""Money at one fixed scale: integers in minor units, decimal text only at the edges.

1 minor unit = 0.001 CNY (one "li"). Nothing in extbill holds money as a float.
"""

from __future__ import annotations

import re
from typing import Any

SCALE = 1000  # minor units per yuan
DECIMALS = 3  # digits after the point, at the edges
AMOUNT_MAX = 10_000_000 * SCALE  # 10 million CNY: larger is a typo, not a recharge

# ASCII digits only ([0-9], not \d: int() would accept Arabic-Indic or full-width digits),
# and fullmatch, not $: "$" also matches before a trailing newline.
_AMOUNT_RE = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,3}))?")


class AmountError(ValueError):
    """An amount given at an edge (CLI, config) that is not a valid money amount."""


def parse_amount(text: str, *, allow_zero: bool = False) -> int:
    """Parse '12', '12.5' or '0.001' into minor units; refuse anything else."""
    if not isinstance(text, str):
        raise AmountError(f"amount must be text, got {type(text).__name__}")
    # No stripping: " 5" or "5\n" is not an amount the user typed on purpose.
    match = _AMOUNT_RE.fullmatch(text)
    if match is None:
        if re.fullmatch(r"-?[0-9]+\.[0-9]{4,}", text):
            raise AmountError(f"amount {text!r} has more than {DECIMALS} decimal places")
        if text.startswith("-"):
            raise AmountError(f"amount {text!r} is negative")
        raise AmountError(f"amount {text!r} is not a decimal number like 12 or 12.5 or 0.001")
    whole, frac = match.group(1), (match.group(2) or "")
    value = int(whole) * SCALE + int(frac.ljust(DECIMALS, "0") or "0")
    if value == 0 and not allow_zero:
        raise AmountError(f"amount {text!r} must be greater than zero")
    if value > AMOUNT_MAX:
        raise AmountError(f"amount {text!r} is over the maximum of {format_amount(AMOUNT_MAX)}")
    return value


def format_amount(minor: int) -> str:
    """Minor units as a decimal string with exactly three places: 12500 -> '12.500'."""
    if not isinstance(minor, int) or isinstance(minor, bool):
        raise TypeError(f"money must be int minor units, got {type(minor).__name__}")
    sign = "-" if minor < 0 else ""
    whole, frac = divmod(abs(minor), SCALE)
    return f"{sign}{whole}.{frac:0{DECIMALS}d}"


# Keys whose integer values are money in every document the CLI and the API print.
MONEY_KEYS = frozenset(
    {
        "balance",
        "reserved",
        "available",
        "spent",
        "min_balance",
        "monthly_minimum",
        "owed",
        "low_balance",
        "amount",
        "effect",
        "per_minute",
        "connect_fee",
        "cost",
        "reserve",
    }
)


def money_fields(doc: Any) -> Any:
    """A document (dicts and lists) with its money fields (MONEY_KEYS) as decimal text."""
    if isinstance(doc, dict):
        return {
            k: (
                format_amount(v)
                if k in MONEY_KEYS and isinstance(v, int) and not isinstance(v, bool)
                else money_fields(v)
            )
            for k, v in doc.items()
        }
    if isinstance(doc, list):
        return [money_fields(x) for x in doc]
    return doc
