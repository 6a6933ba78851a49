"""The asyncio shell around fastagi.core.agi: sockets, limits, timeouts, per-call log context.

One asyncio.Protocol per connection feeds the sans-IO AgiSession; one task per
call runs the route's handler. Every connection is closed when its handler
ends, fails or times out: Asterisk has no read timeout on a FastAGI socket, so
a socket we leave open holds the channel forever.
"""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog

from fastagi.core.agi import (
    AgiRequest,
    AgiSession,
    ConnectionClosed,
    HeadersComplete,
    RemoteProtocolError,
    Reply,
    State,
    mset_command,
    set_variable_command,
)
from fastagi.runtime.config import AGI_PORT
from fastagi.runtime.peers import PeerAllowlist, RefusalLog

__all__ = [
    "AgiChannel",
    "AgiServer",
    "ChannelClosed",
    "CommandFailed",
    "Handler",
    "ReplyTimeout",
    "ServerLimits",
    "install_signal_handlers",
]

log = structlog.get_logger("extbill.agi")


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """Every bound of the FastAGI server, in one place."""

    header_timeout_s: float = 5.0
    """From accept to the end of the header block; a silent or slow peer is closed."""
    reply_timeout_s: float = 10.0
    """One command's wait for its final reply; on expiry the connection is closed."""
    handler_timeout_s: float = 15.0
    """One call's handler, start to end; on expiry it is cancelled and the socket closed."""
    connections_max: int = 1024
    """Open connections at once; an excess one is accepted and closed at once."""
    drain_timeout_s: float = 10.0
    """stop(): how long calls in progress may run before they are cancelled."""
    backlog: int = 1024
    """listen() backlog: connects queued by the kernel before accept."""

    def __post_init__(self) -> None:
        for name in ("header_timeout_s", "reply_timeout_s", "handler_timeout_s", "drain_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0")
        if self.connections_max < 1 or self.backlog < 1:
            raise ValueError("connections_max and backlog must be >= 1")


class ChannelClosed(ConnectionError):
    """The connection is gone (peer closed, protocol error, timeout or server stop)."""


class NotSent(ChannelClosed):
    """The connection was gone before the command was written: Asterisk never saw it."""


class ReplyTimeout(TimeoutError):
    """No final reply within reply_timeout_s; the connection has been closed."""


class CommandFailed(Exception):
    """A command answered something other than 200."""

    def __init__(self, command: str, reply: Reply) -> None:
        super().__init__(f"{command.split(' ', 2)[:2]} -> {reply.raw[:120]!r}")
        self.reply = reply


class AgiChannel:
    """One call's connection, as a handler sees it."""

    __slots__ = ("request", "_conn")

    def __init__(self, request: AgiRequest, conn: _Connection) -> None:
        self.request = request
        self._conn = conn

    @property
    def hung_up(self) -> bool:
        """Asterisk said HANGUP: the caller is gone, most commands now answer 511."""
        return self._conn.session.hung_up

    async def command(self, text: str) -> Reply:
        """Send one command and return its final reply (any code).

        Raises ChannelClosed, ReplyTimeout, or LocalProtocolError (bad text, or a
        command already pending on this channel).
        """
        return await self._conn.command(text)

    async def set_variables(self, pairs: list[tuple[str, str]]) -> Reply:
        """Set several variables in one round trip (EXEC MSet), in order; CommandFailed unless 200.

        Values MSet could misread (separators, quotes) fall back to one SET VARIABLE each,
        as does an Asterisk without MSet (result -2: application not found).
        """
        text = mset_command(pairs)
        if text is not None:
            reply = await self._conn.command(text)
            if reply.code != 200:
                raise CommandFailed(text, reply)
            if reply.result != -2:
                return reply
        for name, value in pairs:
            reply = await self.set_variable(name, value)
        return reply

    async def set_variable(self, name: str, value: str) -> Reply:
        """SET VARIABLE with the value quoted for res_agi; raises CommandFailed unless 200."""
        text = set_variable_command(name, value)
        reply = await self._conn.command(text)
        if reply.code != 200:
            raise CommandFailed(text, reply)
        return reply


Handler = Callable[[AgiChannel], Awaitable[None]]

_DEAD_STATES = frozenset((State.CLOSED, State.ERROR))


