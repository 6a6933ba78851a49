"""Query and form values at the web edge: parsed once, refused with one clear line."""

from __future__ import annotations

import base64
import json
import re
from datetime import date, timedelta
from typing import Any

from fastagi.core.clock import ms_from_iso
from fastagi.core.ids import is_billing_id
from fastagi.store.tx_web_reads import CALL_STATES, PAGE_ROWS_MAX
from fastagi.web.errors import BadRequest

PAGE_ROWS_DEFAULT = 50
IDEMPOTENCY_KEY_CHARS_MAX = 255


def day(text: str | None, name: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a date like 2026-11-26") from None


def call_filters(q: Any) -> dict[str, Any]:
    """since/until (inclusive days, UTC) and state from a query string, as calls_page takes them."""
    since, until = day(q.get("since"), "since"), day(q.get("until"), "until")
    if since and until and until < since:
        raise BadRequest(f"until {until} is before since {since}")
    state = q.get("state") or None
    if state is not None and state not in CALL_STATES:
        raise BadRequest(f"state: {state!r} must be one of {', '.join(CALL_STATES)}")
    return {
        "since": since.isoformat() if since else None,
        "until_before": (until + timedelta(days=1)).isoformat() if until else None,
        "state": state,
    }


def limit(q: Any) -> int:
    text = q.get("limit")
    if text is None or text == "":
        return PAGE_ROWS_DEFAULT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= PAGE_ROWS_MAX:
        raise BadRequest(f"limit: {text!r} must be a whole number from 1 to {PAGE_ROWS_MAX}")
    return int(text)


def encode_cursor(value: Any) -> str | None:
    if value is None:
        return None
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(text: str | None, shape: type) -> Any:
    """A cursor this server gave: a [start_at, billing_id] pair (calls) or a seq (statement)."""
    if not text:
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, UnicodeDecodeError):
        value = None
    # only what a page's last row can give: a call's start as iso_from_ms writes it and a
    # billing id as the dialplan's rule has it, or a transfer's seq (a positive SQL integer)
    if (
        shape is tuple
        and isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, str) for v in value)
        and _CURSOR_TIME.fullmatch(value[0])
        and _is_time(value[0])
        and is_billing_id(value[1])
    ):
        return tuple(value)
    if shape is int and isinstance(value, int) and not isinstance(value, bool) and 0 < value < 2**63:
        return value
    raise BadRequest(f"cursor: {text[:40]!r} is not a cursor this server gave")


_CURSOR_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


def _is_time(text: str) -> bool:
    try:
        ms_from_iso(text)
    except ValueError:
        return False
    return True


def idempotency_key(text: str | None) -> str:
    if text is None or text == "":
        raise BadRequest("the Idempotency-Key header is required for this request")
    if len(text) > IDEMPOTENCY_KEY_CHARS_MAX or not text.isascii() or not text.isprintable():
        raise BadRequest(
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_CHARS_MAX} printable ASCII characters"
        )
    return text
