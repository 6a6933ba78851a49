"""`extbill serve`: settings from --config, EXTBILL_* and flags, then run until SIGTERM."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import fields
from typing import Any

from fastagi.core.vocab import UnsettledPolicy
from fastagi.runtime import config
from fastagi.runtime.log import configure as configure_logging


async def cmd_serve(a: argparse.Namespace) -> int:
    overrides = {f.name: getattr(a, f.name, None) for f in fields(config.Settings)}
    settings = config.load(a.config, overrides=overrides)
    configure_logging(settings.log_format, settings.log_level)
    from fastagi.service.serve import Service  # noqa: PLC0415  (keeps admin commands light)

    service = Service(settings)
    if settings.http_bind:  # the console, the JSON API and /metrics, on serve's loop and store
        from fastagi.web.server import HttpServer  # noqa: PLC0415  (only when asked for)

        service.front_ends.append(HttpServer(service))
    await service.start()
    await service.run_until_stopped()
    return 0


def add_parsers(subs: Any, sub: Callable) -> None:
    p = sub(subs, "serve", cmd_serve, "run the FastAGI call-control server and the AMI rating consumer")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = config.describe() + "\n\nPrecedence: defaults < --config file < environment < flags."
    p.set_defaults(own_store=True, fast_loop=True)
    p.add_argument("--config", help="TOML file with any of the settings below")
    p.add_argument("--agi-bind", help=f"FastAGI listen address host:port (default {config.AGI_BIND})")
    p.add_argument("--http-bind", help="console, JSON API and /metrics host:port (default: off)")
    p.add_argument("--ami-host")
    p.add_argument("--ami-port", type=int)
    p.add_argument("--ami-user")
    p.add_argument("--ami-secret")
    p.add_argument(
        "--asterisk-system-name",
        help="systemname of the Asterisk whose AMI this serve reads (several Asterisk servers, one database)",
    )
    p.add_argument("--dial-timeout-s", type=int)
    p.add_argument("--quota-s", type=int, help=f"talk time one grant holds, s (default {config.QUOTA_S})")
    p.add_argument(
        "--renew-before-s",
        type=int,
        help=f"renew this long before a grant ends, s (default {config.RENEW_BEFORE_S})",
    )
    p.add_argument("--unsettled-policy", choices=[p.value for p in UnsettledPolicy])
    p.add_argument("--sweep-interval-s", type=int)
    p.add_argument("--sweep-grace-s", type=int)
    p.add_argument("--connections-max", type=int)
    p.add_argument("--workers", type=int, help="FastAGI processes sharing the port (default 1)")
    p.add_argument("--log-format", choices=("json", "console"))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument(
        "--no-demo",
        dest="demo",
        action="store_const",
        const=False,
        help="do not seed demo data into a new database",
    )
