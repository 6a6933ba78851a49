"""HQ's money tasks in the JSON API over real HTTP: reclaims, removing an extension, bulk
recharges and closed months, with the Idempotency-Key rules and the CLI's words."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest
from conftest import OTHER_NUMBER, Server, place_call
from test_api import api

from fastagi.core.money import parse_amount
from fastagi.core.records import CallFacts
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_admin, tx_calls, tx_money, tx_web_actions
from fastagi.store.demo import DEMO_NUMBER

N = DEMO_NUMBER
API = f"/api/v1/numbers/{N}"


def balances(c: httpx.Client) -> dict[str, str]:
    doc = c.get(f"{API}/balance").json()
    return {"main": doc["main"]["available"], **{e["key"]: e["available"] for e in doc["extensions"]}}


def cli_json(server: Server, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "fastagi", *args, "--json", "--db", str(server.db)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def test_reclaim_idempotency_rules(server: Server) -> None:
    """Missing key 400; first 201; a repeat is the first answer and moves nothing; another body 422."""
    c = api(server)
    server.run(tx_admin.recharge, N, "2", parse_amount("9"), "api-reclaim-setup")
    r = c.post(f"{API}/reclaims", json={"ext": "2", "amount": "1"})
    assert (r.status_code, r.json()) == (
        400,
        {"error": "the Idempotency-Key header is required for this request"},
    )
    before = balances(c)
    first = c.post(f"{API}/reclaims", json={"ext": "2", "amount": "4"}, headers={"Idempotency-Key": "rc-1"})
    assert first.status_code == 201, first.text
    assert first.json() == {
        "number": N,
        "ext": "2",
        "amount": "4.000",
        "collected": "0.000",
        "idempotency_key": "rc-1",
    }
    after = balances(c)
    assert float(after["2"]) == pytest.approx(float(before["2"]) - 4)
    assert float(after["main"]) == pytest.approx(float(before["main"]) + 4)
    again = c.post(f"{API}/reclaims", json={"ext": "2", "amount": "4"}, headers={"Idempotency-Key": "rc-1"})
    assert (again.status_code, again.json()) == (201, first.json())
    assert balances(c) == after
    other = c.post(f"{API}/reclaims", json={"ext": "2", "amount": "5"}, headers={"Idempotency-Key": "rc-1"})
    assert (other.status_code, other.json()) == (
        422,
        {"error": "Idempotency-Key 'rc-1' was already used for a different request"},
    )
    rest = c.post(f"{API}/reclaims", json={"ext": "2"}, headers={"Idempotency-Key": "rc-2"})
    assert rest.status_code == 201 and rest.json()["amount"] == after["2"]
    assert balances(c)["2"] == "0.000"
    audit = [a for a in server.run(tx_web_actions.audit_page, N, None) if a["idem_key"] == "api:1:rc-1"]
    assert (
        len(audit) == 1
        and audit[0]["who"] == "apikey:pay"
        and audit[0]["action"] == "reclaim 4.000 ext 2 -> main"
    )


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"ext": "1", "amount": "100000"}, 409, "cannot reclaim 100000.000: extension 1 of {N} has only"),
        ({"ext": "77"}, 404, "number {N} has no extension 77"),
        ({"amount": "1"}, 400, "field 'ext' is required"),
        ({"ext": 1}, 400, "field 'ext' must be an extension key as text"),
        ({"ext": "1", "amount": "-1"}, 400, "amount '-1' is negative"),
    ],
)
def test_reclaim_refusals(server: Server, body: dict, status: int, message: str) -> None:
    c = api(server)
    before = balances(c)
    r = c.post(f"{API}/reclaims", json=body, headers={"Idempotency-Key": f"rc-bad-{status}-{len(message)}"})
    assert r.status_code == status and set(r.json()) == {"error"}
    assert r.json()["error"].startswith(message.format(N=N))
    assert balances(c) == before


def _end(server: Server, bid: str) -> None:
    server.run(
        tx_calls.settle,
        CallFacts(bid, False, 0, None, "2026-11-30T10:01:00.000Z", "NOANSWER", "19", "hangup"),
    )


def test_remove_an_extension(server: Server) -> None:
    """Refused during a call (409, CLI words); then removed, its money to main, its statement still
    readable; a repeat of the request is the first answer; balance stays `balance --json`."""
    c = api(server)
    server.run(tx_admin.add_extension, N, "8", "Leaving branch", "Local/8@ctx", None)
    server.run(tx_admin.recharge, N, "8", parse_amount("6"), "api-remove-8")
    place_call(server, "api-rm", "8", "13700000008", "2026-11-30T10:00:00.000Z", None)
    assert c.delete(f"{API}/extensions/8").status_code == 400  # no Idempotency-Key
    busy = c.delete(f"{API}/extensions/8", headers={"Idempotency-Key": "rm-8"})
    assert (busy.status_code, busy.json()) == (
        409,
        {"error": f"extension 8 of {N} has a call in progress; remove it once the call has ended"},
    )
    _end(server, "api-rm")
    main = float(balances(c)["main"])
    done = c.delete(f"{API}/extensions/8", headers={"Idempotency-Key": "rm-8"})
    assert done.status_code == 200, done.text
    assert done.json() == {
        "number": N,
        "ext": "8",
        "removed": True,
        "returned": "6.000",
        "collected": "0.000",
        "idempotency_key": "rm-8",
    }
    assert "8" not in balances(c) and float(balances(c)["main"]) == pytest.approx(main + 6)
    again = c.delete(f"{API}/extensions/8", headers={"Idempotency-Key": "rm-8"})
    assert (again.status_code, again.json()) == (200, done.json())
    gone = c.delete(f"{API}/extensions/8", headers={"Idempotency-Key": "rm-8b"})
    assert gone.status_code == 404 and gone.json()["error"].startswith(f"extension 8 of {N} was removed on ")
    statement = c.get(f"{API}/extensions/8/statement").json()["entries"]
    assert statement[0]["code"] == "ext-remove" and statement[0]["effect"] == "-6.000"
    assert [call["id"] for call in c.get(f"{API}/calls", params={"ext": "8"}).json()["calls"]] == ["api-rm"]
    assert c.get(f"{API}/balance").json() == cli_json(server, "balance", N)


def test_bulk_recharges(server: Server) -> None:
    """All rows applied once; the same rows again (another key) change nothing; the same key is
    the first answer."""
    c = api(server)
    before = balances(c)
    rows = [
        {"key": "", "amount": "10", "ref": "api-bulk-a"},
        {"key": "1", "amount": "2.5", "ref": "api-bulk-b"},
        {"number": N, "key": "3", "amount": "1", "ref": "api-bulk-c"},
    ]
    first = c.post(f"{API}/recharges/bulk", json={"rows": rows}, headers={"Idempotency-Key": "bulk-1"})
    assert first.status_code == 201, first.text
    assert first.json() == {
        "number": N,
        "applied": 3,
        "already": 0,
        "total": "13.500",
        "collected": "0.000",
        "idempotency_key": "bulk-1",
    }
    after = balances(c)
    for key, added in (("main", 10), ("1", 2.5), ("3", 1)):
        assert float(after[key]) == pytest.approx(float(before[key]) + added)
    same_key = c.post(f"{API}/recharges/bulk", json={"rows": rows}, headers={"Idempotency-Key": "bulk-1"})
    assert same_key.json() == first.json()
    new_key = c.post(f"{API}/recharges/bulk", json={"rows": rows}, headers={"Idempotency-Key": "bulk-2"})
    assert new_key.status_code == 201 and (new_key.json()["applied"], new_key.json()["already"]) == (0, 3)
    assert balances(c) == after


def test_bulk_with_bad_rows_applies_nothing(server: Server) -> None:
    """Every bad row by its place; another number's row reads as an unknown number's."""
    c = api(server)
    before = balances(c)
    rows = [
        {"key": "", "amount": "5", "ref": "api-bad-a"},
        {"number": OTHER_NUMBER, "key": "9", "amount": "1", "ref": "api-bad-b"},
        {"number": "4000000000", "amount": "1", "ref": "api-bad-c"},
        {"key": "1", "amount": "1.2345", "ref": "api-bad-d"},
        {"key": "77", "amount": "1", "ref": "api-bad-e"},
        {"key": "1", "amount": "1"},
    ]
    r = c.post(f"{API}/recharges/bulk", json={"rows": rows}, headers={"Idempotency-Key": "bulk-bad"})
    assert r.status_code == 400
    assert r.json()["errors"] == [
        {"row": 2, "error": f"unknown number {OTHER_NUMBER}"},
        {"row": 3, "error": "unknown number 4000000000"},
        {"row": 4, "error": "amount '1.2345' has more than 3 decimal places"},
        {"row": 5, "error": f"number {N} has no extension 77"},
        {"row": 6, "error": "ref is required (1 to 100 characters): it makes the row idempotent"},
    ]
    assert r.json()["error"].startswith(f"row 2: unknown number {OTHER_NUMBER}; row 3: ")
    assert balances(c) == before
    # a refusal records nothing (it changed nothing): the same key carries the corrected rows
    fixed = c.post(f"{API}/recharges/bulk", json={"rows": rows[:1]}, headers={"Idempotency-Key": "bulk-bad"})
    assert fixed.status_code == 201 and fixed.json()["applied"] == 1


def test_periods_are_the_clis_list(server: Server) -> None:
    server.run(tx_money.close_period, "2026-09", now_ms(), N)
    r = api(server).get(f"{API}/periods")
    assert r.status_code == 200
    doc = r.json()
    assert doc["number"] == N and [p["month"] for p in doc["periods"]] == ["2026-09"]
    assert doc["periods"] == cli_json(server, "period", "list", N)


def test_another_numbers_money_tasks_are_404(server: Server) -> None:
    """A token reaches only its own number: another number's paths look like an unknown number's."""
    c = api(server)
    before = server.run(tx_admin.balance, OTHER_NUMBER)
    for number in (OTHER_NUMBER, "4000000000"):
        base = f"/api/v1/numbers/{number}"
        answers = [
            c.get(f"{base}/periods"),
            c.post(f"{base}/reclaims", json={"ext": "9"}, headers={"Idempotency-Key": f"o-rc-{number}"}),
            c.delete(f"{base}/extensions/9", headers={"Idempotency-Key": f"o-rm-{number}"}),
            c.post(
                f"{base}/recharges/bulk",
                json={"rows": [{"key": "9", "amount": "1", "ref": "o"}]},
                headers={"Idempotency-Key": f"o-bulk-{number}"},
            ),
        ]
        for r in answers:
            assert (r.status_code, r.json()) == (404, {"error": f"unknown number {number}"})
    assert server.run(tx_admin.balance, OTHER_NUMBER) == before
