"""structlog set-up: one explicit configure() at start, JSON lines or console, to stderr.

Per-call context (uniqueid, number, ...) is bound with structlog.contextvars in the
server, so every line of a call carries it.

JSON lines are made by orjson and written as bytes: serve logs two lines per call setup,
and the standard library's encoder and the text layer made those lines a tenth of serve's
CPU per FastAGI request (README.md, "Benchmark").
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog

FORMATS = ("json", "console")


def configure(fmt: str = "json", level: str = "info", stream: TextIO | None = None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r} must be one of {', '.join(FORMATS)}")
    out = stream or sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    binary = getattr(out, "buffer", None)
    factory: Any
    if fmt == "json" and binary is not None:
        processors.append(structlog.processors.JSONRenderer(serializer=json_line))
        out.flush()  # what was written as text so far goes first
        factory = structlog.BytesLoggerFactory(binary)
    else:  # the console, or a text-only stream (a test's StringIO)
        renderer = (
            structlog.processors.JSONRenderer(ensure_ascii=False)
            if fmt == "json"
            else structlog.dev.ConsoleRenderer(colors=False)
        )
        processors.append(renderer)
        factory = structlog.WriteLoggerFactory(out)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        # One write per line (message and newline together): print() writes them apart, and
        # serve's worker processes share stderr, so their lines ran into each other.
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )


def json_line(event: dict[str, Any], default: Callable[[Any], Any] | None = None, **_: Any) -> bytes:
    """One event as UTF-8 JSON. orjson refuses what json accepts (integers past 64 bits,
    a key that is not a string or a number): such a line is made by json instead, so a
    log call never fails."""
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(event, default=default, ensure_ascii=False).encode()
