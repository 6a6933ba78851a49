"""Sans-IO FastAGI session: transcripts as Asterisk 22's res_agi writes them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastagi.core.agi import (
    COMMAND_BYTES_MAX,
    HEADER_BYTES_MAX,
    HEADER_LINES_MAX,
    LINE_BYTES_MAX,
    AgiSession,
    ConnectionClosed,
    Hangup,
    HeadersComplete,
    LocalProtocolError,
    RemoteProtocolError,
    Reply,
    State,
    parse_command_args,
    quote_arg,
    set_variable_command,
)

# setup_env() order: agi_network first (launch_netscript), agi_request always
# before the channel fields, agi_arg_N last, then one empty line.
HEADERS = (
    b"agi_network: yes\n"
    b"agi_network_script: extbill?v=2&trunk=ct%20gz&v=3\n"
    b"agi_request: agi://127.0.0.1:4573/extbill?v=2&trunk=ct%20gz&v=3\n"
    b"agi_channel: PJSIP/trunk-ct-0000002a\n"
    b"agi_language: zh\n"
    b"agi_type: PJSIP\n"
    b"agi_uniqueid: 1732612345.42\n"
    b"agi_version: 22.1.0\n"
    b"agi_callerid: 13800138000\n"
    b"agi_calleridname: \xe5\xbc\xa0\xe4\xb8\x89\n"
    b"agi_callingpres: 0\n"
    b"agi_callingani2: 0\n"
    b"agi_callington: 0\n"
    b"agi_callingtns: 0\n"
    b"agi_dnid: 4008001234\n"
    b"agi_rdnis: unknown\n"
    b"agi_context: ivr-400\n"
    b"agi_extension: 4008001234\n"
    b"agi_priority: 7\n"
    b"agi_enhanced: 0.0\n"
    b"agi_accountcode: \n"
    b"agi_threadid: 140245830092480\n"
    b"agi_arg_1: 4008001234\n"
    b"agi_arg_2: 8021\n"
    b"agi_arg_3: \n"
    b"\n"
)

USAGE_520 = (
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b" Usage: SET VARIABLE <variablename> <value>\n"
    b"\n"
    b"Sets a variable to the current channel.\n"
    b"520 End of proper usage.\n"
)

# A whole call: phases of inbound bytes; before phase i (i >= 1) we send COMMANDS[i-1].
PHASES = [
    HEADERS,
    b"200 result=1\n",  # SET VARIABLE
    b"HANGUP\n200 result=1 (4008001234)\n",  # HANGUP between command and reply
    USAGE_520,  # bad syntax
    b"511 Command Not Permitted on a dead channel or intercept routine\n",
    b"200 result=1 (a) b=c)\n",  # GET VARIABLE whose value holds ") b=c"
    b"HANGUP\n",  # run_agi's second HANGUP as it ends; then it closes
]
COMMANDS: list[str | None] = [
    'SET VARIABLE EXTBILL_RESULT "OK"',
    "GET VARIABLE DNID",
    "SET VARIABLE",
    "STREAM FILE extbill/balance-low #",
    "GET VARIABLE ODD",
    None,  # nothing sent: the trailing HANGUP arrives while idle
]


def drive(phases: list[bytes], commands: list[str | None], cuts: set[int]) -> list[object]:
    """Feed phases (sending commands between them), cutting chunks at global offsets."""
    session = AgiSession()
    events: list[object] = []
    offset = 0
    for i, phase in enumerate(phases):
        if i > 0 and (command := commands[i - 1]) is not None:
            session.send_command(command)
        local = sorted(c - offset for c in cuts if offset < c < offset + len(phase))
        start = 0
        for cut in [*local, len(phase)]:
            events += session.receive_data(phase[start:cut])
            start = cut
        offset += len(phase)
    events += session.eof()
    return events


def expected_events() -> list[object]:
    return drive(PHASES, COMMANDS, set())


def headers_done() -> AgiSession:
    session = AgiSession()
    session.receive_data(HEADERS)
    return session


def reply_to(line: bytes, session: AgiSession | None = None) -> Reply:
    session = session or headers_done()
    session.send_command("NOOP")
    (event,) = session.receive_data(line)
    assert isinstance(event, Reply)
    return event


# --- headers ----------------------------------------------------------------
def test_header_block_gives_typed_request() -> None:
    """A full Asterisk 22 header block yields one request with every field typed out."""
    session = AgiSession()
    (event,) = session.receive_data(HEADERS)
    assert isinstance(event, HeadersComplete)
    req = event.request
    assert req.script == "extbill"
    assert req.query == {"v": "2", "trunk": "ct gz"}
    assert req.args == ["4008001234", "8021", ""]
    assert req.uniqueid == "1732612345.42"
    assert req.channel == "PJSIP/trunk-ct-0000002a"
    assert req.callerid == "13800138000"
    assert req.calleridname == "张三"
    assert req.language == "zh"
    assert req.extension == "4008001234"
    assert req.context == "ivr-400"
    assert req.headers["agi_accountcode"] == ""
    assert len(req.headers) == 25
    assert session.state is State.IDLE


def test_script_leading_slash_and_arg_gap() -> None:
    """A leading slash is dropped from the route and args stop at the first missing index."""
    block = b"agi_network: yes\nagi_network_script: /extbill/v1\nagi_arg_1: a\nagi_arg_3: c\n\n"
    (event,) = AgiSession().receive_data(block)
    assert event.request.script == "extbill/v1"
    assert event.request.query == {}
    assert event.request.args == ["a"]


def test_missing_network_script_is_empty_route() -> None:
    """Asterisk omits agi_network_script for agi://host with no path; the route is empty."""
    (event,) = AgiSession().receive_data(b"agi_network: yes\nagi_request: agi://h\n\n")
    assert event.request.script == ""
    assert event.request.uniqueid == ""


