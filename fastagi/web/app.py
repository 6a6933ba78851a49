"""The web application: console, JSON API and /metrics on one listener, over a given store.

create_app(store) is all serve needs; tests build it on a real SQLite file and serve it
over real HTTP. `reads` is where the web's reads go (serve gives it its own SQLite reader);
`clock` is the wall clock in Unix ms (tests move it to expire sessions).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fastagi.core.money import format_amount
from fastagi.runtime.clock import now_ms
from fastagi.web import api, api_money, auth, console, console_money, metrics

HERE = Path(__file__).resolve().parent


@dataclass
class WebState:
    store: Any
    reads: Any
    clock: Callable[[], int]
    runtime: Callable[[], dict[str, Any]]
    metrics_open: bool  # /metrics without sign-in: only on a loopback bind
    templates: jinja2.Environment
    throttle: auth.Throttle = field(default_factory=auth.Throttle)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


async def _metrics(request: Request) -> Response:
    web: WebState = request.app.state.web
    if not web.metrics_open:
        session = await auth.current(request)
        if session is None or session.principal.role != "operator":
            return JSONResponse(
                {"error": "/metrics needs an operator's sign-in when the console is not bound to loopback"},
                status_code=403,
            )
    body = await metrics.render(web.reads, web.runtime, web.clock())
    return Response(body, media_type=metrics.CONTENT_TYPE)


def create_app(
    store: Any,
    *,
    reads: Any = None,
    clock: Callable[[], int] = now_ms,
    runtime: Callable[[], dict[str, Any]] = dict,
    bind_host: str = "127.0.0.1",
) -> Starlette:
    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["money"] = format_amount
    app = Starlette(
        routes=[
            Mount("/api/v1", routes=[*api_money.routes(), *api.routes()]),
            Route("/metrics", _metrics),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
            *console.routes(),
            *console_money.routes(),
        ]
    )
    app.state.web = WebState(
        store=store,
        reads=reads or store,
        clock=clock,
        runtime=runtime,
        metrics_open=is_loopback(bind_host),
        templates=templates,
    )
    return app
