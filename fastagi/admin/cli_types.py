"""argparse value types shared by the subcommands: one clear message per bad value."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds_up_to(maximum: float) -> Callable[[str], float]:
    """A type for a positive duration in seconds, at most `maximum` (timeouts, run lengths)."""

    def parse(text: str) -> float:
        try:
            value = float(text)  # a duration, never money
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not 0 < value <= maximum:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0 and at most {maximum:g} seconds")
        return value

    return parse
