"""Doctor's extensions.conf checks: the extbill dialplan is included, complete, the same as
this extbill's, its globals are usable, and some context sends calls into it."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from fastagi.admin.doctor.findings import (
    FAIL,
    OK,
    RELOAD_DIALPLAN,
    WARN,
    Finding,
    problem_findings,
    shipped_path,
)
from fastagi.asterisk.conf import Conf, ConfSection, dialplan_globals, etc_reader, parse_conf
from fastagi.runtime.config import AGI_PORT, ConfigError, parse_hostport

EXTBILL_CONTEXTS = ("extbill-ivr", "extbill-answered", "extbill-hangup", "extbill-now")
IVR_CONTEXT = "extbill-ivr"


def check_extensions(
    conf: Conf | None, etc_dir: str, *, shipped: Conf | None = None, trunk_confs: Iterable[Conf | None] = ()
) -> list[Finding]:
    src = shipped_path("dialplan", "extensions.conf") or "dialplan/extensions.conf"
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
    out = problem_findings("extensions", conf, etc_dir)
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
        out.extend(_check_shipped(present, shipped, installed_file, src, etc_dir))
    out.extend(_check_globals(conf, etc_dir))
    out.append(_check_trunk(conf, [c for c in trunk_confs if c is not None], etc_dir))
    return out


def _check_shipped(
    present: dict[str, ConfSection | None], shipped: Conf, installed_file: str, src: str, etc_dir: str
) -> list[Finding]:
    """The installed extbill contexts against this extbill's own dialplan."""
    differ = [c for c in EXTBILL_CONTEXTS if _context_body(present[c]) != _context_body(shipped.first(c))]
    if differ:
        return [
            Finding(
                WARN,
                "extensions",
                f"extensions.conf: {installed_file} differs from this "
                f"extbill's dialplan ({', '.join('[' + c + ']' for c in differ)})",
                f"install -m 644 {src} {os.path.join(etc_dir, installed_file)}  "
                f"(keep your overrides in extensions.conf, after the #include)\n"
                f"then: {RELOAD_DIALPLAN}",
            )
        ]
    return []


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
    elif agi_addresses(agi) is None:
        out.append(
            Finding(
                FAIL,
                "extensions",
                f"extensions.conf: global EXTBILL_AGI={agi!r} is not host:port (or several joined by &)",
                fix_where,
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


def agi_addresses(value: str) -> list[tuple[str, int]] | None:
    """EXTBILL_AGI's servers, tried in turn by the dialplan (extbill-agi): one, or several
    joined by "&"; None when any of them is not an address."""
    found = [agi_address_one(v) for v in value.split("&")]
    return None if not found or None in found else found  # type: ignore[return-value]


def agi_address(value: str) -> tuple[str, int] | None:
    """The first server of EXTBILL_AGI (see agi_addresses), or None."""
    servers = agi_addresses(value)
    return servers[0] if servers else None


def agi_address_one(value: str) -> tuple[str, int] | None:
    """One server as res_agi reads it: host or host:port (4573 when omitted)."""
    value = value.strip()
    if not value or "/" in value or "$" in value:
        return None
    if ":" not in value or (value.startswith("[") and value.endswith("]")):
        return value.strip("[]"), AGI_PORT
    try:
        return parse_hostport(value)
    except ConfigError:
        return None


def shipped_dialplan() -> Conf | None:
    """This extbill's own dialplan/extensions.conf (in a source-tree install), to compare with."""
    path = shipped_path("dialplan", "extensions.conf")
    return parse_conf(os.path.basename(path), etc_reader(os.path.dirname(path))) if path else None
