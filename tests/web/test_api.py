"""The JSON API over real HTTP: bearer tokens, Idempotency-Key rules, paging, scoping, refusals."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import httpx
import pytest
from conftest import OTHER_NUMBER, Server

from fastagi.store import tx_web, tx_web_actions
from fastagi.store.demo import DEMO_NUMBER

API = "/api/v1/numbers"


def api(srv: Server, key: str = "pay") -> httpx.Client:
    return httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {srv.tokens[key]}"}, timeout=30)


def ext_available(c: httpx.Client, key: str) -> str:
    doc = c.get(f"{API}/{DEMO_NUMBER}/balance").json()
    return next(e["available"] for e in doc["extensions"] if e["key"] == key)


def test_balance_is_the_cli_document(server: Server) -> None:
    """GET balance returns exactly what `extbill balance N --json` prints."""
    got = api(server).get(f"{API}/{DEMO_NUMBER}/balance")
    assert got.status_code == 200
    cli = subprocess.run(
        [sys.executable, "-m", "fastagi", "balance", DEMO_NUMBER, "--json", "--db", str(server.db)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert got.json() == json.loads(cli.stdout)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}],
)
def test_no_valid_token_is_401(server: Server, headers: dict[str, str]) -> None:
    """Without a valid bearer token every path answers 401 with a JSON error."""
    r = httpx.get(f"{server.url}{API}/{DEMO_NUMBER}/balance", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert set(r.json()) == {"error"}


def test_recharge_idempotency_rules(server: Server) -> None:
    """Missing key 400; first call 201; repeat -> the first answer and nothing moves; other body 422."""
    c = api(server)
    url = f"{API}/{DEMO_NUMBER}/recharges"
    r = c.post(url, json={"amount": "1"})
    assert r.status_code == 400
    assert r.json() == {"error": "the Idempotency-Key header is required for this request"}
    before = ext_available(c, "2")
    first = c.post(url, json={"amount": "7.5", "ext": "2"}, headers={"Idempotency-Key": "pay-001"})
    assert first.status_code == 201, first.text
    assert first.json()["amount"] == "7.500"
    after = ext_available(c, "2")
    assert float(after) - float(before) == pytest.approx(7.5)
    again = c.post(url, json={"amount": "7.5", "ext": "2"}, headers={"Idempotency-Key": "pay-001"})
    assert (again.status_code, again.json()) == (201, first.json())
    assert ext_available(c, "2") == after
    other = c.post(url, json={"amount": "8", "ext": "2"}, headers={"Idempotency-Key": "pay-001"})
    assert other.status_code == 422
    assert other.json() == {"error": "Idempotency-Key 'pay-001' was already used for a different request"}
    assert ext_available(c, "2") == after
    audit = server.run(tx_web_actions.audit_page, DEMO_NUMBER, None)
    mine = [a for a in audit if a["idem_key"] == "api:1:pay-001"]
    assert len(mine) == 1 and mine[0]["who"] == "apikey:pay" and mine[0]["action"] == "recharge 7.500"


def test_transfer_and_its_refusal_in_cli_words(server: Server) -> None:
    """A transfer moves main to the extension; one beyond main's money is refused with the CLI's words."""
    c = api(server)
    url = f"{API}/{DEMO_NUMBER}/transfers"
    before = ext_available(c, "3")
    r = c.post(url, json={"ext": "3", "amount": "2"}, headers={"Idempotency-Key": "t-1"})
    assert r.status_code == 201, r.text
    assert float(ext_available(c, "3")) - float(before) == pytest.approx(2)
    r = c.post(url, json={"ext": "3", "amount": "9999999"}, headers={"Idempotency-Key": "t-2"})
    assert r.status_code == 409
    assert r.json()["error"].startswith(
        f"transfer of 9999999.000 refused: the main account of {DEMO_NUMBER} has only"
    )


@pytest.mark.parametrize(
    "body, message",
    [
        ({"amount": "-5"}, "amount '-5' is negative"),
        ({"amount": "1.2345"}, "amount '1.2345' has more than 3 decimal places"),
        ({"amount": 5}, "amount must be text, got int"),
        ({"amount": "5", "ext": "77"}, f"number {DEMO_NUMBER} has no extension 77"),
        ({"amount": "5", "bonus": "1"}, "unknown field 'bonus' (allowed: amount, ext)"),
        ({}, "field 'amount' is required"),
    ],
)
def test_recharge_refusals(server: Server, body: dict, message: str) -> None:
    """Each bad recharge is one JSON error line with the product's words, and changes nothing."""
    c = api(server)
    before = c.get(f"{API}/{DEMO_NUMBER}/balance").json()
    r = c.post(
        f"{API}/{DEMO_NUMBER}/recharges", json=body, headers={"Idempotency-Key": f"bad-{message}"[:200]}
    )
    assert r.status_code in (400, 404)
    assert r.json() == {"error": message}
    assert c.get(f"{API}/{DEMO_NUMBER}/balance").json() == before


