"""The console over real HTTP: pages, forms, refusals, audit, export, language."""

from __future__ import annotations

import csv
import io
import re

import httpx
from conftest import OTHER_NUMBER, Server, csrf_of, form_token_of, place_call, sign_in

from fastagi.store import tx_admin
from fastagi.store.demo import DEMO_NUMBER
from fastagi.web.console import STATEMENT_ROWS_SHOWN

N = DEMO_NUMBER


def balance_cell(html: str, account: str) -> str:
    row = re.search(rf'data-account="{account}">(.*?)</tr>', html, re.S).group(1)
    return re.search(r'class="num balance">([^<]+)<', row).group(1)


def post_form(c: httpx.Client, page: str, action: str, **fields: str) -> httpx.Response:
    html = c.get(page).text
    data = {"csrf": csrf_of(html), "form_token": form_token_of(html), **fields}
    return c.post(action, data=data)


def flash(c: httpx.Client, r: httpx.Response) -> str:
    assert r.status_code == 303, (r.status_code, r.text[:300])
    html = c.get(r.headers["location"]).text
    return re.search(r'class="flash [a-z]+" role="status">([^<]*)<', html).group(1)


def test_signed_out_pages_go_to_sign_in(server: Server) -> None:
    r = server.client().get(f"/n/{N}")
    assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")


def test_number_page_shows_every_account(server: Server) -> None:
    """HQ sees main and each extension with balance, reserved, available, spent and status."""
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    html = c.get(f"/n/{N}").text
    assert balance_cell(html, "main") == "500.000"
    assert "Beijing branch" in html and "Shanghai branch" in html and "Shenzhen merchant" in html
    for word in ("Balance", "Reserved", "Available", "Spent", "Status", "arrears"):
        assert word in html


def test_recharge_an_extension_and_the_audit_entry(server: Server) -> None:
    """A recharge from the console moves the money once and is in the audit log with who and key."""
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    before = balance_cell(c.get(f"/n/{N}").text, "ext-2")
    r = post_form(c, f"/n/{N}", f"/n/{N}/recharge", ext="2", amount="12.5")
    assert flash(c, r) == "recharged"
    html = c.get(f"/n/{N}").text
    assert float(balance_cell(html, "ext-2")) - float(before) == 12.5
    audit = c.get(f"/n/{N}/audit").text
    row = re.search(
        r"<tr><td>[^<]+</td><td>hq</td><td>hq</td><td>127\.0\.0\.1</td><td>recharge 12\.500</td>.*?</tr>",
        audit,
        re.S,
    )
    assert row, audit[-2000:]
    assert "web:" in row.group(0) and "&#34;balance&#34;: &#34;" in row.group(0)


def test_double_submit_recharges_once(server: Server) -> None:
    """The same form sent twice (a double click, a resubmit) recharges once."""
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    html = c.get(f"/n/{N}").text
    before = balance_cell(html, "main")
    data = {"csrf": csrf_of(html), "form_token": form_token_of(html), "ext": "", "amount": "3"}
    assert flash(c, c.post(f"/n/{N}/recharge", data=data)) == "recharged"
    assert (
        flash(c, c.post(f"/n/{N}/recharge", data=data)) == "this form was already submitted; nothing changed"
    )
    assert float(balance_cell(c.get(f"/n/{N}").text, "main")) - float(before) == 3


def test_refusals_show_the_products_words(server: Server) -> None:
    """IVR off while extension billing is on, a bad amount, too big a transfer: the CLI's refusals."""
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    r = post_form(c, f"/n/{N}", f"/n/{N}/settings", ivr="off")
    assert flash(c, r).startswith("cannot turn IVR off while extension billing is on")
    r = post_form(c, f"/n/{N}", f"/n/{N}/recharge", ext="", amount="1.2345")
    assert flash(c, r) == "amount &#39;1.2345&#39; has more than 3 decimal places"
    r = post_form(c, f"/n/{N}", f"/n/{N}/transfer", ext="1", amount="9999999")
    assert flash(c, r).startswith("transfer of 9999999.000 refused")
    assert "IVR</b>" not in c.get(f"/n/{N}").text  # and the number kept IVR on
    assert "IVR: on" in c.get(f"/n/{N}").text


