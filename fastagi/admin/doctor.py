"""`extbill doctor`: is this installation ready to take calls? Findings, each with its fix.

Two layers:

* pure checks: Asterisk config text in, findings out (`parse_conf`, `check_extensions`,
  `check_manager`, `check_modules`, `check_prompts`); they get file contents through a
  reader function and never touch the disk or the network themselves;
* the I/O shell (`run_checks`): reads the admin's files, opens the database read-only,
  makes one real FastAGI `lookup` round trip and one AMI login, and runs the pure checks.

Asterisk behaviour the checks rely on (verified against Asterisk 22 from Debian sid):
a missing `#include` target (even a glob that matches nothing) or a `[name](+)` with no
earlier `[name]` makes Asterisk refuse the WHOLE file; manager.conf uses only the first
`[general]` section (a second one is silently ignored) unless it is `[general](+)`;
extensions.conf merges every `[globals]` section, the last definition winning.
"""

from __future__ import annotations

import asyncio
import errno
import glob
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from asterisk.config import Config as _Pyst2Config
from asterisk.config import ParseError

from fastagi.asterisk.agi_client import agi_call
from fastagi.runtime.config import ConfigError, Settings, parse_hostport
from fastagi.store.sqlite import SCHEMA_VERSION

OK, WARN, FAIL = "OK", "WARN", "FAIL"

DEFAULT_ETC = "/etc/asterisk"
DEFAULT_DATADIR = "/usr/share/asterisk"  # Asterisk's built-in astdatadir (Debian's too)
PROJECT = Path(__file__).resolve().parents[2]  # the source tree, for exact fix commands

# The prompts the dialplan and the server play, as sounds/<lang>/extbill/<name>.wav.
PROMPTS = (
    "welcome",
    "invalid-extension",
    "ext-in-arrears",
    "number-suspended",
    "balance-warning",
    "limit-reached",
    "not-in-service",
    "service-unavailable",
)
# calls.py answers an unknown 400 number with not-in-service in zh, whatever else is in use.
ALWAYS_LANGS = ("zh",)

EXTBILL_CONTEXTS = ("extbill-ivr", "extbill-answered", "extbill-hangup", "extbill-now")
IVR_CONTEXT = "extbill-ivr"

# dialplan/modules.conf, split by what happens without them (a test keeps the two in step):
# without these no call gets through the IVR, or gets through without its time limit.
REQUIRED_MODULES = (
    "pbx_config",
    "res_agi",
    "res_speech",
    "app_stack",
    "app_dial",
    "app_read",
    "app_playback",
    "app_exec",
    "app_verbose",
    "func_channel",
    "func_strings",
    "func_global",
    "func_callerid",
    "bridge_builtin_interval_features",
    "bridge_builtin_features",
    "bridge_simple",
    "format_wav",
)
# without these some calls or features degrade (codecs, other bridges, AMI Cdr events).
RECOMMENDED_MODULES = (
    "func_cdr",
    "bridge_softmix",
    "bridge_native_rtp",
    "bridge_holding",
    "format_pcm",
    "format_gsm",
    "codec_ulaw",
    "codec_alaw",
    "codec_gsm",
    "res_timing_timerfd",
    "res_musiconhold",
    "cdr_manager",
)

AMI_READ_NEEDED = ("system", "call")
AMI_WRITE_ANY = ("reporting", "system")  # either lets CoreShowChannels through
EXTBILL_TABLES = ("accounts", "transfers", "plans", "numbers", "extensions", "calls")
PROBE_NUMBER = "4000000000"  # looked up when the database has no number: not-in-service
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


# ---- Asterisk config files: pyst2's parser plus the syntax it lacks -----------------------
#
# pyst2 0.5.1's asterisk.config.Config splits lines into [categories] and `name = value`
# items, and reads `name => value` (so `exten =>` and ` same => n,...` are fine). It lacks
# what real configs use, so the text is prepared before pyst2 sees it:
#   * `#include` / `#tryinclude`: pyst2 raises ParseError ("Item must be in name = value
#     pairs") - Debian's stock manager.conf has `#include "manager.d/*.conf"`. Expanded
#     here, relative to the config directory (as Asterisk does), globs included;
#   * `[name](!)`, `[name](+)`, `[name](template)`: pyst2 raises "Missing '[' or ']'" -
#     Debian's stock asterisk.conf starts `[directories](!)`. Reduced to `[name]` here, the
#     options applied after parsing (templates skipped, (+) appended, inheritance copied);
#   * `\;` (a literal semicolon) and `;-- block comments --;`: pyst2 cuts every line at
#     its first `;`. Comments are removed here; `\;` travels through pyst2 as a private
#     character and becomes `;` again in the value;
#   * a line without `=`: pyst2 raises and gives up on the file; Asterisk warns and skips
#     the line, so it is skipped here too;
#   * pyst2 only opens files itself; the prepared lines are handed to it instead.

