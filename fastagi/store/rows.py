"""Stored rows to what readers show: the store keeps times as Unix ms and leaves out what a
row derives from its own id (migrations/0006_compact_calls.sql); the ISO 8601 text and the
derived values are made here, on the way out, exactly as they were once stored.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from fastagi.core.clock import iso_from_ms, ms_from_iso
from fastagi.store.base import StoreError

_DAY_MS = 86_400_000
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_CALL_PREFIX = "call:"


def iso(ms: int | None) -> str | None:
    return None if ms is None else iso_from_ms(ms)


def ms_of(text: str | None) -> int | None:
    return None if text is None else ms_from_iso(text)


def day_ms(text: str) -> int:
    """'YYYY-MM-DD' (midnight UTC) or an ISO 8601 UTC time -> Unix ms; StoreError if neither."""
    try:
        if len(text) == 10:
            return (date.fromisoformat(text).toordinal() - _EPOCH_DAY) * _DAY_MS
        if not text.endswith("Z"):
            raise ValueError(text)
        return ms_from_iso(text)
    except ValueError:
        raise StoreError(f"{text[:40]!r} is not a date or a UTC time") from None


def call_pending_id(billing_id: str) -> str:
    """A call's first reservation (tx_calls.route writes it)."""
    return _CALL_PREFIX + billing_id


def transfer_view(t: dict[str, Any]) -> dict[str, Any]:
    """A stored transfer with created_at (ISO text) and, on a call's first reservation, its
    ref (the billing id: the id's tail)."""
    ref = t["ref"]
    if ref is None and t["code"] == "call" and t["kind"] == "pending" and t["id"].startswith(_CALL_PREFIX):
        ref = t["id"][len(_CALL_PREFIX) :]
    return {**t, "ref": ref, "created_at": iso_from_ms(t["created_ms"])}


def call_ref(transfer_id: str, billing_id: str) -> str | None:
    """The ref a call's reservation stores: none when the id already holds the billing id."""
    return None if transfer_id == _CALL_PREFIX + billing_id else billing_id
