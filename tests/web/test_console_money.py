"""HQ's money tasks in the console over real HTTP: monthly minimum, reclaim, removing an
extension, bulk CSV upload, closed months, and the operator's notification outbox."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import httpx
from conftest import OTHER_NUMBER, Server, csrf_of, form_token_of, place_call, sign_in
from test_console import balance_cell, flash, post_form

from fastagi.core.money import parse_amount
from fastagi.core.records import CallFacts
from fastagi.runtime.clock import now_ms
from fastagi.store import tx_admin, tx_calls, tx_money, tx_outbox
from fastagi.store.demo import DEMO_NUMBER

N = DEMO_NUMBER
OWING = "4001110000"  # a number of its own that ends a month owing its minimum


def en(server: Server, login: str = "hq") -> httpx.Client:
    return sign_in(server, login, headers={"Accept-Language": "en"})


def money(text: str) -> float:
    return float(text)


def audit_rows(c: httpx.Client, number: str = N) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", c.get(f"/n/{number}/audit").text, re.S)


def end_call(server: Server, bid: str) -> None:
    server.run(
        tx_calls.settle,
        CallFacts(bid, False, 0, None, "2026-11-30T10:01:00.000Z", "NOANSWER", "19", "hangup"),
    )


def cli(server: Server, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "fastagi", *args, "--db", str(server.db)],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout


# ---- monthly minimum and what a number owes -----------------------------------------------


def test_set_the_monthly_minimum_and_its_audit(server: Server) -> None:
    c = en(server)
    r = post_form(c, f"/n/{N}", f"/n/{N}/monthly-minimum", monthly_minimum="30")
    assert flash(c, r) == "saved"
    html = c.get(f"/n/{N}").text
    assert '<span id="monthly-minimum">30.000</span> (Asia/Shanghai)' in html
    assert any("set monthly_minimum=30.000" in row and "web:" in row for row in audit_rows(c))
    r = post_form(c, f"/n/{N}", f"/n/{N}/monthly-minimum", monthly_minimum="-1")
    assert flash(c, r) == "amount &#39;-1&#39; is negative"
    r = post_form(c, f"/n/{N}", f"/n/{N}/monthly-minimum", monthly_minimum="0")
    assert flash(c, r) == "saved"
    assert '<span id="monthly-minimum">none</span>' in c.get(f"/n/{N}").text


def _owing_number(conn: Any) -> None:
    tx_admin.add_number(conn, OWING, "Owing HQ", "standard", 0, "en", None, 5)
    tx_admin.set_number(conn, OWING, monthly_minimum=parse_amount("80"))
    tx_admin.recharge(conn, OWING, None, parse_amount("30"), "owing-main")
    tx_money.close_period(conn, "2026-10", now_ms(), OWING)


def test_owed_amount_and_reason_shown_as_number_show_does(server: Server) -> None:
    """A month closed short: the number page says why it is suspended in `number show`'s words,
    lists the closed month, and the next recharge pays what is owed first."""
    server.run(_owing_number)
    c = en(server, "op")
    html = c.get(f"/n/{OWING}").text
    words = "suspended: owes 50.000 of the monthly minimum of 2026-10; the next recharge pays it first"
    assert f"[{words}]" in cli(server, "number", "show", OWING)
    assert re.search(rf'id="number-status" role="status">{re.escape(words)}<', html)
    assert '<span id="owed">50.000</span>' in html
    month = re.search(r'<tr data-month="2026-10">(.*?)</tr>', html, re.S).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", month)
    assert cells[:6] == ["2026-10", "80.000", "0.000", "80.000", "30.000", "50.000"]
    r = post_form(c, f"/n/{OWING}", f"/n/{OWING}/recharge", ext="", amount="70")
    assert flash(c, r) == "recharged"
    html = c.get(f"/n/{OWING}").text
    assert 'id="number-status"' not in html and '<span id="owed">0.000</span>' in html
    assert balance_cell(html, "main") == "20.000"


# ---- reclaim -----------------------------------------------------------------------------


def test_reclaim_an_amount_then_all_and_the_audit(server: Server) -> None:
    c = en(server)
    server.run(tx_admin.recharge, N, "2", parse_amount("20"), "reclaim-setup")
    html = c.get(f"/n/{N}").text
    main, ext = money(balance_cell(html, "main")), money(balance_cell(html, "ext-2"))
    r = post_form(c, f"/n/{N}", f"/n/{N}/reclaim", ext="2", amount="5")
    assert flash(c, r) == f"reclaimed 5.000 from extension 2 to the main account of {N}"
    html = c.get(f"/n/{N}").text
    assert money(balance_cell(html, "main")) == main + 5 and money(balance_cell(html, "ext-2")) == ext - 5
    row = next(r for r in audit_rows(c) if "reclaim 5.000 ext 2 -&gt; main" in r)
    assert "<td>hq</td><td>hq</td><td>127.0.0.1</td>" in row and "web:" in row
    r = post_form(c, f"/n/{N}", f"/n/{N}/reclaim", ext="2", amount="")  # empty: all available
    assert flash(c, r) == f"reclaimed {ext - 5:.3f} from extension 2 to the main account of {N}"
    html = c.get(f"/n/{N}").text
    assert balance_cell(html, "ext-2") == "0.000" and money(balance_cell(html, "main")) == main + ext


def test_reclaim_refusals_in_the_clis_words(server: Server) -> None:
    c = en(server)
    before = c.get(f"/n/{N}").text
    r = post_form(c, f"/n/{N}", f"/n/{N}/reclaim", ext="1", amount="100000")
    assert re.fullmatch(
        rf"cannot reclaim 100000\.000: extension 1 of {N} has only [0-9.]+ available", flash(c, r)
    )
    r = post_form(c, f"/n/{N}", f"/n/{N}/reclaim", ext="77", amount="1")
    assert r.status_code == 404 and f"number {N} has no extension 77" in r.text
    after = c.get(f"/n/{N}").text
    assert balance_cell(after, "ext-1") == balance_cell(before, "ext-1")


def test_reclaim_never_takes_reserved_money(server: Server) -> None:
    """With a call in progress, "all" is what is available; the held money stays."""
    server.run(tx_admin.add_extension, N, "6", "Reserved branch", "Local/6@ctx", None)
    server.run(tx_admin.recharge, N, "6", parse_amount("10"), "reserve-6")
    place_call(server, "rsv-1", "6", "13700000006", "2026-11-30T10:00:00.000Z", None)
    c = en(server)
    reserved = re.search(
        r'data-account="ext-6">.*?class="num balance">[^<]+</td><td class="num">([^<]+)<',
        c.get(f"/n/{N}").text,
        re.S,
    ).group(1)
    assert money(reserved) > 0
    r = post_form(c, f"/n/{N}", f"/n/{N}/reclaim", ext="6", amount="")
    assert flash(c, r) == f"reclaimed {10 - money(reserved):.3f} from extension 6 to the main account of {N}"
    assert balance_cell(c.get(f"/n/{N}").text, "ext-6") == reserved
    r = post_form(c, f"/n/{N}", f"/n/{N}/reclaim", ext="6", amount="")
    assert flash(c, r) == (
        f"extension 6 of {N} has nothing available to reclaim ({reserved} is held by calls in progress)"
    )
    end_call(server, "rsv-1")


def test_double_submit_of_a_reclaim_reclaims_once(server: Server) -> None:
    c = en(server)
    server.run(tx_admin.recharge, N, "2", parse_amount("8"), "double-reclaim-setup")
    html = c.get(f"/n/{N}").text
    before = money(balance_cell(html, "ext-2"))
    data = {"csrf": csrf_of(html), "form_token": form_token_of(html), "ext": "2", "amount": "3"}
    assert flash(c, c.post(f"/n/{N}/reclaim", data=data)).startswith("reclaimed 3.000")
    assert (
        flash(c, c.post(f"/n/{N}/reclaim", data=data)) == "this form was already submitted; nothing changed"
    )
    assert money(balance_cell(c.get(f"/n/{N}").text, "ext-2")) == before - 3


# ---- removing an extension ---------------------------------------------------------------


def test_remove_refused_during_a_call_then_done_and_history_readable(server: Server) -> None:
    server.run(tx_admin.add_extension, N, "7", "Closing branch", "Local/7@ctx", None)
    server.run(tx_admin.recharge, N, "7", parse_amount("12"), "remove-7")
    place_call(server, "rm-1", "7", "13700000007", "2026-11-30T10:00:00.000Z", None)
    c = en(server)
    r = post_form(c, f"/n/{N}", f"/n/{N}/remove-extension", ext="7", confirm="on")
    assert flash(c, r) == f"extension 7 of {N} has a call in progress; remove it once the call has ended"
    assert 'data-account="ext-7"' in c.get(f"/n/{N}").text
    end_call(server, "rm-1")
    main = money(balance_cell(c.get(f"/n/{N}").text, "main"))
    r = post_form(c, f"/n/{N}", f"/n/{N}/remove-extension", ext="7", confirm="on")
    assert flash(c, r) == f"extension 7 of {N} removed; 12.000 returned to the main account"
    html = c.get(f"/n/{N}").text
    assert 'data-account="ext-7"' not in html and money(balance_cell(html, "main")) == main + 12
    assert re.search(r'<tr data-removed="7"><td><a href="/n/[0-9]+/e/7">7 · Closing branch</a>', html)
    page = c.get(f"/n/{N}/e/7")
    assert page.status_code == 200 and 'id="removed-note"' in page.text
    assert 'data-call="rm-1"' in page.text and "ext-remove" in page.text  # calls and statement
    assert 'id="low-form"' not in page.text
    assert any("remove ext 7: 12.000 returned to main" in row for row in audit_rows(c))
    r = post_form(c, f"/n/{N}", f"/n/{N}/remove-extension", ext="7", confirm="on")
    assert r.status_code == 404 and f"extension 7 of {N} was removed on" in r.text


# ---- bulk recharge -----------------------------------------------------------------------


def upload(c: httpx.Client, number: str, name: str, text: str) -> httpx.Response:
    html = c.get(f"/n/{number}").text
    data = {"csrf": csrf_of(html), "form_token": form_token_of(html)}
    return c.post(f"/n/{number}/recharges/bulk", data=data, files={"file": (name, text.encode(), "text/csv")})


def test_bulk_upload_applies_every_row_once(server: Server) -> None:
    c = en(server)
    before = c.get(f"/n/{N}").text
    text = f"number,key,amount,ref\n{N},,10,bulk-a\n{N},1,2.5,bulk-b\n{N},2,1,bulk-c\n"
    r = upload(c, N, "quota.csv", text)
    assert flash(c, r) == "quota.csv: 3 recharges applied (13.500), 0 already done"
    after = c.get(f"/n/{N}").text
    for account, added in (("main", 10), ("ext-1", 2.5), ("ext-2", 1)):
        assert money(balance_cell(after, account)) == money(balance_cell(before, account)) + added
    assert any("bulk recharge: 3 recharges applied (13.500), 0 already done" in row for row in audit_rows(c))
    r = upload(c, N, "quota.csv", text)  # the same file again: every ref already done
    assert flash(c, r) == "quota.csv: 0 recharges applied (0.000), 3 already done"
    again = c.get(f"/n/{N}").text
    assert [balance_cell(again, a) for a in ("main", "ext-1", "ext-2")] == [
        balance_cell(after, a) for a in ("main", "ext-1", "ext-2")
    ]


def test_bulk_upload_with_bad_rows_applies_nothing_and_lists_each_line(server: Server) -> None:
    """Another number's row reads exactly like an unknown number's; nothing is applied."""
    c = en(server)
    before = c.get(f"/n/{N}").text
    text = (
        f"{N},,5,bad-a\n"
        f"{OTHER_NUMBER},9,1,bad-b\n"
        f"4000000000,,1,bad-c\n"
        f"{N},1,1.2345,bad-d\n"
        f"{N},77,1,bad-e\n"
        f"{N},1,1\n"
    )
    r = upload(c, N, "bad.csv", text)
    assert r.status_code == 400
    lines = re.findall(r'<li data-line="(\d+)">([^<]*)</li>', r.text)
    assert lines == [
        ("2", f"bad.csv line 2: unknown number {OTHER_NUMBER}"),
        ("3", "bad.csv line 3: unknown number 4000000000"),
        ("4", "bad.csv line 4: amount &#39;1.2345&#39; has more than 3 decimal places"),
        ("5", f"bad.csv line 5: number {N} has no extension 77"),
        ("6", "bad.csv line 6: expected 4 fields number,key,amount,ref, found 3"),
    ]
    after = c.get(f"/n/{N}").text
    assert balance_cell(after, "main") == balance_cell(before, "main")
    r = upload(c, N, "bad.csv", f"{N},,5,bad-a\n")  # fixed, the same form works: line 1 was never applied
    assert flash(c, r) == "bad.csv: 1 recharges applied (5.000), 0 already done"


# ---- the operator's notification outbox ---------------------------------------------------


def _failed_event(conn: Any) -> int:
    tx_outbox.balance_low(conn, N, "1", 100, 6000)
    event = tx_outbox.list_events(conn, False)[0]
    assert tx_outbox.mark_attempt_failed(conn, event["id"], "receiver down", now_ms(), window_s=0) == "failed"
    return event["id"]


def test_events_list_failed_filter_and_retry(server: Server) -> None:
    event_id = server.run(_failed_event)
    c = en(server, "op")
    assert 'href="/events"' in c.get("/").text
    everything = c.get("/events").text
    failed = c.get("/events", params={"failed": "1"}).text
    assert f'data-event="{event_id}"' in failed and "receiver down" in failed
    assert len(re.findall(r"data-event=", failed)) <= len(re.findall(r"data-event=", everything))
    assert all(state == "failed" for state in re.findall(r"<td>(pending|failed|delivered)</td>", failed))
    html = c.get("/events").text
    data = {"csrf": csrf_of(html), "form_token": form_token_of(html)}
    r = c.post(f"/events/{event_id}/retry", data=data)
    assert re.fullmatch(
        rf"event {event_id} \(evt_[0-9a-f]+, was failed\) will be sent again by serve", flash(c, r)
    )
    assert f'data-event="{event_id}"' not in c.get("/events", params={"failed": "1"}).text
    assert any(
        f"retry event {event_id}" in row and "<td>op</td><td>operator</td>" in row for row in audit_rows(c)
    )
    r = post_form(c, "/events", "/events/999999/retry")
    assert r.status_code == 404 and "no event 999999 (see extbill events list)" in r.text


def test_events_are_the_operators_only(server: Server) -> None:
    for login in ("hq", "br1"):
        c = en(server, login)
        assert c.get("/events").status_code == 404
        html = c.get("/", follow_redirects=True).text
        r = c.post("/events/1/retry", data={"csrf": csrf_of(html), "form_token": "x"})
        assert r.status_code == 404