Reader = Callable[[str], "list[tuple[str, str]]"]
"""reader(pattern) -> [(name, text)] of the files a config path or glob names; [] if none.
Raises ConfUnreadable for a file that exists but cannot be read."""

_ESCAPED_SEMICOLON = "\ue000"
_HEADER = re.compile(r"^\[([^\]]+)\]\s*(?:\(([^)]*)\))?")
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*(.*)$")
_INCLUDE_DEPTH_MAX = 16


class ConfUnreadable(OSError):
    pass


@dataclass
class ConfProblem:
    where: str  # file:line
    message: str
    fatal: bool  # Asterisk refuses the whole file
    target: str = ""  # a missing #include's target path


@dataclass
class ConfSection:
    name: str
    template: bool
    where: str
    items: list[tuple[str, str, str]] = field(default_factory=list)  # (name, value, file:line)

    def values(self, key: str) -> list[str]:
        return [v for n, v, _ in self.items if n.lower() == key.lower()]

    def value(self, key: str, *, first: bool = False) -> str | None:
        vals = self.values(key)
        return (vals[0] if first else vals[-1]) if vals else None


@dataclass
class Conf:
    name: str
    sections: list[ConfSection] = field(default_factory=list)
    includes: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (where, target, files)
    problems: list[ConfProblem] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def first(self, name: str) -> ConfSection | None:
        """The section Asterisk's lookups use: the first one of that name that is no template."""
        return next((s for s in self.sections if s.name.lower() == name.lower() and not s.template), None)

    def all(self, name: str) -> list[ConfSection]:
        return [s for s in self.sections if s.name.lower() == name.lower() and not s.template]


class _PreparedConfig(_Pyst2Config):
    """pyst2's Config over lines prepared here (its own load() can only open a file)."""

    def __init__(self, lines: list[str]) -> None:
        self._prepared = lines
        super().__init__("<prepared>")

    def load(self) -> None:
        self.raw_lines = self._prepared


def _strip_comments(line: str, depth: int) -> tuple[str, int]:
    """Remove `;` comments and `;-- --;` block comments (depth carries across lines)."""
    out, i, n = [], 0, len(line)
    while i < n:
        if depth:
            if line.startswith(";--", i):
                depth, i = depth + 1, i + 3
            elif line.startswith("--;", i):
                depth, i = depth - 1, i + 3
            else:
                i += 1
            continue
        c = line[i]
        if c == "\\" and line.startswith(";", i + 1):
            out.append(_ESCAPED_SEMICOLON)
            i += 2
        elif line.startswith(";--", i):
            depth, i = 1, i + 3
        elif c == ";":
            break
        else:
            out.append(c)
            i += 1
    return "".join(out), depth


def _unquote(target: str) -> str:
    target = target.strip()
    if len(target) >= 2 and (target[0], target[-1]) in (('"', '"'), ("<", ">")):
        return target[1:-1].strip()
    return target


