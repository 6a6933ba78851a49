"""Doctor's checks of the admin's Asterisk files without network or database: modules.conf,
the prompts under astdatadir, and `check_asterisk_files`, which runs every file check."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

from fastagi.admin.doctor.dialplan import check_extensions, shipped_dialplan
from fastagi.admin.doctor.findings import DEFAULT_ETC, FAIL, OK, WARN, Finding, problem_findings, shipped_path
from fastagi.admin.doctor.manager import check_manager
from fastagi.asterisk.conf import Conf, ConfSection, ast_true, dialplan_globals, etc_reader, parse_conf
from fastagi.runtime.config import Settings

DEFAULT_DATADIR = "/usr/share/asterisk"  # Asterisk's built-in astdatadir (Debian's too)


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
    "func_timeout",  # mid-call renewals move TIMEOUT(absolute): without it calls end at their first chunk
    "bridge_builtin_interval_features",
    "bridge_builtin_features",
    "bridge_simple",
    "format_wav",
)
# without these some calls or features degrade (codecs, other bridges, AMI Cdr events).
RECOMMENDED_MODULES = (
    "app_chanspy",  # the balance warning of a final grant is whispered through ChanSpy
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
    out = problem_findings("modules", conf, etc_dir)
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
    return out + _check_loaded(section, etc_dir, restart, out)


def _check_loaded(section: ConfSection, etc_dir: str, restart: str, earlier: list[Finding]) -> list[Finding]:
    """[modules]: autoload, noload and load lines against the modules extbill uses."""
    out: list[Finding] = []
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
    if not any(f.check == "modules" and f.status != OK for f in earlier + out):
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
        src = shipped_path("sounds", lang, "extbill")
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


def _sounds_present(datadir: str, langs: Iterable[str]) -> dict[str, set[str]]:
    present = {}
    for lang in langs:
        d = os.path.join(datadir, "sounds", lang, "extbill")
        present[lang] = {
            p for p in PROMPTS if os.path.isfile(f := os.path.join(d, p + ".wav")) and os.path.getsize(f) > 0
        }
    return present


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
