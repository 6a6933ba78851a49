"""`extbill doctor`: check the database, the FastAGI server, the AMI login and the Asterisk
configuration; print a checklist with the fix for each problem; exit 1 if anything fails."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from fastagi.admin import doctor
from fastagi.admin.cli_types import seconds_up_to
from fastagi.runtime import config


async def cmd_doctor(a: argparse.Namespace) -> int:
    try:
        settings = config.load(a.config, overrides={"db": a.db})
    except config.ConfigError as exc:
        findings = [
            doctor.Finding(
                doctor.FAIL,
                "settings",
                f"settings: {exc}",
                "correct that setting in the --config file, the EXTBILL_* "
                "variable or the flag it names; then run doctor again",
            )
        ]
    else:
        etc = None if a.no_asterisk_files else a.asterisk_etc
        findings = await doctor.run_checks(settings, etc, timeout_s=a.timeout)
    if a.json:
        print(
            json.dumps(
                {"ok": not doctor.failed(findings), "checks": [f.as_dict() for f in findings]},
                ensure_ascii=False,
                indent=2,
            )
        )
    else:
        print(doctor.render(findings))
    return 1 if doctor.failed(findings) else 0


_timeout = seconds_up_to(60)


def add_parsers(subs: Any, sub: Callable) -> None:
    p = sub(
        subs,
        "doctor",
        cmd_doctor,
        "check the database, the FastAGI server, the AMI login and "
        "the Asterisk configuration; print what to fix (exit 1 if anything fails)",
    )
    p.set_defaults(own_store=True)  # opens the database read-only itself; never creates it
    p.add_argument(
        "--asterisk-etc",
        default=doctor.DEFAULT_ETC,
        metavar="DIR",
        help=f"Asterisk's configuration directory (default {doctor.DEFAULT_ETC})",
    )
    p.add_argument(
        "--no-asterisk-files",
        action="store_true",
        help="skip the checks of Asterisk's files and prompts (run where Asterisk is not, "
        "e.g. in the extbill container)",
    )
    p.add_argument("--config", help="extbill's TOML settings file (as given to extbill serve)")
    p.add_argument("--json", action="store_true", help="the findings as JSON")
    p.add_argument(
        "--timeout",
        type=_timeout,
        default=5.0,
        metavar="S",
        help="network timeout of the FastAGI and AMI checks, s (default 5)",
    )
