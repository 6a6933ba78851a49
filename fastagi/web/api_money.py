"""HQ's money tasks in the JSON API: claw-back, removing an extension, bulk recharge and the
closed months, with api.py's rules: a bearer token reaches its own number only, every change
needs an Idempotency-Key (a repeat gets the first answer), refusals are {"error": ...} in
the CLI's words."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastagi.core.money import AmountError, format_amount, parse_amount
from fastagi.store import bulk_file, tx_web_actions
from fastagi.store.tx_money import BULK_ROWS_MAX, BulkError, BulkRow
from fastagi.web import params
from fastagi.web.api import _body, endpoint
from fastagi.web.errors import BadRequest
from fastagi.web.scope import Access

BULK_BODY_BYTES_MAX = 2 * 1024 * 1024  # BULK_ROWS_MAX rows of a few dozen bytes each
ROW_FIELDS = bulk_file.CSV_FIELDS  # number (optional: the path's), key, amount, ref


def _collected(doc: dict[str, Any], r: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "collected": format_amount(r["collected"])}


async def _once(
    request: Request,
    access: Access,
    idem: str,
    what: list[Any],
    op: Callable[[Any], tuple[int, dict[str, Any]]],
) -> Response:
    """op(conn) once per Idempotency-Key, in one transaction with its record (api.py's rules)."""
    body_hash = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    store = request.app.state.web.store
    status, doc = await store.run(tx_web_actions.idempotent, access.p.key_id, idem, body_hash, op)
    return JSONResponse(doc, status_code=status)


async def reclaims(request: Request, access: Access) -> Response:
    """POST {"ext": "1", "amount": "5"}: back to main; without amount, all of its available money."""
    number = request.path_params["number"]
    access.check_number(number)  # out of scope: 404 before any word about the request
    idem = params.idempotency_key(request.headers.get("idempotency-key"))
    body = await _body(request, ("ext", "amount"), ("ext",))
    ext = body["ext"]
    if not isinstance(ext, str):
        raise BadRequest("field 'ext' must be an extension key as text, e.g. \"1\"")
    amount = None if body.get("amount") is None else parse_amount(body["amount"])
    fn, *args = access.reclaim_op(number, ext, amount, f"api:{access.p.key_id}:{idem}")

    def op(conn: Any) -> tuple[int, dict[str, Any]]:
        r = fn(conn, *args)
        doc = {"number": number, "ext": ext, "amount": format_amount(r["amount"]), "idempotency_key": idem}
        return 201, _collected(doc, r)

    return await _once(request, access, idem, ["reclaim", number, body], op)


async def remove_extension(request: Request, access: Access) -> Response:
    """DELETE: the extension's money goes back to main; its history stays readable."""
    number, key = request.path_params["number"], request.path_params["key"]
    access.check_number(number)
    idem = params.idempotency_key(request.headers.get("idempotency-key"))
    fn, *args = access.remove_extension_op(number, key, f"api:{access.p.key_id}:{idem}")

    def op(conn: Any) -> tuple[int, dict[str, Any]]:
        r = fn(conn, *args)
        doc = {
            "number": number,
            "ext": key,
            "removed": True,
            "returned": format_amount(r["returned"]),
            "idempotency_key": idem,
        }
        return 200, _collected(doc, r)

    return await _once(request, access, idem, ["remove", number, key], op)


def _row(number: str, i: int, item: Any) -> BulkRow | str:
    """One row of a bulk request, or the words of what is wrong with it."""
    if not isinstance(item, dict):
        return "a row must be an object with key, amount and ref"
    for k in item:
        if k not in ROW_FIELDS:
            return f"unknown field {k!r} (allowed: {', '.join(ROW_FIELDS)})"
    row_number, key, ref = item.get("number", number), item.get("key"), item.get("ref")
    if not isinstance(row_number, str):
        return "field 'number' must be the number as text"
    if key is not None and not isinstance(key, str):
        return "field 'key' must be an extension key as text, e.g. \"1\" (empty for the main account)"
    if "amount" not in item:
        return "field 'amount' is required"
    try:
        amount = parse_amount(item["amount"])
    except AmountError as exc:
        return str(exc)
    if not isinstance(ref, str):
        ref = ""
    bad_ref = bulk_file.check_ref(ref)
    if bad_ref is not None:
        return bad_ref
    return BulkRow(i, row_number, key or None, amount, ref)


def _refused(errors: list[tuple[int, str]]) -> Response:
    """Every bad row by its place in `rows` (1 = the first); nothing was applied."""
    return JSONResponse(
        {
            "error": "; ".join(f"row {i}: {msg}" for i, msg in errors) + "; nothing was applied",
            "errors": [{"row": i, "error": msg} for i, msg in errors],
        },
        status_code=400,
    )


async def bulk_recharges(request: Request, access: Access) -> Response:
    """POST {"rows": [{"key": "", "amount": "1", "ref": "..."}]}: all rows of this number or none."""
    number = request.path_params["number"]
    access.check_number(number)
    idem = params.idempotency_key(request.headers.get("idempotency-key"))
    body = await _body(request, ("rows",), ("rows",), BULK_BODY_BYTES_MAX)
    items = body["rows"]
    if not isinstance(items, list) or not items:
        raise BadRequest("field 'rows' must be a non-empty list of {key, amount, ref} objects")
    if len(items) > BULK_ROWS_MAX:
        raise BadRequest(f"{len(items)} rows; at most {BULK_ROWS_MAX} at once")
    errors: list[tuple[int, str]] = []
    rows: list[BulkRow] = []
    for i, item in enumerate(items, 1):
        r = _row(number, i, item)
        if isinstance(r, BulkRow):
            rows.append(r)
        else:
            errors.append((i, r))
    errors = sorted(errors + await access.check_bulk(number, rows))
    if errors:
        return _refused(errors)
    fn, *args = access.bulk_recharge_op(number, rows, f"api:{access.p.key_id}:{idem}")

    def op(conn: Any) -> tuple[int, dict[str, Any]]:
        r = fn(conn, *args)
        doc = {
            "number": number,
            "applied": r["applied"],
            "already": r["already"],
            "total": format_amount(r["total"]),
            "idempotency_key": idem,
        }
        return 201, _collected(doc, r)

    try:
        return await _once(request, access, idem, ["bulk", number, body], op)
    except BulkError as exc:  # changed between the check and the transaction
        return _refused(exc.errors)


async def periods(request: Request, access: Access) -> Response:
    """The closed months, newest first, each as `extbill period list N --json` prints it."""
    number = request.path_params["number"]
    return JSONResponse({"number": number, "periods": await access.periods(number)})


def routes() -> list[Route]:
    return [
        Route("/numbers/{number}/reclaims", endpoint(reclaims), methods=["POST"]),
        Route("/numbers/{number}/extensions/{key}", endpoint(remove_extension), methods=["DELETE"]),
        Route("/numbers/{number}/recharges/bulk", endpoint(bulk_recharges), methods=["POST"]),
        Route("/numbers/{number}/periods", endpoint(periods)),
    ]