def test_crlf_line_endings_give_same_request() -> None:
    """Lines ending in \\r\\n parse exactly like lines ending in \\n."""
    plain = AgiSession().receive_data(HEADERS)
    crlf = AgiSession().receive_data(HEADERS.replace(b"\n", b"\r\n"))
    assert crlf == plain


def test_non_utf8_bytes_are_replaced() -> None:
    """Invalid UTF-8 in a header value becomes U+FFFD instead of an error."""
    block = HEADERS.replace(b"agi_calleridname: \xe5\xbc\xa0\xe4\xb8\x89", b"agi_calleridname: \xff\xfeX\xe5")
    (event,) = AgiSession().receive_data(block)
    assert event.request.calleridname == "\ufffd\ufffdX\ufffd"


# --- transcripts split everywhere ---------------------------------------------
def test_expected_transcript_events() -> None:
    """The recorded call yields headers, replies, one Hangup per call and a clean close."""
    events = expected_events()
    kinds = [type(e).__name__ for e in events]
    assert kinds == [
        "HeadersComplete",
        "Reply",
        "Hangup",
        "Reply",
        "Reply",
        "Reply",
        "Reply",
        "ConnectionClosed",
    ]
    replies = [e for e in events if isinstance(e, Reply)]
    assert [r.code for r in replies] == [200, 200, 520, 511, 200]
    assert replies[1].data == "4008001234"
    assert replies[4].data == "a) b=c"


def test_split_at_every_byte_position_gives_same_events() -> None:
    """Cutting the inbound stream into two chunks at any byte offset changes no event."""
    expected = expected_events()
    total = sum(map(len, PHASES))
    for cut in range(total + 1):
        assert drive(PHASES, COMMANDS, {cut}) == expected, cut


def test_byte_by_byte_gives_same_events() -> None:
    """Feeding one byte at a time gives the same events as whole phases."""
    total = sum(map(len, PHASES))
    assert drive(PHASES, COMMANDS, set(range(total + 1))) == expected_events()


