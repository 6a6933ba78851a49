"""The wall clock: the one place the product reads the time (the core takes it as data)."""

from __future__ import annotations

import time

from fastagi.core.clock import iso_from_ms


def now_ms() -> int:
    return int(time.time() * 1000)


def now_iso() -> str:
    return iso_from_ms(now_ms())
