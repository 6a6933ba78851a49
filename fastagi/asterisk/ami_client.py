"""The AMI connection: connect, log in, snapshot live channels, ping, reconnect.

A thin asyncio shell; all call logic lives in the pure `fastagi.core.ami`.
Of panoramisk 1.4 only `Message.from_line` (the header parser: a repeated
header becomes a list, a single one a str) and `Message.success` are used, for
replies to our actions. Events, nearly all the traffic, are parsed by
`_parse_event` with the same header rules straight into an `AmiEvent` (lowercase
keys), at a fraction of the CPU. panoramisk's `Manager`/`AMIProtocol` are not
used: they reconnect at a fixed delay with no way to turn it off, never check
Ping replies (a half-open connection goes unnoticed), give actions no timeout,
re-send queued actions on reconnect, and decode each TCP chunk on its own (a
multi-byte character split across two reads is lost) into an unbounded buffer.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from panoramisk.message import Message

from fastagi.core import ami_wire
from fastagi.core.ami import AmiEvent, live_ids_from_core_show_channels

log = structlog.get_logger("extbill.ami")

MESSAGE_END = ami_wire.MESSAGE_END

Event = Mapping[str, "str | list[str]"]
OnEvent = Callable[[Event], "None | Awaitable[None]"]
OnConnected = Callable[[set[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class AmiLimits:
    """Every timeout and size the client uses; one place to tune them."""

    connect_timeout_s: float = 5.0
    """TCP connect, then the banner line, each within this."""
    action_timeout_s: float = 5.0
    """Any action (Login, CoreShowChannels, yours) must be answered within this."""
    ping_interval_s: float = 10.0
    """A Ping is sent this long after the previous reply."""
    ping_timeout_s: float = 5.0
    """No Pong within this: the connection is dead or half-open; drop it."""
    backoff_initial_s: float = 0.5
    """First reconnect delay; doubled after each failed attempt."""
    backoff_max_s: float = 30.0
    """Reconnect delay cap."""
    event_queue_max: int = 10_000
    """Events waiting for on_event; beyond it new events are dropped and counted."""
    message_bytes_max: int = ami_wire.MESSAGE_BYTES_MAX
    """One AMI message (headers up to the blank line); a longer one drops the connection."""


class AmiError(Exception):
    """Base of the client's errors."""


class AmiNotConnected(AmiError):
    """No logged-in AMI session (or it closed while the action waited)."""


class AmiActionTimeout(AmiError, TimeoutError):
    """An action got no complete reply within its timeout."""


@dataclass(slots=True)
class AmiCounters:
    """Monotonic counts, for metrics and tests."""

    connect_attempts: int = 0
    sessions: int = 0  # logged in and snapshotted
    login_refused: int = 0
    ping_timeouts: int = 0
    events_received: int = 0
    events_dropped: int = 0
    callback_errors: int = 0


def _parse_event(text: str) -> AmiEvent | None:
    """An event (its stripped text) as an AmiEvent, by panoramisk's `Message.from_line` rules.

    None for any other message (a Response, which may carry a body) and for the
    rare events whose headers `from_line` treats specially (`Result` is unquoted,
    `Content` is replaced by the body): the caller hands those to `from_line`.
    """
    if not text.startswith("Event: "):
        return None
    # from_line splits a header as the wire module does: at the first ": ", value as is.
    headers = ami_wire.pairs(text)
    ev = AmiEvent([(k.lower(), v) for k, v in headers])
    if len(ev) != len(headers):
        # A repeated header (ChanVariable with several channelvars) overwrote an
        # earlier one: from_line makes a list of it; redo it by its exact rules.
        ev = _parse_event_exact(headers)
    if "result" in ev or "content" in ev:
        return None
    return ev


def _parse_event_exact(pairs: list[tuple[str, str]]) -> AmiEvent:
    # As from_line: a key repeated with the same spelling collects a list; keys that
    # differ only in case then collapse in its case-insensitive dict, the last one winning.
    headers: dict[str, Any] = {}
    for k, v in pairs:
        if k in headers:
            old = headers[k]
            if isinstance(old, list):
                old.append(v)  # in place: a message of many repeats stays linear
            else:
                headers[k] = [old, v]
        else:
            headers[k] = v
    ev = AmiEvent()
    for k, v in headers.items():
        ev[k.lower()] = v
    return ev


