"""The process-per-call reference (the A2Billing model): one Python process per call.

Asterisk starts this script for every call (AGI over stdin/stdout) with pyst2's
`asterisk.agi.AGI`. It does the same check and reservation as the server, with the
same transaction functions on the same kind of database, over plain sqlite3:
lookup, collect the key (GET DATA), route (decide + reserve), set the variables.

    python -m fastagi.dev.bench.ppc_agi <database>     (the AGI environment on stdin)
"""

from __future__ import annotations

import sys


def main() -> int:
    import logging  # noqa: PLC0415
    import sqlite3  # noqa: PLC0415

    import structlog  # noqa: PLC0415
    from asterisk.agi import AGI  # noqa: PLC0415

    # stdout is the AGI channel: nothing else may print there.
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    from fastagi.store import tx_calls  # noqa: PLC0415
    from fastagi.store.sqlite import _configure, _in_read, _in_transaction  # noqa: PLC0415

    agi = AGI()
    env = agi.env
    number = env.get("agi_arg_1", "")
    uniqueid = env.get("agi_uniqueid", "")
    caller = "".join(c for c in env.get("agi_callerid", "") if c.isdigit() or c == "+") or "unknown"
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    _configure(conn)
    d = _in_read(conn, tx_calls.lookup, (number,))
    agi.set_variable("EXTBILL_LANG", d.lang)
    if d.action != "collect":
        agi.set_variable("EXTBILL_PROMPT", d.prompt or "service-unavailable")
        agi.set_variable("EXTBILL_RESULT", "prompt")
        return 0
    digits = agi.get_data("extbill/welcome", d.digit_timeout_s * 1000, d.max_digits)
    d = _in_transaction(
        conn, tx_calls.route, (uniqueid, number, digits, 1, caller, env.get("agi_channel"), None)
    )
    if d.action == "dial":
        for name, value in (
            ("EXTBILL_ID", uniqueid),
            ("EXTBILL_DEST", d.dest or ""),
            ("EXTBILL_LIMIT_MS", str(d.limit_ms)),
            ("EXTBILL_WARN_MS", str(d.warning_ms)),
            ("EXTBILL_RESULT", "dial"),
        ):
            agi.set_variable(name, value)
    else:
        agi.set_variable("EXTBILL_PROMPT", d.prompt or "service-unavailable")
        agi.set_variable("EXTBILL_RESULT", d.action if d.action == "retry" else "prompt")
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
