"""FastAGI's peer allowlist (agi_allow): other peers are refused before a byte is read, each
refusal episode is logged once, and doctor warns when serve listens beyond loopback without one."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs

from fastagi.admin.doctor.findings import OK, WARN
from fastagi.admin.doctor.network import check_agi_allow
from fastagi.asterisk.agi_server import AgiChannel, AgiServer
from fastagi.runtime.config import ConfigError, Settings
from fastagi.runtime.peers import REFUSAL_EPISODE_GAP_S, PeerAllowlist, RefusalLog

HEAD = (
    b"agi_network: yes\nagi_network_script: lookup\nagi_request: agi://127.0.0.1/lookup\n"
    b"agi_channel: PJSIP/trunk-1\nagi_uniqueid: 1732612345.42\nagi_arg_1: 4008001234\n\n"
)


def test_the_list_parses_addresses_and_networks_and_defaults_to_loopback() -> None:
    default = PeerAllowlist.parse("")
    assert default.loopback_only
    assert default.allows("127.0.0.1") and default.allows("::1") and default.allows("127.8.9.10")
    assert not default.allows("10.0.0.5") and not default.allows("") and not default.allows(None)
    listed = PeerAllowlist.parse("10.0.0.5, 192.168.1.0/24 2001:db8::/32")
    assert listed.allows("10.0.0.5") and listed.allows("192.168.1.77") and listed.allows("2001:db8::1")
    assert listed.allows("::ffff:10.0.0.5")  # an IPv4 peer on a dual-stack socket
    assert not listed.allows("10.0.0.6") and not listed.allows("127.0.0.1")  # exactly the list
    with pytest.raises(ConfigError, match="agi_allow: 'example.com' is not an IP address"):
        Settings(agi_allow="10.0.0.5, example.com")


def test_refusals_are_logged_once_per_episode() -> None:
    log = RefusalLog()
    assert log.note("10.0.0.9", 100.0)  # the first: logged
    assert not log.note("10.0.0.9", 101.0) and not log.note("10.0.0.9", 100.0 + REFUSAL_EPISODE_GAP_S)
    assert log.note("10.0.0.8", 102.0)  # another peer: its own episode
    # quiet for a whole gap after its last refusal: a new episode
    assert log.note("10.0.0.9", 100.0 + 2 * REFUSAL_EPISODE_GAP_S + 1)
    assert log.refused == 5


async def _knock(port: int) -> bytes:
    """Connect as Asterisk does, send a request, read what comes back until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    data = b""
    try:
        async with asyncio.timeout(3):
            while chunk := await reader.read(4096):
                data += chunk
    except ConnectionError:
        pass
    finally:
        writer.close()
    return data


def test_an_unlisted_peer_is_closed_unread_and_logged_once() -> None:
    """A peer outside agi_allow gets its connection closed with nothing sent and no handler
    run (so no route or hangup it could forge); three attempts are one log line."""
    ran: list[str] = []

    async def lookup(channel: AgiChannel) -> None:
        ran.append(channel.request.uniqueid)
        await channel.set_variable("EXTBILL_RESULT", "OK")

    async def main() -> None:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            refusing = AgiServer({"lookup": lookup}, "127.0.0.1", 0, allow=PeerAllowlist.parse("10.9.9.9"))
            await refusing.start()
            try:
                replies = [await _knock(refusing.port) for _ in range(3)]
            finally:
                await refusing.stop()
            assert replies == [b"", b"", b""] and ran == []
            assert refusing.refusals.refused == 3
            refused = [e for e in logs if e["event"] == "agi.peer_refused"]
            assert len(refused) == 1 and refused[0]["peer"] == "127.0.0.1"
            # the same request from a listed peer is answered
            listed = AgiServer({"lookup": lookup}, "127.0.0.1", 0, allow=PeerAllowlist.parse("127.0.0.1"))
            await listed.start()
            try:
                reply = await asyncio.wait_for(_answer(listed.port), 5)
            finally:
                await listed.stop()
            assert b"EXTBILL_RESULT" in reply and ran == ["1732612345.42"]

    asyncio.run(main())


async def _answer(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    line = await reader.readline()
    writer.write(b"200 result=1\n")
    await writer.drain()
    writer.close()
    return line


def test_doctor_warns_when_listening_beyond_loopback_without_a_list() -> None:
    assert check_agi_allow("127.0.0.1", "") is None
    warn = check_agi_allow("0.0.0.0", "")
    assert warn is not None and warn.status == WARN and "agi_allow is empty" in warn.message
    listed = check_agi_allow("0.0.0.0", "10.0.0.5, 10.0.0.6")
    assert listed is not None and listed.status == OK and "10.0.0.5/32, 10.0.0.6/32" in listed.message