def test_crlf_transcript_split_everywhere_gives_same_events() -> None:
    """With \\r\\n endings, a cut between \\r and \\n changes no event."""
    phases = [p.replace(b"\n", b"\r\n") for p in PHASES]
    expected = drive(phases, COMMANDS, set())
    assert [type(e) for e in expected] == [type(e) for e in expected_events()]
    for cut in range(sum(map(len, phases)) + 1):
        assert drive(phases, COMMANDS, {cut}) == expected, cut


# --- replies -------------------------------------------------------------------
def test_hangup_between_command_and_reply_does_not_desync() -> None:
    """HANGUP arriving while a command waits is an event, and the next line is its reply."""
    session = headers_done()
    session.send_command("GET VARIABLE X")
    events = session.receive_data(b"HANGUP\n")
    assert events == [Hangup()]
    assert session.pending and session.hung_up
    (reply,) = session.receive_data(b"200 result=1 (x)\n")
    assert reply.data == "x"
    session.send_command("NOOP")
    assert (
        session.receive_data(b"511 Command Not Permitted on a dead channel or intercept routine\n")[0].code
        == 511
    )


def test_hangup_while_idle_is_event_not_reply() -> None:
    """HANGUP with no command pending is an event, not a protocol error."""
    session = headers_done()
    assert session.receive_data(b"HANGUP\n") == [Hangup()]
    assert session.state is State.IDLE


def test_second_hangup_gives_no_second_event() -> None:
    """run_agi writes HANGUP again when it ends; only the first one is an event."""
    session = headers_done()
    assert session.receive_data(b"HANGUP\nHANGUP\n") == [Hangup()]


def test_520_multiline_is_one_reply() -> None:
    """A 520- usage block up to `520 End of proper usage.` is one Reply with the usage text."""
    session = headers_done()
    session.send_command("SET VARIABLE")
    (reply,) = session.receive_data(USAGE_520)
    assert reply.code == 520 and reply.result is None
    assert (
        reply.data == " Usage: SET VARIABLE <variablename> <value>\n\nSets a variable to the current channel."
    )
    assert reply.raw.splitlines()[0].startswith("520-") and reply.raw.endswith("520 End of proper usage.")
    assert session.state is State.IDLE


def test_520_single_line() -> None:
    """The one-line 520 (usage not available) is a final reply."""
    reply = reply_to(b"520 Invalid command syntax.  Proper usage not available.\n")
    assert reply.code == 520 and reply.data == "Invalid command syntax.  Proper usage not available."


def test_510_and_503() -> None:
    """510 and 503 are final replies with their message text."""
    r510 = reply_to(b"510 Invalid or unknown command\n")
    assert (r510.code, r510.result, r510.data) == (510, None, "Invalid or unknown command")
    r503 = reply_to(b"503 result=-2 Memory allocation failure\n")
    assert (r503.code, r503.result, r503.data) == (503, -2, "Memory allocation failure")


def test_100_trying_waits_for_final_reply() -> None:
    """EXEC Gosub's provisional `100 result=0 Trying...` does not complete the command."""
    session = headers_done()
    session.send_command("EXEC Gosub sub,s,1")
    assert session.receive_data(b"100 result=0 Trying...\n") == []
    assert session.pending
    (reply,) = session.receive_data(b"200 result=0 Gosub complete\n")
    assert (reply.code, reply.result, reply.data) == (200, 0, "Gosub complete")


