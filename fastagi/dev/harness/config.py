"""The harness's config dir: asterisk.conf pointing into it, the project's dialplan
unchanged plus test-only contexts, manager.conf with a harness user, modules, logger."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

HARNESS_USER = "extbill-harness"
HARNESS_SECRET = "harness-e2e-secret"
EXTBILL_USER = "extbill"
EXTBILL_SECRET = "extbill-e2e-secret"

IVR_CONTEXT = "extbill-ivr"
CALLER_CONTEXT = "extbill-test-caller"
BRANCH_CONTEXT = "extbill-test-branch"

# Modules the test contexts need on top of the project's dialplan/modules.conf.
TEST_MODULES = ("app_senddtmf.so", "func_cut.so")

TEST_EXTENSIONS = """\
; Test-only contexts of the extbill Asterisk harness (fastagi/dev/harness/config.py).

[{caller}]
; The ;1 half of Local/<400 number>@extbill-ivr once the IVR answered: the "caller".
exten => sim,1,NoOp(extbill-test: caller dtmf='${{SIM_DTMF}}' after ${{SIM_DTMF_DELAY}}s, hold ${{SIM_HOLD}}s)
 same => n,Wait(${{SIM_DTMF_DELAY}})
 same => n,ExecIf($[${{LEN(${{SIM_DTMF}})}} > 0]?SendDTMF(${{SIM_DTMF}}))
 same => n,Wait(${{SIM_HOLD}})
 same => n,Hangup()

[{branch}]
; talk-R-T: ring R seconds, answer, talk T seconds, hang up.
exten => _talk-X.,1,Set(RING=${{CUT(EXTEN,-,2)}})
 same => n,Set(TALK=${{CUT(EXTEN,-,3)}})
 same => n,Ringing()
 same => n,Wait(${{RING}})
 same => n,Answer()
 same => n,Wait(${{TALK}})
 same => n,Hangup()
exten => busy,1,Busy(30)
exten => congestion,1,Congestion(30)
exten => noanswer,1,Ringing()
 same => n,Wait(300)
 same => n,Hangup()
"""


def _section(text: str, name: str) -> list[str]:
    """The lines of [name] in an Asterisk .conf text."""
    out, inside = [], False
    for line in text.splitlines():
        m = re.match(r"\s*\[([^\]]+)\]", line)
        if m:
            inside = m.group(1) == name
            continue
        if inside:
            out.append(line)
    return out


def _conf_value(lines: Iterable[str], key: str) -> str | None:
    for line in lines:
        line = line.split(";", 1)[0]
        m = re.match(rf"\s*{re.escape(key)}\s*=>?\s*(.*?)\s*$", line)
        if m:
            return m.group(1)
    return None


def write_config_dir(
    d: Path,
    x: str,
    project: Path,
    *,
    verbose: int,
    agi_address: str,
    ami_port: int,
    extra_extensions: str = "",
    system_name: str = "",
) -> None:
    """A fresh config dir `d` (seen as `x` inside the chroot) for one Asterisk."""
    if d.exists():
        shutil.rmtree(d)
    for sub in ("etc/extbill", "run", "log", "spool", "db", "varlib", "cache", "data/sounds", "agi-bin"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    # The stock documentation (XML app docs) stays where the package put it.
    (d / "data" / "documentation").symlink_to("/usr/share/asterisk/documentation")
    for lang in ("zh", "en"):
        src = project / "sounds" / lang
        if src.is_dir():
            shutil.copytree(src, d / "data" / "sounds" / lang)
    etc = d / "etc"
    (etc / "asterisk.conf").write_text(_asterisk_conf(x, verbose, system_name))
    # The admin's file, unchanged, and a test extensions.conf that #includes it.
    shutil.copyfile(project / "dialplan" / "extensions.conf", etc / "extbill" / "extensions.conf")
    (etc / "extensions.conf").write_text(
        "; extbill e2e: the project dialplan, unchanged, plus test-only contexts.\n"
        '#include "extbill/extensions.conf"\n\n'
        "[globals](+)\n"
        f"EXTBILL_AGI={agi_address}\n\n"
        + TEST_EXTENSIONS.format(caller=CALLER_CONTEXT, branch=BRANCH_CONTEXT)
        + (f"\n{extra_extensions}" if extra_extensions else "")
    )
    (etc / "manager.conf").write_text(manager_conf(project, ami_port))
    modules = (project / "dialplan" / "modules.conf").read_text()
    modules += "\n; extbill e2e test-only modules\n" + "".join(f"load => {m}\n" for m in TEST_MODULES)
    (etc / "modules.conf").write_text(modules)
    _write_small_confs(etc)


def _asterisk_conf(x: str, verbose: int, system_name: str = "") -> str:
    # systemname prefixes every Uniqueid ("name-epoch.seq"): several Asterisk servers on
    # one extbill database each set their own
    system = f"systemname = {system_name}\n" if system_name else ""
    return f"""\
[directories]
astetcdir => {x}/etc
astdatadir => {x}/data
astagidir => {x}/agi-bin
astvarlibdir => {x}/varlib
astdbdir => {x}/db
astkeydir => {x}/varlib
astspooldir => {x}/spool
astrundir => {x}/run
astlogdir => {x}/log
astcachedir => {x}/cache

[options]
verbose = {verbose}
nofork = yes
documentation_language = en_US
{system}"""


def _write_small_confs(etc: Path) -> None:
    (etc / "cdr.conf").write_text("[general]\nenable = yes\nbatch = no\n")
    (etc / "cdr_manager.conf").write_text("[general]\nenabled = yes\n")
    (etc / "logger.conf").write_text(
        "[general]\ndateformat = %F %T.%3q\n\n[logfiles]\nfull => notice,warning,error,verbose,dtmf\n"
    )
    (etc / "musiconhold.conf").write_text("[general]\n")
    (etc / "indications.conf").write_text(
        "[general]\ncountry = cn\n\n[cn]\ndescription = China\n"
        "ringcadence = 1000,4000\nring = 450/1000,0/4000\nbusy = 450/350,0/350\n"
        "congestion = 450/700,0/700\ncallwaiting = 450/400,0/4000\ndial = 450\n"
    )
    for name in ("ccss.conf", "features.conf", "res_agi.conf", "acl.conf", "udptl.conf", "cel.conf"):
        (etc / name).write_text("")


def manager_conf(project: Path, ami_port: int) -> str:
    """The project's manager.conf: same [general] and [extbill] user, with our port
    and a known secret, plus a harness user. The harness user READS exactly what the
    [extbill] user reads (so recorded streams are what extbill gets in production)
    and may write everything (Originate, Setvar, ...). It also reads dialplan events
    (Newexten): that is how a test knows which prompts a caller heard."""
    text = (project / "dialplan" / "manager.conf").read_text()
    text = re.sub(r"(?m)^(\s*port\s*=).*$", rf"\g<1> {ami_port}", text)
    text = re.sub(r"(?m)^(\s*secret\s*=).*$", rf"\g<1> {EXTBILL_SECRET}", text)
    read = _conf_value(_section(text, EXTBILL_USER), "read") or "all"
    return text + (
        f"\n[{HARNESS_USER}]\nsecret = {HARNESS_SECRET}\n"
        "deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n"
        f"read = {read},dialplan\nwrite = all\nwritetimeout = 5000\n"
    )