def parse_conf(filename: str, read: Reader) -> Conf | None:
    """Parse an Asterisk config file as Asterisk reads it; None when it does not exist."""
    conf = Conf(filename)
    lines: list[str] = []
    origins: list[str] = []
    header_opts: dict[int, list[str]] = {}  # prepared line number -> (options)

    def emit(text: str, where: str) -> None:
        lines.append(text + "\n")
        origins.append(where)

    def expand(name: str, text: str, stack: tuple[str, ...]) -> None:
        depth = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            where = f"{name}:{lineno}"
            stripped, depth = _strip_comments(raw, depth)
            s = stripped.strip()
            if not s:
                continue
            d = _DIRECTIVE.match(s)
            if d:
                _directive(d.group(1).lower(), _unquote(d.group(2)), where, stack)
                continue
            h = _HEADER.match(s)
            if h:
                emit(f"[{h.group(1).strip()}]", where)
                header_opts[len(lines)] = [o.strip() for o in (h.group(2) or "").split(",") if o.strip()]
            elif s.startswith("["):
                conf.problems.append(ConfProblem(where, f"malformed section header {s!r}", fatal=False))
            elif "=" in s:
                emit(s, where)
            else:
                conf.problems.append(
                    ConfProblem(where, f"{s!r} is not `name = value`; Asterisk skips it", fatal=False)
                )

    def _directive(kind: str, target: str, where: str, stack: tuple[str, ...]) -> None:
        if kind == "exec":
            conf.problems.append(
                ConfProblem(
                    where, f"#exec {target}: not run by doctor; its output is not checked", fatal=False
                )
            )
            return
        if kind not in ("include", "tryinclude"):
            conf.problems.append(ConfProblem(where, f"unknown directive #{kind}", fatal=False))
            return
        try:
            found = read(target)
        except ConfUnreadable as exc:
            conf.unreadable.append(str(exc))
            conf.includes.append((where, target, []))
            return
        conf.includes.append((where, target, [n for n, _ in found]))
        if not found:
            if kind == "include":
                conf.problems.append(
                    ConfProblem(
                        where,
                        f'#include "{target}": no such file, so Asterisk refuses to load {filename} at all',
                        fatal=True,
                        target=target,
                    )
                )
            return
        for name, text in found:
            if name in stack or len(stack) >= _INCLUDE_DEPTH_MAX:
                conf.problems.append(
                    ConfProblem(where, f'#include "{target}" loops back to {name}', fatal=True)
                )
                continue
            expand(name, text, stack + (name,))

    try:
        top = read(filename)
    except ConfUnreadable as exc:
        conf.unreadable.append(str(exc))
        return conf
    if not top:
        return None
    for name, text in top:
        expand(name, text, (name,))

    try:
        cfg = _PreparedConfig(lines)
    except ParseError as exc:  # not expected: the lines were prepared for it
        conf.problems.append(
            ConfProblem(
                origins[exc.args[0] - 1] if exc.args else filename, f"cannot parse: {exc}", fatal=True
            )
        )
        return conf
    for cat in cfg.categories:
        opts = header_opts.get(cat.number, [])
        items = [
            (it.name.strip(), it.value.strip().replace(_ESCAPED_SEMICOLON, ";"), origins[it.number - 1])
            for it in cat.items
        ]
        where = origins[cat.number - 1]
        if "+" in opts:
            base = conf.first(cat.name)
            if base is None:
                conf.problems.append(
                    ConfProblem(
                        where,
                        f"[{cat.name}](+) adds to a section that does not exist before it, so "
                        f"Asterisk refuses to load {filename} at all",
                        fatal=True,
                    )
                )
            else:
                base.items.extend(items)
            continue
        inherited: list[tuple[str, str, str]] = []
        for opt in opts:
            if opt == "!":
                continue
            parent = next((s for s in conf.sections if s.name.lower() == opt.lower()), None)
            if parent is None:
                conf.problems.append(
                    ConfProblem(
                        where,
                        f"[{cat.name}]({opt}) inherits from a section that does not exist, so "
                        f"Asterisk refuses to load {filename} at all",
                        fatal=True,
                    )
                )
            else:
                inherited.extend(parent.items)
        conf.sections.append(ConfSection(cat.name, "!" in opts, where, inherited + items))
    return conf


def ast_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "y", "t", "1", "on")


def _csv(value: str | None) -> list[str]:
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def _problem_findings(check: str, conf: Conf, etc_dir: str) -> list[Finding]:
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
    for p in conf.problems:
        if not p.fatal:
            continue
        if p.target:
            path = p.target if os.path.isabs(p.target) else os.path.join(etc_dir, p.target)
            then = {"manager": RELOAD_MANAGER, "extensions": RELOAD_DIALPLAN}.get(check, "restart Asterisk")
            fix = f"create {path} or remove the #include line at {p.where}; then: {then}"
        else:
            fix = f"correct the section header at {p.where}"
        out.append(Finding(FAIL, check, f"{p.where}: {p.message}", fix))
    return out


# ---- extensions.conf ----------------------------------------------------------------------


def dialplan_globals(conf: Conf | None) -> dict[str, str]:
    """The globals as pbx_config sets them: every [globals] section in order, last one wins."""
    values: dict[str, str] = {}
    for section in conf.all("globals") if conf else []:
        for name, value, _ in section.items:
            values[name] = value
    return values


def _shipped_path(*parts: str) -> str | None:
    p = PROJECT.joinpath(*parts)
    return str(p) if p.exists() else None


