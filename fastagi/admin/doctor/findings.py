"""Doctor's findings: one per check, OK / WARN / FAIL, each WARN or FAIL with its fix; the
checklist rendering; and the fixes shared by several checks."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fastagi.asterisk.conf import INCLUDE_LEVELS_MAX, Conf, ConfProblem

OK, WARN, FAIL = "OK", "WARN", "FAIL"

DEFAULT_ETC = "/etc/asterisk"
PROJECT = Path(__file__).resolve().parents[3]  # the source tree, for exact fix commands
RELOAD_DIALPLAN = 'asterisk -rx "dialplan reload"'
RELOAD_MANAGER = 'asterisk -rx "manager reload"'


@dataclass(frozen=True)
class Finding:
    status: str  # OK | WARN | FAIL
    check: str  # database, fastagi, ami, extensions, manager, modules, prompts, ...
    message: str  # what was checked and what was found
    fix: str | None = None  # for WARN/FAIL: exactly what to do

    def as_dict(self) -> dict[str, str | None]:
        return {"status": self.status, "check": self.check, "message": self.message, "fix": self.fix}


def failed(findings: Iterable[Finding]) -> bool:
    return any(f.status == FAIL for f in findings)


def render(findings: Iterable[Finding]) -> str:
    """The checklist: one line per check, the fix indented under each WARN/FAIL."""
    lines, counts = [], {OK: 0, WARN: 0, FAIL: 0}
    for f in findings:
        counts[f.status] += 1
        lines.append(f"{f.status:<4}  {f.message}")
        if f.fix:
            fix_lines = f.fix.splitlines()
            lines.append(f"      fix: {fix_lines[0]}")
            lines.extend(f"           {x}" for x in fix_lines[1:])
    lines.append(f"doctor: {counts[OK]} OK, {counts[WARN]} WARN, {counts[FAIL]} FAIL")
    return "\n".join(lines)


def shipped_path(*parts: str) -> str | None:
    """A file of this extbill's source tree (dialplan/, sounds/), if it is installed from one."""
    p = PROJECT.joinpath(*parts)
    return str(p) if p.exists() else None


def problem_findings(check: str, conf: Conf, etc_dir: str) -> list[Finding]:
    """The files Asterisk would refuse (or doctor could not read), as FAIL findings."""
    out = []
    for path in conf.unreadable:
        out.append(
            Finding(
                FAIL,
                check,
                f"{conf.name}: cannot read {path}",
                "run doctor as root or as a member of the asterisk group "
                "(e.g. sudo -u asterisk extbill doctor ...)",
            )
        )
    then = {"manager": RELOAD_MANAGER, "extensions": RELOAD_DIALPLAN}.get(check, "restart Asterisk")
    for p in conf.problems:
        if p.fatal:
            out.append(Finding(FAIL, check, f"{p.where}: {p.message}", _problem_fix(p, etc_dir, then)))
    return out


def _problem_fix(p: ConfProblem, etc_dir: str, then: str) -> str:
    if p.kind == "missing":
        path = p.target if os.path.isabs(p.target) else os.path.join(etc_dir, p.target)
        return f"create {path} or remove the #include line at {p.where}; then: {then}"
    if p.kind == "loop":
        return f"remove the #include line at {p.where}, so that no file includes itself again; then: {then}"
    if p.kind == "depth":
        return (
            f"include the files of the chain from one file instead of each from the one before "
            f"(at most {INCLUDE_LEVELS_MAX} levels); then: {then}"
        )
    return f"correct the section header at {p.where}"