def _event_of(msg: Message) -> AmiEvent:
    # The shape `_parse_event` gives: lowercase keys, without the "content" Message adds.
    return AmiEvent({k.lower(): v for k, v in msg.items() if k != "content"})


class _Session:
    """One TCP connection: writes actions, reads messages, pairs replies by ActionID."""

    _numbers = itertools.count(1)

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deliver: Callable[[AmiEvent], None]
    ) -> None:
        self._reader, self._writer, self._deliver = reader, writer, deliver
        self._no = next(self._numbers)
        self._ids = itertools.count(1)
        # ActionID -> (future, collects an event list, messages so far)
        self._pending: dict[str, tuple[asyncio.Future[Any], bool, list[Message]]] = {}
        self.closed = False

    async def read_loop(self) -> str:
        """Route messages until the peer closes; returns why it stopped."""
        try:
            while True:
                self._handle(await self._reader.readuntil(MESSAGE_END))
        except asyncio.IncompleteReadError:
            return "closed by peer"
        except asyncio.LimitOverrunError:
            return "message too large"
        except OSError as exc:
            return f"socket error: {exc!r}"
        finally:
            self.close()  # fail waiting actions now, not at their timeout

    def _handle(self, raw: bytes) -> None:
        """One whole message (it ends with MESSAGE_END)."""
        # Whole messages are decoded, so multi-byte characters stay intact.
        text = raw.decode("utf-8", "replace").strip()
        ev = _parse_event(text)
        if ev is not None:
            aid = ev.get("actionid")
            if type(aid) is not str or aid not in self._pending:
                self._deliver(ev)  # the per-event path: no panoramisk Message
                return
        # A reply to a pending action (its caller gets a Message) or an unusual message.
        msg = Message.from_line(text)
        if msg is not None:
            self._route(msg)

    def _route(self, msg: Message) -> None:
        aid = msg.get("ActionID")
        entry = self._pending.get(aid) if isinstance(aid, str) else None
        if entry is None:
            if "Event" in msg:
                self._deliver(_event_of(msg))
            return  # a reply to an action that already timed out
        fut, collect, got = entry
        if fut.done():
            return
        if not collect:
            fut.set_result(msg)
            return
        got.append(msg)
        ended = str(msg.get("EventList", "")).lower() == "complete" or str(msg.get("Event", "")).endswith(
            "Complete"
        )
        if ended or ("Response" in msg and not msg.success):
            fut.set_result(got)

    async def action(
        self, fields: Mapping[str, str | list[str]], timeout_s: float, collect: bool = False
    ) -> Any:
        if self.closed:
            raise AmiNotConnected("AMI session closed")
        aid = f"extbill-{self._no}-{next(self._ids)}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[aid] = (fut, collect, [])
        try:
            self._writer.write(_serialize(fields, aid))
            async with asyncio.timeout(timeout_s):
                await self._writer.drain()
                return await fut
        except TimeoutError:
            raise AmiActionTimeout(
                f"AMI action {fields.get('Action')!r} got no reply within {timeout_s}s"
            ) from None
        except OSError as exc:
            raise AmiNotConnected(f"AMI write failed: {exc!r}") from exc
        finally:
            self._pending.pop(aid, None)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fut, _, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(AmiNotConnected("AMI connection closed"))
        self._pending.clear()
        self._writer.close()


def _serialize(fields: Mapping[str, str | list[str]], action_id: str) -> bytes:
    # ours pairs the reply, so any ActionID in fields is dropped; the wire module refuses
    # CR/LF (header injection) with AmiHeaderInjection, a ValueError.
    headers = [
        (k, x)
        for k, v in fields.items()
        if k.lower() != "actionid"
        for x in (v if isinstance(v, list) else [v])
    ]
    return ami_wire.serialize([*headers, ("ActionID", action_id)])


_MARKER = object()  # queue item kind: a live-ids snapshot for on_connected