def check_extensions(
    conf: Conf | None, etc_dir: str, *, shipped: Conf | None = None, trunk_confs: Iterable[Conf | None] = ()
) -> list[Finding]:
    src = _shipped_path("dialplan", "extensions.conf") or "dialplan/extensions.conf"
    install = (
        f"install -D -m 644 {src} {etc_dir}/extbill/extensions.conf\n"
        f'add this line to {etc_dir}/extensions.conf: #include "extbill/extensions.conf"\n'
        f"then: {RELOAD_DIALPLAN}"
    )
    if conf is None:
        return [
            Finding(
                FAIL,
                "extensions",
                f"extensions.conf: not found in {etc_dir}",
                f"point --asterisk-etc at Asterisk's config directory, or create "
                f"{etc_dir}/extensions.conf; then:\n{install}",
            )
        ]
    out = _problem_findings("extensions", conf, etc_dir)
    if conf.unreadable and not conf.sections:
        return out
    present = {c: conf.first(c) for c in EXTBILL_CONTEXTS}
    missing = [c for c, s in present.items() if s is None]
    if len(missing) == len(EXTBILL_CONTEXTS):
        out.append(
            Finding(
                FAIL,
                "extensions",
                "extensions.conf: the extbill dialplan is not included "
                f"(no [{IVR_CONTEXT}] context in extensions.conf or its #includes)",
                install,
            )
        )
        return out
    ivr = present[IVR_CONTEXT]
    installed_file = (ivr or next(s for s in present.values() if s)).where.rsplit(":", 1)[0]
    if missing:
        out.append(
            Finding(
                FAIL,
                "extensions",
                f"extensions.conf: the extbill dialplan is incomplete "
                f"(missing {', '.join('[' + m + ']' for m in missing)})",
                f"install -m 644 {src} {os.path.join(etc_dir, installed_file)}\nthen: {RELOAD_DIALPLAN}",
            )
        )
    else:
        out.append(
            Finding(
                OK,
                "extensions",
                f"extensions.conf: extbill dialplan present ([{IVR_CONTEXT}] from {installed_file})",
            )
        )
    if shipped is not None and not missing:
        differ = [c for c in EXTBILL_CONTEXTS if _context_body(present[c]) != _context_body(shipped.first(c))]
        if differ:
            out.append(
                Finding(
                    WARN,
                    "extensions",
                    f"extensions.conf: {installed_file} differs from this "
                    f"extbill's dialplan ({', '.join('[' + c + ']' for c in differ)})",
                    f"install -m 644 {src} {os.path.join(etc_dir, installed_file)}  "
                    f"(keep your overrides in extensions.conf, after the #include)\n"
                    f"then: {RELOAD_DIALPLAN}",
                )
            )
    out.extend(_check_globals(conf, etc_dir))
    out.append(_check_trunk(conf, [c for c in trunk_confs if c is not None], etc_dir))
    return out


def _context_body(section: ConfSection | None) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v, _ in section.items] if section else []


def _check_globals(conf: Conf, etc_dir: str) -> list[Finding]:
    g = dialplan_globals(conf)
    out = []
    agi = g.get("EXTBILL_AGI", "")
    fix_where = (
        f"in {etc_dir}/extensions.conf, AFTER the #include line, add:\n"
        "[globals](+)\nEXTBILL_AGI=<extbill server host>:4573\n"
        f"then: {RELOAD_DIALPLAN}"
    )
    if not agi:
        out.append(
            Finding(
                FAIL,
                "extensions",
                "extensions.conf: global EXTBILL_AGI is not set, so every call fails closed (agi:///lookup)",
                fix_where,
            )
        )
    elif "${" in agi:
        out.append(
            Finding(
                WARN,
                "extensions",
                f"extensions.conf: global EXTBILL_AGI={agi} is an expression; "
                "doctor does not check the address it gives",
                "make sure it expands to the extbill server's host:port: "
                'asterisk -rx "dialplan show globals"',
            )
        )
    elif agi_address(agi) is None:
        out.append(
            Finding(
                FAIL, "extensions", f"extensions.conf: global EXTBILL_AGI={agi!r} is not host:port", fix_where
            )
        )
    else:
        out.append(
            Finding(OK, "extensions", f"extensions.conf: calls go to the extbill server at EXTBILL_AGI={agi}")
        )
    lang = g.get("EXTBILL_DEFAULT_LANG", "")
    if not re.fullmatch(r"[A-Za-z_]{2,16}", lang):
        out.append(
            Finding(
                WARN,
                "extensions",
                f"extensions.conf: global EXTBILL_DEFAULT_LANG={lang!r} "
                "is not a language, so service-unavailable plays in the channel's language",
                f"in {etc_dir}/extensions.conf, after the #include: "
                f"[globals](+) then EXTBILL_DEFAULT_LANG=zh; then: {RELOAD_DIALPLAN}",
            )
        )
    return out


def _check_trunk(conf: Conf, trunk_confs: list[Conf], etc_dir: str) -> Finding:
    """Something outside extbill's own contexts must send calls into extbill-ivr."""
    for section in conf.sections:
        if section.template or section.name.lower() in EXTBILL_CONTEXTS:
            continue
        for name, value, where in section.items:
            if IVR_CONTEXT in value.lower() and name.lower() in ("exten", "same", "include"):
                return Finding(
                    OK,
                    "extensions",
                    f"extensions.conf: [{section.name}] sends calls into {IVR_CONTEXT} ({where})",
                )
    for other in trunk_confs:
        for section in other.sections:
            if any(n.lower() == "context" and v.lower() == IVR_CONTEXT for n, v, _ in section.items):
                return Finding(
                    OK, "extensions", f"{other.name}: [{section.name}] sends calls into {IVR_CONTEXT}"
                )
    return Finding(
        WARN,
        "extensions",
        f"extensions.conf: no context sends calls into {IVR_CONTEXT}",
        "in your carrier trunk's context add:\n"
        f"exten => _400XXXXXXX,1,Goto({IVR_CONTEXT},${{EXTEN}},1)\n"
        f"then: {RELOAD_DIALPLAN}",
    )


