"""The console's forms for HQ's money tasks (the CLI's `number set --monthly-minimum`,
`reclaim`, `ext remove`, `recharge --csv`) and the operator's notification outbox
(`events list [--failed]`, `events retry`).

Each form passes console.page's Origin and CSRF checks and runs once per one-time form
token; the store operations are tx_web_money's, so the rules, the words and the audit rows
are the CLI's and the other money forms'.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fastagi.core.money import format_amount, parse_amount
from fastagi.store import bulk_file
from fastagi.store.base import StoreError
from fastagi.store.tx_money import BulkError
from fastagi.web import auth
from fastagi.web.console import ALREADY_SUBMITTED, _form_token, _once, _outcome, _ref, back, page, render
from fastagi.web.errors import BadRequest
from fastagi.web.scope import Access

EVENT_ID_DIGITS_MAX = 18


def _collected(amount: int) -> str:
    return f"; {format_amount(amount)} of it paid what the number owed" if amount else ""


async def monthly_minimum(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    access.check_number(number)  # out of scope: 404 before any word about the input
    form = await request.form()
    amount = parse_amount(str(form.get("monthly_minimum") or ""), allow_zero=True)
    fresh, _ = await _once(request, session, access.set_monthly_minimum_op(number, amount, _ref(form)))
    return _outcome(request, f"/n/{number}", fresh, "saved")


async def reclaim(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    access.check_number(number)
    form = await request.form()
    ext = str(form.get("ext") or "")
    text = str(form.get("amount") or "").strip()
    amount = parse_amount(text) if text else None  # empty: all of its available money
    fresh, r = await _once(request, session, access.reclaim_op(number, ext, amount, _ref(form)))
    if not fresh:
        return back(request, f"/n/{number}", "info", ALREADY_SUBMITTED)
    done = (
        f"reclaimed {format_amount(r['amount'])} from extension {ext} to the main account of "
        f"{number}{_collected(r['collected'])}"
    )
    return back(request, f"/n/{number}", "ok", done)


async def remove_extension(request: Request, session: auth.Session, access: Access) -> Response:
    number = request.path_params["number"]
    access.check_number(number)
    form = await request.form()
    ext = str(form.get("ext") or "")
    fresh, r = await _once(request, session, access.remove_extension_op(number, ext, _ref(form)))
    if not fresh:
        return back(request, f"/n/{number}", "info", ALREADY_SUBMITTED)
    done = (
        f"extension {ext} of {number} removed; {format_amount(r['returned'])} returned to the main "
        f"account{_collected(r['collected'])}"
    )
    return back(request, f"/n/{number}", "ok", done)


async def bulk_recharge(request: Request, session: auth.Session, access: Access) -> Response:
    """An uploaded `number,key,amount,ref` file: all rows or none; every bad row by its line."""
    number = request.path_params["number"]
    access.check_number(number)
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise BadRequest("choose a CSV file of number,key,amount,ref rows to upload")
    name = upload.filename
    errors, rows = bulk_file.parse(bulk_file.decode(await upload.read(bulk_file.CSV_BYTES_MAX + 1), name))
    if not rows and not errors:
        raise StoreError(f"{name} has no rows to recharge")
    # the rows that parsed are checked against the database too: every bad row is listed
    errors = sorted(errors + await access.check_bulk(number, rows))
    if not errors:
        try:
            fresh, r = await _once(request, session, access.bulk_recharge_op(number, rows, _ref(form)))
        except BulkError as exc:  # changed between the check and the transaction
            errors = exc.errors
    if errors:
        return render(
            request,
            "bulk_refused.html",
            session,
            400,
            number=number,
            file_name=name,
            errors=errors,
        )
    if not fresh:
        return back(request, f"/n/{number}", "info", ALREADY_SUBMITTED)
    done = (
        f"{name}: {r['applied']} recharges applied ({format_amount(r['total'])}), "
        f"{r['already']} already done{_collected(r['collected'])}"
    )
    return back(request, f"/n/{number}", "ok", done)


# ---- the operator's notification outbox ---------------------------------------------------


async def events_page(request: Request, session: auth.Session, access: Access) -> Response:
    failed = request.query_params.get("failed") in ("1", "on", "true")
    events = await access.events(failed)
    return render(
        request,
        "events.html",
        session,
        events=events,
        failed=failed,
        form_token=await _form_token(request, session),
    )


async def retry_event(request: Request, session: auth.Session, access: Access) -> Response:
    access.check_operator()
    text = request.path_params["id"]
    if not (text.isascii() and text.isdigit()) or len(text) > EVENT_ID_DIGITS_MAX:
        raise BadRequest(f"{text!r} is not an event number (see extbill events list)")
    form = await request.form()
    fresh, r = await _once(request, session, access.retry_event_op(int(text), _ref(form)))
    if not fresh:
        return back(request, "/events", "info", ALREADY_SUBMITTED)
    return back(
        request,
        "/events",
        "ok",
        f"event {r['id']} ({r['event_id']}, was {r['was']}) will be sent again by serve",
    )


def routes() -> list[Route]:
    return [
        Route("/n/{number}/monthly-minimum", page(monthly_minimum, post=True), methods=["POST"]),
        Route("/n/{number}/reclaim", page(reclaim, post=True), methods=["POST"]),
        Route("/n/{number}/remove-extension", page(remove_extension, post=True), methods=["POST"]),
        Route(
            "/n/{number}/recharges/bulk",
            page(bulk_recharge, post=True, form_on="/n/{number}"),
            methods=["POST"],
        ),
        Route("/events", page(events_page)),
        Route("/events/{id}/retry", page(retry_event, post=True, form_on="/events"), methods=["POST"]),
    ]
