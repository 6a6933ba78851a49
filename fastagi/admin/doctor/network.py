"""Doctor's network probes: one real FastAGI `lookup` round trip, as Asterisk makes it, and
one AMI login plus CoreShowChannels, as `serve` does."""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import Mapping

from fastagi.admin.doctor.findings import FAIL, OK, RELOAD_MANAGER, WARN, Finding
from fastagi.asterisk.agi_client import agi_call
from fastagi.core import ami_wire
from fastagi.runtime.config import Settings

PROBE_NUMBER = "4000000000"  # looked up when the database has no number: not-in-service


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed early"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "*": "127.0.0.1"}.get(host, host)


async def check_fastagi(
    label: str, host: str, port: int, number: str | None, *, timeout_s: float = 5.0, fix_down: str
) -> Finding:
    """One real `lookup` request, as Asterisk makes it; the server must answer EXTBILL_RESULT."""
    host = connect_host(host)
    number = number or PROBE_NUMBER
    where = f"{host}:{port}"
    try:
        result = await agi_call(
            host, port, "lookup", [number], uniqueid=f"doctor-{time.time():.6f}", timeout_s=timeout_s
        )
    except TimeoutError:
        return Finding(
            FAIL,
            "fastagi",
            f"{label}: no FastAGI answer from {where} within {timeout_s:g} s",
            f"{fix_down}; if it runs, check its log (journalctl -u extbill)",
        )
    except (ConnectionRefusedError, socket.gaierror) as exc:
        return Finding(
            FAIL, "fastagi", f"{label}: no extbill FastAGI server on {where} ({_why(exc)})", fix_down
        )
    except (OSError, asyncio.IncompleteReadError) as exc:
        if getattr(exc, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            return Finding(FAIL, "fastagi", f"{label}: cannot reach {where} ({_why(exc)})", fix_down)
        return Finding(
            FAIL,
            "fastagi",
            f"{label}: {where} dropped the lookup before answering ({_why(exc)}); calls fail closed",
            f"make sure {where} is the extbill server, and check its log (journalctl -u extbill)",
        )
    answer = result.variables.get("EXTBILL_RESULT", "")
    if answer not in ("collect", "prompt"):
        return Finding(
            FAIL,
            "fastagi",
            f"{label}: {where} answered a lookup of {number} without a valid "
            f"EXTBILL_RESULT (got {answer or 'nothing'}); calls fail closed",
            f"make sure {where} is the extbill server, and check its log (journalctl -u extbill)",
        )
    prompt = f" {result.variables.get('EXTBILL_PROMPT', '?')}" if answer == "prompt" else ""
    return Finding(
        OK,
        "fastagi",
        f"{label}: extbill answers on {where} (lookup {number} -> {answer}"
        f"{prompt}, language {result.variables.get('EXTBILL_LANG', '?')})",
    )


async def _ami_read(reader: asyncio.StreamReader, timeout_s: float) -> dict[str, str]:
    raw = await asyncio.wait_for(reader.readuntil(ami_wire.MESSAGE_END), timeout_s)
    return ami_wire.parse(raw)


async def _ami_action(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    action_id: str,
    fields: Mapping[str, str],
    timeout_s: float,
) -> dict[str, str]:
    writer.write(ami_wire.serialize([*fields.items(), ("ActionID", action_id)]))
    await writer.drain()
    deadline = time.monotonic() + timeout_s
    while True:  # skip events until the Response to this action
        msg = await _ami_read(reader, max(0.01, deadline - time.monotonic()))
        if "response" in msg and msg.get("actionid", action_id) == action_id:
            return msg


async def check_ami(settings: Settings, *, timeout_s: float = 5.0) -> Finding:
    """Log in with extbill's AMI user and run CoreShowChannels, as `serve` does."""
    s = settings
    where, user = f"{s.ami_host}:{s.ami_port}", s.ami_user
    if not s.ami_secret:
        return Finding(
            WARN,
            "ami",
            "AMI: no ami_secret set, so extbill rates calls from the dialplan's "
            "hangup handler only (no AMI consumer)",
            f"set ami_secret in extbill's config (or EXTBILL_AMI_SECRET) to the secret of "
            f"[{user}] in manager.conf, and restart extbill",
        )
    reload_ = f"then: {RELOAD_MANAGER}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(s.ami_host, s.ami_port, limit=ami_wire.MESSAGE_BYTES_MAX), timeout_s
        )
    except (OSError, TimeoutError) as exc:
        reason = _why(exc)
        return Finding(
            FAIL,
            "ami",
            f"AMI: cannot connect to {where} ({reason})",
            "start Asterisk; in manager.conf [general] set enabled = yes, port and "
            f"bindaddr to match extbill's ami_host/ami_port; {reload_}",
        )
    try:
        return await _ami_session(reader, writer, s, where, timeout_s)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        return Finding(
            FAIL,
            "ami",
            f"AMI: {where} stopped answering ({type(exc).__name__})",
            f"check that {where} is Asterisk's AMI and that Asterisk is running "
            '(asterisk -rx "manager show settings")',
        )
    finally:
        writer.close()


