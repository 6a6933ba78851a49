"""Doctor's manager.conf checks: the AMI is on, on extbill's port, with event timestamps and
EXTBILL_ID, and extbill's AMI user may log in, read its events and run CoreShowChannels."""

from __future__ import annotations

from fastagi.admin.doctor.findings import (
    FAIL,
    OK,
    RELOAD_MANAGER,
    WARN,
    Finding,
    problem_findings,
    shipped_path,
)
from fastagi.asterisk.conf import Conf, ConfSection, ast_true, csv_values
from fastagi.runtime.config import Settings

AMI_READ_NEEDED = ("system", "call")
AMI_WRITE_ANY = ("reporting", "system")  # either lets CoreShowChannels through
AMI_WRITE_ADVISED = "reporting,call,originate"  # + Setvar (renewals) and Originate (warnings)


def check_manager(conf: Conf | None, etc_dir: str, settings: Settings) -> list[Finding]:
    src = shipped_path("dialplan", "manager.conf") or "dialplan/manager.conf"
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
    out = problem_findings("manager", conf, etc_dir)
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
    out += _check_general(general, in_general, settings)
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
                f"read = {','.join(AMI_READ_NEEDED)}\nwrite = {AMI_WRITE_ADVISED}\n"
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
    read = {p.lower() for p in csv_values(section.value("read"))}
    lacking = [] if "all" in read else [p for p in AMI_READ_NEEDED if p not in read]
    write = {p.lower() for p in csv_values(section.value("write"))}
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
    if "all" not in write and "call" not in write:
        out.append(
            Finding(
                FAIL,
                "manager",
                f"manager.conf: [{user}] may not run Setvar (needs write = call), so calls cannot be "
                "renewed mid-call: each one ends at its first chunk (quota_s)",
                f"set `write = {AMI_WRITE_ADVISED}` {at}; then: {RELOAD_MANAGER}",
            )
        )
    if "all" not in write and "originate" not in write:
        out.append(
            Finding(
                WARN,
                "manager",
                f"manager.conf: [{user}] may not run Originate (needs write = originate), so callers "
                "on a final grant are cut without hearing the balance warning",
                f"set `write = {AMI_WRITE_ADVISED}` {at}; then: {RELOAD_MANAGER}",
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


def _check_general(general: ConfSection, in_general: str, settings: Settings) -> list[Finding]:
    """[general]: the AMI on, on extbill's port, with event timestamps and EXTBILL_ID."""
    out: list[Finding] = []
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
    if "EXTBILL_ID" not in csv_values(cv):
        now = "not set" if cv is None else f"= {cv}"
        want = ",".join(csv_values(cv) + ["EXTBILL_ID"])
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
    return out
