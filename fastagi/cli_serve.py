"""`extbill serve` and friends (wired in by the call-control work)."""
from __future__ import annotations

from typing import Any, Callable


def add_parsers(subs: Any, sub: Callable) -> None:
    return None
