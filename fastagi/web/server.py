"""The console's HTTP listener inside `extbill serve` (setting http_bind), on serve's event loop.

It shares serve's store for writes (one writer, group commit) and opens its own SQLite
reader for the web's reads: in WAL mode a reader never blocks call control, and an export
of a year of calls queues on the web's reader thread, not in front of a call's lookup.
(On PostgreSQL the web's store is a pool of its own, for the same reason.)
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog
import uvicorn

from fastagi.runtime.config import ConfigError, parse_hostport
from fastagi.store.factory import open_store
from fastagi.web.app import create_app
from fastagi.web.metrics import count_decisions

log = structlog.get_logger("extbill.web")

HTTP_BACKLOG = 128
HTTP_CONNECTIONS_MAX = 200  # uvicorn's limit_concurrency: more get 503
HTTP_KEEPALIVE_S = 5


class HttpServer:
    def __init__(self, service: Any) -> None:
        self.service = service
        self.reads: Any = None
        self.server: uvicorn.Server | None = None
        self.sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    def _runtime(self) -> dict[str, Any]:
        agi, ami = self.service.agi, self.service.ami
        return {"in_setup": agi.calls if agi else 0, "ami": int(bool(ami and ami.connected))}

    async def start(self) -> None:
        s = self.service.settings
        host, port = parse_hostport(s.http_bind, "http_bind")
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self.sock = socket.create_server((host, port), family=family, backlog=HTTP_BACKLOG)
        except OSError as exc:
            raise ConfigError(f"http_bind: cannot listen on {host}:{port}: {exc.strerror}") from None
        self.reads = await open_store(s.db, create=False, checkpoints=False)  # its own connections
        app = create_app(self.service.store, reads=self.reads, runtime=self._runtime, bind_host=host)
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="warning",
            access_log=False,
            proxy_headers=True,  # X-Forwarded-Proto from a TLS proxy on loopback: Secure cookies
            limit_concurrency=HTTP_CONNECTIONS_MAX,
            timeout_keep_alive=HTTP_KEEPALIVE_S,
        )
        config.load()
        self.server = uvicorn.Server(config)
        self.server.lifespan = config.lifespan_class(config)  # as Server._serve sets it up
        # startup + main_loop, not serve(): serve() would take over SIGINT/SIGTERM from serve
        await self.server.startup(sockets=[self.sock])
        self._task = asyncio.create_task(self.server.main_loop(), name="http")
        _count_setups()
        bound = self.sock.getsockname()
        self.url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
        log.info(
            "serve.http_listening", url=self.url, metrics=f"{self.url}/metrics", api=f"{self.url}/api/v1"
        )

    async def stop(self) -> None:
        if self.server is not None and self._task is not None:
            self.server.should_exit = True
            await self._task
            await self.server.shutdown(sockets=[self.sock] if self.sock else None)
        if self.reads is not None:
            await self.reads.close()


def _count_setups() -> None:
    """Put the metrics' call-decision counter in front of the configured log processors."""
    config = structlog.get_config()
    processors = list(config["processors"])
    if count_decisions not in processors:
        structlog.configure(processors=[count_decisions, *processors])  # type: ignore[list-item]
