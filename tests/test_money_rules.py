"""The pure rules of HQ's money tasks: a month's window in a time zone, the minimum charge,
the webhook signature and its retry schedule (core/period.py, core/webhook.py)."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime

import pytest

from fastagi.core.period import (
    PeriodError,
    check_month,
    check_month_over,
    check_time_zone,
    collect,
    last_closed_month,
    minimum_charge,
    month_window_ms,
)
from fastagi.core.webhook import RETRY_WINDOW_S, gives_up, retry_delay_s, signature, verify


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_a_month_runs_from_local_midnight_of_the_first_to_the_next_first() -> None:
    assert month_window_ms("2026-11", "Asia/Shanghai") == (
        ms("2026-10-31T16:00:00+00:00"),
        ms("2026-11-30T16:00:00+00:00"),
    )
    assert month_window_ms("2026-12", "UTC") == (
        ms("2026-12-01T00:00:00+00:00"),
        ms("2027-01-01T00:00:00+00:00"),
    )
    # a zone with daylight saving: March 2026 in New York is one hour short of 31 days
    start, end = month_window_ms("2026-03", "America/New_York")
    assert end - start == (31 * 24 - 1) * 3600 * 1000


def test_a_month_is_over_at_the_numbers_midnight_not_before() -> None:
    _, end = month_window_ms("2026-11", "Asia/Shanghai")
    with pytest.raises(PeriodError, match="not over yet in Asia/Shanghai"):
        check_month_over("2026-11", "Asia/Shanghai", end - 1)
    check_month_over("2026-11", "Asia/Shanghai", end)
    # 00:30 on 1 December in Shanghai is still November in UTC
    at = ms("2026-11-30T16:30:00+00:00")
    assert last_closed_month(at, "Asia/Shanghai") == "2026-11"
    assert last_closed_month(at, "UTC") == "2026-10"
    assert last_closed_month(ms("2027-01-01T00:00:00+00:00"), "UTC") == "2026-12"


@pytest.mark.parametrize(
    "bad", ["2026-13", "2026-00", "2026-1", "26-11", "2026-11-01", "1999-12", "", "2026-1x"]
)
def test_a_bad_month_is_refused(bad: str) -> None:
    with pytest.raises(PeriodError, match="is not a month like 2026-11"):
        check_month(bad)


@pytest.mark.parametrize("bad", ["Mars/Olympus", "", "../etc/passwd", "Asia/Shanghai "])
def test_a_bad_time_zone_is_refused(bad: str) -> None:
    with pytest.raises(PeriodError, match="is not an IANA name"):
        check_time_zone(bad)


def test_the_minimum_charge_is_the_shortfall_paid_from_what_main_has() -> None:
    assert minimum_charge(100_000, 150_000, 0).charge == 0  # spent above the minimum: nothing
    assert minimum_charge(100_000, 100_000, 0).charge == 0
    c = minimum_charge(100_000, 30_000, 500_000)
    assert (c.charge, c.paid, c.owed) == (70_000, 70_000, 0)
    c = minimum_charge(100_000, 30_000, 20_000)  # main cannot pay it all: the rest is owed
    assert (c.charge, c.paid, c.owed) == (70_000, 20_000, 50_000)
    assert minimum_charge(0, 0, 10).charge == 0  # no minimum
    assert collect(50_000, 20_000) == 20_000 and collect(50_000, 80_000) == 50_000 and collect(5, 0) == 0


def test_the_signature_is_hmac_sha256_over_timestamp_and_body() -> None:
    body = b'{"id":"evt_1","type":"balance.low"}'
    header = signature("s3cret-s3cret-s3cret", 1_800_000_000, body)
    expected = hmac.new(b"s3cret-s3cret-s3cret", b"1800000000." + body, hashlib.sha256).hexdigest()
    assert header == f"v1={expected}"
    assert verify("s3cret-s3cret-s3cret", "1800000000", body, header, now_s=1_800_000_010)
    assert not verify("s3cret-s3cret-s3cret", "1800000000", body + b" ", header, now_s=1_800_000_010)
    assert not verify("another-secret-xx", "1800000000", body, header, now_s=1_800_000_010)
    assert not verify("s3cret-s3cret-s3cret", "1800000001", body, header, now_s=1_800_000_010)
    assert not verify(
        "s3cret-s3cret-s3cret", "1800000000", body, header, now_s=1_800_001_000
    )  # replayed late


def test_retries_back_off_and_go_on_for_more_than_a_day() -> None:
    delays = [retry_delay_s(n) for n in range(1, 12)]
    assert delays[:4] == [10, 20, 40, 80]
    assert max(delays) == 3600 and delays == sorted(delays)
    created = ms("2026-11-01T00:00:00+00:00")
    at, attempts = created, 0
    while True:
        attempts += 1
        nxt = at + int(retry_delay_s(attempts) * 1000)
        if gives_up(created, nxt):
            break
        at = nxt
    assert at - created >= 24 * 3600 * 1000  # the last retry is more than a day after the event
    assert at - created <= RETRY_WINDOW_S * 1000
