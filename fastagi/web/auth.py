"""Console sign-in and sessions, CSRF and Origin checks, sign-in throttling.

A session is a server-side row; the cookie holds only an opaque random id (the row holds its
SHA-256), HttpOnly, SameSite=Lax, Secure when the request came over HTTPS. Sign-in always
makes a new id; a session ends after SESSION_IDLE_MS unused or SESSION_ABSOLUTE_MS in all,
and every session of a user ends when the password changes (tx_web.set_password).
"""

from __future__ import annotations

import asyncio
import hmac
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fastagi.runtime import credentials
from fastagi.store import tx_web
from fastagi.web.errors import Forbidden
from fastagi.web.scope import Principal

SESSION_COOKIE = "extbill_session"
LOGIN_COOKIE = "extbill_login"  # the sign-in form's CSRF token (double submit: no session yet)
SESSION_IDLE_MS = 30 * 60 * 1000
SESSION_ABSOLUTE_MS = 12 * 3600 * 1000
SEEN_WRITE_MS = 60 * 1000  # a session's last-seen time is written at most this often
LOGIN_FAILS_MAX = 5  # failed sign-ins per login per window, then refused until it passes
ADDRESS_FAILS_MAX = 20  # failed sign-ins per client address per window
LOGIN_WINDOW_MS = 15 * 60 * 1000
THROTTLE_KEYS_MAX = 10_000  # logins and addresses remembered; the oldest go first
LOGIN_FAILED = (
    "Sign-in failed: wrong login or password, or too many attempts. Wait a few minutes and try again."
)


class LoginFailed(Exception):
    pass


class Throttle:
    """Failed sign-ins per key (a login, an address) in a sliding window, in memory."""

    def __init__(self) -> None:
        self._fails: dict[str, deque[int]] = {}

    def _recent(self, key: str, now_ms: int) -> deque[int]:
        q = self._fails.get(key) or deque()
        while q and q[0] <= now_ms - LOGIN_WINDOW_MS:
            q.popleft()
        return q

    def blocked(self, key: str, limit: int, now_ms: int) -> bool:
        return len(self._recent(key, now_ms)) >= limit

    def fail(self, key: str, now_ms: int) -> None:
        q = self._recent(key, now_ms)
        q.append(now_ms)
        self._fails.pop(key, None)
        self._fails[key] = q  # most recent last: eviction takes the oldest
        while len(self._fails) > THROTTLE_KEYS_MAX:
            self._fails.pop(next(iter(self._fails)))


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    id_hash: str
    csrf: str


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def current(request: Request) -> Session | None:
    """The request's live session, or None (no cookie, unknown, idle or too old)."""
    web = request.app.state.web
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    id_hash = credentials.token_hash(cookie)
    row = await web.store.read(tx_web.session_user, id_hash)
    if row is None:
        return None
    now = web.clock()
    if now - row["seen_ms"] > SESSION_IDLE_MS or now - row["created_ms"] > SESSION_ABSOLUTE_MS:
        await web.store.run(tx_web.end_session, id_hash)
        return None
    if now - row["seen_ms"] > SEEN_WRITE_MS:
        await web.store.run(tx_web.touch_session, id_hash, now)
    p = Principal(
        row["login"],
        row["role"],
        row["number"],
        row["ext"],
        client_address(request),
        user_id=row["id"],
        lang=row["lang"],
    )
    return Session(p, id_hash, row["csrf"])


async def sign_in(request: Request, login: str, password: str) -> str:
    """A new session's cookie value; LoginFailed (one generic message) otherwise."""
    web = request.app.state.web
    now = web.clock()
    address = client_address(request) or "-"
    keys = ((f"login:{login}", LOGIN_FAILS_MAX), (f"addr:{address}", ADDRESS_FAILS_MAX))
    if any(web.throttle.blocked(k, limit, now) for k, limit in keys):
        raise LoginFailed(LOGIN_FAILED)
    user = await web.store.read(tx_web.user_by_login, login) if login else None
    # argon2 on a worker thread: call control shares this event loop
    ok = await asyncio.to_thread(
        credentials.verify_password, user["password_hash"] if user else None, password
    )
    if not ok or user is None:
        for k, _ in keys:
            web.throttle.fail(k, now)
        raise LoginFailed(LOGIN_FAILED)
    cookie = credentials.new_token()
    await web.store.run(
        tx_web.create_session,
        credentials.token_hash(cookie),
        user["id"],
        credentials.new_token(),
        address,
        now,
    )
    return cookie


def set_cookie(request: Request, response: Response, name: str, value: str, max_age_s: int | None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age_s,
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def check_origin(request: Request) -> None:
    """A state-changing request must come from a page of this site (Origin, else Referer)."""
    own = f"{request.url.scheme}://{request.headers.get('host', '')}"
    origin = request.headers.get("origin")
    if origin is not None:
        if origin != own:
            raise Forbidden(f"request refused: it came from {origin}, not from this site")
        return
    referer = request.headers.get("referer", "")
    if not (referer == own or referer.startswith(own + "/")):
        raise Forbidden("request refused: no Origin or Referer header of this site")


def check_csrf(expected: str | None, form: Any) -> None:
    given = form.get("csrf") or ""
    if not expected or not isinstance(given, str) or not hmac.compare_digest(given, expected):
        raise Forbidden("request refused: the form's security token is missing or stale; reload the page")