def agi_address(value: str) -> tuple[str, int] | None:
    """EXTBILL_AGI as res_agi reads it: host or host:port (4573 when omitted)."""
    value = value.strip()
    if not value or "/" in value or "$" in value:
        return None
    if ":" not in value or (value.startswith("[") and value.endswith("]")):
        return value.strip("[]"), 4573
    try:
        return parse_hostport(value)
    except ConfigError:
        return None


# ---- manager.conf --------------------------------------------------------------------------


def check_manager(conf: Conf | None, etc_dir: str, settings: Settings) -> list[Finding]:
    src = _shipped_path("dialplan", "manager.conf") or "dialplan/manager.conf"
    user = settings.ami_user
    if conf is None:
        return [
            Finding(
                FAIL,
                "manager",
                f"manager.conf: not found in {etc_dir}, so the AMI is off",
                f"install -m 640 -g asterisk {src} {etc_dir}/manager.conf, set the [{user}] "
                f"secret, then: {RELOAD_MANAGER}",
            )
        ]
    out = _problem_findings("manager", conf, etc_dir)
    if conf.unreadable and not conf.sections:
        return out
    general = conf.first("general")
    in_general = (
        f"in the FIRST [general] section of {etc_dir}/manager.conf (Asterisk ignores a "
        "second [general]; use [general](+) to add to it)"
    )
    if general is None:
        out.append(
            Finding(
                FAIL,
                "manager",
                "manager.conf: no [general] section, so the AMI is off",
                f"merge the [general] section of {src} into {etc_dir}/manager.conf; then: {RELOAD_MANAGER}",
            )
        )
        return out + _check_ami_user(conf, etc_dir, settings, src)
    if not ast_true(general.value("enabled")):
        out.append(
            Finding(
                FAIL,
                "manager",
                "manager.conf: [general] enabled is not yes, so the AMI is off",
                f"set `enabled = yes` {in_general}; then: {RELOAD_MANAGER}",
            )
        )
    port = general.value("port") or "5038"
    if port.strip() != str(settings.ami_port):
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: AMI listens on port {port}, extbill's ami_port is {settings.ami_port}",
                f"set ami_port = {port} in extbill's config file (or EXTBILL_AMI_PORT={port})",
            )
        )
    ts = general.value("timestampevents")
    if not ast_true(ts):
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: [general] timestampevents is "
                f"{'not set' if ts is None else repr(ts)}; extbill rates calls by event time",
                f"set `timestampevents = yes` {in_general}; then: {RELOAD_MANAGER}",
            )
        )
    else:
        out.append(Finding(OK, "manager", "manager.conf: [general] timestampevents = yes"))
    cv = general.value("channelvars")
    if "EXTBILL_ID" not in _csv(cv):
        now = "not set" if cv is None else f"= {cv}"
        want = ",".join(_csv(cv) + ["EXTBILL_ID"])
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: [general] channelvars {now}, without "
                "EXTBILL_ID AMI events cannot be tied to calls",
                f"set `channelvars = {want}` {in_general}; then: {RELOAD_MANAGER}",
            )
        )
    else:
        out.append(Finding(OK, "manager", f"manager.conf: [general] channelvars = {cv}"))
    return out + _check_ami_user(conf, etc_dir, settings, src)


def _check_ami_user(conf: Conf, etc_dir: str, settings: Settings, src: str) -> list[Finding]:
    user = settings.ami_user
    section = conf.first(user)
    if section is None or user.lower() == "general":
        return [
            Finding(
                FAIL,
                "manager",
                f"manager.conf: no [{user}] AMI user (extbill's ami_user)",
                f"add to {etc_dir}/manager.conf (as in {src}):\n[{user}]\n"
                "secret = <the same as extbill's ami_secret>\n"
                "deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n"
                f"read = {','.join(AMI_READ_NEEDED)}\nwrite = reporting\n"
                f"then: {RELOAD_MANAGER}",
            )
        ]
    out = []
    secret = section.value("secret")
    at = f"in [{user}] of {etc_dir}/manager.conf"
    if not secret:
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: [{user}] has no secret, so it cannot log in",
                f"set `secret = <extbill's ami_secret>` {at}; then: {RELOAD_MANAGER}",
            )
        )
    elif settings.ami_secret and secret != settings.ami_secret:
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: the [{user}] secret is not extbill's ami_secret",
                f"make them the same: `secret = ...` {at} and ami_secret in extbill's "
                f"config (or EXTBILL_AMI_SECRET); then: {RELOAD_MANAGER}",
            )
        )
    read = {p.lower() for p in _csv(section.value("read"))}
    lacking = [] if "all" in read else [p for p in AMI_READ_NEEDED if p not in read]
    write = {p.lower() for p in _csv(section.value("write"))}
    if lacking:
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: [{user}] cannot read the {', '.join(lacking)} events extbill rates from",
                f"set `read = {','.join(AMI_READ_NEEDED)}` {at}; then: {RELOAD_MANAGER}",
            )
        )
    if not write & {"all", *AMI_WRITE_ANY}:
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: [{user}] may not run CoreShowChannels (needs "
                "write = reporting), so calls cut off while extbill was away are not found",
                f"set `write = reporting` {at}; then: {RELOAD_MANAGER}",
            )
        )
    if not out:
        out.append(
            Finding(
                OK,
                "manager",
                f"manager.conf: AMI user [{user}] with secret, read "
                f"{section.value('read')}, write {section.value('write')}",
            )
        )
    return out