class AmiClient:
    """Keeps one AMI session alive and feeds its events to on_event.

    on_event gets each event as an AmiEvent: a dict with lowercase keys (a
    repeated header as a list), through a bounded queue, in arrival order. on_connected gets the live
    billing ids after each (re)connect, and again after an episode of dropped
    events; it runs in the same queue, after every event received before the
    snapshot, so it never races on_event.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        on_event: OnEvent,
        on_connected: OnConnected,
        limits: AmiLimits = AmiLimits(),
    ) -> None:
        self._host, self._port, self._username, self._secret = host, port, username, secret
        self._on_event, self._on_connected, self.limits = on_event, on_connected, limits
        self.counters = AmiCounters()
        self._session: _Session | None = None
        self._queue: deque[tuple[object, Any]] = deque()
        self._queued_events = 0
        self._wakeup = asyncio.Event()
        self._dropping = False  # inside an episode of a full queue
        self._failing = False  # inside an episode of failing callbacks
        self._resync = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._episode: str | None = None  # the failure being retried, logged once
        self._episode_failures = 0
        self._stopping = False

    @property
    def connected(self) -> bool:
        """Logged in, snapshot taken, and not known to be dead."""
        return self._session is not None and not self._session.closed

    async def start(self) -> None:
        """Start connecting in the background; returns at once."""
        if not self._tasks:
            self._stopping = False
            self._tasks = [
                asyncio.create_task(self._run(), name="ami-connection"),
                asyncio.create_task(self._consume(), name="ami-events"),
            ]

    async def stop(self) -> None:
        """Close the session and stop; events still queued are discarded."""
        tasks, self._tasks = self._tasks, []
        self._stopping = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            self._session.close()
            self._session = None

    async def send_action(
        self, fields: Mapping[str, str | list[str]], timeout_s: float | None = None
    ) -> Message:
        """Send one action; its reply (check `.success`). AmiActionTimeout, AmiNotConnected."""
        return await self._live().action(fields, timeout_s or self.limits.action_timeout_s)

    async def send_list_action(
        self, fields: Mapping[str, str | list[str]], timeout_s: float | None = None
    ) -> list[Message]:
        """Send an action answered by an event list; the reply, events and the *Complete event."""
        return await self._live().action(fields, timeout_s or self.limits.action_timeout_s, collect=True)

    def _live(self) -> _Session:
        if self._session is None or self._session.closed:
            raise AmiNotConnected("AMI not connected")
        return self._session

    # -- connection ---------------------------------------------------------
    async def _run(self) -> None:
        delay = self.limits.backoff_initial_s
        while not self._stopping:
            if await self._session_once():
                delay = self.limits.backoff_initial_s  # it worked: retry fast once
            # the first retry of an episode is news; the rest (every backoff step) is debug
            (log.debug if self._episode else log.info)("ami.reconnecting", delay_s=round(delay, 3))
            await asyncio.sleep(delay)
            delay = min(self.limits.backoff_max_s, delay * 2)

    def _fail(self, level: Any, event: str, **kw: Any) -> None:
        """Log a failed attempt once per episode: the same failure again is only debug."""
        key = f"{event}:{kw.get('error', '')[:40]}"
        self._episode_failures += 1
        if key == self._episode:
            log.debug(event, host=self._host, port=self._port, attempt=self._episode_failures, **kw)
            return
        self._episode = key
        level(
            event,
            host=self._host,
            port=self._port,
            **kw,
            note="retrying with backoff; repeats of this failure are logged at debug level",
        )

    async def _session_once(self) -> bool:
        """One connection's life; True if it got logged in and snapshotted."""
        lim = self.limits
        self.counters.connect_attempts += 1
        (log.debug if self._episode else log.info)("ami.connecting", host=self._host, port=self._port)
        try:
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel
            # that races with completion, and stop() would then hang.
            async with asyncio.timeout(lim.connect_timeout_s):
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, limit=lim.message_bytes_max
                )
        except (OSError, TimeoutError) as exc:
            self._fail(log.warning, "ami.connect_failed", error=repr(exc))
            return False
        session = _Session(reader, writer, self._enqueue_event)
        tasks: list[asyncio.Task[Any]] = []
        up = False
        reason = "?"
        try:
            async with asyncio.timeout(lim.connect_timeout_s):
                banner = await reader.readline()
            if not ami_wire.banner_ok(banner):
                self._fail(log.error, "ami.not_ami", banner=banner[:80])
                return False
            tasks.append(asyncio.create_task(session.read_loop()))
            reply = await session.action(
                {"Action": "Login", "Username": self._username, "Secret": self._secret, "Events": "on"},
                lim.action_timeout_s,
            )
            if not reply.success:
                self.counters.login_refused += 1
                self._fail(
                    log.error,
                    "ami.login_refused",
                    username=self._username,
                    reply=reply.get("Message", ""),
                    hint="check the user, secret, permit/deny and read/write in manager.conf",
                )
                return False
            await self._snapshot(session)
            self._session, up = session, True
            self.counters.sessions += 1
            if self._episode:
                log.info("ami.recovered", failed_attempts=self._episode_failures)
            self._episode, self._episode_failures = None, 0
            log.info("ami.connected", host=self._host, port=self._port)
            tasks += [
                asyncio.create_task(self._ping_loop(session)),
                asyncio.create_task(self._resync_loop(session)),
            ]
            self._resync.clear()  # this connect's snapshot covers earlier drops
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # The reader's reason is the most precise; the others fail after it.
            reason = (tasks[0] if tasks[0] in done else next(iter(done))).result()
        except asyncio.CancelledError:
            reason = "stopped"
            raise
        except (AmiError, OSError, TimeoutError) as exc:
            reason = repr(exc)
            if not up:
                log.warning("ami.session_failed", host=self._host, port=self._port, error=reason)
        except Exception as exc:  # a bug must not end the reconnect loop
            reason = repr(exc)
            log.exception("ami.session_crashed")
        finally:
            self._session = None
            session.close()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if up:
                # our own stop is routine; any other loss of the session is worth a warning
                (log.info if reason == "stopped" else log.warning)(
                    "ami.disconnected", host=self._host, port=self._port, reason=reason
                )
        return up

    async def _snapshot(self, session: _Session) -> None:
        listing = await session.action(
            {"Action": "CoreShowChannels"}, self.limits.action_timeout_s, collect=True
        )
        if listing and "Response" in listing[0] and not listing[0].success:
            raise AmiError(f"CoreShowChannels refused: {listing[0].get('Message', '')!r}")
        self._enqueue_marker(live_ids_from_core_show_channels(listing))

    async def _ping_loop(self, session: _Session) -> str:
        # Asterisk answers a Ping at once; silence means a dead or half-open link.
        while True:
            await asyncio.sleep(self.limits.ping_interval_s)
            try:
                reply = await session.action({"Action": "Ping"}, self.limits.ping_timeout_s)
            except AmiActionTimeout:
                self.counters.ping_timeouts += 1
                log.warning("ami.ping_timeout", timeout_s=self.limits.ping_timeout_s)
                return "no Ping reply"
            if not (reply.success or str(reply.get("Ping", "")).lower() == "pong"):
                return f"bad Ping reply {dict(reply.items())!r}"

    async def _resync_loop(self, session: _Session) -> str:
        # Events were dropped: take a fresh snapshot so the consumer can reconcile.
        while True:
            await self._resync.wait()
            self._resync.clear()
            await self._snapshot(session)

    # -- event queue --------------------------------------------------------
    def _enqueue_event(self, event: AmiEvent) -> None:
        self.counters.events_received += 1
        if self._queued_events >= self.limits.event_queue_max:
            self.counters.events_dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("ami.events_dropped", queue_max=self.limits.event_queue_max)
            return
        self._queued_events += 1
        self._queue.append((None, event))
        self._wakeup.set()

    def _enqueue_marker(self, live_ids: set[str]) -> None:
        # Markers bypass the bound (the snapshot must not be lost); a newer one
        # replaces an unconsumed one at the tail, so they cannot pile up.
        if self._queue and self._queue[-1][0] is _MARKER:
            self._queue.pop()
        self._queue.append((_MARKER, live_ids))
        self._wakeup.set()

    async def _consume(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            kind, item = self._queue.popleft()
            try:
                if kind is _MARKER:
                    await self._on_connected(item)
                else:
                    self._queued_events -= 1
                    result = self._on_event(item)
                    if inspect.isawaitable(result):
                        await result
                self._failing = False
            except Exception:
                self.counters.callback_errors += 1
                if not self._failing:  # once per episode, not once per event
                    self._failing = True
                    log.exception("ami.callback_failed", kind="on_connected" if kind else "on_event")
            if self._dropping and self._queued_events <= self.limits.event_queue_max // 2:
                self._dropping = False
                log.warning("ami.events_flowing", dropped_total=self.counters.events_dropped)
                self._resync.set()
