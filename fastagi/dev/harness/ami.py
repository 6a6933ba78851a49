"""The harness's asyncio AMI client: login, actions with timeouts, every event recorded, and
simulated calls (Originate of Local/<number>@extbill-ivr) that collect their own events.
It reads and writes through the wire module (fastagi.core.ami_wire)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Iterable
from typing import Any

from fastagi.core import ami_wire
from fastagi.dev.harness.calls import Call, Message
from fastagi.dev.harness.config import CALLER_CONTEXT, IVR_CONTEXT

READ_CHUNK_BYTES = 64 * 1024  # one read of the event stream; the Framer joins them into messages


class AmiError(Exception):
    pass


def _message(block: bytes) -> Message:
    """A message with keys as sent; a repeated header (ChanVariable, Output...) becomes a list."""
    msg: Message = {}
    for key, value in ami_wire.pairs(block):
        if key in msg:
            prev = msg[key]
            msg[key] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            msg[key] = value
    return msg


class Ami:
    """A small asyncio AMI client: login, actions with timeouts, every event recorded,
    and simulated calls (originate) that collect their own events."""

    def __init__(
        self, host: str, port: int, username: str, secret: str, timeout: float = 5.0, system_name: str = ""
    ) -> None:
        self.host, self.port, self.username, self.secret = host, port, username, secret
        self.timeout = timeout
        self.system_name = system_name  # the Asterisk's systemname: prefixes the calls' ids
        self.events: list[Message] = []
        self.calls: list[Call] = []
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._lists: dict[str, list[Message]] = {}
        self._list_resp: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Any, asyncio.Future[Message]]] = []
        self.greeting = ""

    async def __aenter__(self) -> Ami:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        self._reader = reader
        self.greeting = (await asyncio.wait_for(reader.readline(), self.timeout)).decode().strip()
        self._task = asyncio.create_task(self._read_loop())
        resp = await self.action("Login", Username=self.username, Secret=self.secret, Events="on")
        if resp.get("Response") != "Success":
            await self.close()  # no half-open session left behind
            raise AmiError(f"login failed: {resp}")

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.action("Logoff"), 1)
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._writer = self._reader = self._task = None

    async def _read_loop(self) -> None:
        assert self._reader is not None
        framer = ami_wire.Framer()
        try:
            while True:
                chunk = await self._reader.read(READ_CHUNK_BYTES)
                if not chunk:
                    break
                for block in framer.feed(chunk):
                    msg = _message(block)
                    if msg:
                        self._dispatch(msg)
        finally:
            err = AmiError("AMI connection closed")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(err)

    def _dispatch(self, msg: Message) -> None:
        aid = msg.get("ActionID")
        if "Response" in msg and aid in self._pending:
            if msg.get("EventList") == "start":
                self._lists[aid] = []
                self._list_resp[aid] = msg
                return
            fut = self._pending.pop(aid)
            if not fut.done():
                fut.set_result(msg)
            return
        if "Event" not in msg:
            return
        if aid in self._lists:
            if msg.get("EventList") == "Complete":
                items = self._lists.pop(aid)
                resp = dict(self._list_resp.pop(aid))
                resp["events"] = items
                fut = self._pending.pop(aid)
                if not fut.done():
                    fut.set_result(resp)
            else:
                self._lists[aid].append(msg)
            return
        self.events.append(msg)
        for call in self.calls:
            if call.matches(msg):
                call.feed(msg)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(msg):
                fut.set_result(msg)
                self._waiters.remove((pred, fut))

    async def action(
        self, name: str, fields: Iterable[tuple[str, str]] = (), *, timeout: float | None = None, **kw: Any
    ) -> Message:
        """Send an action; returns its Response (for list actions: the response with
        the listed events under "events"). Repeated headers: pass (key, value) pairs."""
        aid = f"h{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        headers = [("Action", name), ("ActionID", aid), *kw.items(), *fields]
        return await self._send(aid, headers, timeout or self.timeout)

    async def _send(self, aid: str, headers: list[tuple[str, Any]], timeout: float) -> Message:
        """Write one action (the wire module refuses CR/LF in it) and wait for its reply."""
        assert self._writer is not None, "not connected"
        data = ami_wire.serialize(headers)
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[aid] = fut
        self._writer.write(data)
        await self._writer.drain()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._pending.pop(aid, None)

    async def wait_event(self, pred: Any, timeout: float = 10.0) -> Message:
        for ev in self.events:
            if pred(ev):
                return ev
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return await asyncio.wait_for(fut, timeout)

    async def wait_fully_booted(self, timeout: float = 10.0) -> None:
        await self.wait_event(lambda e: e.get("Event") == "FullyBooted", timeout)

    async def set_global(self, name: str, value: str) -> None:
        resp = await self.action("Setvar", Variable=name, Value=value)
        if resp.get("Response") != "Success":
            raise AmiError(f"Setvar {name}: {resp}")

    async def set_agi(self, *addresses: str) -> None:
        """Point the dialplan's FastAGI (global EXTBILL_AGI) at host:port; several are tried
        in turn (failover: the dialplan's "a&b" list)."""
        await self.set_global("EXTBILL_AGI", "&".join(addresses))

    async def originate(
        self,
        number: str,
        *,
        dtmf: str = "",
        hold: float = 10.0,
        dtmf_delay: float = 1.5,
        callerid: str = "13800138000",
        variables: dict[str, str] | None = None,
    ) -> Call:
        """Call <number> into extbill-ivr from a simulated caller that waits `dtmf_delay`
        seconds, sends `dtmf` (SendDTMF syntax; 'w' = 0.5 s pause), then stays `hold`
        seconds and hangs up (unless the IVR hung up first)."""
        # Shaped like Asterisk's own "[systemname-]epoch.seq" Uniqueids: the IVR channel's
        # Uniqueid is the billing id, and extbill treats ids of that shape as naming the
        # caller channel, as in production; with a systemname (self.system_name) the IVR
        # channel's id starts with it, which is how extbill knows the call's Asterisk.
        uid = f"{int(time.time())}.{uuid.uuid4().int % 10**9}"
        caller_id, ivr_id = f"sim-{uid}", f"{self.system_name or 'ivr'}-{uid}"
        aid = f"orig-{uuid.uuid4().hex[:8]}"
        call = Call(number, (caller_id, ivr_id), aid)
        self.calls.append(call)
        vars_ = {"SIM_DTMF": dtmf, "SIM_HOLD": f"{hold:g}", "SIM_DTMF_DELAY": f"{dtmf_delay:g}"}
        vars_.update(variables or {})
        fields = [("Variable", f"{k}={v}") for k, v in vars_.items()]
        resp = await self._originate(aid, number, caller_id, ivr_id, callerid, fields)
        if resp.get("Response") != "Success":
            raise AmiError(f"Originate refused: {resp}")
        return call

    async def _originate(
        self, aid: str, number: str, caller_id: str, ivr_id: str, callerid: str, fields: list[tuple[str, str]]
    ) -> Message:
        headers = [
            ("Action", "Originate"),
            ("ActionID", aid),
            ("Channel", f"Local/{number}@{IVR_CONTEXT}"),
            ("Context", CALLER_CONTEXT),
            ("Exten", "sim"),
            ("Priority", "1"),
            ("CallerID", f'"sim" <{callerid}>'),
            ("Timeout", "30000"),
            ("Async", "true"),
            ("ChannelId", caller_id),
            ("OtherChannelId", ivr_id),
            *fields,
        ]
        return await self._send(aid, headers, self.timeout)

    async def core_show_channels(self) -> list[Message]:
        resp = await self.action("CoreShowChannels")
        return resp.get("events", [])
