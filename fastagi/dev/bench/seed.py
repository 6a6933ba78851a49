"""The benchmark's data set: numbers x extensions on a few plans with prefix rates.

Built with the admin operations of tx_admin (the same rules and ledger transfers as
the CLI), all inside one transaction, so 1,000 numbers x 20 extensions take seconds.
The layout is deterministic, so the load generator and the references can compute
which number/key is which kind of call without reading the database.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from fastagi.core.money import parse_amount
from fastagi.core.rating import Tariff
from fastagi.store import tx_admin

NUMBER_FIRST = 4001000000  # bench numbers: 4001000000, 4001000001, ...
KEY_FIRST = 10  # keys 10, 11, ...: two digits, none a prefix of another
EXTENSIONS_MAX = 90  # keys 10..99
ARREARS_PER_NUMBER = 2  # the last keys of every number cannot pay a first block
EXT_FUNDS = parse_amount("20000")  # enough for many 2-hour grants at the dearest prefix rate
MAIN_FUNDS = parse_amount("1000000")
MIN_BALANCE = parse_amount("50")
ARREARS_FUNDS = parse_amount("0.01")  # below every plan's first block: "ext-in-arrears"

# name, tariff, {caller prefix: per-minute}
PLANS: tuple[tuple[str, Tariff, dict[str, int]], ...] = (
    (
        "standard",
        Tariff(per_minute=parse_amount("0.6"), initial_s=60, increment_s=6),
        {"00": parse_amount("3"), "0": parse_amount("0.9"), "1380": parse_amount("0.5")},
    ),
    (
        "economy",
        Tariff(per_minute=parse_amount("0.3"), initial_s=6, increment_s=6, grace_s=3),
        {"00": parse_amount("2.4"), "010": parse_amount("0.25")},
    ),
    (
        "premium",
        Tariff(per_minute=parse_amount("1.2"), initial_s=60, increment_s=60, connect_fee=parse_amount("0.1")),
        {
            "00": parse_amount("4.5"),
            "0": parse_amount("1.5"),
            "13": parse_amount("1"),
            "139": parse_amount("0.9"),
        },
    ),
)


@dataclass(frozen=True, slots=True)
class DataSet:
    numbers: int = 1000
    extensions: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.numbers <= 1_000_000:
            raise ValueError("numbers must be 1..1,000,000")
        if not ARREARS_PER_NUMBER < self.extensions <= EXTENSIONS_MAX:
            raise ValueError(f"extensions must be {ARREARS_PER_NUMBER + 1}..{EXTENSIONS_MAX}")

    def number(self, i: int) -> str:
        return str(NUMBER_FIRST + i)

    def funded_keys(self) -> list[str]:
        return [str(KEY_FIRST + k) for k in range(self.extensions - ARREARS_PER_NUMBER)]

    def arrears_keys(self) -> list[str]:
        return [str(KEY_FIRST + k) for k in range(self.extensions - ARREARS_PER_NUMBER, self.extensions)]


def seed(conn: sqlite3.Connection, ds: DataSet) -> None:
    """Plans, numbers (IVR and extension billing on, a default destination), extensions, money."""
    for name, tariff, rates in PLANS:
        tx_admin.add_plan(conn, name, tariff)
        for prefix, per_minute in rates.items():
            tx_admin.set_plan_rate(conn, name, prefix, per_minute)
    funded, arrears = ds.funded_keys(), ds.arrears_keys()
    for i in range(ds.numbers):
        number = ds.number(i)
        plan = PLANS[i % len(PLANS)][0]
        tx_admin.add_number(
            conn,
            number,
            f"Bench HQ {i}",
            plan,
            MIN_BALANCE,
            "zh" if i % 4 else "en",
            f"Local/operator{i}@bench-branches",
            5,
        )
        tx_admin.set_number(conn, number, ext_billing=True)
        tx_admin.recharge(conn, number, None, MAIN_FUNDS, f"bench-main-{number}")
        for j, key in enumerate(funded + arrears):
            # every fifth extension has its own plan, overriding the number's
            own_plan = PLANS[(i + j) % len(PLANS)][0] if j % 5 == 4 else None
            tx_admin.add_extension(
                conn, number, key, f"Branch {key}", f"Local/{number}{key}@bench-branches", own_plan
            )
            amount = EXT_FUNDS if key in funded else ARREARS_FUNDS
            tx_admin.recharge(conn, number, key, amount, f"bench-ext-{number}-{key}")


def seed_file(path: str, ds: DataSet) -> None:
    """Create and seed a new database file (synchronously: the bench does it before any load)."""
    from fastagi.store.sqlite import _configure, _migrate  # noqa: PLC0415

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _configure(conn)
        if not _migrate(conn):
            raise RuntimeError(f"{path} is not a new database")
        conn.execute("BEGIN IMMEDIATE")
        try:
            seed(conn, ds)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
