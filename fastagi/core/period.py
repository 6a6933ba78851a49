"""Monthly minimum consumption, pure: a month's window in a time zone, and the charge.

A number with a monthly minimum that spent less on billed calls in a calendar month
(in its own time zone) is charged the difference at the month's close. Main pays what
it has available; the rest is owed, collected from the next money into main, and the
number stays suspended until it is paid (README.md, "HQ money tasks").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastagi.core.money import format_amount

DEFAULT_TIME_ZONE = "Asia/Shanghai"
_MONTH_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
TIME_ZONE_CHARS_MAX = 64


class PeriodError(ValueError):
    """A month or time zone the rules refuse; the text is what the user reads."""


def check_month(text: str) -> tuple[int, int]:
    """'2026-11' -> (2026, 11); anything else is refused."""
    m = _MONTH_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None or int(m.group(1)) < 2000:
        raise PeriodError(f"month {text!r} is not a month like 2026-11")
    return int(m.group(1)), int(m.group(2))


def check_time_zone(name: str) -> str:
    """An IANA time zone name such as Asia/Shanghai."""
    if not isinstance(name, str) or not name or len(name) > TIME_ZONE_CHARS_MAX or ".." in name:
        raise PeriodError(f"time zone {name!r} is not an IANA name like Asia/Shanghai")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PeriodError(f"time zone {name!r} is not an IANA name like Asia/Shanghai") from None
    return name


def _next(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def _next_first(month: str) -> str:
    year, mon = _next(*check_month(month))
    return f"{year:04d}-{mon:02d}-01"


def month_window_ms(month: str, time_zone: str) -> tuple[int, int]:
    """[start, end) of the month in the zone, as Unix ms: local midnight of the 1st to the next 1st."""
    year, mon = check_month(month)
    tz = ZoneInfo(check_time_zone(time_zone))
    start = datetime(year, mon, 1, tzinfo=tz)
    end = datetime(*_next(year, mon), 1, tzinfo=tz)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def month_of(ms: int, time_zone: str) -> str:
    """The month ('YYYY-MM') an instant falls in, in the zone."""
    local = datetime.fromtimestamp(ms / 1000, UTC).astimezone(ZoneInfo(time_zone))
    return f"{local.year:04d}-{local.month:02d}"


def previous_month(month: str) -> str:
    year, mon = check_month(month)
    year, mon = (year - 1, 12) if mon == 1 else (year, mon - 1)
    return f"{year:04d}-{mon:02d}"


def last_closed_month(now_ms: int, time_zone: str) -> str:
    """The latest month that is over at now_ms in the zone: the one before the current."""
    return previous_month(month_of(now_ms, time_zone))


def check_month_over(month: str, time_zone: str, now_ms: int) -> None:
    """Refuse closing a month that has not ended yet in the number's zone."""
    _, end = month_window_ms(month, time_zone)
    if now_ms < end:
        raise PeriodError(
            f"month {month} is not over yet in {time_zone}; it can be closed from its last day's midnight on"
        )


@dataclass(frozen=True, slots=True)
class MinimumCharge:
    charge: int  # the minimum minus what was spent (0 when spent >= minimum)
    paid: int  # what main pays now: at most what it has available
    owed: int  # the rest: collected from the next money into main

    def __post_init__(self) -> None:
        assert self.charge == self.paid + self.owed and min(self.charge, self.paid, self.owed) >= 0


def minimum_charge(minimum: int, spent: int, available: int) -> MinimumCharge:
    """What a month's close charges: minimum - spent when positive, paid from `available`."""
    if minimum < 0 or spent < 0:
        raise PeriodError("minimum and spend must not be negative")
    charge = max(0, minimum - spent)
    paid = min(charge, max(0, available))
    return MinimumCharge(charge, paid, charge - paid)


def collect(owed: int, available: int) -> int:
    """How much of an owed amount money now in main pays: all it can, up to what is owed."""
    return max(0, min(owed, available))


def status_text(status: str, owed: int, owed_months: list[str]) -> str:
    """'active', 'suspended', or why a number that owes is suspended: the words of `balance`,
    `number show` and the console's number page."""
    if owed:
        return (
            f"suspended: owes {format_amount(owed)} of the monthly minimum of "
            f"{', '.join(owed_months)}; the next recharge pays it first"
        )
    return status