@pytest.mark.parametrize(
    ("line", "result", "data", "endpos", "value"),
    [
        (b"200 result=0\n", 0, None, None, "0"),
        (b"200 result=-1 endpos=0\n", -1, None, 0, "-1"),
        (b"200 result=0 endpos=24807\n", 0, None, 24807, "0"),
        (b"200 result=49 (digit) digit=1 endpos=8640\n", 49, "digit", 8640, "49"),
        (b"200 result= (timeout)\n", None, "timeout", None, ""),
        (b"200 result=0123 (timeout)\n", 123, "timeout", None, "0123"),
        (b"200 result=1 (it's (nested) ok)\n", 1, "it's (nested) ok", None, "1"),
        (b"200 result=1 ()\n", 1, "", None, "1"),
        (b"200 result=12#\n", None, None, None, "12#"),
    ],
)
def test_200_reply_fields(
    line: bytes, result: int | None, data: str | None, endpos: int | None, value: str
) -> None:
    """`200 result=N [(data)] [endpos=N]` is split into typed fields, raw kept."""
    reply = reply_to(line)
    assert (reply.code, reply.result, reply.data, reply.endpos, reply.value) == (
        200,
        result,
        data,
        endpos,
        value,
    )
    assert reply.raw == line.decode().rstrip("\n")
    assert reply.ok


