"""`extbill doctor`: is this installation ready to take calls? Findings, each with its fix.

Two layers:

* pure checks: Asterisk config text in, findings out (`check_extensions`, `check_manager`,
  `check_modules`, `check_prompts`, over fastagi.asterisk.conf's `parse_conf`); they get
  file contents through a reader function and never touch the disk or the network;
* the I/O shell (`run_checks`, here): reads the admin's files, opens the database
  read-only, makes one real FastAGI `lookup` round trip and one AMI login, and runs the
  pure checks, in checklist order.

Modules: findings (the record, levels, rendering), database, network (FastAGI and AMI
probes), dialplan (extensions.conf), manager (manager.conf), files (modules.conf, prompts,
all file checks). Asterisk behaviour the checks rely on: manager.conf uses only the first
`[general]` section (a second one is silently ignored) unless it is `[general](+)`;
extensions.conf merges every `[globals]` section, the last definition winning.
"""

from __future__ import annotations

import asyncio

from fastagi.admin.doctor.database import DbFacts, check_database
from fastagi.admin.doctor.dialplan import agi_addresses, check_extensions
from fastagi.admin.doctor.files import (
    DEFAULT_DATADIR,
    PROMPTS,
    RECOMMENDED_MODULES,
    REQUIRED_MODULES,
    astdatadir,
    check_asterisk_files,
    check_modules,
    check_prompts,
)
from fastagi.admin.doctor.findings import (
    DEFAULT_ETC,
    FAIL,
    OK,
    RELOAD_DIALPLAN,
    WARN,
    Finding,
    failed,
    render,
)
from fastagi.admin.doctor.manager import check_manager
from fastagi.admin.doctor.network import PROBE_NUMBER, check_agi_allow, check_ami, check_fastagi, connect_host
from fastagi.asterisk.conf import dialplan_globals, etc_reader, parse_conf
from fastagi.runtime.config import Settings, parse_hostport

__all__ = [
    "DEFAULT_DATADIR",
    "DEFAULT_ETC",
    "FAIL",
    "OK",
    "PROBE_NUMBER",
    "PROMPTS",
    "RECOMMENDED_MODULES",
    "REQUIRED_MODULES",
    "WARN",
    "DbFacts",
    "Finding",
    "astdatadir",
    "check_ami",
    "check_asterisk_files",
    "check_database",
    "check_extensions",
    "check_fastagi",
    "check_manager",
    "check_modules",
    "check_prompts",
    "failed",
    "render",
    "run_checks",
]


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
    servers = agi_addresses(dialplan_globals(exts).get("EXTBILL_AGI", "")) or []
    for n, server in enumerate(servers):
        if (connect_host(server[0]), server[1]) == (connect_host(bind_host), bind_port):
            continue
        which = f"EXTBILL_AGI server {n + 1} of {len(servers)}" if len(servers) > 1 else "EXTBILL_AGI"
        agi_checks.append(
            check_fastagi(
                f"FastAGI (the dialplan's {which}={server[0]}:{server[1]})",
                *server,
                facts.number,
                timeout_s=timeout_s,
                fix_down=f"point EXTBILL_AGI in {etc_dir}/extensions.conf ([globals](+) after the #include) "
                f"at the extbill server, or start it there; then: {RELOAD_DIALPLAN}",
            )
        )
    *agi_findings, ami_finding = await asyncio.gather(*agi_checks, check_ami(settings, timeout_s=timeout_s))
    files = check_asterisk_files(settings, etc_dir, facts.langs) if etc_dir else []
    allow = check_agi_allow(bind_host, settings.agi_allow)
    return [db_finding, *agi_findings, *([allow] if allow else []), ami_finding, *files]
