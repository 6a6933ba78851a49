"""Times as the records store them: Unix milliseconds, ISO 8601 UTC text. Pure: the
clock itself is read in runtime/clock.py.

One place for the format, so every path (setup, settlement, admin) writes the same.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta

_EPOCH_DAY = date(1970, 1, 1)
# The range datetime can show (years 0001..9999).
_MS_MIN = -62_135_596_800_000
_MS_END = 253_402_300_800_000


def _iso_slow(ms: int) -> str:
    """The reference formula: iso_from_ms must return exactly this (tests compare them)."""
    return (
        datetime.fromtimestamp(ms // 1000, UTC)
        .replace(microsecond=(ms % 1000) * 1000)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


@functools.lru_cache(maxsize=8192)
def _day_iso(day: int) -> str:
    """'YYYY-MM-DDT' of a day number since the epoch (a page of history spans few days)."""
    return f"{(_EPOCH_DAY + timedelta(days=day)).isoformat()}T"


@functools.lru_cache(maxsize=4096)
def _second_iso(second: int) -> str:
    """'YYYY-MM-DDTHH:MM:SS.' of a second since the epoch: a busy server formats the same
    few seconds (now, a call's answer and end) again and again; a page of stored calls
    formats many different ones (the day is cached, the rest is arithmetic)."""
    day, in_day = divmod(second, 86_400)
    hour, in_hour = divmod(in_day, 3600)
    minute, sec = divmod(in_hour, 60)
    return f"{_day_iso(day)}{hour:02d}:{minute:02d}:{sec:02d}."


def iso_from_ms(ms: int) -> str:
    """1732650000123 -> '2024-11-26T19:40:00.123Z'.

    Cached prefixes instead of a datetime per call: the datetime version was ~5% of the
    server's time. Exactly _iso_slow's text (tests compare them).
    """
    if type(ms) is not int or not _MS_MIN <= ms < _MS_END:
        return _iso_slow(ms)  # a float, or a year datetime cannot show: as before (it raises)
    second, milli = divmod(ms, 1000)  # floor division: right for times before 1970 too
    return f"{_second_iso(second)}{milli:03d}Z"


def ms_from_iso(text: str) -> int:
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1000 + dt.microsecond // 1000