class _Connection(asyncio.Protocol):
    """Feeds bytes to an AgiSession and routes its events; owns the socket."""

    __slots__ = ("server", "session", "transport", "timer", "reply", "task", "peer", "counted")

    def __init__(self, server: AgiServer) -> None:
        self.server = server
        self.session = AgiSession()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.reply: asyncio.Future[Reply] | None = None
        self.task: asyncio.Task[None] | None = None
        self.peer: object = None
        self.counted = False

    # --- asyncio.Protocol ---------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not `isinstance(transport, asyncio.Transport)`: uvloop's TCP transports have the
        # same methods but do not inherit from it, and that check refused every call.
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        server = self.server
        host = self.peer[0] if isinstance(self.peer, tuple) and self.peer else self.peer
        if not server.allow.allows(host):
            # before a byte is read: an unlisted peer could forge a route or a hangup
            if server.refusals.note(str(host), server._loop.time()):
                log.warning(
                    "agi.peer_refused",
                    peer=str(host),
                    refused_total=server.refusals.refused,
                    note="not in agi_allow (loopback and the listed addresses only); logged once per episode",
                )
            transport.close()
            return
        if server._stopping or len(server._conns) >= server.limits.connections_max:
            log.warning("agi.refused", peer=self.peer, open=len(server._conns), stopping=server._stopping)
            transport.close()  # FIN: Asterisk reads EOF, sets no result variable, fails closed
            return
        server._conns.add(self)
        self.counted = True
        self.timer = server._loop.call_later(server.limits.header_timeout_s, self._header_timeout)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive_data(data)
        except RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        for event in events:
            if type(event) is Reply:
                if self.reply is not None and not self.reply.done():
                    self.reply.set_result(event)
            elif type(event) is HeadersComplete:
                self._start_call(event.request)
            # Hangup: session.hung_up is set; the handler reads channel.hung_up.

    def eof_received(self) -> bool:
        try:
            events = self.session.eof()
        except RemoteProtocolError as exc:
            if self.task is None:
                self._protocol_error(exc)  # closed before the call started: log it
            else:
                self._fail_reply(ChannelClosed(str(exc)))
            return False
        assert all(type(e) is ConnectionClosed for e in events)
        self._fail_reply(ChannelClosed("peer closed the connection"))
        return False  # let asyncio close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._fail_reply(ChannelClosed("connection lost"))
        if self.counted:
            self.counted = False
            self.server._release(self)

    # --- internals ----------------------------------------------------------
    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail_reply(self, exc: BaseException) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(exc)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _header_timeout(self) -> None:
        self.timer = None
        log.warning("agi.header_timeout", peer=self.peer, timeout_s=self.server.limits.header_timeout_s)
        self.close()

    def _protocol_error(self, exc: RemoteProtocolError) -> None:
        request = self.session.request
        log.warning(
            "agi.protocol_error",
            peer=self.peer,
            error=str(exc),
            uniqueid=request.uniqueid if request else None,
        )
        self._fail_reply(ChannelClosed(f"protocol error: {exc}"))
        self.transport.abort()  # type: ignore[union-attr]

    def _start_call(self, request: AgiRequest) -> None:
        self._cancel_timer()
        handler = self.server.routes.get(request.script)
        if handler is None:
            log.warning("agi.route_unknown", peer=self.peer, route=request.script, uniqueid=request.uniqueid)
            self.close()
            return
        self.task = self.server._loop.create_task(self._run(handler, request))
        self.server._tasks.add(self.task)
        self.task.add_done_callback(self.server._tasks.discard)

    async def _run(self, handler: Handler, request: AgiRequest) -> None:
        limits = self.server.limits
        # This task runs in its own copy of the context: what is bound here never reaches
        # another call, and needs no unbinding.
        structlog.contextvars.bind_contextvars(
            uniqueid=request.uniqueid,
            channel=request.channel,
            callerid=request.callerid,
            route=request.script,
        )
        task = self.task
        assert task is not None
        expired: list[bool] = []
        # One timer handle (cheaper than an asyncio.timeout context): on expiry, cancel the handler.
        deadline = self.server._loop.call_later(limits.handler_timeout_s, _expire_handler, task, expired)
        try:
            await handler(AgiChannel(request, self))
        except ReplyTimeout as exc:
            log.warning("agi.reply_timeout", error=str(exc))
        except ChannelClosed as exc:
            log.info("agi.channel_closed", error=str(exc), hung_up=self.session.hung_up)
        except asyncio.CancelledError:
            if not expired:
                log.warning("agi.handler_cancelled")
                raise
            task.uncancel()
            log.warning("agi.handler_timeout", timeout_s=limits.handler_timeout_s)
        except Exception as exc:
            log.error("agi.handler_error", error=repr(exc), exc_info=True)
        finally:
            deadline.cancel()
            self.close()

    async def command(self, text: str) -> Reply:
        transport = self.transport
        if transport is None or transport.is_closing() or self.session.state in _DEAD_STATES:
            raise NotSent("connection closed")
        data = self.session.send_command(text)  # LocalProtocolError propagates
        loop = self.server._loop
        self.reply = fut = loop.create_future()
        transport.write(data)
        # One timer handle per command (cheaper than an asyncio.timeout context); the
        # handler's own deadline still cancels this await as before.
        timer = loop.call_later(self.server.limits.reply_timeout_s, _expire_reply, fut)
        try:
            return await fut
        except _ReplyExpired:
            # The session still awaits that reply: any later line would be taken
            # for the next command's answer. Close rather than desync.
            transport.abort()
            raise ReplyTimeout(
                f"no reply to {text.split(' ', 2)[:2]} within {self.server.limits.reply_timeout_s}s"
            ) from None
        finally:
            timer.cancel()
            self.reply = None


