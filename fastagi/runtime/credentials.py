"""Passwords (argon2id, salted, argon2-cffi) and random tokens (stored as SHA-256 only).

A session id or an API token is 256 random bits: SHA-256 is enough to store it (nothing to
guess), and lets a request find its row with one indexed lookup. A password is chosen by a
person: it gets argon2id, slow on purpose, run off the event loop by the caller.
"""

from __future__ import annotations

import functools
import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

PASSWORD_CHARS_MIN = 8
PASSWORD_CHARS_MAX = 256
TOKEN_BYTES = 32
API_TOKEN_PREFIX = "ebk_"

_hasher = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (argon2-cffi's default)


@functools.cache
def _dummy_hash() -> str:
    """Verified when the login is unknown, so a wrong login costs as long as a wrong password
    (made on first use: every CLI command imports this module)."""
    return _hasher.hash("extbill: no such user")


class PasswordRuleError(ValueError):
    pass


def check_password(password: str) -> str:
    if not PASSWORD_CHARS_MIN <= len(password) <= PASSWORD_CHARS_MAX:
        raise PasswordRuleError(f"password must be {PASSWORD_CHARS_MIN} to {PASSWORD_CHARS_MAX} characters")
    if any(ord(c) < 32 for c in password):
        raise PasswordRuleError("password must not contain control characters")
    return password


def hash_password(password: str) -> str:
    return _hasher.hash(check_password(password))


def verify_password(pw_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(pw_hash or _dummy_hash(), password) and pw_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
