"""Wall-clock times as the records store them: Unix milliseconds, ISO 8601 UTC text.

One place for the format, so every path (setup, settlement, admin) writes the same.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone


def now_ms() -> int:
    return int(time.time() * 1000)


def iso_from_ms(ms: int) -> str:
    """1732650000123 -> '2024-11-26T19:40:00.123Z'."""
    return datetime.fromtimestamp(ms // 1000, timezone.utc).replace(
        microsecond=(ms % 1000) * 1000).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ms_from_iso(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000


def now_iso() -> str:
    return iso_from_ms(now_ms())
