"""The console's pages and forms (server-rendered, Jinja2). Every datum comes through the
scoped Access (scope.py); every POST passes the Origin check and the session's CSRF token,
and every money or settings form also carries a one-time form token (double submit: once).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from fastagi.core.money import parse_amount
from fastagi.core.period import status_text
from fastagi.runtime import credentials
from fastagi.store import tx_web, tx_web_actions
from fastagi.web import auth, chart, export, i18n, params
from fastagi.web.errors import REFUSALS, Forbidden, status_of
from fastagi.web.scope import Access

FLASH_COOKIE = "extbill_flash"
FLASH_CHARS_MAX = 600
STATEMENT_ROWS_SHOWN = 50
ALREADY_SUBMITTED = "this form was already submitted; nothing changed"


def lang_of(request: Request, session: auth.Session | None) -> str:
    return i18n.pick(
        session.principal.lang if session else None,
        request.cookies.get(i18n.LANG_COOKIE),
        request.headers.get("accept-language"),
    )


def render(
    request: Request, name: str, session: auth.Session | None, status: int = 200, **ctx: Any
) -> HTMLResponse:
    web = request.app.state.web
    lang = lang_of(request, session)
    flash = None if name == "live.html" else _take_flash(request)
    html = web.templates.get_template(name).render(
        _=i18n.translator(lang),
        lang=lang,
        request=request,
        user=session.principal if session else None,
        csrf=session.csrf if session else None,
        flash=flash,
        **ctx,
    )
    response = HTMLResponse(html, status_code=status)
    if flash:
        response.delete_cookie(FLASH_COOKIE, path="/")
    return response


def _take_flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        return {"kind": str(doc["kind"]), "text": str(doc["text"])[:FLASH_CHARS_MAX]}
    except (ValueError, KeyError, TypeError):
        return None


def back(request: Request, url: str, kind: str, text: str) -> RedirectResponse:
    """Post/Redirect/Get: the outcome travels to the next page in a one-shot cookie."""
    response = RedirectResponse(url, status_code=303)
    value = json.dumps({"kind": kind, "text": text[:FLASH_CHARS_MAX]}, ensure_ascii=True)
    auth.set_cookie(request, response, FLASH_COOKIE, value, 60)
    return response


Page = Callable[[Request, auth.Session, Access], Awaitable[Response]]


def page(
    fn: Page, *, post: bool = False, form_on: str | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """Sign-in required; POSTs checked (Origin, CSRF); refusals shown in the user's language.

    A refused form goes back to the page it is on: `form_on` (a path with the action's
    path parameters, e.g. "/n/{number}"), else the action's path less its last part.
    """

    async def run(request: Request) -> Response:
        web = request.app.state.web
        session = await auth.current(request)
        if session is None:
            if post:
                return HTMLResponse("signed out: sign in again", status_code=401)
            return RedirectResponse("/login?next=" + quote(request.url.path), status_code=303)
        access = Access(web.store, web.reads, session.principal)
        try:
            if post:
                auth.check_origin(request)
                auth.check_csrf(session.csrf, await request.form())
            return await fn(request, session, access)
        except Forbidden as exc:
            return render(request, "error.html", session, 403, message=str(exc))
        except REFUSALS as exc:
            status = status_of(exc)
            if status == 404 or not post:
                return render(request, "error.html", session, status, message=str(exc))
            if form_on is not None:
                url = form_on.format(**request.path_params)
            else:
                url = request.url.path.rsplit("/", 1)[0] or "/"
            return back(request, url, "error", str(exc))

    return run


async def _form_token(request: Request, session: auth.Session) -> str:
    web = request.app.state.web
    token = credentials.new_token()
    await web.store.run(
        tx_web.issue_form_token, token, session.id_hash, web.clock(), auth.SESSION_ABSOLUTE_MS
    )
    return token


async def _once(request: Request, session: auth.Session, op: tuple[Any, ...]) -> tuple[bool, Any]:
    """Run a scoped store operation once per form token (the token is also its ledger ref)."""
    web = request.app.state.web
    form = await request.form()
    token = str(form.get("form_token") or "")
    fn, *args = op
    return await web.store.run(
        tx_web_actions.once, token, session.id_hash, web.clock(), auth.SESSION_ABSOLUTE_MS, fn, *args
    )


def _ref(form: Any) -> str:
    return "web:" + str(form.get("form_token") or "")


# ---- sign-in, sign-out, language ----------------------------------------------------------


async def login_page(request: Request) -> Response:
    token = request.cookies.get(auth.LOGIN_COOKIE) or credentials.new_token()
    lang = request.query_params.get("lang")
    if lang in i18n.LANGS:
        switch = RedirectResponse("/login", status_code=303)
        auth.set_cookie(request, switch, auth.LOGIN_COOKIE, token, 3600)
        auth.set_cookie(request, switch, i18n.LANG_COOKIE, lang, 365 * 86400)
        return switch
    response = render(
        request, "login.html", None, login_csrf=token, next=request.query_params.get("next", "")
    )
    auth.set_cookie(request, response, auth.LOGIN_COOKIE, token, 3600)
    return response


def _safe_next(target: str) -> str:
    """Only a path of this site: never "//host" or "/\\host" (browsers read both as another host)."""
    ok = target.startswith("/") and not target.startswith("//") and "\\" not in target
    return target if ok and target.isprintable() else "/"


async def login_submit(request: Request) -> Response:
    form = await request.form()
    try:
        auth.check_origin(request)
        auth.check_csrf(request.cookies.get(auth.LOGIN_COOKIE), form)
    except Forbidden as exc:
        return render(request, "error.html", None, 403, message=str(exc))
    try:
        cookie = await auth.sign_in(request, str(form.get("login") or ""), str(form.get("password") or ""))
    except auth.LoginFailed as exc:
        token = request.cookies.get(auth.LOGIN_COOKIE) or ""
        return render(request, "login.html", None, 401, login_csrf=token, error=str(exc), next="")
    response = RedirectResponse(_safe_next(str(form.get("next") or "/")), status_code=303)
    auth.set_cookie(request, response, auth.SESSION_COOKIE, cookie, None)
    response.delete_cookie(auth.LOGIN_COOKIE, path="/")
    return response


async def logout(request: Request, session: auth.Session, access: Access) -> Response:
    await request.app.state.web.store.run(tx_web.end_session, session.id_hash)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(auth.SESSION_COOKIE, path="/")
    return response


async def set_lang(request: Request, session: auth.Session, access: Access) -> Response:
    lang = str((await request.form()).get("lang"))
    assert session.principal.user_id is not None
    await request.app.state.web.store.run(tx_web.set_user_lang, session.principal.user_id, lang)
    return RedirectResponse(request.headers.get("referer") or "/", status_code=303)


# ---- pages --------------------------------------------------------------------------------


async def home(request: Request, session: auth.Session, access: Access) -> Response:
    p = session.principal
    if p.role == "branch":
        return RedirectResponse(f"/n/{p.number}/e/{p.ext}", status_code=303)
    if p.role == "hq":
        return RedirectResponse(f"/n/{p.number}", status_code=303)
    return render(request, "numbers.html", session, numbers=await access.numbers())


async def number_page(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    doc = await access.balance(number)
    live = await access.in_progress(number)
    return render(
        request,
        "number.html",
        session,
        doc=doc,
        **await _statement(access, number, None, request.query_params, {}),
        status_line=status_text(doc["status"], doc["owed"], doc["owed_months"]),
        periods=await access.periods(number),
        removed=await access.removed_extensions(number),
        live=live,
        form_token=await _form_token(request, session),
    )


async def live_fragment(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    return render(request, "live.html", session, live=await access.in_progress(number), number=number)


async def audit_page(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    before = request.query_params.get("before")
    before_id = int(before) if before and before.isdigit() else None
    rows = await access.audit(number, before_id)
    return render(request, "audit.html", session, number=number, rows=rows)


async def ext_page(request: Request, session: auth.Session, access: Access) -> Response:
    number, key = request.path_params["number"], request.path_params["key"]
    q = request.query_params
    info = await access.extension(number, key)
    filters = params.call_filters(q)
    calls, nxt = await access.calls(
        number, key, **filters, after=params.decode_cursor(q.get("cursor"), tuple), limit=params.limit(q)
    )
    today = datetime.now(UTC).date()
    spend = await access.daily_spend(number, key, chart.days_ending(today)[0].isoformat())
    shown = {k: q.get(k, "") for k in ("since", "until", "state")}
    query = urlencode({k: v for k, v in shown.items() if v})
    kept = {k: v for k, v in shown.items() if v}
    if q.get("limit"):
        kept["limit"] = q["limit"]  # (checked above by params.limit)
    # each list pages on its own cursor; each one's links keep the other list's page
    next_url = f"?{urlencode({**kept, 'cursor': params.encode_cursor(nxt), **_given(q, 'st_cursor')})}"
    return render(
        request,
        "ext.html",
        session,
        number=number,
        info=info,
        calls=calls,
        **await _statement(access, number, key, q, {**kept, **_given(q, "cursor")}),
        filters=shown,
        next_url=next_url if nxt else None,
        paged=bool(q.get("cursor")),
        export_url=f"/n/{number}/e/{key}/calls.csv" + (f"?{query}" if query else ""),
        chart=Markup(
            chart.spend_svg(
                spend, today, i18n.translator(lang_of(request, session))("Spend per day, last 30 days")
            )
        ),
        form_token=await _form_token(request, session),
    )


def _given(q: Any, name: str) -> dict[str, str]:
    """The query parameter to carry into a link, if the request has it."""
    return {name: q[name]} if q.get(name) else {}


async def _statement(
    access: Access, number: str, key: str | None, q: Any, kept: dict[str, str]
) -> dict[str, Any]:
    """An account's statement a page at a time (statement.html): its rows and the links to
    the older page and back to the newest, each keeping the rest of the page's query."""
    st_cursor = q.get("st_cursor") or None
    entries, nxt = await access.statement(
        number, key, params.decode_cursor(st_cursor, int), STATEMENT_ROWS_SHOWN
    )
    return {
        "entries": entries,
        "st_next_url": f"?{urlencode({**kept, 'st_cursor': params.encode_cursor(nxt)})}" if nxt else None,
        "st_first_url": f"?{urlencode(kept)}" if st_cursor else None,
    }


