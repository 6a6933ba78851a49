"""A FastAGI client that speaks as Asterisk does: doctor's round-trip probe, the benchmark
and the protocol tests.

It sends the agi_* header block res_agi sends, answers every command `200 result=1`,
records SET VARIABLE, and returns when the server closes the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastagi.core.agi import parse_command_args
from fastagi.runtime.config import AGI_PORT

PEER_TIMEOUT_S = 10.0  # a server that neither answers nor closes within this fails the call


def mset_into(variables: dict[str, str], text: str) -> None:
    """MSet's argument "A=1,B=2" into `variables`, split as app MSet splits it."""
    for pair in text.split(","):
        name, _, value = pair.partition("=")
        variables[name] = value


@dataclass
class AgiResult:
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)


def header_block(
    script: str,
    args: list[str],
    *,
    uniqueid: str,
    callerid: str = "13800138000",
    extension: str = "4008001234",
    channel: str | None = None,
    port: int = AGI_PORT,
    linkedid: str | None = None,
) -> bytes:
    headers = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://127.0.0.1:{port}/{script}",
        "agi_channel": channel or f"Local/{extension}@extbill-ivr-00000001;2",
        "agi_language": "en",
        "agi_type": "Local",
        "agi_uniqueid": uniqueid,
        "agi_version": "22.0.0",
        "agi_callerid": callerid,
        "agi_calleridname": "unknown",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "extbill-ivr",
        "agi_extension": extension,
        "agi_priority": "7",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140000000",
    }
    if linkedid:
        headers["agi_linkedid"] = linkedid
    for i, arg in enumerate(args, 1):
        headers[f"agi_arg_{i}"] = arg
    return ("".join(f"{k}: {v}\n" for k, v in headers.items()) + "\n").encode()


async def agi_call(
    host: str,
    port: int,
    script: str,
    args: list[str],
    *,
    uniqueid: str,
    callerid: str = "13800138000",
    hangup_after_headers: bool = False,
    timeout_s: float = PEER_TIMEOUT_S,
) -> AgiResult:
    """One FastAGI request as Asterisk makes it; the variables the server set."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    result = AgiResult()
    try:
        extension = args[0] if args and args[0].startswith("400") else "4008001234"
        writer.write(
            header_block(script, args, uniqueid=uniqueid, callerid=callerid, extension=extension, port=port)
        )
        if hangup_after_headers:
            writer.write(b"HANGUP\n")
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout_s)
            if not line:
                return result
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            result.commands.append(text)
            parts = parse_command_args(text)
            if len(parts) >= 4 and parts[0].upper() == "SET" and parts[1].upper() == "VARIABLE":
                result.variables[parts[2]] = parts[3]
            elif len(parts) >= 3 and parts[0].upper() == "EXEC" and parts[1].upper() == "MSET":
                mset_into(result.variables, parts[2])
            writer.write(
                b"511 Command Not Permitted on a dead channel or intercept routine\n"
                if hangup_after_headers
                else b"200 result=0\n"
                if parts[:1] == ["EXEC"]
                else b"200 result=1\n"
            )
            await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