async def _ami_session(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, s: Settings, where: str, timeout_s: float
) -> Finding:
    """Banner, Login, CoreShowChannels, Logoff on an open connection."""
    user, reload_ = s.ami_user, f"then: {RELOAD_MANAGER}"
    banner = await asyncio.wait_for(reader.readline(), timeout_s)
    if not ami_wire.banner_ok(banner):
        return Finding(
            FAIL,
            "ami",
            f"AMI: {where} is not an Asterisk manager (banner {banner[:40]!r})",
            "set ami_host/ami_port (EXTBILL_AMI_HOST/EXTBILL_AMI_PORT) "
            "to Asterisk's manager.conf bindaddr/port",
        )
    reply = await _ami_action(
        reader,
        writer,
        "doctor-login",
        {"Action": "Login", "Username": user, "Secret": s.ami_secret, "Events": "off"},
        timeout_s,
    )
    if reply.get("response", "").lower() != "success":
        return Finding(
            FAIL,
            "ami",
            f"AMI: login as {user!r} at {where} refused ({reply.get('message', 'no message')})",
            f"make [{user}] in manager.conf have secret = extbill's ami_secret, and its "
            f"permit/deny admit this host; {reload_}",
        )
    reply = await _ami_action(reader, writer, "doctor-channels", {"Action": "CoreShowChannels"}, timeout_s)
    if reply.get("response", "").lower() != "success":
        return Finding(
            FAIL,
            "ami",
            f"AMI: {user!r} logs in, but CoreShowChannels is refused ({reply.get('message', 'no message')})",
            f"set `write = reporting` in [{user}] of manager.conf; {reload_}",
        )
    try:
        await _ami_action(reader, writer, "doctor-logoff", {"Action": "Logoff"}, 1.0)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass
    return Finding(OK, "ami", f"AMI: {user!r} logs in at {where} and may run CoreShowChannels")


def check_agi_allow(bind_host: str, allow_text: str) -> Finding | None:
    """A warning when FastAGI listens beyond loopback without agi_allow (so it answers loopback
    only, and a remote Asterisk's calls fail); None when it listens on loopback only."""
    import ipaddress  # noqa: PLC0415

    from fastagi.runtime.peers import PeerAllowlist  # noqa: PLC0415

    try:  # 0.0.0.0 and :: are every address, not loopback
        loopback_bind = ipaddress.ip_address(bind_host).is_loopback
    except ValueError:  # a host name (or "*"): it may resolve to anything
        loopback_bind = bind_host == "localhost"
    if loopback_bind:
        return None
    allow = PeerAllowlist.parse(allow_text)
    if allow.loopback_only:
        return Finding(
            WARN,
            "fastagi",
            f"FastAGI: agi_bind {bind_host} listens beyond loopback but agi_allow is empty, so only "
            "loopback peers are answered: a remote Asterisk is refused",
            'list your Asterisk servers (and 127.0.0.1 for doctor): agi_allow = "127.0.0.1, 10.0.0.5, 10.0.0.6" '
            "(or EXTBILL_AGI_ALLOW); never "
            "an open network: FastAGI has no password, a peer could forge route and hangup requests",
        )
    return Finding(
        OK,
        "fastagi",
        f"FastAGI: answers agi_allow {', '.join(str(n) for n in allow.networks)} only",
    )
