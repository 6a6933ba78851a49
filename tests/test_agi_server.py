"""FastAGI server over real TCP on 127.0.0.1, against a scripted fake Asterisk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest
import structlog
from structlog.testing import capture_logs

from fastagi.asterisk.agi_server import (
    AgiChannel,
    AgiServer,
    ChannelClosed,
    CommandFailed,
    Handler,
    ServerLimits,
    install_signal_handlers,
)
from fastagi.core.agi import HEADER_BYTES_MAX, HEADER_LINES_MAX, parse_command_args

# A header timeout long enough that a bound below it is no wall-clock race.
PATIENT = ServerLimits(header_timeout_s=3.0, reply_timeout_s=0.3, handler_timeout_s=1.0, connections_max=100)
FAST = ServerLimits(
    header_timeout_s=0.3,
    reply_timeout_s=0.3,
    handler_timeout_s=1.0,
    connections_max=100,
    drain_timeout_s=1.0,
)
EVIL_CALLERID = '"\'; DROP TABLE accounts; --\\ \t"; SELECT * FROM ledger WHERE 1=1; \\\\'


def headers(
    script: str = "extbill?v=2", callerid: str = "13800138000", uniqueid: str = "1732612345.42"
) -> bytes:
    """A header block as Asterisk 22's res_agi writes it for AGI(agi://.../script,4008001234,8021)."""
    fields = [
        ("agi_network", "yes"),
        ("agi_network_script", script),
        ("agi_request", f"agi://127.0.0.1:4573/{script}"),
        ("agi_channel", "PJSIP/trunk-ct-0000002a"),
        ("agi_language", "zh"),
        ("agi_type", "PJSIP"),
        ("agi_uniqueid", uniqueid),
        ("agi_version", "22.1.0"),
        ("agi_callerid", callerid),
        ("agi_calleridname", "张三"),
        ("agi_callingpres", "0"),
        ("agi_callingani2", "0"),
        ("agi_callington", "0"),
        ("agi_callingtns", "0"),
        ("agi_dnid", "4008001234"),
        ("agi_rdnis", "unknown"),
        ("agi_context", "ivr-400"),
        ("agi_extension", "4008001234"),
        ("agi_priority", "7"),
        ("agi_enhanced", "0.0"),
        ("agi_accountcode", ""),
        ("agi_threadid", "140245830092480"),
        ("agi_arg_1", "4008001234"),
        ("agi_arg_2", "8021"),
    ]
    return "".join(f"{k}: {v}\n" for k, v in fields).encode() + b"\n"


def ok(_command: str) -> bytes:
    return b"200 result=1\n"


async def fake_asterisk(
    port: int, head: bytes, answer: Callable[[str], bytes | None] = ok, *, close_after: bool = False
) -> list[str]:
    """Send headers, answer each command line, return the commands once the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    commands: list[str] = []
    try:
        async with asyncio.timeout(3):
            while line := await reader.readline():
                command = line.decode().rstrip("\n")
                commands.append(command)
                reply = answer(command)
                if reply:
                    writer.write(reply)
                if close_after:
                    break
    except ConnectionError:
        pass
    finally:
        writer.close()
    return commands


async def closed_within(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Read until the server closes (EOF or reset); fail if it stays open past timeout."""
    data = b""
    async with asyncio.timeout(timeout):
        try:
            while chunk := await reader.read(65536):
                data += chunk
        except ConnectionError:
            pass
    return data


@contextlib.asynccontextmanager
async def serving(routes: dict[str, Handler], limits: ServerLimits = FAST) -> AsyncIterator[AgiServer]:
    server = AgiServer(routes, "127.0.0.1", 0, limits=limits)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Recorder:
    """A billing-like handler: sets two result variables and remembers what it saw."""

    def __init__(self) -> None:
        self.requests: list[object] = []
        self.errors: list[BaseException] = []

    async def __call__(self, channel: AgiChannel) -> None:
        self.requests.append(channel.request)
        structlog.get_logger("test").info("handler.ran")
        try:
            await channel.set_variable("EXTBILL_CALLER", channel.request.callerid)
            await channel.set_variable("EXTBILL_RESULT", "OK")
        except Exception as exc:
            self.errors.append(exc)
            raise


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_valid_call_completes_and_socket_closes() -> None:
    """A call runs its handler, the replies arrive in order, and the server closes the socket."""

    async def main() -> None:
        handler = Recorder()
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            async with serving({"extbill": handler}) as server:
                commands = await fake_asterisk(server.port, headers())
                await wait_for(lambda: server.connections == 0)
        assert commands == ['SET VARIABLE EXTBILL_CALLER "13800138000"', 'SET VARIABLE EXTBILL_RESULT "OK"']
        assert handler.requests[0].query == {"v": "2"}
        (ran,) = events(logs, "handler.ran")
        assert ran["uniqueid"] == "1732612345.42" and ran["route"] == "extbill"
        assert ran["channel"] == "PJSIP/trunk-ct-0000002a" and ran["callerid"] == "13800138000"
        assert not [e for e in logs if e["log_level"] in ("warning", "error")]

    asyncio.run(main())