# ---- modules.conf --------------------------------------------------------------------------


def _module(name: str) -> str:
    name = name.strip().lower()
    return name[:-3] if name.endswith(".so") else name


def check_modules(conf: Conf | None, etc_dir: str) -> list[Finding]:
    restart = 'then restart Asterisk (or: asterisk -rx "module load <name>.so" for each)'
    if conf is None:
        return [
            Finding(
                FAIL,
                "modules",
                f"modules.conf: not found in {etc_dir}, so Asterisk loads no modules",
                f"create {etc_dir}/modules.conf with:\n[modules]\nautoload = yes\n{restart}",
            )
        ]
    out = _problem_findings("modules", conf, etc_dir)
    section = conf.first("modules")
    if section is None:
        if not conf.unreadable:
            out.append(
                Finding(
                    FAIL,
                    "modules",
                    "modules.conf: no [modules] section, so Asterisk loads no modules",
                    f"add to {etc_dir}/modules.conf:\n[modules]\nautoload = yes\n{restart}",
                )
            )
        return out
    auto_value = section.value("autoload", first=True)
    autoload = ast_true(auto_value)
    auto_text = f"autoload = {auto_value}" if auto_value is not None else "autoload not set (so off)"
    listed = {
        _module(v) for k in ("load", "preload", "require", "preload-require") for v in section.values(k)
    }
    noload = {_module(v) for v in section.values("noload")}
    at = f"{etc_dir}/modules.conf [modules]"
    refused = [m for m in REQUIRED_MODULES + RECOMMENDED_MODULES if m in noload]
    if refused:
        out.append(
            Finding(
                FAIL if set(refused) & set(REQUIRED_MODULES) else WARN,
                "modules",
                f"modules.conf: noload keeps out {', '.join(m + '.so' for m in refused)}",
                f"remove these lines from {at}:\n"
                + "\n".join(f"noload => {m}.so" for m in refused)
                + f"\n{restart}",
            )
        )
    if autoload:
        if not refused:
            out.append(
                Finding(
                    OK,
                    "modules",
                    f"modules.conf: {auto_text}, none of the "
                    f"{len(REQUIRED_MODULES) + len(RECOMMENDED_MODULES)} modules extbill "
                    "uses is in noload",
                )
            )
        return out
    for needed, status in ((REQUIRED_MODULES, FAIL), (RECOMMENDED_MODULES, WARN)):
        absent = [m for m in needed if m not in listed and m not in noload]
        if absent:
            what = "needs" if status == FAIL else "recommends"
            out.append(
                Finding(
                    status,
                    "modules",
                    f"modules.conf: {auto_text}, and these modules extbill "
                    f"{what} are not loaded: {', '.join(m + '.so' for m in absent)}",
                    f"add to {at}:\n" + "\n".join(f"load => {m}.so" for m in absent) + f"\n{restart}",
                )
            )
    if not any(f.check == "modules" and f.status != OK for f in out):
        out.append(
            Finding(
                OK,
                "modules",
                f"modules.conf: {auto_text}, all "
                f"{len(REQUIRED_MODULES) + len(RECOMMENDED_MODULES)} modules extbill uses "
                "are loaded",
            )
        )
    return out


# ---- prompts -------------------------------------------------------------------------------


def astdatadir(asterisk_conf: Conf | None) -> str:
    """astdatadir from asterisk.conf [directories] (a template `(!)` does not count)."""
    section = asterisk_conf.first("directories") if asterisk_conf else None
    value = section.value("astdatadir") if section else None
    return value or DEFAULT_DATADIR


def check_prompts(datadir: str, langs: Mapping[str, str], present: Mapping[str, set[str]]) -> list[Finding]:
    """langs: language -> why it is in use; present: language -> prompt names found there."""
    out = []
    for lang in sorted(langs):
        where = os.path.join(datadir, "sounds", lang, "extbill")
        missing = [p for p in PROMPTS if p not in present.get(lang, set())]
        if not missing:
            out.append(
                Finding(OK, "prompts", f"prompts ({lang}, {langs[lang]}): all {len(PROMPTS)} in {where}")
            )
            continue
        src = _shipped_path("sounds", lang, "extbill")
        fix = (
            f"install -D -m 644 -t {where} {src}/*.wav"
            if src
            else f"record {', '.join(m + '.wav' for m in missing)} (8 kHz mono 16-bit WAV) into {where}; "
            "see sounds/texts.tsv and sounds/make-sounds in the extbill source"
        )
        out.append(
            Finding(
                FAIL,
                "prompts",
                f"prompts ({lang}, {langs[lang]}): missing "
                f"{', '.join(m + '.wav' for m in missing)} in {where}",
                fix,
            )
        )
    return out


