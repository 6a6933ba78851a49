"""The API's OpenAPI 3.1 document, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

_MONEY = {"type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{1,3})?$", "example": "100.000"}
_ERROR = {
    "description": "refused; nothing changed",
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        }
    },
}
_NUMBER = {
    "name": "number",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "example": "4008001234"},
}
_KEY = {"name": "key", "in": "path", "required": True, "schema": {"type": "string", "example": "1"}}
_IDEM = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "required; a repeat returns the first answer and changes nothing; the same key "
    "with a different body is refused (422)",
    "schema": {"type": "string", "maxLength": 255},
}
_PAGING = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
    },
    {
        "name": "cursor",
        "in": "query",
        "description": "next_cursor of the previous page",
        "schema": {"type": "string"},
    },
]
_REFUSALS = {"400": _ERROR, "401": _ERROR, "404": _ERROR}


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _money_post(summary: str, body: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "parameters": [_NUMBER, _IDEM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"type": "object", "properties": body, "required": required}
                    }
                },
            },
            "responses": {
                "201": _json({"type": "object"}, "done (or the first answer to this Idempotency-Key)"),
                **_REFUSALS,
                "409": _ERROR,
                "422": _ERROR,
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "extbill API", "version": "1"},
    "servers": [{"url": "/api/v1"}],
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "security": [{"bearer": []}],
    "paths": {
        "/numbers/{number}/balance": {
            "get": {
                "summary": "balances of the main account and every extension (as `extbill balance N --json`)",
                "parameters": [_NUMBER],
                "responses": {"200": _json({"type": "object"}), **_REFUSALS},
            }
        },
        "/numbers/{number}/recharges": _money_post(
            "pay money in, to the main account or (ext) to an extension",
            {"amount": _MONEY, "ext": {"type": "string"}},
            ["amount"],
        ),
        "/numbers/{number}/transfers": _money_post(
            "move money from the main account to an extension",
            {"ext": {"type": "string"}, "amount": _MONEY},
            ["ext", "amount"],
        ),
        "/numbers/{number}/reclaims": _money_post(
            "move an extension's available money back to the main account (without amount: all of it; "
            "money held by calls in progress is never taken)",
            {"ext": {"type": "string"}, "amount": _MONEY},
            ["ext"],
        ),
        "/numbers/{number}/extensions/{key}": {
            "delete": {
                "summary": "remove an extension: its money goes back to the main account, its history "
                "(statement, calls) stays readable; refused (409) while it has a call in progress",
                "parameters": [_NUMBER, _KEY, _IDEM],
                "responses": {
                    "200": _json({"type": "object"}, "removed (or the first answer to this Idempotency-Key)"),
                    **_REFUSALS,
                    "409": _ERROR,
                    "422": _ERROR,
                },
            }
        },
        "/numbers/{number}/recharges/bulk": _money_post(
            "recharge many accounts of this number at once: every row applied in one transaction, or "
            "none (400 lists every bad row by its place); each row's ref is its own idempotency key",
            {
                "rows": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 10_000,
                    "items": {
                        "type": "object",
                        "properties": {
                            "number": {"type": "string", "description": "optional; this number only"},
                            "key": {"type": "string", "description": "extension key; empty for main"},
                            "amount": _MONEY,
                            "ref": {"type": "string", "minLength": 1, "maxLength": 100},
                        },
                        "required": ["amount", "ref"],
                    },
                }
            },
            ["rows"],
        ),
        "/numbers/{number}/periods": {
            "get": {
                "summary": "the closed months of the monthly minimum, newest first (as `extbill period "
                "list N --json`)",
                "parameters": [_NUMBER],
                "responses": {"200": _json({"type": "object"}), **_REFUSALS},
            }
        },
        "/numbers/{number}/calls": {
            "get": {
                "summary": "call records, newest first",
                "parameters": [
                    _NUMBER,
                    {"name": "ext", "in": "query", "schema": {"type": "string"}},
                    {"name": "since", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "until", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {
                        "name": "state",
                        "in": "query",
                        "schema": {"enum": ["reserved", "rated", "unanswered", "unrated"]},
                    },
                    *_PAGING,
                ],
                "responses": {"200": _json({"type": "object"}), **_REFUSALS},
            }
        },
        "/numbers/{number}/statement": {
            "get": {
                "summary": "the main account's transfers, newest first",
                "parameters": [_NUMBER, *_PAGING],
                "responses": {"200": _json({"type": "object"}), **_REFUSALS},
            }
        },
        "/numbers/{number}/extensions/{key}/statement": {
            "get": {
                "summary": "an extension's transfers, newest first",
                "parameters": [
                    _NUMBER,
                    {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}},
                    *_PAGING,
                ],
                "responses": {"200": _json({"type": "object"}), **_REFUSALS},
            }
        },
    },
}
