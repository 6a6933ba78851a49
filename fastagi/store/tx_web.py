"""The web layer's rows in SQL: users, sessions, one-time form tokens, API keys.

Each function runs inside one transaction (sqlite.py). Secrets never reach this module in
clear: passwords arrive argon2-hashed, session ids and API tokens SHA-256-hashed.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from fastagi.runtime.clock import now_iso
from fastagi.store.base import Conflict, NotFound, StoreError

ROLES = ("operator", "hq", "branch")
_LOGIN_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_KEY_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SESSIONS_PER_USER_MAX = 20  # the oldest goes when a user signs in once more
FORM_TOKENS_PER_SESSION_MAX = 200  # forms rendered and not yet submitted, per session


# ---- users --------------------------------------------------------------------------------


def _scope_ids(
    conn: sqlite3.Connection, role: str, number: str | None, ext: str | None
) -> tuple[int | None, int | None]:
    if role not in ROLES:
        raise StoreError(f"role {role!r} must be one of {', '.join(ROLES)}")
    if role == "operator":
        if number is not None or ext is not None:
            raise StoreError("an operator sees every number: give no --number or --ext")
        return None, None
    if number is None:
        raise StoreError(f"a {role} user needs --number")
    row = conn.execute("SELECT id FROM numbers WHERE number=?", (number,)).fetchone()
    if row is None:
        raise NotFound(f"unknown number {number}")
    if role == "hq":
        if ext is not None:
            raise StoreError("an hq user sees the whole number: give no --ext")
        return row[0], None
    if ext is None:
        raise StoreError("a branch user needs --ext (the extension key it may see)")
    erow = conn.execute(
        "SELECT id, removed_at FROM extensions WHERE number_id=? AND key=?", (row[0], ext)
    ).fetchone()
    if erow is None:
        raise NotFound(f"number {number} has no extension {ext}")
    if erow["removed_at"] is not None:  # the words of tx_admin._ext_row
        raise NotFound(f"extension {ext} of {number} was removed on {erow['removed_at'][:10]}")
    return row[0], erow[0]


def add_user(
    conn: sqlite3.Connection, login: str, role: str, number: str | None, ext: str | None, pw_hash: str
) -> None:
    if not _LOGIN_RE.fullmatch(login):
        raise StoreError(
            f"login {login!r} must be 1 to 64 letters, digits or . _ @ - (a letter or digit first)"
        )
    if conn.execute("SELECT 1 FROM users WHERE login=?", (login,)).fetchone():
        raise Conflict(f"user {login} already exists")
    number_id, ext_id = _scope_ids(conn, role, number, ext)
    conn.execute(
        "INSERT INTO users (login, role, number_id, extension_id, password_hash, created_at) "
        "VALUES (?,?,?,?,?,?)",
        (login, role, number_id, ext_id, pw_hash, now_iso()),
    )


_USER_SQL = (
    "SELECT u.id, u.login, u.role, u.password_hash, u.lang, u.created_at, n.number, e.key AS ext "
    "FROM users u LEFT JOIN numbers n ON n.id = u.number_id LEFT JOIN extensions e ON e.id = u.extension_id"
)


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(_USER_SQL + " ORDER BY u.login").fetchall()
    return [{k: r[k] for k in ("login", "role", "number", "ext", "lang", "created_at")} for r in rows]


def user_by_login(conn: sqlite3.Connection, login: str) -> dict[str, Any] | None:
    row = conn.execute(_USER_SQL + " WHERE u.login=?", (login,)).fetchone()
    return dict(row) if row is not None else None


def set_password(conn: sqlite3.Connection, login: str, pw_hash: str) -> int:
    """New password hash; every session of the user ends. Returns how many ended."""
    row = conn.execute("SELECT id FROM users WHERE login=?", (login,)).fetchone()
    if row is None:
        raise NotFound(f"unknown user {login}")
    conn.execute("UPDATE users SET password_hash=? WHERE id=?", (pw_hash, row[0]))
    return conn.execute("DELETE FROM web_sessions WHERE user_id=?", (row[0],)).rowcount


def remove_user(conn: sqlite3.Connection, login: str) -> None:
    row = conn.execute("SELECT id FROM users WHERE login=?", (login,)).fetchone()
    if row is None:
        raise NotFound(f"unknown user {login}")
    conn.execute("DELETE FROM web_sessions WHERE user_id=?", (row[0],))
    conn.execute("DELETE FROM users WHERE id=?", (row[0],))


def set_user_lang(conn: sqlite3.Connection, user_id: int, lang: str) -> None:
    if lang not in ("zh", "en"):
        raise StoreError(f"language {lang!r} must be zh or en")
    conn.execute("UPDATE users SET lang=? WHERE id=?", (lang, user_id))


# ---- sessions -----------------------------------------------------------------------------


def create_session(
    conn: sqlite3.Connection, id_hash: str, user_id: int, csrf: str, address: str | None, now_ms: int
) -> None:
    conn.execute(
        "INSERT INTO web_sessions (id_hash, user_id, csrf, address, created_ms, seen_ms) VALUES (?,?,?,?,?,?)",
        (id_hash, user_id, csrf, address, now_ms, now_ms),
    )
    conn.execute(
        "DELETE FROM web_sessions WHERE user_id=? AND id_hash NOT IN (SELECT id_hash FROM web_sessions "
        "WHERE user_id=? ORDER BY created_ms DESC LIMIT ?)",
        (user_id, user_id, SESSIONS_PER_USER_MAX),
    )


def session_user(conn: sqlite3.Connection, id_hash: str) -> dict[str, Any] | None:
    """The session and its user, or None; the caller judges the timeouts."""
    row = conn.execute(
        "SELECT s.id_hash, s.csrf, s.created_ms, s.seen_ms, u.id, u.login, u.role, u.lang, "
        "n.number, e.key AS ext FROM web_sessions s JOIN users u ON u.id = s.user_id "
        "LEFT JOIN numbers n ON n.id = u.number_id LEFT JOIN extensions e ON e.id = u.extension_id "
        "WHERE s.id_hash=?",
        (id_hash,),
    ).fetchone()
    return dict(row) if row is not None else None


def touch_session(conn: sqlite3.Connection, id_hash: str, now_ms: int) -> None:
    conn.execute("UPDATE web_sessions SET seen_ms=? WHERE id_hash=?", (now_ms, id_hash))


def end_session(conn: sqlite3.Connection, id_hash: str) -> None:
    conn.execute("DELETE FROM form_tokens WHERE session=?", (id_hash,))
    conn.execute("DELETE FROM web_sessions WHERE id_hash=?", (id_hash,))


# ---- one-time form tokens -----------------------------------------------------------------


def issue_form_token(conn: sqlite3.Connection, token: str, session: str, now_ms: int, ttl_ms: int) -> None:
    conn.execute("DELETE FROM form_tokens WHERE created_ms < ?", (now_ms - ttl_ms,))
    conn.execute(
        "INSERT INTO form_tokens (token, session, created_ms) VALUES (?,?,?)", (token, session, now_ms)
    )
    conn.execute(
        "DELETE FROM form_tokens WHERE session=? AND token NOT IN (SELECT token FROM form_tokens "
        "WHERE session=? ORDER BY created_ms DESC LIMIT ?)",
        (session, session, FORM_TOKENS_PER_SESSION_MAX),
    )


def consume_form_token(conn: sqlite3.Connection, token: str, session: str, now_ms: int, ttl_ms: int) -> bool:
    """True the first time a valid token is submitted, False on a repeat; refuse an unknown one."""
    row = conn.execute(
        "SELECT session, created_ms, used_ms FROM form_tokens WHERE token=?", (token,)
    ).fetchone()
    if row is None or row["session"] != session or row["created_ms"] < now_ms - ttl_ms:
        raise StoreError("this form has expired; reload the page and try again")
    if row["used_ms"] is not None:
        return False
    conn.execute("UPDATE form_tokens SET used_ms=? WHERE token=?", (now_ms, token))
    return True


# ---- API keys -----------------------------------------------------------------------------


def add_api_key(conn: sqlite3.Connection, name: str, number: str, token_hash: str, prefix: str) -> None:
    if not _KEY_NAME_RE.fullmatch(name):
        raise StoreError(
            f"key name {name!r} must be 1 to 64 letters, digits or . _ - (a letter or digit first)"
        )
    if conn.execute("SELECT 1 FROM api_keys WHERE name=?", (name,)).fetchone():
        raise Conflict(f"API key {name} already exists")
    row = conn.execute("SELECT id FROM numbers WHERE number=?", (number,)).fetchone()
    if row is None:
        raise NotFound(f"unknown number {number}")
    conn.execute(
        "INSERT INTO api_keys (name, number_id, token_hash, prefix, created_at) VALUES (?,?,?,?,?)",
        (name, row[0], token_hash, prefix, now_iso()),
    )


def list_api_keys(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT k.name, n.number, k.prefix, k.created_at, k.revoked_at FROM api_keys k "
        "JOIN numbers n ON n.id = k.number_id ORDER BY k.name"
    ).fetchall()
    return [dict(r) for r in rows]


def revoke_api_key(conn: sqlite3.Connection, name: str) -> bool:
    """True when revoked now, False when it already was."""
    row = conn.execute("SELECT id, revoked_at FROM api_keys WHERE name=?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"unknown API key {name}")
    if row["revoked_at"] is not None:
        return False
    conn.execute("UPDATE api_keys SET revoked_at=? WHERE id=?", (now_iso(), row["id"]))
    return True


def api_key_by_hash(conn: sqlite3.Connection, token_hash: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT k.id, k.name, n.number FROM api_keys k JOIN numbers n ON n.id = k.number_id "
        "WHERE k.token_hash=? AND k.revoked_at IS NULL",
        (token_hash,),
    ).fetchone()
    return dict(row) if row is not None else None
