"""structlog set-up: one explicit configure() at start, JSON lines or console, to stderr.

Per-call context (uniqueid, number, ...) is bound with structlog.contextvars in the
server, so every line of a call carries it.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

FORMATS = ("json", "console")


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} must be one of {', '.join(FORMATS)}")
    renderer = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (message and newline together): print() writes them apart, and
        # serve's worker processes share stderr, so their lines ran into each other.
        logger_factory=structlog.WriteLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
