"""serve's log lines as an operator's log pipeline reads them: one JSON object per line."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import structlog

from fastagi.runtime.log import configure, json_line

SCRIPT = textwrap.dedent(
    """
    import sys, structlog
    from fastagi.runtime.log import configure
    print("before the logs", file=sys.stderr)
    configure("json", "info")
    log = structlog.get_logger("extbill.call")
    structlog.contextvars.bind_contextvars(uniqueid="1732650000.7", number="4008001234")
    log.info("call.decision", action="dial", dest="北京分部", reserve=2**70, by_kind={1: 2})
    log.debug("call.hidden")
    try:
        1 / 0
    except ZeroDivisionError:
        log.error("call.failed", exc_info=True)
    print("after the logs", file=sys.stderr)
    """
)


def test_each_line_is_one_json_object_with_its_calls_context_in_order():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60, check=True)
    lines = done.stderr.decode("utf-8").splitlines()
    assert lines[0] == "before the logs" and lines[-1] == "after the logs"
    decision, failed = (json.loads(line) for line in lines[1:-1])
    assert decision["event"] == "call.decision" and decision["level"] == "info"
    assert decision["uniqueid"] == "1732650000.7" and decision["number"] == "4008001234"
    assert decision["dest"] == "北京分部" and "北京分部" in lines[1]  # UTF-8 as written, not \\u escapes
    assert decision["reserve"] == 2**70  # past orjson's 64 bits: made by json instead
    assert decision["by_kind"] == {"1": 2}
    assert decision["timestamp"].endswith("Z")
    assert failed["event"] == "call.failed" and "ZeroDivisionError" in failed["exception"]


def test_a_value_json_cannot_encode_is_written_as_its_repr():
    line = json.loads(json_line({"event": "x", "what": object(), "n": 3}, default=repr))
    assert line["what"].startswith("<object object at") and line["n"] == 3


def test_a_text_only_stream_still_gets_json_lines():
    out = io.StringIO()
    configure("json", "info", out)
    try:
        structlog.get_logger().info("serve.listening", port=4573, where="上海")
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue())
    assert (line["event"], line["port"], line["where"]) == ("serve.listening", 4573, "上海")