def _expire_handler(task: asyncio.Task[None], expired: list[bool]) -> None:
    if not task.done():
        expired.append(True)
        task.cancel()


class _ReplyExpired(Exception):
    """Internal: reply_timeout_s passed with the reply future still pending."""


def _expire_reply(fut: asyncio.Future[Reply]) -> None:
    if not fut.done():
        fut.set_exception(_ReplyExpired())


class AgiServer:
    """FastAGI server: routes agi_network_script (without ?query) to handlers."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        host: str = "127.0.0.1",
        port: int = AGI_PORT,
        *,
        limits: ServerLimits | None = None,
        sock: socket.socket | None = None,
        allow: PeerAllowlist | None = None,
    ) -> None:
        self.routes = dict(routes)
        # A listening socket made elsewhere: serve's processes share one (host/port unused)
        self.sock = sock
        self.host = host
        self.port = port
        self.limits = limits or ServerLimits()
        self.allow = allow or PeerAllowlist()  # who may connect: loopback unless told more
        self.refusals = RefusalLog()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._conns: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        """Listen; with port 0 the chosen port is in .port afterwards."""
        self._loop = asyncio.get_running_loop()
        if self.sock is not None:
            self._server = await self._loop.create_server(
                lambda: _Connection(self), sock=self.sock, backlog=self.limits.backlog
            )
        else:
            self._server = await self._loop.create_server(
                lambda: _Connection(self),
                self.host,
                self.port,
                backlog=self.limits.backlog,
                reuse_address=True,
            )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("agi.listening", host=self.host, port=self.port, routes=sorted(self.routes))

    @property
    def connections(self) -> int:
        """Connections open now (header phase and calls)."""
        return len(self._conns)

    @property
    def calls(self) -> int:
        """Handlers running now."""
        return len(self._tasks)

    def _release(self, conn: _Connection) -> None:
        self._conns.discard(conn)
        if not self._conns:
            self._idle.set()

    async def stop(self) -> None:
        """Stop accepting; let open connections finish within drain_timeout_s; then cut them."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._conns:
            self._idle.clear()
            try:
                async with asyncio.timeout(self.limits.drain_timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("agi.drain_timeout", open=len(self._conns), calls=len(self._tasks))
                for task in list(self._tasks):
                    task.cancel()
                for conn in list(self._conns):
                    if conn.transport is not None:
                        conn.transport.abort()
                if self._tasks:
                    await asyncio.wait(list(self._tasks), timeout=1.0)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("agi.stopped")
        self._stopped.set()

    async def wait_stopped(self) -> None:
        """Return once stop() has completed (e.g. after a signal)."""
        await self._stopped.wait()


def install_signal_handlers(loop: asyncio.AbstractEventLoop, server: AgiServer) -> None:
    """SIGTERM/SIGINT -> server.stop() (draining); await server.wait_stopped() to exit."""
    tasks: set[asyncio.Task[None]] = set()

    def on_signal(signum: int) -> None:
        log.info("agi.signal", signal=signal.Signals(signum).name)
        task = loop.create_task(server.stop())
        tasks.add(task)  # keep a reference until done
        task.add_done_callback(tasks.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
