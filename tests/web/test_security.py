"""Console security, each rule with a test: sessions, CSRF and Origin, throttling, scoping."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import OTHER_NUMBER, PASSWORD, Server, csrf_of, form_token_of, serve, sign_in

from fastagi.runtime import credentials
from fastagi.store import tx_web
from fastagi.store.demo import DEMO_NUMBER
from fastagi.web import auth

N = DEMO_NUMBER


def signed_in(c: httpx.Client) -> bool:
    return c.get(f"/n/{N}/e/1").status_code == 200


def test_session_cookie_attributes(server: Server) -> None:
    """Opaque id, HttpOnly, SameSite=Lax; no Secure over plain HTTP."""
    c = server.client()
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"login": "hq", "password": PASSWORD, "csrf": token})
    cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("extbill_session=")
    )
    value = cookie.split(";")[0].split("=", 1)[1]
    assert len(value) >= 40 and "hq" not in value
    attrs = cookie.lower()
    assert "httponly" in attrs and "samesite=lax" in attrs and "secure" not in attrs


def test_secure_cookie_over_https(server: Server) -> None:
    """Behind a TLS proxy (X-Forwarded-Proto: https from a trusted loopback proxy) the cookie is Secure."""
    https = server.url.replace("http://", "https://")
    c = server.client(headers={"X-Forwarded-Proto": "https", "Origin": https})
    token = csrf_of(c.get("/login").text)
    # the sign-in form's cookie is Secure too: httpx, talking plain HTTP, would not send it back
    headers = {"Cookie": f"{auth.LOGIN_COOKIE}={token}"}
    r = c.post("/login", data={"login": "hq", "password": PASSWORD, "csrf": token}, headers=headers)
    cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("extbill_session=")
    )
    assert "; secure" in cookie.lower()


def test_sign_in_makes_a_new_session_id(server: Server) -> None:
    """A session id planted before sign-in is not the one after it (no session fixation)."""
    c = sign_in(server, "hq")
    first = c.cookies["extbill_session"]
    c2 = sign_in(server, "hq", cookies={"extbill_session": first})
    assert c2.cookies.get("extbill_session", domain="127.0.0.1") not in (None, first)


def test_sign_out_ends_the_session(server: Server) -> None:
    c = sign_in(server, "hq")
    stolen = c.cookies["extbill_session"]
    html = c.get(f"/n/{N}").text
    assert c.post("/logout", data={"csrf": csrf_of(html)}).status_code == 303
    thief = server.client(cookies={"extbill_session": stolen})
    assert not signed_in(thief)


def test_idle_and_absolute_timeouts(server: Server) -> None:
    """Unused past the idle limit: signed out. Used all along: signed out at the absolute limit."""
    c = sign_in(server, "hq")
    try:
        server.clock.offset_ms = auth.SESSION_IDLE_MS - 60_000
        assert signed_in(c)
        server.clock.offset_ms += auth.SESSION_IDLE_MS + 1
        assert not signed_in(c)
        server.clock.offset_ms = 0
        c = sign_in(server, "hq")
        step = auth.SESSION_IDLE_MS // 2
        while server.clock.offset_ms + step < auth.SESSION_ABSOLUTE_MS:
            server.clock.offset_ms += step
            assert signed_in(c)
        server.clock.offset_ms = auth.SESSION_ABSOLUTE_MS + 1
        assert not signed_in(c)
    finally:
        server.clock.offset_ms = 0


def test_password_change_ends_every_session(server: Server) -> None:
    """`extbill user passwd` signs the user out everywhere; the new password works."""
    a, b = sign_in(server, "br1"), sign_in(server, "br1")
    assert signed_in(a) and signed_in(b)
    server.run(tx_web.set_password, "br1", credentials.hash_password("a new password"))
    assert not signed_in(a) and not signed_in(b)
    assert signed_in(sign_in(server, "br1", "a new password"))
    server.run(tx_web.set_password, "br1", credentials.hash_password(PASSWORD))


def _recharge(c: httpx.Client, html: str, **over: str) -> httpx.Response:
    data = {"csrf": csrf_of(html), "form_token": form_token_of(html), "ext": "", "amount": "1", **over}
    return c.post(f"/n/{N}/recharge", data=data)


def _main_balance(c: httpx.Client) -> str:
    return re.search(
        r'data-account="main">.*?class="num balance">([^<]+)<', c.get(f"/n/{N}").text, re.S
    ).group(1)


def test_csrf_token_required(server: Server) -> None:
    """A money form without the session's CSRF token is refused (403) and changes nothing."""
    c = sign_in(server, "hq")
    before = _main_balance(c)
    html = c.get(f"/n/{N}").text
    assert _recharge(c, html, csrf="").status_code == 403
    assert _recharge(c, html, csrf="forged").status_code == 403
    assert _main_balance(c) == before