def test_another_number_is_404_like_an_unknown_one(server: Server) -> None:
    """A token reaches only its own number: another number looks exactly like one that does not exist."""
    c = api(server)
    for path in ("balance", "calls", "extensions/9/statement"):
        theirs = c.get(f"{API}/{OTHER_NUMBER}/{path}")
        nobody = c.get(f"{API}/4000000000/{path}")
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.json() == {"error": f"unknown number {OTHER_NUMBER}"}
        assert nobody.json() == {"error": "unknown number 4000000000"}
    r = c.post(f"{API}/{OTHER_NUMBER}/recharges", json={"amount": "1"}, headers={"Idempotency-Key": "x"})
    assert (r.status_code, r.json()) == (404, {"error": f"unknown number {OTHER_NUMBER}"})


def test_revoked_key_is_refused(server: Server) -> None:
    """`extbill apikey revoke` takes effect on the next request."""
    c = api(server, "pay2")
    assert c.get(f"{API}/{OTHER_NUMBER}/balance").status_code == 200
    server.run(tx_web.revoke_api_key, "pay2")
    assert c.get(f"{API}/{OTHER_NUMBER}/balance").status_code == 401


def test_statement_pages_with_a_cursor(server: Server) -> None:
    """Statement pages of 1 row each walk every transfer once, newest first, then stop."""
    c = api(server)
    c.post(
        f"{API}/{DEMO_NUMBER}/recharges", json={"amount": "1", "ext": "1"}, headers={"Idempotency-Key": "s1"}
    )
    c.post(
        f"{API}/{DEMO_NUMBER}/recharges", json={"amount": "2", "ext": "1"}, headers={"Idempotency-Key": "s2"}
    )
    whole = c.get(f"{API}/{DEMO_NUMBER}/extensions/1/statement").json()
    assert whole["next_cursor"] is None
    seen, cursor = [], None
    for _ in range(len(whole["entries"]) + 1):
        page = c.get(
            f"{API}/{DEMO_NUMBER}/extensions/1/statement", params={"limit": 1, "cursor": cursor}
        ).json()
        seen += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole["entries"]
    assert [e["effect"] for e in seen[:2]] == ["2.000", "1.000"]
    bad = c.get(f"{API}/{DEMO_NUMBER}/extensions/1/statement", params={"cursor": "zzz"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("cursor:")


def test_the_main_accounts_statement_pages_like_an_extensions(server: Server) -> None:
    """The main account has a statement too: a recharge to main is on it, one to an
    extension is not; it pages with the same cursor and is listed in the OpenAPI document."""
    c = api(server)
    c.post(f"{API}/{DEMO_NUMBER}/recharges", json={"amount": "3"}, headers={"Idempotency-Key": "m1"})
    c.post(
        f"{API}/{DEMO_NUMBER}/recharges", json={"amount": "4", "ext": "1"}, headers={"Idempotency-Key": "m2"}
    )
    whole = c.get(f"{API}/{DEMO_NUMBER}/statement", params={"limit": 500}).json()["entries"]
    assert whole[0]["effect"] == "3.000" and whole[0]["code"] == "recharge"
    assert "4.000" not in [e["effect"] for e in whole if e["code"] == "recharge"]
    seen, cursor = [], None
    for _ in range(len(whole) + 1):
        page = c.get(f"{API}/{DEMO_NUMBER}/statement", params={"limit": 2, "cursor": cursor}).json()
        seen += page["entries"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == whole
    assert "/numbers/{number}/statement" in c.get("/api/v1/openapi.json").json()["paths"]


def _forged(value: object) -> str:
    """A cursor made by hand the way the server makes its own (base64 of JSON)."""
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "path, value",
    [
        ("extensions/1/statement", 10**23),  # past SQLite's 64-bit integers
        ("extensions/1/statement", 2**63),
        ("extensions/1/statement", -5),
        ("extensions/1/statement", True),
        ("calls", ["2026-05-01T10:00:00.000Z", "\u0000"]),  # a NUL PostgreSQL text refuses
        ("calls", ["2026-05-01T10:00:00.000Z", "1767225600.1; --"]),
        ("calls", ["x", "1767225600.1"]),
        ("calls", ["2026-02-30T10:00:00.000Z", "1767225600.1"]),
        ("calls", ["2026-05-01T10:00:00.000Z"]),
    ],
)
def test_a_forged_cursor_is_a_clear_400_on_either_engine(server: Server, path: str, value: object) -> None:
    """Only what a page's last row can give is a cursor: anything else is refused in the
    product's words, never an engine error."""
    r = api(server).get(f"{API}/{DEMO_NUMBER}/{path}", params={"cursor": _forged(value)})
    assert r.status_code == 400 and r.json()["error"].startswith("cursor: "), (r.status_code, r.text[:300])
    assert r.json()["error"].endswith("is not a cursor this server gave")


@pytest.mark.parametrize(
    "query, message",
    [
        ({"since": "2026-13-01"}, "since: '2026-13-01' is not a date like 2026-11-26"),
        ({"state": "paid"}, "state: 'paid' must be one of reserved, rated, unanswered, unrated"),
        ({"limit": "0"}, "limit: '0' must be a whole number from 1 to 500"),
        ({"ext": "42"}, f"number {DEMO_NUMBER} has no extension 42"),
    ],
)
def test_calls_filter_refusals(server: Server, query: dict, message: str) -> None:
    r = api(server).get(f"{API}/{DEMO_NUMBER}/calls", params=query)
    assert r.status_code in (400, 404)
    assert r.json() == {"error": message}


def test_openapi_document(server: Server) -> None:
    """The OpenAPI document lists every path, with Idempotency-Key required on money requests."""
    doc = httpx.get(f"{server.url}/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    paths = doc["paths"]
    assert set(paths) == {
        "/numbers/{number}/balance",
        "/numbers/{number}/recharges",
        "/numbers/{number}/transfers",
        "/numbers/{number}/calls",
        "/numbers/{number}/statement",
        "/numbers/{number}/extensions/{key}/statement",
        "/numbers/{number}/reclaims",
        "/numbers/{number}/extensions/{key}",
        "/numbers/{number}/recharges/bulk",
        "/numbers/{number}/periods",
    }
    for path, method in [
        ("/numbers/{number}/recharges", "post"),
        ("/numbers/{number}/reclaims", "post"),
        ("/numbers/{number}/extensions/{key}", "delete"),
        ("/numbers/{number}/recharges/bulk", "post"),
    ]:
        idem = [p for p in paths[path][method]["parameters"] if p["in"] == "header"]
        assert idem[0]["name"] == "Idempotency-Key" and idem[0]["required"], path