# --- remote errors -------------------------------------------------------------
def test_header_block_over_bytes_max() -> None:
    """A header block over HEADER_BYTES_MAX is refused even with few, legal-length lines."""
    line = b"agi_x%03d: " + b"v" * 1000 + b"\n"
    lines = [line.replace(b"%03d", b"%03d" % i) for i in range(HEADER_BYTES_MAX // 1000 + 2)]
    assert len(lines) < HEADER_LINES_MAX
    session = AgiSession()
    with pytest.raises(RemoteProtocolError, match="bytes"):
        for chunk in lines:
            session.receive_data(chunk)
    assert session.state is State.ERROR


def test_header_block_over_lines_max() -> None:
    """More than HEADER_LINES_MAX header lines is refused."""
    block = b"".join(b"agi_arg_%d: x\n" % i for i in range(1, HEADER_LINES_MAX + 2))
    with pytest.raises(RemoteProtocolError, match="lines"):
        AgiSession().receive_data(block)


def test_exactly_lines_max_is_accepted() -> None:
    """HEADER_LINES_MAX header lines are still accepted."""
    block = b"".join(b"agi_arg_%d: x\n" % i for i in range(1, HEADER_LINES_MAX + 1)) + b"\n"
    (event,) = AgiSession().receive_data(block)
    assert len(event.request.args) == HEADER_LINES_MAX


def test_line_without_newline_is_not_buffered_forever() -> None:
    """A partial line reaching LINE_BYTES_MAX fails at once instead of buffering."""
    session = AgiSession()
    session.receive_data(b"agi_network: yes\nagi_x: ")
    with pytest.raises(RemoteProtocolError, match="line"):
        session.receive_data(b"y" * LINE_BYTES_MAX)


def test_long_reply_line_is_refused() -> None:
    """A reply line over LINE_BYTES_MAX is refused."""
    session = headers_done()
    session.send_command("GET VARIABLE X")
    with pytest.raises(RemoteProtocolError):
        session.receive_data(b"200 result=1 (" + b"x" * LINE_BYTES_MAX + b")\n")


@pytest.mark.parametrize(
    "block",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"agi_network yes\n\n",
        b"network: yes\n\n",
        b"agi_: x\n\n",
        b"agi_bad name: x\n\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n",
        b"HANGUP\n",
        b"agi_network: yes\nagi_network: no\n\n",
    ],
)
def test_garbage_headers_are_remote_errors(block: bytes) -> None:
    """Anything that is not `agi_name: value` lines (HTTP, TLS, duplicates) is a RemoteProtocolError."""
    with pytest.raises(RemoteProtocolError):
        AgiSession().receive_data(block)


def test_reply_without_pending_command() -> None:
    """A reply line while no command is pending is the peer's error, not a reply."""
    with pytest.raises(RemoteProtocolError, match="no command pending"):
        headers_done().receive_data(b"200 result=1\n")


@pytest.mark.parametrize("line", [b"302 moved\n", b"200result=1\n", b"2x0 result=1\n", b"200 ok\n", b"ok\n"])
def test_unknown_or_malformed_reply(line: bytes) -> None:
    """Unknown reply codes and malformed reply lines are RemoteProtocolErrors."""
    session = headers_done()
    session.send_command("NOOP")
    with pytest.raises(RemoteProtocolError):
        session.receive_data(line)


def test_failed_session_stays_failed() -> None:
    """After a RemoteProtocolError every further input raises it again."""
    session = AgiSession()
    with pytest.raises(RemoteProtocolError):
        session.receive_data(b"junk\n")
    with pytest.raises(RemoteProtocolError):
        session.receive_data(HEADERS)
    assert session.eof() == []


# --- eof -----------------------------------------------------------------------
def test_eof_mid_headers() -> None:
    """Closing before the blank line is a RemoteProtocolError, not a hang."""
    session = AgiSession()
    session.receive_data(HEADERS[:100])
    with pytest.raises(RemoteProtocolError, match="header"):
        session.eof()


def test_eof_with_nothing_sent() -> None:
    """A connect-and-close (port scan) is a RemoteProtocolError at eof."""
    with pytest.raises(RemoteProtocolError):
        AgiSession().eof()


def test_eof_mid_reply() -> None:
    """Closing while a command waits for its reply is a RemoteProtocolError."""
    session = headers_done()
    session.send_command("NOOP")
    session.receive_data(b"200 res")
    with pytest.raises(RemoteProtocolError):
        session.eof()


def test_eof_mid_520_block() -> None:
    """Closing inside a 520- usage block is a RemoteProtocolError."""
    session = headers_done()
    session.send_command("SET VARIABLE")
    session.receive_data(USAGE_520[:60])
    with pytest.raises(RemoteProtocolError):
        session.eof()


def test_clean_eof_between_commands() -> None:
    """Closing with no command pending gives ConnectionClosed; later data is our misuse."""
    session = headers_done()
    assert session.eof() == [ConnectionClosed()]
    assert session.eof() == []
    with pytest.raises(LocalProtocolError):
        session.receive_data(b"x")


# --- local errors ------------------------------------------------------------
def test_command_before_headers_complete() -> None:
    """Sending a command before the header block ends is a LocalProtocolError."""
    session = AgiSession()
    session.receive_data(HEADERS[:-1])
    with pytest.raises(LocalProtocolError):
        session.send_command("NOOP")


def test_command_while_pending() -> None:
    """A second command before the first one's reply is a LocalProtocolError."""
    session = headers_done()
    assert session.send_command("NOOP") == b"NOOP\n"
    with pytest.raises(LocalProtocolError):
        session.send_command("NOOP")


@pytest.mark.parametrize("text", ["NOOP\n", "SET VARIABLE A 1\rNOOP", "NOOP\x00", "", "   "])
def test_command_with_line_break_or_empty(text: str) -> None:
    """A command containing \\n, \\r or NUL, or an empty one, is refused before it is sent."""
    session = headers_done()
    with pytest.raises(LocalProtocolError):
        session.send_command(text)
    assert session.state is State.IDLE


def test_command_over_asterisk_buffer() -> None:
    """A command longer than res_agi's read buffer is refused (it would be split in two)."""
    session = headers_done()
    with pytest.raises(LocalProtocolError):
        session.send_command("VERBOSE " + "x" * COMMAND_BYTES_MAX)
    assert len(session.send_command("V" * (COMMAND_BYTES_MAX - 1))) == COMMAND_BYTES_MAX


# --- quoting -------------------------------------------------------------------
def test_quote_arg_escapes_quote_and_backslash() -> None:
    """quote_arg wraps in double quotes and escapes `"` and `\\` only."""
    assert quote_arg('a "b" \\c;') == '"a \\"b\\" \\\\c;"'
    assert quote_arg("") == '""'
    with pytest.raises(LocalProtocolError):
        quote_arg("a\nb")


def test_set_variable_rejects_bad_names() -> None:
    """A variable name with spaces or quotes is refused; function names are allowed."""
    assert set_variable_command("CDR(userfield)", "x") == 'SET VARIABLE CDR(userfield) "x"'
    for name in ["", "A B", 'A"', "A\\"]:
        with pytest.raises(LocalProtocolError):
            set_variable_command(name, "x")


def test_parse_command_args_matches_res_agi() -> None:
    """parse_command_args follows res_agi's parse_args on quotes, escapes and blanks."""
    assert parse_command_args('SET VARIABLE X "a b"') == ["SET", "VARIABLE", "X", "a b"]
    assert parse_command_args('A  "" \\"q\\" a\\ b\t"x\\\\y"') == ["A", "", '"q"', "a b", "x\\y"]
    assert parse_command_args('a"b c"d') == ["ab cd"]


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(blacklist_characters="\r\n\0", blacklist_categories=("Cs",))))
def test_set_variable_round_trips_any_value(value: str) -> None:
    """Any value without line breaks reaches Asterisk's argument parser unchanged."""
    assert parse_command_args(set_variable_command("X", value)) == ["SET", "VARIABLE", "X", value]