def test_origin_check(server: Server) -> None:
    """A POST from another site's page (Origin), or with neither Origin nor Referer, is refused."""
    c = sign_in(server, "hq")
    before = _main_balance(c)
    html = c.get(f"/n/{N}").text
    c.headers["Origin"] = "https://evil.example"
    assert _recharge(c, html).status_code == 403
    del c.headers["Origin"]
    assert _recharge(c, html).status_code == 403
    c.headers["Referer"] = f"{server.url}/n/{N}"
    assert _recharge(c, html).status_code == 303
    assert float(_main_balance(c)) - float(before) == 1


def test_sign_in_form_needs_its_token_and_origin(server: Server) -> None:
    c = server.client()
    c.get("/login")
    r = c.post("/login", data={"login": "hq", "password": PASSWORD, "csrf": "wrong"})
    assert r.status_code == 403


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Server]:
    """Its own server: the throttle's memory must start empty."""
    yield from serve(tmp_path)


def _try(srv: Server, login: str, password: str) -> httpx.Response:
    c = srv.client(headers={"Accept-Language": "en"})
    token = csrf_of(c.get("/login").text)
    return c.post("/login", data={"login": login, "password": password, "csrf": token})


def test_sign_in_throttled_per_login_and_per_address(fresh: Server) -> None:
    """After LOGIN_FAILS_MAX failures the right password is refused too, with the same generic
    words as a wrong one; per address after ADDRESS_FAILS_MAX; all until the window passes."""
    wrong = _try(fresh, "hq", "nope nope")
    unknown = _try(fresh, "nobody", "nope nope")
    assert wrong.status_code == unknown.status_code == 401
    generic = "wrong login or password, or too many attempts"
    assert generic in wrong.text and generic in unknown.text
    for _ in range(auth.LOGIN_FAILS_MAX - 1):
        _try(fresh, "hq", "nope nope")
    r = _try(fresh, "hq", PASSWORD)
    assert r.status_code == 401 and generic in r.text
    assert _try(fresh, "op", PASSWORD).status_code == 303  # another login still can
    for i in range(auth.ADDRESS_FAILS_MAX):
        _try(fresh, f"guess{i}", "nope nope")
    assert _try(fresh, "op", PASSWORD).status_code == 401  # this address now cannot
    fresh.clock.offset_ms = auth.LOGIN_WINDOW_MS + 1
    assert _try(fresh, "hq", PASSWORD).status_code == 303


# ---- scoping: one matrix over every page, export, form and API path --------------------------

PAGES = [
    "/n/{n}",
    "/n/{n}/live",
    "/n/{n}/audit",
    "/n/{n}/e/{e}",
    "/n/{n}/e/{e}/calls.csv",
]
FORMS = [
    "/n/{n}/recharge",
    "/n/{n}/transfer",
    "/n/{n}/settings",
    "/n/{n}/e/{e}/low-balance",
    "/n/{n}/monthly-minimum",
    "/n/{n}/reclaim",
    "/n/{n}/remove-extension",
    "/n/{n}/recharges/bulk",
]
# HQ's money forms: a branch user gets 404 on them for its own number too
NUMBER_FORMS = [f for f in FORMS if "/e/" not in f]
# user: (number, ext) pairs it may NOT see
FOREIGN = {
    "hq": [(OTHER_NUMBER, "9")],
    "hq2": [(N, "1"), (N, "2")],
    "br1": [(N, "2"), (N, "3"), (OTHER_NUMBER, "9")],
    "br9": [(N, "1"), (OTHER_NUMBER, "1")],
}


