"""Signed webhooks, pure: the signature, its check, and the retry schedule.

A delivery is an HTTP POST of a JSON body with three headers:
    X-Extbill-Event-Id   the event's unique id (receivers deduplicate on it)
    X-Extbill-Timestamp  Unix seconds when this attempt was signed
    X-Extbill-Signature  v1=<hex HMAC-SHA256 of "<timestamp>.<body>" with the shared secret>
Signing the timestamp with the body lets a receiver refuse a replayed old request.
"""

from __future__ import annotations

import hashlib
import hmac

EVENT_ID_HEADER = "X-Extbill-Event-Id"
TIMESTAMP_HEADER = "X-Extbill-Timestamp"
SIGNATURE_HEADER = "X-Extbill-Signature"
SIGNATURE_VERSION = "v1"

# Retry schedule: the first retry after RETRY_FIRST_S, doubling up to RETRY_MAX_GAP_S,
# for RETRY_WINDOW_S after the event was written; then the event is marked failed
# (`extbill events retry ID` puts it back in line).
RETRY_FIRST_S = 10
RETRY_MAX_GAP_S = 3600
RETRY_WINDOW_S = 26 * 3600  # more than a day: a receiver down over a weekend night still gets it
SIGNATURE_TOLERANCE_S = 300  # what verify() accepts as "now" by default


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for one attempt."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_VERSION}={mac.hexdigest()}"


def verify(
    secret: str,
    timestamp: str,
    body: bytes,
    header: str,
    now_s: int,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent."""
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if abs(now_s - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, int(timestamp), body), header)


def retry_delay_s(attempts: int, first_s: float = RETRY_FIRST_S, max_gap_s: float = RETRY_MAX_GAP_S) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1, 2, ...): doubling, capped."""
    if attempts < 1:
        raise ValueError("attempts start at 1")
    return min(first_s * 2.0 ** min(attempts - 1, 32), max_gap_s)


def gives_up(created_ms: int, next_ms: int, window_s: float = RETRY_WINDOW_S) -> bool:
    """True when the next attempt would fall outside the retry window: mark the event failed."""
    return next_ms - created_ms > window_s * 1000
