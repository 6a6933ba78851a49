"""`extbill user` and `extbill apikey`: who may use the console, and which systems the API.

A password is read from standard input (never an argument: it would show in `ps` and the
shell's history); an API token is printed once and stored only as its hash.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Callable
from typing import Any

from fastagi.runtime import credentials
from fastagi.store import tx_web
from fastagi.store.base import StoreError


def _read_password() -> str:
    try:
        if sys.stdin.isatty():
            first = getpass.getpass("password: ")
            if getpass.getpass("again: ") != first:
                raise StoreError("the two passwords differ; nothing changed")
            password = first
        else:
            password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
        return credentials.hash_password(password)
    except credentials.PasswordRuleError as exc:
        raise StoreError(f"{exc} (read from standard input)") from None


async def cmd_user_add(store: Any, a: argparse.Namespace) -> int:
    pw_hash = _read_password()
    await store.run(tx_web.add_user, a.login, a.role, a.number, a.ext, pw_hash)
    scope = {
        "operator": "every number",
        "hq": f"number {a.number}",
        "branch": f"extension {a.ext} of {a.number}",
    }
    print(f"user {a.login} added: role {a.role}, sees {scope[a.role]}")
    return 0


async def cmd_user_list(store: Any, a: argparse.Namespace) -> int:
    print(f"{'login':<24}{'role':<10}{'number':<12}{'ext':<6}created")
    for u in await store.read(tx_web.list_users):
        print(f"{u['login']:<24}{u['role']:<10}{u['number'] or '-':<12}{u['ext'] or '-':<6}{u['created_at']}")
    return 0


async def cmd_user_passwd(store: Any, a: argparse.Namespace) -> int:
    pw_hash = _read_password()
    ended = await store.run(tx_web.set_password, a.login, pw_hash)
    print(f"password of {a.login} changed; {ended} session(s) signed out")
    return 0


async def cmd_user_remove(store: Any, a: argparse.Namespace) -> int:
    await store.run(tx_web.remove_user, a.login)
    print(f"user {a.login} removed")
    return 0


async def cmd_apikey_add(store: Any, a: argparse.Namespace) -> int:
    token = credentials.new_api_token()
    prefix = token[: len(credentials.API_TOKEN_PREFIX) + 6]
    await store.run(tx_web.add_api_key, a.name, a.number, credentials.token_hash(token), prefix)
    print(token)
    print(
        f"API key {a.name} for number {a.number}: the token above is shown once; keep it secret",
        file=sys.stderr,
    )
    return 0


async def cmd_apikey_list(store: Any, a: argparse.Namespace) -> int:
    print(f"{'name':<24}{'number':<12}{'token':<14}{'created':<26}revoked")
    for k in await store.read(tx_web.list_api_keys):
        print(
            f"{k['name']:<24}{k['number']:<12}{k['prefix'] + '...':<14}{k['created_at']:<26}{k['revoked_at'] or '-'}"
        )
    return 0


async def cmd_apikey_revoke(store: Any, a: argparse.Namespace) -> int:
    now = await store.run(tx_web.revoke_api_key, a.name)
    print(f"API key {a.name} {'revoked' if now else 'was already revoked; nothing changed'}")
    return 0


def add_parsers(subs: Any, sub: Callable) -> None:
    user = subs.add_parser("user", help="console users").add_subparsers(
        dest="user_command",
        required=True,
        parser_class=subs._parser_class,  # noqa: SLF001
    )
    p = sub(user, "add", cmd_user_add, "add a console user; the password is read from standard input")
    p.add_argument("login")
    p.add_argument("--role", required=True, choices=tx_web.ROLES)
    p.add_argument("--number", help="the 400 number an hq or branch user sees")
    p.add_argument("--ext", help="the extension key a branch user sees")
    sub(user, "list", cmd_user_list, "list console users")
    p = sub(user, "passwd", cmd_user_passwd, "set a user's password (from standard input); signs them out")
    p.add_argument("login")
    p = sub(user, "remove", cmd_user_remove, "remove a console user; signs them out")
    p.add_argument("login")

    key = subs.add_parser("apikey", help="API keys for payment systems").add_subparsers(
        dest="apikey_command",
        required=True,
        parser_class=subs._parser_class,  # noqa: SLF001
    )
    p = sub(key, "add", cmd_apikey_add, "add an API key for one number; prints its token once")
    p.add_argument("name")
    p.add_argument("--number", required=True)
    sub(key, "list", cmd_apikey_list, "list API keys (never their tokens)")
    p = sub(key, "revoke", cmd_apikey_revoke, "revoke an API key")
    p.add_argument("name")
