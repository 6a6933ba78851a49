"""The console in a real Chromium: Debian's /usr/bin/chromium driven by Playwright for Python.

Never `playwright install`: no browser downloads here. .ci/setup --browser installs Debian's
chromium and fonts-noto-cjk; the pinned Playwright's own Chromium major must be at or above
Debian's (printed below). EXTBILL_SCREENSHOT=docs/console.png also saves the README's picture.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import playwright
import pytest
from conftest import OTHER_NUMBER, PASSWORD, Server, place_call

from fastagi.store.demo import DEMO_NUMBER

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
N = DEMO_NUMBER

if not os.path.exists(CHROMIUM):
    if os.environ.get("EXTBILL_BROWSER_REQUIRED") == "1":
        raise RuntimeError(f"{CHROMIUM} is missing: run bash .ci/setup --browser")
    pytest.skip(f"{CHROMIUM} is missing (bash .ci/setup --browser)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


def _majors() -> tuple[int, int]:
    debian = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, check=True).stdout
    browsers = Path(playwright.__file__).parent / "driver" / "package" / "browsers.json"
    ours = next(b for b in json.loads(browsers.read_text())["browsers"] if b["name"] == "chromium")
    print(f"Debian: {debian.strip()}; Playwright's Chromium: {ours['browserVersion']}")
    return int(re.search(r"(\d+)\.", debian).group(1)), int(ours["browserVersion"].split(".")[0])


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    debian, ours = _majors()
    assert ours >= debian, (
        f"Playwright's Chromium {ours} is older than Debian's {debian}: pin a newer playwright"
    )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def signed_in(browser: Browser, server: Server, login: str, locale: str = "en-US") -> Page:
    ctx = browser.new_context(locale=locale, viewport={"width": 1100, "height": 900}, accept_downloads=True)
    page = ctx.new_page()
    page.goto(f"{server.url}/login")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return page


def cell(page: Page, account: str) -> str:
    return page.locator(f'tr[data-account="{account}"] td.balance').inner_text()


def test_hq_recharges_an_extension_and_sees_balance_and_audit(browser: Browser, server: Server) -> None:
    page = signed_in(browser, server, "hq")
    expect(page).to_have_url(re.compile(f"/n/{N}$"))
    before = float(cell(page, "ext-1"))
    page.select_option("#recharge-form select[name=ext]", "1")
    page.fill("#recharge-form input[name=amount]", "25")
    page.click("#recharge-form button")
    expect(page.locator(".flash")).to_have_text("recharged")
    assert float(cell(page, "ext-1")) == pytest.approx(before + 25)
    if os.environ.get("EXTBILL_SCREENSHOT"):
        page.screenshot(path=os.environ["EXTBILL_SCREENSHOT"], full_page=True)
    page.click("text=Audit log")
    row = page.locator("#audit tbody tr").first
    expect(row).to_contain_text("recharge 25.000")
    expect(row).to_contain_text("hq")


def test_hq_reclaims_from_an_extension_and_sees_balance_and_audit(browser: Browser, server: Server) -> None:
    page = signed_in(browser, server, "hq")
    main, ext = float(cell(page, "main")), float(cell(page, "ext-1"))
    assert ext >= 5
    page.select_option("#reclaim-form select[name=ext]", "1")
    page.fill("#reclaim-form input[name=amount]", "5")
    page.click("#reclaim-form button")
    expect(page.locator(".flash")).to_have_text(
        f"reclaimed 5.000 from extension 1 to the main account of {N}"
    )
    assert float(cell(page, "ext-1")) == pytest.approx(ext - 5)
    assert float(cell(page, "main")) == pytest.approx(main + 5)
    page.click("text=Audit log")
    row = page.locator("#audit tbody tr").first
    expect(row).to_contain_text("reclaim 5.000 ext 1 -> main")
    expect(row).to_contain_text("hq")


def test_double_click_recharges_once(browser: Browser, server: Server) -> None:
    page = signed_in(browser, server, "hq")
    before = float(cell(page, "main"))
    page.fill("#recharge-form input[name=amount]", "4")
    page.dblclick("#recharge-form button")
    # the submit that reached the server answers "recharged" or "already submitted"
    expect(page.locator(".flash")).to_be_visible(timeout=15_000)
    page.goto(f"{server.url}/n/{N}")
    assert float(cell(page, "main")) == pytest.approx(before + 4)


def test_branch_sees_only_its_extension(browser: Browser, server: Server) -> None:
    page = signed_in(browser, server, "br1")
    expect(page).to_have_url(re.compile(f"/n/{N}/e/1$"))
    expect(page.locator("h1")).to_contain_text("Beijing branch")
    assert page.locator("text=Shanghai branch").count() == 0
    for url in (f"/n/{N}", f"/n/{N}/e/2", f"/n/{OTHER_NUMBER}/e/9"):
        assert page.goto(server.url + url).status == 404


def test_csv_export_downloads_what_the_filter_shows(browser: Browser, server: Server) -> None:
    place_call(server, "b-1", "3", "13600000001", "2026-09-01T08:00:00.000Z", 0)
    place_call(server, "b-2", "3", "13600000002", "2026-09-02T08:00:00.000Z", 0)
    place_call(server, "b-3", "3", "13600000003", "2026-09-05T08:00:00.000Z", 0)
    server_page = signed_in(browser, server, "hq")
    server_page.goto(f"{server.url}/n/{N}/e/3")
    server_page.fill("input[name=since]", "2026-09-02")
    server_page.fill("input[name=until]", "2026-09-05")
    server_page.click("#call-filter button")
    shown = server_page.locator("#calls tbody tr[data-call]").evaluate_all(
        "rows => rows.map(r => r.dataset.call)"
    )
    assert shown == ["b-3", "b-2"]
    with server_page.expect_download() as info:
        server_page.click("#export")
    data = Path(info.value.path()).read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert [r["id"] for r in csv.DictReader(io.StringIO(data.decode("utf-8-sig")))] == shown


def test_language_switch(browser: Browser, server: Server) -> None:
    page = signed_in(browser, server, "op", locale="zh-CN")
    expect(page.locator("h1")).to_have_text("号码")
    page.click("#lang-switch")
    expect(page.locator("h1")).to_have_text("Numbers")
    page.click("#lang-switch")
    expect(page.locator("h1")).to_have_text("号码")


def test_mobile_width_is_usable(browser: Browser, server: Server) -> None:
    """At phone width the recharge form fits the screen (no sideways scrolling of the page)."""
    ctx = browser.new_context(viewport={"width": 375, "height": 800}, locale="en-US")
    page = ctx.new_page()
    page.goto(f"{server.url}/login")
    page.fill("input[name=login]", "hq")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    box = page.locator("#recharge-form").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
    assert page.evaluate("document.documentElement.scrollWidth") <= 375


def test_calls_in_progress_refresh_by_themselves(browser: Browser, server: Server) -> None:
    """A call granted while the number page is open appears without a reload."""
    page = signed_in(browser, server, "hq")
    expect(page.locator("#live")).not_to_contain_text("13500000009")
    place_call(server, "b-live", "1", "13500000009", "2026-11-30T12:00:00.000Z", None)
    expect(page.locator("#live")).to_contain_text("13500000009", timeout=15_000)
