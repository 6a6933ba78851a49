"""The demo data a new database gets from `extbill serve` (setting demo=true) and `extbill sandbox`.

One 400 number with IVR and extension billing on, a plan, three extensions: one with
money, one in arrears, one with a little money; main has enough to be active.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from fastagi.core.money import parse_amount
from fastagi.core.rating import Tariff
from fastagi.runtime.credentials import hash_password
from fastagi.store import tx_admin, tx_web

DEMO_NUMBER = "4008001234"
# The console's demo sign-ins (`bash .ci/serve` prints them): HQ of the demo number, and the
# Beijing branch (extension 1). Demo data only; real users come from `extbill user add`.
DEMO_USERS = {"demo-hq": ("hq", None), "demo-branch": ("branch", "1")}
DEMO_PASSWORD = "extbill-demo"
DEMO_DESTS = {
    "operator": "Local/operator@extbill-demo-branch",
    "1": "Local/beijing@extbill-demo-branch",
    "2": "Local/shanghai@extbill-demo-branch",
    "3": "Local/shenzhen@extbill-demo-branch",
}


def seed(conn: sqlite3.Connection, dests: Mapping[str, str] = DEMO_DESTS, digit_timeout_s: int = 5) -> None:
    tx_admin.add_plan(conn, "standard", Tariff(per_minute=parse_amount("0.6"), initial_s=6, increment_s=6))
    tx_admin.set_plan_rate(conn, "standard", "00", parse_amount("3"))
    tx_admin.add_number(
        conn, DEMO_NUMBER, "Demo HQ", "standard", parse_amount("50"), "zh", dests["operator"], digit_timeout_s
    )
    tx_admin.set_number(conn, DEMO_NUMBER, ext_billing=True)
    tx_admin.add_extension(conn, DEMO_NUMBER, "1", "Beijing branch", dests["1"], None)
    tx_admin.add_extension(conn, DEMO_NUMBER, "2", "Shanghai branch", dests["2"], None)
    tx_admin.add_extension(conn, DEMO_NUMBER, "3", "Shenzhen merchant", dests["3"], None)
    tx_admin.recharge(conn, DEMO_NUMBER, None, parse_amount("500"), "demo-main")
    tx_admin.recharge(conn, DEMO_NUMBER, "1", parse_amount("30"), "demo-ext-1")
    tx_admin.recharge(conn, DEMO_NUMBER, "3", parse_amount("0.3"), "demo-ext-3")
    pw_hash = hash_password(DEMO_PASSWORD)
    for login, (role, ext) in DEMO_USERS.items():
        tx_web.add_user(conn, login, role, DEMO_NUMBER, ext, pw_hash)