@pytest.mark.parametrize("login", sorted(FOREIGN))
def test_scope_matrix_console(server: Server, login: str) -> None:
    """Every page, export and form of another number or extension is 404, as for one that does not exist."""
    c = sign_in(server, login, headers={"Accept-Language": "en"})
    own = c.get("/", follow_redirects=True)
    assert own.status_code == 200
    html = own.text
    for number, ext in FOREIGN[login]:
        for path in PAGES + FORMS:
            url = path.format(n=number, e=ext)
            if path in FORMS:
                data = {
                    "csrf": csrf_of(html),
                    "form_token": "x",
                    "amount": "1",
                    "ext": ext,
                    "monthly_minimum": "1",
                }
                files = {"file": ("f.csv", f"{number},{ext},1,scope-{login}\n".encode())}
                r = c.post(url, data=data, files=files if path.endswith("/bulk") else None)
            else:
                r = c.get(url)
            assert r.status_code == 404, (login, url, r.status_code)


@pytest.mark.parametrize("login", ["br1", "br9"])
def test_branch_sees_only_its_extension(server: Server, login: str) -> None:
    """A branch user lands on its extension; its own number's pages and money forms are 404."""
    c = sign_in(server, login)
    r = c.get("/")
    assert r.status_code == 303 and "/e/" in r.headers["location"]
    number = N if login == "br1" else OTHER_NUMBER
    for path in ("/n/{n}", "/n/{n}/live", "/n/{n}/audit"):
        assert c.get(path.format(n=number)).status_code == 404
    html = c.get(r.headers["location"]).text
    ext = "1" if login == "br1" else "9"
    for form in NUMBER_FORMS:
        data = {"csrf": csrf_of(html), "form_token": form_token_of(html), "amount": "1", "ext": ext}
        assert c.post(form.format(n=number), data=data).status_code == 404, form
    assert c.get("/events").status_code == 404
    assert c.get(r.headers["location"]).status_code == 200  # its own extension is still there


@pytest.mark.parametrize(
    "path",
    ["balance", "calls", "calls?ext=9", "extensions/9/statement", "periods"],
)
def test_scope_matrix_api(server: Server, path: str) -> None:
    """An API token of one number gets 404 on every path of another."""
    c = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.tokens['pay']}"})
    assert c.get(f"/api/v1/numbers/{OTHER_NUMBER}/{path}").status_code == 404
    for post in ("recharges", "transfers", "reclaims"):
        r = c.post(
            f"/api/v1/numbers/{OTHER_NUMBER}/{post}",
            json={"amount": "1", "ext": "9"},
            headers={"Idempotency-Key": f"scope-{post}"},
        )
        assert r.status_code == 404
    r = c.post(
        f"/api/v1/numbers/{OTHER_NUMBER}/recharges/bulk",
        json={"rows": [{"key": "9", "amount": "1", "ref": "scope-bulk"}]},
        headers={"Idempotency-Key": "scope-bulk"},
    )
    assert r.status_code == 404
    r = c.delete(f"/api/v1/numbers/{OTHER_NUMBER}/extensions/9", headers={"Idempotency-Key": "scope-rm"})
    assert r.status_code == 404


def test_no_sql_built_from_strings() -> None:
    """The web layer holds no SQL; the store's web modules bind every value as a parameter."""
    root = Path(__file__).resolve().parents[2] / "fastagi"
    for py in (root / "web").glob("*.py"):
        text = py.read_text()
        assert not re.search(r"\b(SELECT|INSERT|UPDATE|DELETE)\b\s", text), py
    for name in ("tx_web.py", "tx_web_reads.py", "tx_web_actions.py", "tx_web_metrics.py", "tx_web_money.py"):
        text = (root / "store" / name).read_text()
        assert not re.search(r'execute\(\s*f"', text), name
        assert ".format(" not in text and "%s" not in text, name


@pytest.mark.parametrize("target", ["//evil.example/", "/\\evil.example", "https://evil.example/"])
def test_sign_in_never_redirects_off_site(server: Server, target: str) -> None:
    c = server.client()
    token = csrf_of(c.get("/login").text)
    r = c.post("/login", data={"login": "op", "password": PASSWORD, "csrf": token, "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/"
