"""The JSON API under /api/v1 for payment systems: bearer tokens (`extbill apikey add`),
one number per token, Idempotency-Key on every money request, refusals as {"error": ...}
with the CLI's words."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fastagi.core.money import format_amount, money_fields, parse_amount
from fastagi.runtime.credentials import token_hash
from fastagi.store import tx_web, tx_web_actions
from fastagi.store.documents import balance_document
from fastagi.web import params
from fastagi.web.errors import REFUSALS, BadRequest, status_of
from fastagi.web.openapi import OPENAPI
from fastagi.web.scope import Access, Principal

BODY_BYTES_MAX = 4096  # a recharge or transfer request is a few dozen bytes


class Unauthorized(Exception):
    pass


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


async def _principal(request: Request) -> Principal:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("an API token is required: Authorization: Bearer <token>")
    key = await request.app.state.web.store.read(tx_web.api_key_by_hash, token_hash(token.strip()))
    if key is None:
        raise Unauthorized("the API token is not valid (unknown or revoked)")
    address = request.client.host if request.client else None
    return Principal(f"apikey:{key['name']}", "apikey", key["number"], None, address, key_id=key["id"])


Handler = Callable[[Request, Access], Awaitable[Response]]


def endpoint(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate, build the scoped Access, turn every refusal into {"error": ...}."""

    async def run(request: Request) -> Response:
        web = request.app.state.web
        try:
            access = Access(web.store, web.reads, await _principal(request))
            return await fn(request, access)
        except Unauthorized as exc:
            return error(401, str(exc), **{"WWW-Authenticate": 'Bearer realm="extbill"'})
        except REFUSALS as exc:
            return error(status_of(exc), str(exc))

    return run


async def balance(request: Request, access: Access) -> Response:
    doc = await access.balance(request.path_params["number"])
    return JSONResponse(balance_document(doc))


async def _body(
    request: Request, allowed: tuple[str, ...], required: tuple[str, ...], limit: int = BODY_BYTES_MAX
) -> dict[str, Any]:
    chunks, size = [], 0
    async for chunk in request.stream():  # stop reading at the limit, not after the whole body
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body must be a JSON object") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    for k in body:
        if k not in allowed:
            raise BadRequest(f"unknown field {k!r} (allowed: {', '.join(allowed)})")
    for k in required:
        if k not in body:
            raise BadRequest(f"field {k!r} is required")
    if "ext" in body and body["ext"] is not None and not isinstance(body["ext"], str):
        raise BadRequest("field 'ext' must be an extension key as text, e.g. \"1\"")
    return body


async def _money(request: Request, access: Access, kind: str) -> Response:
    number = request.path_params["number"]
    access.check_number(number)  # out of scope: 404 before any word about the request
    idem = params.idempotency_key(request.headers.get("idempotency-key"))
    if kind == "recharge":
        body = await _body(request, ("amount", "ext"), ("amount",))
    else:
        body = await _body(request, ("ext", "amount"), ("ext", "amount"))
    amount, ext = parse_amount(body["amount"]), body.get("ext")
    if kind == "transfer" and ext is None:
        raise BadRequest("field 'ext' must be an extension key as text, e.g. \"1\"")
    ref = f"api:{access.p.key_id}:{idem}"
    fn, *args = (
        access.recharge_op(number, ext, amount, ref)
        if kind == "recharge"
        else access.transfer_op(number, str(ext), amount, ref)
    )

    def op(conn: Any) -> tuple[int, dict[str, Any]]:
        r = fn(conn, *args)
        doc = {
            "number": number,
            "ext": ext,
            "amount": format_amount(amount),
            "transfer_id": r["transfer_id"],
            "idempotency_key": idem,
        }
        return 201, doc

    body_hash = hashlib.sha256(json.dumps([kind, number, body], sort_keys=True).encode()).hexdigest()
    store = request.app.state.web.store
    status, doc = await store.run(tx_web_actions.idempotent, access.p.key_id, idem, body_hash, op)
    return JSONResponse(doc, status_code=status)


async def recharges(request: Request, access: Access) -> Response:
    return await _money(request, access, "recharge")


async def transfers(request: Request, access: Access) -> Response:
    return await _money(request, access, "transfer")


async def calls(request: Request, access: Access) -> Response:
    q = request.query_params
    rows, nxt = await access.calls(
        request.path_params["number"],
        q.get("ext") or None,
        **params.call_filters(q),
        after=params.decode_cursor(q.get("cursor"), tuple),
        limit=params.limit(q),
    )
    return JSONResponse({"calls": money_fields(rows), "next_cursor": params.encode_cursor(nxt)})


async def statement(request: Request, access: Access) -> Response:
    q = request.query_params
    rows, nxt = await access.statement(
        request.path_params["number"],
        request.path_params.get("key"),  # none: the main account's
        params.decode_cursor(q.get("cursor"), int),
        params.limit(q),
    )
    return JSONResponse({"entries": money_fields(rows), "next_cursor": params.encode_cursor(nxt)})


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


async def not_found(request: Request) -> Response:
    return error(404, f"no such API path: {request.url.path}")


def routes() -> list[Route]:
    return [
        Route("/openapi.json", openapi),
        Route("/numbers/{number}/balance", endpoint(balance)),
        Route("/numbers/{number}/recharges", endpoint(recharges), methods=["POST"]),
        Route("/numbers/{number}/transfers", endpoint(transfers), methods=["POST"]),
        Route("/numbers/{number}/calls", endpoint(calls)),
        Route("/numbers/{number}/statement", endpoint(statement)),
        Route("/numbers/{number}/extensions/{key}/statement", endpoint(statement)),
        Route("/{path:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