# ---- the I/O shell -------------------------------------------------------------------------

CONF_BYTES_MAX = 4 * 1024 * 1024


def etc_reader(etc_dir: str) -> Reader:
    """Files as Asterisk finds them: relative paths under the config directory, globs allowed."""

    def read(pattern: str) -> list[tuple[str, str]]:
        path = pattern if os.path.isabs(pattern) else os.path.join(etc_dir, pattern)
        names = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        out = []
        for name in names:
            if not os.path.isfile(name):
                continue
            shown = os.path.relpath(name, etc_dir) if not os.path.isabs(pattern) else name
            try:
                with open(name, "rb") as fh:
                    out.append((shown, fh.read(CONF_BYTES_MAX).decode("utf-8", "replace")))
            except OSError as exc:
                raise ConfUnreadable(f"{name} ({exc.strerror})") from None
        return out

    return read


@dataclass
class DbFacts:
    langs: set[str] = field(default_factory=set)
    number: str | None = None


def check_database(path: str) -> tuple[Finding, DbFacts]:
    """Opens the database read-only; never creates or migrates it."""
    facts = DbFacts()
    init = f"extbill db init --db {path}"
    if not os.path.exists(path):
        return Finding(
            FAIL,
            "database",
            f"database: no file at {path}",
            f"{init}   (or start extbill serve, which creates it; or pass --db / "
            "EXTBILL_DB / db in --config)",
        ), facts
    if os.path.isdir(path):
        return Finding(
            FAIL,
            "database",
            f"database: {path} is a directory",
            "pass the database file with --db (or EXTBILL_DB / db in --config)",
        ), facts
    try:
        conn = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error as exc:
        return Finding(
            FAIL,
            "database",
            f"database: cannot open {path}: {exc}",
            f"check the file's permissions: the user running doctor must read {path} and its directory",
        ), facts
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if version == 0 and not tables:
            return Finding(FAIL, "database", f"database: {path} is empty (no extbill schema)", init), facts
        if version == 0 or not set(EXTBILL_TABLES) <= tables:
            return Finding(
                FAIL,
                "database",
                f"database: {path} is an SQLite database, but not an extbill one",
                "pass extbill's database with --db (or EXTBILL_DB / db in --config)",
            ), facts
        if version < SCHEMA_VERSION:
            return Finding(
                FAIL,
                "database",
                f"database: {path} has schema version {version}, this extbill needs {SCHEMA_VERSION}",
                f"{init}   (migrates it)",
            ), facts
        if version > SCHEMA_VERSION:
            return Finding(
                FAIL,
                "database",
                f"database: {path} has schema version {version}, newer than this extbill ({SCHEMA_VERSION})",
                "upgrade extbill to the version that wrote this database",
            ), facts
        rows = conn.execute("SELECT number, lang FROM numbers ORDER BY id").fetchall()
    except sqlite3.Error as exc:
        return Finding(
            FAIL,
            "database",
            f"database: {path} cannot be read: {exc}",
            "pass extbill's database with --db (or EXTBILL_DB / db in --config)",
        ), facts
    finally:
        conn.close()
    facts.langs = {lang for _, lang in rows}
    facts.number = rows[0][0] if rows else None
    if not rows:
        return Finding(
            WARN,
            "database",
            f"database: {path} is an extbill database (schema version {version}) with no 400 numbers yet",
            "extbill number add 400XXXXXXX --name NAME --plan PLAN (see extbill number add --help)",
        ), facts
    return Finding(
        OK,
        "database",
        f"database: {path} is an extbill database (schema version {version}, "
        f"{len(rows)} number{'s' if len(rows) != 1 else ''}, languages "
        f"{', '.join(sorted(facts.langs))})",
    ), facts


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed early"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _connect_host(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1", "*": "127.0.0.1"}.get(host, host)


async def check_fastagi(
    label: str, host: str, port: int, number: str | None, *, timeout_s: float = 5.0, fix_down: str
) -> Finding:
    """One real `lookup` request, as Asterisk makes it; the server must answer EXTBILL_RESULT."""
    host = _connect_host(host)
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
    from panoramisk.message import Message  # noqa: PLC0415

    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    msg = Message.from_line(raw.decode("utf-8", "replace").strip())
    return {k.lower(): (v if isinstance(v, str) else ", ".join(v)) for k, v in (msg or {}).items()}


