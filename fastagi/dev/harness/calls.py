"""One simulated call of the harness: the AMI events of its channels, and the questions the
e2e tests ask of them (prompts heard, what was dialled, bridged or not, variables set)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

Message = dict[str, Any]
"""An AMI message as the harness keeps it: keys as Asterisk spells them, a repeated header
(ChanVariable, Output) as a list."""


class Call:
    """One simulated call: all AMI events of its channels, in arrival order."""

    def __init__(self, number: str, ids: Iterable[str], action_id: str) -> None:
        self.number = number
        self.action_id = action_id
        self.ids: set[str] = set(ids)
        self.caller_id, self.ivr_id = list(ids)[:2]
        self.events: list[Message] = []
        self.live: set[str] = set()
        self.seen_channel = False
        self.failed: str | None = None
        self.done = asyncio.Event()
        self._last_hangup = 0.0

    # -- event routing
    def matches(self, ev: Message) -> bool:
        if ev.get("ActionID") == self.action_id:
            return True
        for key in ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid", "UniqueID", "LinkedID"):
            v = ev.get(key)
            if isinstance(v, str) and v in self.ids:
                return True
        return False

    def feed(self, ev: Message) -> None:
        self.events.append(ev)
        for key in ("Uniqueid", "DestUniqueid"):
            v = ev.get(key)
            if isinstance(v, str) and v:
                self.ids.add(v)
        name = ev.get("Event")
        if name == "Newchannel":
            self.live.add(ev.get("Uniqueid", ""))
            self.seen_channel = True
        elif name == "Hangup":
            self.live.discard(ev.get("Uniqueid", ""))
            self._last_hangup = time.monotonic()
        elif name == "OriginateResponse" and ev.get("Response") != "Success":
            self.failed = ev.get("Reason", "originate failed")
            self.done.set()

    @property
    def finished(self) -> bool:
        return self.seen_channel and not self.live

    async def wait_done(self, timeout: float = 60.0, settle: float = 0.5) -> Call:
        """Wait until every channel of the call has hung up, then `settle` more seconds
        for the late events (Cdr)."""
        deadline = time.monotonic() + timeout
        while not (self.finished or self.failed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"call to {self.number} still has channels {self.live}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(settle)
        self.done.set()
        return self

    # -- questions
    def of(self, *names: str) -> list[Message]:
        return [e for e in self.events if e.get("Event") in names]

    def channel_names(self) -> set[str]:
        return {e["Channel"] for e in self.events if "Channel" in e and isinstance(e["Channel"], str)}

    def ivr_events(self) -> list[Message]:
        return [e for e in self.events if e.get("Uniqueid") == self.ivr_id]

    def prompts(self) -> list[str]:
        """extbill/ prompts the dialplan played to the caller (Read/Playback Newexten
        events of the IVR channel, in order). Not the in-bridge L() prompts: Asterisk.played."""
        out = []
        for e in self.of("Newexten"):
            app, data = e.get("Application", ""), e.get("AppData", "")
            if app == "Playback":
                files = data.split(",")[0].split("&")
            elif app in ("Read", "Background"):
                files = (data.split(",")[1] if app == "Read" and "," in data else data.split(",")[0]).split(
                    "&"
                )
            else:
                continue
            out += [f for f in files if f.startswith("extbill/")]
        return out

    def applications(self, channel_id: str | None = None) -> list[tuple[str, str]]:
        cid = channel_id or self.ivr_id
        return [
            (e.get("Application", ""), e.get("AppData", ""))
            for e in self.of("Newexten")
            if e.get("Uniqueid") == cid
        ]

    def dial_strings(self) -> list[str]:
        """What the IVR dialled (DialBegin DialString, e.g. Local/talk-1-3@extbill-test-branch)."""
        out = []
        for e in self.of("DialBegin"):
            if e.get("Uniqueid") == self.ivr_id:
                ds = e.get("DialString", "")
                # DialBegin's DialString omits the technology: rebuild it from DestChannel.
                tech = e.get("DestChannel", "").split("/", 1)[0]
                out.append(f"{tech}/{ds}" if tech and not ds.startswith(tech + "/") else ds)
        return out

    def dial_statuses(self) -> list[str]:
        return [e.get("DialStatus", "") for e in self.of("DialEnd") if e.get("Uniqueid") == self.ivr_id]

    def dialed(self) -> bool:
        """Did the IVR dial anything? (The Originate's own DialBegin, which has no
        caller channel, does not count.)"""
        return any(e.get("Uniqueid") == self.ivr_id for e in self.of("DialBegin")) or any(
            a == "Dial" for a, _ in self.applications()
        )

    def bridged(self) -> bool:
        """True if the IVR channel shared a bridge with another channel."""
        members: dict[str, set[str]] = {}
        for e in self.of("BridgeEnter"):
            members.setdefault(e.get("BridgeUniqueid", ""), set()).add(e.get("Uniqueid", ""))
        return any(self.ivr_id in m and len(m) >= 2 for m in members.values())

    def bridge_times(self) -> tuple[float, float] | None:
        """(enter, leave) AMI Timestamps of the IVR channel's bridge, if it was bridged."""
        enter = [float(e["Timestamp"]) for e in self.of("BridgeEnter") if e.get("Uniqueid") == self.ivr_id]
        leave = [float(e["Timestamp"]) for e in self.of("BridgeLeave") if e.get("Uniqueid") == self.ivr_id]
        if not enter or not leave:
            return None
        return enter[0], leave[-1]

    def var(self, name: str, channel_id: str | None = None) -> str | None:
        """Last VarSet value of `name` on a channel (default: the IVR channel)."""
        cid = channel_id or self.ivr_id
        val = None
        for e in self.of("VarSet"):
            if e.get("Variable") == name and (cid == "*" or e.get("Uniqueid") == cid):
                val = e.get("Value")
        return val