def test_valid_call_unaffected_by_concurrent_garbage() -> None:
    """A valid call completes quickly while other clients send garbage, which are all closed."""
    garbage = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),
        b"A" * 100_000,
        b"agi_network: yes\nnot a header\n",
        b"\n200 result=1\n",
        b"HANGUP\n",
    ]

    async def junk(port: int, payload: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        await closed_within(reader, 2 * PATIENT.header_timeout_s)
        writer.close()

    async def main() -> None:
        handler = Recorder()
        with capture_logs():
            async with serving({"extbill": handler}, PATIENT) as server:
                jobs = [asyncio.create_task(junk(server.port, g)) for g in garbage * 5]
                t0 = time.perf_counter()
                commands = await fake_asterisk(server.port, headers())
                elapsed = time.perf_counter() - t0
                await asyncio.gather(*jobs)
        # the good call never waited for a junk client's header timeout (a generous bound:
        # a busy machine may be slow, but not by seconds)
        assert len(commands) == 2 and elapsed < PATIENT.header_timeout_s
        assert len(handler.requests) == 1

    asyncio.run(main())


@pytest.mark.parametrize(
    "block",
    [
        b"".join(b"agi_x%d: %s\n" % (i, b"v" * 1000) for i in range(HEADER_BYTES_MAX // 1000 + 2)) + b"\n",
        b"".join(b"agi_arg_%d: x\n" % i for i in range(1, HEADER_LINES_MAX + 2)) + b"\n",
    ],
    ids=["over-64KiB", "over-200-lines"],
)
def test_oversized_header_block_is_closed(block: bytes) -> None:
    """A header block over 64 KiB or over 200 lines closes the connection without a call."""

    async def main() -> None:
        handler = Recorder()
        with capture_logs() as logs:
            async with serving({"extbill": handler}) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(block)
                assert await closed_within(reader, 1.0) == b""
                writer.close()
        assert handler.requests == []
        assert len(events(logs, "agi.protocol_error")) == 1

    asyncio.run(main())


def test_silent_client_closed_after_header_timeout() -> None:
    """A client that connects and says nothing is closed after header_timeout_s."""

    async def main() -> None:
        with capture_logs() as logs:
            async with serving({"extbill": Recorder()}) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                t0 = time.perf_counter()
                await closed_within(reader, 2.0)
                elapsed = time.perf_counter() - t0
                writer.close()
        assert (
            FAST.header_timeout_s * 0.9 <= elapsed < FAST.header_timeout_s + 2.0
        )  # not early; late only on a busy machine
        assert len(events(logs, "agi.header_timeout")) == 1

    asyncio.run(main())


def test_slow_header_block_closed_after_header_timeout() -> None:
    """A client trickling headers without the blank line is closed at the same deadline."""

    async def main() -> None:
        with capture_logs():
            async with serving({"extbill": Recorder()}) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                t0 = time.perf_counter()
                for line in headers().splitlines(keepends=True)[:5]:
                    writer.write(line)
                    await asyncio.sleep(0.1)
                await closed_within(reader, 2.0)
                writer.close()
        assert time.perf_counter() - t0 < FAST.header_timeout_s + 0.5

    asyncio.run(main())


def test_close_half_way_through_headers() -> None:
    """A peer closing inside the header block is logged once and the server keeps serving."""

    async def main() -> None:
        handler = Recorder()
        with capture_logs() as logs:
            async with serving({"extbill": handler}) as server:
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(headers()[:200])
                writer.write_eof()
                await closed_within(reader, 1.0)
                writer.close()
                assert len(await fake_asterisk(server.port, headers())) == 2
        (error,) = events(logs, "agi.protocol_error")
        assert "header" in str(error["error"])
        assert len(handler.requests) == 1

    asyncio.run(main())


def test_close_half_way_through_reply() -> None:
    """A peer closing mid-reply raises ChannelClosed in the handler and the server keeps serving."""

    async def main() -> None:
        handler = Recorder()
        with capture_logs() as logs:
            async with serving({"extbill": handler}) as server:
                await fake_asterisk(server.port, headers(), lambda _c: b"200 res", close_after=True)
                await wait_for(lambda: bool(handler.errors))
                assert len(await fake_asterisk(server.port, headers())) == 2
        assert isinstance(handler.errors[0], ChannelClosed)
        assert len(events(logs, "agi.channel_closed")) == 1

    asyncio.run(main())


def test_route_not_served() -> None:
    """An unknown agi_network_script gets one log line and a closed socket, no command."""

    async def main() -> None:
        handler = Recorder()
        with capture_logs() as logs:
            async with serving({"extbill": handler}) as server:
                commands = await fake_asterisk(server.port, headers(script="admin/drop?x=1"))
        assert commands == [] and handler.requests == []
        (unknown,) = events(logs, "agi.route_unknown")
        assert unknown["route"] == "admin/drop"

    asyncio.run(main())


def test_hostile_callerid_reaches_asterisk_unchanged() -> None:
    """A caller id full of quotes, backslashes, semicolons and SQL round-trips as one argument."""

    async def main() -> None:
        handler = Recorder()
        async with serving({"extbill": handler}) as server:
            commands = await fake_asterisk(server.port, headers(callerid=EVIL_CALLERID))
        assert handler.requests[0].callerid == EVIL_CALLERID
        assert parse_command_args(commands[0]) == ["SET", "VARIABLE", "EXTBILL_CALLER", EVIL_CALLERID]
        assert parse_command_args(commands[1]) == ["SET", "VARIABLE", "EXTBILL_RESULT", "OK"]

    asyncio.run(main())


def test_hangup_between_command_and_reply_over_tcp() -> None:
    """HANGUP before a reply sets hung_up and the reply still matches its command."""
    seen: list[object] = []

    async def handler(channel: AgiChannel) -> None:
        reply = await channel.command("GET VARIABLE DNID")
        seen.extend([reply.data, channel.hung_up])
        try:
            await channel.set_variable("EXTBILL_RESULT", "OK")
        except CommandFailed as exc:
            seen.append(exc.reply.code)

    def answer(command: str) -> bytes:
        if command.startswith("GET"):
            return b"HANGUP\n200 result=1 (4008001234)\n"
        return b"511 Command Not Permitted on a dead channel or intercept routine\n"

    async def main() -> None:
        async with serving({"extbill": handler}) as server:
            assert len(await fake_asterisk(server.port, headers(), answer)) == 2
        assert seen == ["4008001234", True, 511]

    asyncio.run(main())


def test_connection_cap_refuses_excess_cleanly() -> None:
    """Past connections_max a connection is accepted, closed at once with one log line, and capacity returns."""
    limits = ServerLimits(header_timeout_s=3.0, reply_timeout_s=0.3, handler_timeout_s=1.0, connections_max=3)

    async def main() -> None:
        handler = Recorder()
        with capture_logs() as logs:
            async with serving({"extbill": handler}, limits) as server:
                held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
                await wait_for(lambda: server.connections == 3)
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(headers())
                t0 = time.perf_counter()
                assert await closed_within(reader, 2.0) == b""
                assert time.perf_counter() - t0 < limits.header_timeout_s / 2  # refused, not timed out
                writer.close()
                for _, w in held:
                    w.close()
                await wait_for(lambda: server.connections == 0)
                assert len(await fake_asterisk(server.port, headers())) == 2
        assert len(events(logs, "agi.refused")) == 1
        assert len(handler.requests) == 1

    asyncio.run(main())


def test_stop_lets_call_in_progress_finish() -> None:
    """stop() stops accepting but waits for a running handler to finish its commands."""

    finished: list[bool] = []

    async def slow(channel: AgiChannel) -> None:
        await channel.set_variable("A", "1")
        await asyncio.sleep(0.3)
        await channel.set_variable("EXTBILL_RESULT", "OK")
        finished.append(True)

    async def main() -> None:
        server = AgiServer({"extbill": slow}, "127.0.0.1", 0, limits=FAST)
        await server.start()
        first = asyncio.Event()

        def answer(command: str) -> bytes:
            first.set()
            return b"200 result=1\n"

        with capture_logs():
            call = asyncio.create_task(fake_asterisk(server.port, headers(), answer))
            await first.wait()
            await server.stop()
            assert finished == [True]
            assert (await asyncio.wait_for(call, 1.0))[-1] == 'SET VARIABLE EXTBILL_RESULT "OK"'
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", server.port)

    asyncio.run(main())


def test_stop_cancels_handler_past_drain_timeout() -> None:
    """A handler still running after drain_timeout_s is cancelled and its socket closed."""
    limits = ServerLimits(
        header_timeout_s=0.3, reply_timeout_s=0.3, handler_timeout_s=30.0, drain_timeout_s=0.2
    )

    async def stuck(channel: AgiChannel) -> None:
        await channel.set_variable("A", "1")
        await asyncio.sleep(30)

    async def main() -> None:
        server = AgiServer({"extbill": stuck}, "127.0.0.1", 0, limits=limits)
        await server.start()
        with capture_logs() as logs:
            call = asyncio.create_task(fake_asterisk(server.port, headers()))
            await wait_for(lambda: server.connections == 1 and server.calls == 1)
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            await server.stop()
            assert time.perf_counter() - t0 < 5.0  # the drain timeout cut it, not the 30 s handler
            assert await asyncio.wait_for(call, 1.0) == ['SET VARIABLE A "1"']
        assert len(events(logs, "agi.drain_timeout")) == 1
        assert len(events(logs, "agi.handler_cancelled")) == 1

    asyncio.run(main())


def test_sigterm_drains_and_stops() -> None:
    """SIGTERM stops accepting and drains a running call before wait_stopped() returns."""
    finished: list[bool] = []

    async def slow(channel: AgiChannel) -> None:
        await asyncio.sleep(0.2)
        await channel.set_variable("EXTBILL_RESULT", "OK")
        finished.append(True)

    async def main() -> None:
        server = AgiServer({"extbill": slow}, "127.0.0.1", 0, limits=FAST)
        await server.start()
        install_signal_handlers(asyncio.get_running_loop(), server)
        with capture_logs() as logs:
            call = asyncio.create_task(fake_asterisk(server.port, headers()))
            await wait_for(lambda: server.calls == 1)
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(server.wait_stopped(), 2.0)
            assert finished == [True]
            assert await asyncio.wait_for(call, 1.0) == ['SET VARIABLE EXTBILL_RESULT "OK"']
        assert events(logs, "agi.signal")[0]["signal"] == "SIGTERM"

    asyncio.run(main())  # closing the loop removes its signal handlers


def test_handler_exception_logs_once_and_closes() -> None:
    """A handler error is one log line with the error; the socket closes with no result set."""

    async def broken(channel: AgiChannel) -> None:
        raise ValueError("ledger unavailable")

    async def main() -> None:
        with capture_logs() as logs:
            async with serving({"extbill": broken}) as server:
                commands = await fake_asterisk(server.port, headers())
        assert commands == []
        (error,) = [e for e in logs if e["log_level"] == "error"]
        assert error["event"] == "agi.handler_error" and "ledger unavailable" in str(error["error"])

    asyncio.run(main())


def test_handler_timeout_closes_socket() -> None:
    """A handler running past handler_timeout_s is cut off and the socket closed."""
    limits = ServerLimits(header_timeout_s=0.3, reply_timeout_s=0.3, handler_timeout_s=0.2)

    async def slow(channel: AgiChannel) -> None:
        await asyncio.sleep(5)

    async def main() -> None:
        with capture_logs() as logs:
            async with serving({"extbill": slow}, limits) as server:
                t0 = time.perf_counter()
                assert await fake_asterisk(server.port, headers()) == []
                assert time.perf_counter() - t0 < 3.0  # cut at the timeout, not after the 5 s handler
        assert len(events(logs, "agi.handler_timeout")) == 1

    asyncio.run(main())


def test_reply_timeout_closes_socket() -> None:
    """A command whose reply never comes raises ReplyTimeout and the socket is closed."""

    async def main() -> None:
        handler = Recorder()
        with capture_logs() as logs:
            async with serving({"extbill": handler}) as server:
                t0 = time.perf_counter()
                commands = await fake_asterisk(server.port, headers(), lambda _c: None)
                assert time.perf_counter() - t0 < FAST.reply_timeout_s + 0.4
        assert len(commands) == 1
        assert isinstance(handler.errors[0], TimeoutError)
        assert len(events(logs, "agi.reply_timeout")) == 1

    asyncio.run(main())


def test_many_concurrent_calls() -> None:
    """Two hundred simultaneous calls all complete and every socket is closed."""

    async def main() -> None:
        handler = Recorder()
        limits = ServerLimits(header_timeout_s=2.0, connections_max=400)
        with capture_logs():
            async with serving({"extbill": handler}, limits) as server:
                results = await asyncio.gather(
                    *(fake_asterisk(server.port, headers(uniqueid=f"1732612345.{i}")) for i in range(200))
                )
                await wait_for(lambda: server.connections == 0)
        assert all(len(r) == 2 for r in results)
        assert len({r.uniqueid for r in handler.requests}) == 200

    asyncio.run(main())