async def _ami_action(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    action_id: str,
    fields: Mapping[str, str],
    timeout_s: float,
) -> dict[str, str]:
    if any(c in k + v for k, v in fields.items() for c in "\r\n"):
        raise ValueError("CR/LF in an AMI header")
    writer.write(
        ("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + f"ActionID: {action_id}\r\n\r\n").encode()
    )
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
        reader, writer = await asyncio.wait_for(asyncio.open_connection(s.ami_host, s.ami_port), timeout_s)
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
        banner = await asyncio.wait_for(reader.readline(), timeout_s)
        if not banner.startswith(b"Asterisk Call Manager/"):
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
        reply = await _ami_action(
            reader, writer, "doctor-channels", {"Action": "CoreShowChannels"}, timeout_s
        )
        if reply.get("response", "").lower() != "success":
            return Finding(
                FAIL,
                "ami",
                f"AMI: {user!r} logs in, but CoreShowChannels is refused "
                f"({reply.get('message', 'no message')})",
                f"set `write = reporting` in [{user}] of manager.conf; {reload_}",
            )
        try:
            await _ami_action(reader, writer, "doctor-logoff", {"Action": "Logoff"}, 1.0)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        return Finding(OK, "ami", f"AMI: {user!r} logs in at {where} and may run CoreShowChannels")
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


def _sounds_present(datadir: str, langs: Iterable[str]) -> dict[str, set[str]]:
    present = {}
    for lang in langs:
        d = os.path.join(datadir, "sounds", lang, "extbill")
        present[lang] = {
            p for p in PROMPTS if os.path.isfile(f := os.path.join(d, p + ".wav")) and os.path.getsize(f) > 0
        }
    return present


def shipped_dialplan() -> Conf | None:
    """This extbill's own dialplan/extensions.conf (in a source-tree install), to compare with."""
    path = _shipped_path("dialplan", "extensions.conf")
    return parse_conf(os.path.basename(path), etc_reader(os.path.dirname(path))) if path else None


def check_asterisk_files(
    settings: Settings, etc_dir: str = DEFAULT_ETC, db_langs: Iterable[str] = ()
) -> list[Finding]:
    """The checks of the admin's Asterisk files and prompts: no network, no database."""
    read = etc_reader(etc_dir)
    exts = parse_conf("extensions.conf", read)
    findings = check_extensions(
        exts, etc_dir, shipped=shipped_dialplan(), trunk_confs=[parse_conf("pjsip.conf", read)]
    )
    findings += check_manager(parse_conf("manager.conf", read), etc_dir, settings)
    findings += check_modules(parse_conf("modules.conf", read), etc_dir)
    datadir = astdatadir(parse_conf("asterisk.conf", read))
    langs = {lang: "unknown numbers are answered in it" for lang in ALWAYS_LANGS}
    default_lang = dialplan_globals(exts).get("EXTBILL_DEFAULT_LANG", "")
    if re.fullmatch(r"[A-Za-z_]{2,16}", default_lang):
        langs[default_lang] = "the dialplan's EXTBILL_DEFAULT_LANG"
    for lang in db_langs:
        langs[lang] = "numbers in the database use it"
    findings += check_prompts(datadir, langs, _sounds_present(datadir, langs))
    return findings


async def run_checks(
    settings: Settings, etc_dir: str | None = DEFAULT_ETC, *, timeout_s: float = 5.0
) -> list[Finding]:
    """Every check, in checklist order: database, FastAGI, AMI, then the Asterisk files
    (etc_dir None: extbill runs on another host than Asterisk; its files are not checked)."""
    db_finding, facts = check_database(settings.db)
    exts = parse_conf("extensions.conf", etc_reader(etc_dir)) if etc_dir else None
    bind_host, bind_port = parse_hostport(settings.agi_bind, "agi_bind")
    start = "start the server: systemctl start extbill (or: extbill serve --config ...)"
    agi_checks = [
        check_fastagi(
            f"FastAGI (agi_bind {settings.agi_bind})",
            bind_host,
            bind_port,
            facts.number,
            timeout_s=timeout_s,
            fix_down=start,
        )
    ]
    # Asterisk connects to the dialplan's EXTBILL_AGI, not to agi_bind: when they differ
    # (a server on another host, 0.0.0.0 binds), the address calls really use is tried too.
    dialplan_agi = agi_address(dialplan_globals(exts).get("EXTBILL_AGI", ""))
    if dialplan_agi and (_connect_host(dialplan_agi[0]), dialplan_agi[1]) != (
        _connect_host(bind_host),
        bind_port,
    ):
        agi_checks.append(
            check_fastagi(
                f"FastAGI (the dialplan's EXTBILL_AGI={dialplan_agi[0]}:{dialplan_agi[1]})",
                *dialplan_agi,
                facts.number,
                timeout_s=timeout_s,
                fix_down=f"point EXTBILL_AGI in {etc_dir}/extensions.conf ([globals](+) after the #include) "
                f"at the extbill server, or start it there; then: {RELOAD_DIALPLAN}",
            )
        )
    *agi_findings, ami_finding = await asyncio.gather(*agi_checks, check_ami(settings, timeout_s=timeout_s))
    files = check_asterisk_files(settings, etc_dir, facts.langs) if etc_dir else []
    return [db_finding, *agi_findings, ami_finding, *files]