# --- fuzz ----------------------------------------------------------------------
@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=8))
def test_arbitrary_bytes_raise_only_remote_errors(data: bytes, cuts: list[int]) -> None:
    """Random input, cut anywhere, yields events or RemoteProtocolError, nothing else."""
    session = AgiSession()
    start = 0
    try:
        for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
            session.receive_data(data[start:cut])
            start = cut
        session.eof()
    except RemoteProtocolError:
        pass


def outcome(data: bytes, cuts: list[int]) -> object:
    """Events from feeding data cut at the given offsets, or the error type it raised."""
    session = AgiSession()
    events: list[object] = []
    start = 0
    try:
        for cut in [*sorted(c for c in cuts if c < len(data)), len(data)]:
            events += session.receive_data(data[start:cut])
            start = cut
    except RemoteProtocolError:
        return RemoteProtocolError
    return events


HEADER_PIECES = [
    b"agi_network: yes\n",
    b"agi_network_script: extbill?a=1\n",
    b"agi_uniqueid: 1.2\r\n",
    b"agi_arg_1: x y\n",
    b"agi_callerid:\n",
    b"agi_calleridname: \xff\"'\n",
    b"agi_arg_1: dup\n",
    b"agi_bad name: x\n",
    b"agi_x\n",
    b"agi_: x\n",
    b"HANGUP\n",
    b"\n",
    b"\r\n",
    b"\r",
    b"agi_long: " + b"v" * 3000 + b"\n",
]


@settings(max_examples=250, deadline=None)
@given(st.lists(st.sampled_from(HEADER_PIECES), max_size=12), st.lists(st.integers(0, 12000), max_size=6))
def test_header_block_same_outcome_however_cut(pieces: list[bytes], cuts: list[int]) -> None:
    """A header block gives the same events or the same error whole, cut anywhere, or byte by byte."""
    data = b"".join(pieces)
    whole = outcome(data, [])
    assert outcome(data, cuts) == whole
    assert outcome(data, list(range(len(data)))) == whole


@settings(max_examples=250, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"HANGUP\n",
                b"200 result=1\n",
                b"520-x\n",
                b"520 End\n",
                b"100 r\n",
                b"\r\n",
                b"511 x\n",
                b"(\n",
            ]
        )
        | st.binary(max_size=40),
        max_size=12,
    ),
    st.booleans(),
)
def test_arbitrary_replies_raise_only_remote_errors(chunks: list[bytes], pending: bool) -> None:
    """After the headers, any reply bytes yield events or RemoteProtocolError, nothing else."""
    session = headers_done()
    if pending:
        session.send_command("NOOP")
    try:
        for chunk in chunks:
            for event in session.receive_data(chunk):
                assert isinstance(event, (Reply, Hangup))
        session.eof()
    except RemoteProtocolError:
        pass