async def ext_export(request: Request, session: auth.Session, access: Access) -> Response:
    number, key = request.path_params["number"], request.path_params["key"]
    filters = params.call_filters(request.query_params)
    await access.extension(number, key)  # refuse (404) before the download starts
    name = f"calls-{number}-{key}.csv"
    return StreamingResponse(
        export.rows(access, number, key, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# ---- forms --------------------------------------------------------------------------------


async def recharge(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    access.check_number(number)  # out of scope: 404 before any word about the input
    form = await request.form()
    ext = str(form.get("ext") or "") or None
    amount = parse_amount(str(form.get("amount") or ""))
    fresh, _ = await _once(request, session, access.recharge_op(number, ext, amount, _ref(form)))
    return _outcome(request, f"/n/{number}", fresh, "recharged")


async def transfer(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    access.check_number(number)
    form = await request.form()
    amount = parse_amount(str(form.get("amount") or ""))
    op = access.transfer_op(number, str(form.get("ext") or ""), amount, _ref(form))
    fresh, _ = await _once(request, session, op)
    return _outcome(request, f"/n/{number}", fresh, "transferred")


async def settings(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    access.check_number(number)
    form = await request.form()
    changes: dict[str, Any] = {}
    if "ivr" in form:
        changes["ivr"] = form.get("ivr") == "on"
    if "ext_billing" in form:
        changes["ext_billing"] = form.get("ext_billing") == "on"
    if form.get("min_balance"):
        changes["min_balance"] = parse_amount(str(form.get("min_balance")), allow_zero=True)
    fresh, _ = await _once(request, session, access.set_number_op(number, _ref(form), **changes))
    return _outcome(request, f"/n/{number}", fresh, "saved")


async def low_balance(request: Request, session: auth.Session, access: Access) -> Response:
    number, key = request.path_params["number"], request.path_params["key"]
    access.check_ext(number, key)
    form = await request.form()
    low = parse_amount(str(form.get("low_balance") or ""), allow_zero=True)
    fresh, _ = await _once(request, session, access.set_low_balance_op(number, key, low, _ref(form)))
    return _outcome(request, f"/n/{number}/e/{key}", fresh, "saved")


def _outcome(request: Request, url: str, fresh: bool, done: str) -> Response:
    return back(request, url, "ok" if fresh else "info", done if fresh else ALREADY_SUBMITTED)


def routes() -> list[Route]:
    return [
        Route("/login", login_page),
        Route("/login", login_submit, methods=["POST"]),
        Route("/logout", page(logout, post=True), methods=["POST"]),
        Route("/lang", page(set_lang, post=True), methods=["POST"]),
        Route("/", page(home)),
        Route("/n/{number}", page(number_page)),
        Route("/n/{number}/live", page(live_fragment)),
        Route("/n/{number}/audit", page(audit_page)),
        Route("/n/{number}/recharge", page(recharge, post=True), methods=["POST"]),
        Route("/n/{number}/transfer", page(transfer, post=True), methods=["POST"]),
        Route("/n/{number}/settings", page(settings, post=True), methods=["POST"]),
        Route("/n/{number}/e/{key}", page(ext_page)),
        Route("/n/{number}/e/{key}/calls.csv", page(ext_export)),
        Route("/n/{number}/e/{key}/low-balance", page(low_balance, post=True), methods=["POST"]),
    ]
