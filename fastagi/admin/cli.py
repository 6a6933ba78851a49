"""The `extbill` command: HQ's admin operations, `serve`, and the tools around them.

Every refusal exits 2 with one line on stderr and changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from fastagi.core.ledger import LedgerError
from fastagi.core.money import AmountError, format_amount, money_fields, parse_amount
from fastagi.core.numbers import NumberRuleError
from fastagi.core.period import PeriodError, status_text
from fastagi.core.rating import PlanError, Tariff
from fastagi.runtime.config import ConfigError
from fastagi.runtime.log import configure as configure_logging
from fastagi.store import tx_admin
from fastagi.store.base import Store, StoreError
from fastagi.store.documents import balance_document
from fastagi.store.factory import db_target, open_store
from fastagi.store.sqlite import SCHEMA_VERSION

EXIT_REFUSED = 2


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# argparse turns ArgumentTypeError into "argument --x: <our message>", naming the option.
def _amount(text: str) -> int:
    try:
        return parse_amount(text)
    except AmountError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _amount_or_zero(text: str) -> int:
    try:
        return parse_amount(text, allow_zero=True)
    except AmountError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds")
    return int(text)


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{text!r} must be on or off")
    return text == "on"


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, ensure_ascii=False, indent=2))


# ---- subcommand bodies: each gets (store, args) and returns the exit status ----------------


async def cmd_db_init(store: Store, a: argparse.Namespace) -> int:
    print(
        f"database {store.path} {'created' if store.created else 'is up to date'} (schema version {SCHEMA_VERSION})"
    )
    return 0


async def cmd_plan_add(store: Store, a: argparse.Namespace) -> int:
    t = Tariff(
        per_minute=a.per_minute,
        initial_s=a.initial,
        increment_s=a.increment,
        connect_fee=a.connect_fee,
        grace_s=a.grace,
        max_call_s=a.max_call,
    )
    await store.run(tx_admin.add_plan, a.name, t)
    print(
        f"plan {a.name}: {format_amount(t.per_minute)} per minute, {t.initial_s}/{t.increment_s} s blocks, "
        f"connect fee {format_amount(t.connect_fee)}, grace {t.grace_s} s, max call {t.max_call_s} s"
    )
    return 0


async def cmd_plan_rate(store: Store, a: argparse.Namespace) -> int:
    await store.run(tx_admin.set_plan_rate, a.name, a.prefix, a.per_minute)
    print(
        f"plan {a.name}: callers starting {a.prefix or '(default)'} pay {format_amount(a.per_minute)} per minute"
    )
    return 0


async def cmd_plan_list(store: Store, a: argparse.Namespace) -> int:
    plans = money_fields(await store.read(tx_admin.list_plans))
    if a.json:
        _print_json(plans)
        return 0
    for p in plans:
        rates = ", ".join(f"{r['prefix']}:{r['per_minute']}" for r in p["rates"]) or "-"
        print(
            f"{p['name']:<16} {p['per_minute']}/min {p['initial_s']}/{p['increment_s']} s "
            f"connect {p['connect_fee']} grace {p['grace_s']} s max {p['max_call_s']} s  rates: {rates}"
        )
    return 0


async def cmd_number_add(store: Store, a: argparse.Namespace) -> int:
    await store.run(
        tx_admin.add_number, a.number, a.name, a.plan, a.min_balance, a.lang, a.default_dest, a.digit_timeout
    )
    doc = await store.read(tx_admin.balance, a.number)
    state = doc["status"]
    if state == "suspended":
        state += (
            f" until the main balance reaches the minimum of {format_amount(doc['min_balance'])}"
            f" (extbill recharge {a.number} AMOUNT)"
        )
    print(f"number {a.number} ({a.name}) added: IVR on, extension billing off, {state}")
    return 0


async def cmd_number_set(store: Store, a: argparse.Namespace) -> int:
    await store.run(
        tx_admin.set_number,
        a.number,
        ivr=a.ivr,
        ext_billing=a.ext_billing,
        plan=a.plan,
        min_balance=a.min_balance,
        lang=a.lang,
        default_dest=a.default_dest,
        digit_timeout_s=a.digit_timeout,
        name=a.name,
        monthly_minimum=a.monthly_minimum,
        time_zone=a.time_zone,
        low_balance=a.low_balance,
    )
    doc = await store.read(tx_admin.balance, a.number)
    minimum = (
        f", monthly minimum {format_amount(doc['monthly_minimum'])} ({doc['time_zone']})"
        if doc["monthly_minimum"]
        else ""
    )
    print(
        f"number {a.number}: IVR {'on' if doc['ivr'] else 'off'}, extension billing "
        f"{'on' if doc['ext_billing'] else 'off'}{minimum}, {_status(doc)}"
    )
    return 0


def _status(doc: dict[str, Any]) -> str:
    """'active', 'suspended', or why a number that owes is suspended (money fields as ints)."""
    return status_text(doc["status"], doc["owed"], doc["owed_months"])


async def cmd_number_show(store: Store, a: argparse.Namespace) -> int:
    raw = await store.read(tx_admin.balance, a.number)
    doc = money_fields(raw)
    if a.json:
        _print_json(doc)
        return 0
    print(f"{doc['number']}  {doc['name']}  [{_status(raw)}]")
    print(
        f"  IVR {'on' if doc['ivr'] else 'off'}, extension billing {'on' if doc['ext_billing'] else 'off'}, "
        f"language {doc['lang']}, plan {doc['plan'] or '-'}, digit timeout {doc['digit_timeout_s']} s"
    )
    print(f"  default destination {doc['default_dest'] or '-'}, minimum balance {doc['min_balance']}")
    monthly = doc["monthly_minimum"] if raw["monthly_minimum"] else "none"
    print(f"  monthly minimum {monthly} (months close in {doc['time_zone']}), owed {doc['owed']}")
    _print_accounts(doc)
    return 0


def _print_accounts(doc: dict[str, Any]) -> None:
    m = doc["main"]
    print(f"  {'account':<26}{'balance':>14}{'reserved':>12}{'available':>14}{'spent':>12}  status")
    print(
        f"  {'main':<26}{m['balance']:>14}{m['reserved']:>12}{m['available']:>14}{m['spent']:>12}  {doc['status']}"
    )
    for e in doc["extensions"]:
        label = f"ext {e['key']} {e['name']}"[:25]
        print(
            f"  {label:<26}{e['balance']:>14}{e['reserved']:>12}{e['available']:>14}{e['spent']:>12}  {e['status']}"
        )


async def cmd_balance(store: Store, a: argparse.Namespace) -> int:
    doc = await store.read(tx_admin.balance, a.number)
    if a.json:
        _print_json(balance_document(doc))
        return 0
    print(
        f"{doc['number']}  {doc['name']}  [{_status(doc)}]  minimum balance {format_amount(doc['min_balance'])}"
    )
    _print_accounts(money_fields(doc))
    return 0


async def cmd_ext_add(store: Store, a: argparse.Namespace) -> int:
    await store.run(tx_admin.add_extension, a.number, a.key, a.name, a.dest, a.plan)
    print(f"extension {a.key} ({a.name}) of {a.number} added, routes to {a.dest}")
    return 0


async def cmd_ext_set(store: Store, a: argparse.Namespace) -> int:
    await store.run(
        tx_admin.set_extension,
        a.number,
        a.key,
        name=a.name,
        dest=a.dest,
        plan=a.plan,
        low_balance=a.low_balance,
    )
    print(f"extension {a.key} of {a.number} updated")
    return 0


async def cmd_recharge(store: Store, a: argparse.Namespace) -> int:
    if a.csv is not None:
        if a.number is not None or a.ref is not None:
            raise UsageError(
                "extbill recharge: --csv FILE takes no NUMBER, AMOUNT or --ref (refs are in the file)"
            )
        from fastagi.admin.cli_money import cmd_recharge_csv  # noqa: PLC0415  (bulk recharge lives there)

        return await cmd_recharge_csv(store, a)
    if a.key_or_amount is None:
        raise UsageError("extbill recharge: give NUMBER [KEY] AMOUNT, or --csv FILE")
    # `recharge NUMBER [KEY] AMOUNT`: with two positionals the second is the amount.
    key, amount_text = (a.key_or_amount, a.amount) if a.amount is not None else (None, a.key_or_amount)
    amount = parse_amount(amount_text)
    result = await store.run(tx_admin.recharge, a.number, key, amount, a.ref)
    target = f"extension {key} of {a.number}" if key else f"main account of {a.number}"
    if result.created:
        paid = (
            f"; {format_amount(result.collected)} of it paid what the number owed" if result.collected else ""
        )
        print(f"recharged {target} with {format_amount(amount)}{paid}")
    else:
        print(f"recharge {a.ref} was already done; nothing changed")
    return 0


async def cmd_transfer(store: Store, a: argparse.Namespace) -> int:
    result = await store.run(tx_admin.move, a.number, a.key, a.amount, a.ref)
    if result.created:
        print(f"moved {format_amount(a.amount)} from the main account of {a.number} to extension {a.key}")
    else:
        print(f"transfer {a.ref} was already done; nothing changed")
    return 0


async def cmd_statement(store: Store, a: argparse.Namespace) -> int:
    rows = money_fields(await store.read(tx_admin.statement, a.number, a.key, a.limit, a.before, a.archive))
    if a.json:
        _print_json(rows)
    else:
        print(f"{'at':<25}{'what':<22}{'effect':>14}  reference")
        for r in rows:
            what = f"{r['code']} {r['kind']}" if r["kind"] != "posted" else r["code"]
            print(f"{r['at']:<25}{what:<22}{r['effect']:>14}  {r['ref'] or r['id']}")
    from fastagi.admin.cli_history import print_next  # noqa: PLC0415  (it builds on this module)

    print_next(len(rows), a.limit, lambda: str(rows[-1]["seq"]))
    return 0


# ---- the parser ---------------------------------------------------------------------------


def _sub(subs: Any, name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
    p = subs.add_parser(name, help=help, description=help)
    p.add_argument("--db", help="SQLite file or postgresql:// URL (default: $EXTBILL_DB or ./extbill.db)")
    p.set_defaults(fn=fn)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="extbill", description="Per-extension prepaid billing for 400 numbers on Asterisk.")
    subs = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    db = subs.add_parser("db", help="database commands").add_subparsers(
        dest="db_command", required=True, parser_class=_Parser
    )
    _sub(db, "init", cmd_db_init, "create (or migrate) the database")
    from fastagi.admin import cli_db, cli_history  # noqa: PLC0415  (they build on this module's helpers)

    cli_db.add_parsers(db, _sub)
    cli_history.add_db_parsers(db, _sub)

    plan = subs.add_parser("plan", help="rate plans").add_subparsers(
        dest="plan_command", required=True, parser_class=_Parser
    )
    p = _sub(plan, "add", cmd_plan_add, "add a rate plan")
    p.add_argument("name")
    p.add_argument("--per-minute", type=_amount_or_zero, required=True, help="price per minute, e.g. 0.3")
    p.add_argument("--initial", type=_seconds, default=60, help="first billing block, s (default 60)")
    p.add_argument("--increment", type=_seconds, default=60, help="later billing blocks, s (default 60)")
    p.add_argument("--connect-fee", type=_amount_or_zero, default=0, help="per answered call (default 0)")
    p.add_argument("--grace", type=_seconds, default=0, help="calls this short or shorter are free, s")
    p.add_argument(
        "--max-call", type=_seconds, default=7200, help="longest call ever granted, s (default 7200)"
    )
    p = _sub(plan, "rate", cmd_plan_rate, "set the per-minute price for callers with a number prefix")
    p.add_argument("name")
    p.add_argument("prefix", help="caller number prefix; '' for the default")
    p.add_argument("--per-minute", type=_amount_or_zero, required=True)
    p = _sub(plan, "list", cmd_plan_list, "list rate plans")
    p.add_argument("--json", action="store_true")

    num = subs.add_parser("number", help="400 numbers").add_subparsers(
        dest="number_command", required=True, parser_class=_Parser
    )
    p = _sub(num, "add", cmd_number_add, "add a 400 number (IVR on, extension billing off)")
    p.add_argument("number")
    p.add_argument("--name", required=True)
    p.add_argument("--plan")
    p.add_argument("--min-balance", type=_amount_or_zero, default=0)
    p.add_argument("--lang", choices=("zh", "en"), default="zh")
    p.add_argument("--default-dest", help="Dial string for callers who press no key")
    p.add_argument("--digit-timeout", type=_seconds, default=5)
    p = _sub(num, "set", cmd_number_set, "change a 400 number")
    p.add_argument("number")
    p.add_argument("--name")
    p.add_argument("--ivr", type=_on_off)
    p.add_argument("--ext-billing", type=_on_off)
    p.add_argument("--plan")
    p.add_argument("--min-balance", type=_amount_or_zero)
    p.add_argument("--lang", choices=("zh", "en"))
    p.add_argument("--default-dest")
    p.add_argument("--digit-timeout", type=_seconds)
    p.add_argument("--monthly-minimum", type=_amount_or_zero, help="monthly minimum consumption (0: none)")
    p.add_argument("--time-zone", help="where its months close, e.g. Asia/Shanghai (the default)")
    p.add_argument(
        "--low-balance", type=_amount_or_zero, help="balance.low of main below this available amount"
    )
    p = _sub(num, "show", cmd_number_show, "show a number, its settings and its accounts")
    p.add_argument("number")
    p.add_argument("--json", action="store_true")

    ext = subs.add_parser("ext", help="IVR extensions").add_subparsers(
        dest="ext_command", required=True, parser_class=_Parser
    )
    p = _sub(ext, "add", cmd_ext_add, "add an extension to a number")
    p.add_argument("number")
    p.add_argument("key")
    p.add_argument("--name", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--plan")
    p = _sub(ext, "set", cmd_ext_set, "change an extension")
    p.add_argument("number")
    p.add_argument("key")
    p.add_argument("--name")
    p.add_argument("--dest")
    p.add_argument("--plan")
    p.add_argument("--low-balance", type=_amount_or_zero, help="log balance.low below this available amount")

    p = _sub(subs, "recharge", cmd_recharge, "pay money in, to the main account or to an extension")
    p.add_argument("number", nargs="?")
    p.add_argument("key_or_amount", metavar="[KEY] AMOUNT", nargs="?")
    p.add_argument("amount", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--ref", help="idempotency key: repeating it changes nothing")
    p.add_argument("--csv", metavar="FILE", help="bulk: rows number,key,amount,ref; all applied or none")
    p = _sub(subs, "transfer", cmd_transfer, "move money from the main account to an extension")
    p.add_argument("number")
    p.add_argument("key")
    p.add_argument("amount", type=_amount)
    p.add_argument("--ref", help="idempotency key: repeating it changes nothing")
    p = _sub(subs, "balance", cmd_balance, "balances of the main account and every extension")
    p.add_argument("number")
    p.add_argument("--json", action="store_true")
    p = _sub(subs, "statement", cmd_statement, "an account's transfers, newest first")
    p.add_argument("number")
    p.add_argument("key", nargs="?")
    p.add_argument("--json", action="store_true")
    cli_history.add_page_args(p)

    from fastagi.admin import (
        cli_calls,  # noqa: PLC0415  (they build on this module's helpers)
        cli_doctor,  # noqa: PLC0415  (they build on this module's helpers)
        cli_money,  # noqa: PLC0415  (they build on this module's helpers)
        cli_serve,  # noqa: PLC0415  (they build on this module's helpers)
        cli_users,  # noqa: PLC0415  (they build on this module's helpers)
    )

    cli_calls.add_parser(subs, _sub)
    cli_money.add_parsers(subs, _sub)
    cli_serve.add_parsers(subs, _sub)
    cli_doctor.add_parsers(subs, _sub)
    cli_users.add_parsers(subs, _sub)
    # Development commands (sandbox, bench) live in fastagi/dev/, which product code never
    # imports: they register themselves through this entry-point group (pyproject.toml).
    for ep in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        ep.load()(subs, _sub)
    return parser


async def _run(args: argparse.Namespace) -> int:
    if getattr(args, "own_store", False):  # serve, bench, sandbox, doctor open what they need
        return await args.fn(args)
    store = await open_store(db_target(args.db), create=args.fn is cmd_db_init)
    try:
        return await args.fn(store, args)
    finally:
        await store.close()


COMMANDS_GROUP = "extbill.commands"

REFUSALS = (
    ConfigError,
    UsageError,
    AmountError,
    NumberRuleError,
    PlanError,
    PeriodError,
    StoreError,
    LedgerError,
)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "own_store", False):
            # admin commands log state changes (suspended/resumed) on stderr: readable on a
            # terminal, JSON lines when captured by a script or a log pipeline
            configure_logging("console" if sys.stderr.isatty() else "json")
        if getattr(args, "fast_loop", False):
            # serve: uvloop's C event loop and transports cut the per-connection cost of
            # FastAGI (a new TCP connection per AGI request) by about a fifth
            import uvloop  # noqa: PLC0415

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(_run(args))
        return asyncio.run(_run(args))
    except REFUSALS as exc:
        print(f"extbill: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except argparse.ArgumentTypeError as exc:
        print(f"extbill: error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