def test_settings_and_low_balance_change_and_are_audited(server: Server) -> None:
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    r = post_form(c, f"/n/{N}", f"/n/{N}/settings", ivr="on", ext_billing="on", min_balance="60")
    assert flash(c, r) == "saved"
    assert "Minimum balance: 60.000" in c.get(f"/n/{N}").text
    r = post_form(c, f"/n/{N}/e/1", f"/n/{N}/e/1/low-balance", low_balance="4.5")
    assert flash(c, r) == "saved"
    assert 'name="low_balance" inputmode="decimal" value="4.500"' in c.get(f"/n/{N}/e/1").text
    audit = c.get(f"/n/{N}/audit").text
    assert "set ivr=True, ext_billing=True, min_balance=60.000" in audit
    assert "set low_balance=4.500" in audit


def test_calls_in_progress_fragment(server: Server) -> None:
    """A granted call not yet settled shows in the number's calls in progress."""
    place_call(server, "live-1", "3", "13800000001", "2026-11-30T10:00:00.000Z", None)
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    assert "13800000001" in c.get(f"/n/{N}/live").text
    assert 'data-refresh="/n/' in c.get(f"/n/{N}").text


def test_extension_page_filters_pages_and_exports(server: Server) -> None:
    """Date and state filters, paging, and a CSV export of exactly the filter, BOM and neutralised."""
    place_call(server, "x-1", "1", "+8613900000001", "2026-10-01T08:00:00.000Z", 30)
    place_call(server, "x-2", "1", "=HYPERLINK(1)", "2026-10-02T08:00:00.000Z", 0)
    place_call(server, "x-3", "1", "13900000003", "2026-10-03T08:00:00.000Z", 61)
    place_call(server, "x-4", "1", "13900000004", "2026-10-20T08:00:00.000Z", 10)
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    q = {"since": "2026-10-01", "until": "2026-10-03", "state": "rated"}
    html = c.get(f"/n/{N}/e/1", params=q).text
    shown = re.findall(r'data-call="([^"]+)"', html)
    assert shown == ["x-3", "x-1"]
    page1 = c.get(f"/n/{N}/e/1", params={**q, "limit": "1"}).text
    assert re.findall(r'data-call="([^"]+)"', page1) == ["x-3"]
    nxt = re.search(r'id="next-page" href="([^"]+)"', page1).group(1).replace("&amp;", "&")
    assert re.findall(r'data-call="([^"]+)"', c.get(f"/n/{N}/e/1{nxt}").text) == ["x-1"]
    export = re.search(r'id="export" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    r = c.get(export)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith(b"\xef\xbb\xbf")
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert [row["id"] for row in rows] == shown
    assert rows[1]["caller"] == "'+8613900000001"
    every = list(csv.DictReader(io.StringIO(c.get(f"/n/{N}/e/1/calls.csv").content.decode("utf-8-sig"))))
    assert next(r for r in every if r["id"] == "x-2")["caller"] == "'=HYPERLINK(1)"


def test_the_statement_pages_back_to_the_first_transfer_once_each(server: Server) -> None:
    """More transfers than a page shows: "Older entries" walks them all, each once, newest
    first, while more arrive; the calls list's page and limit are kept."""
    key = "2"
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    for i in range(STATEMENT_ROWS_SHOWN + 7):
        server.run(tx_admin.recharge, N, key, 1000 + i, f"st-page-{i}")
    whole = [r["id"] for r in server.run(tx_admin.statement, N, key, 500)]
    assert len(whole) > STATEMENT_ROWS_SHOWN
    seen: list[str] = []
    url = f"/n/{N}/e/{key}?limit=3"
    for turn in range(10):
        html = c.get(url).text
        seen += re.findall(
            r'<tr><td>[^<]*</td><td>[^<]*</td><td class="num">[^<]*</td><td>([^<]+)</td></tr>', html
        )
        if turn == 0:  # one arrives while the operator reads: it is on the first page, not later
            server.run(tx_admin.recharge, N, key, 5, "st-page-late")
        nxt = re.search(r'id="statement-next" href="([^"]+)"', html)
        if nxt is None:
            break
        url = f"/n/{N}/e/{key}" + nxt.group(1).replace("&amp;", "&")
        assert "limit=3" in url
    refs = [s for s in seen if s.startswith("st-page-")]
    assert len(refs) == len(set(refs)) == STATEMENT_ROWS_SHOWN + 7
    assert refs == sorted(refs, key=lambda r: -int(r.rsplit("-", 1)[1]))
    assert len(seen) == len(whole)  # every transfer of the extension, the late one not among them


def test_the_number_page_shows_the_main_accounts_statement_a_page_at_a_time(server: Server) -> None:
    """HQ sees main's transfers on the number page: a recharge to main is there, one to an
    extension is not; "Older entries" reaches the first one."""
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    for i in range(STATEMENT_ROWS_SHOWN + 2):
        server.run(tx_admin.recharge, N, None, 100 + i, f"main-st-{i}")
    server.run(tx_admin.recharge, N, "1", 7, "not-main")
    html = c.get(f"/n/{N}").text
    assert "Main account statement" in html and "main-st-" + str(STATEMENT_ROWS_SHOWN + 1) in html
    assert "not-main" not in html and "main-st-0<" not in html
    older = re.search(r'id="statement-next" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    assert "main-st-0<" in c.get(f"/n/{N}{older}").text


def test_bad_filter_is_one_clear_line(server: Server) -> None:
    c = sign_in(server, "hq", headers={"Accept-Language": "en"})
    r = c.get(f"/n/{N}/e/1", params={"since": "yesterday"})
    assert r.status_code == 400 and "since: &#39;yesterday&#39; is not a date like 2026-11-26" in r.text


def test_language_follows_browser_then_choice(server: Server) -> None:
    """Accept-Language picks the language until the user chooses one; the choice is kept."""
    zh = sign_in(server, "op", headers={"Accept-Language": "zh-CN,zh;q=0.9"})
    assert "号码" in zh.get("/").text
    en = sign_in(server, "op", headers={"Accept-Language": "en-US,en;q=0.9"})
    html = en.get("/").text
    assert "Numbers" in html and "号码" not in html
    r = en.post("/lang", data={"csrf": csrf_of(html), "lang": "zh"})
    assert r.status_code == 303
    assert "号码" in en.get("/").text


def test_operator_sees_every_number(server: Server) -> None:
    html = sign_in(server, "op").get("/").text
    assert f"/n/{N}" in html and f"/n/{OTHER_NUMBER}" in html


def test_mobile_width_meta_and_wrapping_forms(server: Server) -> None:
    c = sign_in(server, "hq")
    assert 'name="viewport" content="width=device-width' in c.get(f"/n/{N}").text
    assert "@media (max-width: 600px)" in c.get("/static/console.css").text


def test_export_covers_every_page_of_the_filter(server: Server) -> None:
    """An export longer than one store page holds every filtered call once, not one page of them."""
    from unittest import mock

    from fastagi.core.clock import iso_from_ms, ms_from_iso
    from fastagi.core.records import CallFacts
    from fastagi.store import tx_admin, tx_calls
    from fastagi.store.tx_web_reads import PAGE_ROWS_MAX

    count = PAGE_ROWS_MAX + 17
    starts = [iso_from_ms(ms_from_iso("2025-03-01T00:00:00.000Z") + i * 60_000) for i in range(count)]

    def many(conn: object) -> None:
        tx_admin.recharge(conn, N, "3", 100_000, "page-test")  # a grant holds what it can pay
        for i, start in enumerate(starts):
            with mock.patch.object(tx_calls, "now_ms", lambda start=start: ms_from_iso(start)):
                d = tx_calls.route(conn, f"p-{i}", N, "3", 1, "139", None, None)
                assert d.action == "dial", (i, d)
            end = iso_from_ms(ms_from_iso(start) + 1000)
            tx_calls.settle(conn, CallFacts(f"p-{i}", False, 0, None, end, "NOANSWER", "19", "hangup"))

    server.run(many)
    c = sign_in(server, "hq")
    q = {"since": "2025-03-01", "until": "2025-03-31", "state": "unanswered"}
    r = c.get(f"/n/{N}/e/3/calls.csv", params=q)
    ids = [row["id"] for row in csv.DictReader(io.StringIO(r.content.decode("utf-8-sig")))]
    assert ids == [f"p-{i}" for i in reversed(range(count))]
    assert len(re.findall(r'data-call="p-', c.get(f"/n/{N}/e/3", params=q).text)) == 50
