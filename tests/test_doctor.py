"""`extbill doctor`: the Asterisk config checks on temp etc dirs built from dialplan/, the
database check on real SQLite files, FastAGI against a real in-process server, AMI against
a small fake manager, and the command's exit status."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
from pathlib import Path

import asterisk.config
import pytest
from structlog.testing import capture_logs

from fastagi.admin import cli, cli_doctor, doctor
from fastagi.admin.doctor import files as file_checks
from fastagi.asterisk import conf as astconf
from fastagi.runtime import config
from fastagi.runtime.config import Settings
from fastagi.service.serve import Service
from fastagi.store import tx_admin
from fastagi.store.demo import DEMO_NUMBER, seed
from fastagi.store.sqlite import SCHEMA_VERSION, SqliteStore

PROJECT = Path(__file__).resolve().parents[1]
SECRET = "doctor-test-secret"
SETTINGS = Settings(ami_secret=SECRET)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def by_status(findings, status):
    return [f for f in findings if f.status == status]


def fails(findings, check=None):
    return [f for f in findings if f.status == doctor.FAIL and (check is None or f.check == check)]


# ---- a temp Asterisk etc dir, as an admin installs extbill -----------------------------------

TRUNK = "[from-carrier]\nexten => _400XXXXXXX,1,Goto(extbill-ivr,${EXTEN},1)\n\n"
INCLUDE = '#include "extbill/extensions.conf"\n'


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    (etc / "extbill").mkdir(parents=True)
    shutil.copyfile(PROJECT / "dialplan" / "extensions.conf", etc / "extbill" / "extensions.conf")
    (etc / "extensions.conf").write_text(TRUNK + INCLUDE)
    manager = (PROJECT / "dialplan" / "manager.conf").read_text().replace("CHANGE-ME", SECRET)
    (etc / "manager.conf").write_text(manager)
    shutil.copyfile(PROJECT / "dialplan" / "modules.conf", etc / "modules.conf")
    data = tmp_path / "data"
    (etc / "asterisk.conf").write_text(f"[directories]\nastdatadir => {data}\n\n[options]\nverbose = 3\n")
    for lang in ("zh", "en"):
        shutil.copytree(PROJECT / "sounds" / lang / "extbill", data / "sounds" / lang / "extbill")
    return etc


def files(etc: Path, db_langs=(), settings: Settings = SETTINGS):
    return doctor.check_asterisk_files(settings, str(etc), db_langs)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new))


def test_good_config_every_check_ok(etc: Path) -> None:
    """On a correctly installed Asterisk config, `extbill doctor` reports the extensions, manager,
    modules and prompts checks all OK, showing the EXTBILL_AGI address and that all 8 prompts exist
    for each language the numbers use."""
    findings = files(etc, db_langs=("zh", "en"))
    assert by_status(findings, doctor.OK) == findings, doctor.render(findings)
    checks = {f.check for f in findings}
    assert checks == {"extensions", "manager", "modules", "prompts"}
    text = doctor.render(findings)
    assert "EXTBILL_AGI=127.0.0.1:4573" in text
    assert "prompts (en, numbers in the database use it): all 8" in text


def test_missing_include_fails_with_the_include_line(etc: Path) -> None:
    """If extensions.conf does not include extbill's dialplan, doctor fails the extensions check and
    tells the admin the exact `#include` line to add, the file it points at, and to run `dialplan
    reload`."""
    (etc / "extensions.conf").write_text(TRUNK)
    [f] = fails(files(etc), "extensions")
    assert "not included" in f.message
    assert '#include "extbill/extensions.conf"' in f.fix
    assert f"{etc}/extbill/extensions.conf" in f.fix and "dialplan reload" in f.fix


def test_include_of_a_missing_file_fails_the_whole_file(etc: Path) -> None:
    """If extensions.conf includes an extbill dialplan file that does not exist, doctor fails
    because Asterisk would refuse to load the whole file, and tells the admin to create that
    file."""
    shutil.rmtree(etc / "extbill")
    found = fails(files(etc), "extensions")
    assert any("no such file" in f.message and "refuses to load" in f.message for f in found)
    assert any(f"create {etc}/extbill/extensions.conf" in f.fix for f in found)


def test_missing_timestampevents(etc: Path) -> None:
    """If manager.conf lacks timestampevents, doctor fails the manager check and tells the admin to
    set `timestampevents = yes` and run `manager reload`."""
    edit(etc / "manager.conf", "timestampevents = yes", "")
    [f] = fails(files(etc))
    assert f.check == "manager" and "timestampevents is not set" in f.message
    assert "`timestampevents = yes`" in f.fix and "manager reload" in f.fix


def test_timestampevents_no(etc: Path) -> None:
    """If manager.conf sets `timestampevents = no`, doctor fails and says the value is 'no'."""
    edit(etc / "manager.conf", "timestampevents = yes", "timestampevents = no")
    [f] = fails(files(etc))
    assert "timestampevents is 'no'" in f.message


def test_missing_channelvars(etc: Path) -> None:
    """If manager.conf does not set channelvars, doctor fails and tells the admin to add
    `channelvars = EXTBILL_ID`."""
    edit(etc / "manager.conf", "channelvars = EXTBILL_ID", "")
    [f] = fails(files(etc))
    assert "channelvars not set" in f.message
    assert "`channelvars = EXTBILL_ID`" in f.fix


def test_channelvars_without_ours_keeps_the_others(etc: Path) -> None:
    """If manager.conf's channelvars lists other variables but not EXTBILL_ID, doctor's suggested
    fix adds EXTBILL_ID while keeping the admin's existing ones."""
    edit(etc / "manager.conf", "channelvars = EXTBILL_ID", "channelvars = FOO, BAR")
    [f] = fails(files(etc))
    assert "`channelvars = FOO,BAR,EXTBILL_ID`" in f.fix


def test_a_second_general_section_is_ignored_but_plus_adds(etc: Path) -> None:
    """Like Asterisk, doctor ignores a setting put in a second [general] section of manager.conf and
    tells the admin to put it in the FIRST [general], but accepts it in a `[general](+)`
    addition."""
    # Asterisk 22 reads manager.conf's first [general] only (checked on the real one).
    edit(etc / "manager.conf", "timestampevents = yes", "")
    with open(etc / "manager.conf", "a") as fh:
        fh.write("\n[general]\ntimestampevents = yes\n")
    [f] = fails(files(etc))
    assert "timestampevents" in f.message and "FIRST [general]" in f.fix
    edit(etc / "manager.conf", "\n[general]\ntimestampevents", "\n[general](+)\ntimestampevents")
    assert fails(files(etc)) == []


def test_missing_prompts_for_a_language_in_use(etc: Path, tmp_path: Path) -> None:
    """When a language used by a number in the database has missing or empty prompt files, doctor
    fails the prompts check naming those files and gives the `install` command that copies them,
    while languages no number uses are not checked."""
    en = tmp_path / "data" / "sounds" / "en" / "extbill"
    (en / "welcome.wav").unlink()
    (en / "limit-reached.wav").write_bytes(b"")
    assert fails(files(etc, db_langs=("zh",))) == []  # en is not in use: not checked
    [f] = fails(files(etc, db_langs=("zh", "en")))
    assert f.check == "prompts" and f.message.startswith("prompts (en, numbers in the database use it)")
    assert "welcome.wav, limit-reached.wav" in f.message
    assert f.fix == f"install -D -m 644 -t {en} {PROJECT}/sounds/en/extbill/*.wav"


def test_astdatadir_template_means_the_default(etc: Path) -> None:
    """If asterisk.conf's [directories] is only a template, doctor looks for the prompts under
    Asterisk's default data directory, as Asterisk would, and reports them missing there."""
    edit(etc / "asterisk.conf", "[directories]", "[directories](!)")
    [f] = fails(files(etc))
    assert f"{doctor.DEFAULT_DATADIR}/sounds/zh/extbill" in f.message


def test_globals_override_after_the_include(etc: Path) -> None:
    """An EXTBILL_AGI set in a `[globals](+)` after the include overrides the shipped address, and
    doctor passes and reports the overriding address."""
    with open(etc / "extensions.conf", "a") as fh:
        fh.write("\n[globals](+)\nEXTBILL_AGI=10.0.0.5:4573\n")
    findings = files(etc)
    assert fails(findings) == []
    assert any("EXTBILL_AGI=10.0.0.5:4573" in f.message for f in findings)


def test_plus_before_any_globals_breaks_the_file(etc: Path) -> None:
    """A `[globals](+)` placed before any [globals] section makes doctor fail at extensions.conf
    line 1, because (+) adds to a section that does not exist."""
    (etc / "extensions.conf").write_text("[globals](+)\nEXTBILL_AGI=10.0.0.5:4573\n\n" + TRUNK + INCLUDE)
    [f] = fails(files(etc))
    assert "(+) adds to a section that does not exist" in f.message
    assert f.message.startswith("extensions.conf:1:")


def test_empty_extbill_agi_fails(etc: Path) -> None:
    """If EXTBILL_AGI is overridden with an empty value, doctor fails saying it is not set and
    suggests setting it in `[globals](+)`."""
    with open(etc / "extensions.conf", "a") as fh:
        fh.write("\n[globals](+)\nEXTBILL_AGI=\n")
    [f] = fails(files(etc))
    assert "EXTBILL_AGI is not set" in f.message and "[globals](+)" in f.fix


def test_extbill_agi_from_an_expression_warns(etc: Path) -> None:
    """If EXTBILL_AGI is set from a dialplan expression, doctor only warns that it is an expression
    and suggests checking the real value with `dialplan show globals`."""
    with open(etc / "extensions.conf", "a") as fh:
        fh.write("\n[globals](+)\nEXTBILL_AGI=${AGI_HOST}:4573\n")
    [w] = by_status(files(etc), doctor.WARN)
    assert "is an expression" in w.message and "dialplan show globals" in w.fix


def test_nothing_routes_into_the_ivr_warns(etc: Path) -> None:
    """If nothing sends calls into extbill-ivr, doctor warns and shows the
    `Goto(extbill-ivr,${EXTEN},1)` line to add, and the warning goes away once a pjsip endpoint uses
    that context."""
    (etc / "extensions.conf").write_text(INCLUDE)
    [w] = by_status(files(etc), doctor.WARN)
    assert "Goto(extbill-ivr,${EXTEN},1)" in w.fix
    (etc / "pjsip.conf").write_text("[carrier]\ntype = endpoint\ncontext = extbill-ivr\n")
    assert by_status(files(etc), doctor.WARN) == []


def test_an_edited_dialplan_warns(etc: Path) -> None:
    """If the installed extbill dialplan has been edited, doctor warns that it differs from this
    extbill's [extbill-ivr] dialplan."""
    edit(etc / "extbill" / "extensions.conf", "EXTBILL_TRY} < 9", "EXTBILL_TRY} < 99")
    [w] = by_status(files(etc), doctor.WARN)
    assert "differs from this extbill's dialplan ([extbill-ivr])" in w.message


def test_modules_noload_and_autoload_no(etc: Path) -> None:
    """doctor fails when modules.conf keeps out a module extbill needs, whether by `noload` or by
    `autoload = no` without a `load` line, naming the missing modules and the lines to add, only
    warns about missing recommended modules, and fails when there is no modules.conf because nothing
    would load."""
    (etc / "modules.conf").write_text("[modules]\nautoload = yes\nnoload => res_agi.so\n")
    [f] = fails(files(etc))
    assert "noload keeps out res_agi.so" in f.message and "noload => res_agi.so" in f.fix
    (etc / "modules.conf").write_text("[modules]\nautoload = no\nload => res_agi.so\nload = app_dial\n")
    found = [f for f in files(etc) if f.check == "modules"]
    [f] = fails(found)
    assert "app_read.so" in f.message and "res_agi.so" not in f.message and "app_dial.so" not in f.message
    assert "load => func_global.so" in f.fix
    assert [w.status for w in found if "recommends" in w.message] == [doctor.WARN]
    (etc / "modules.conf").unlink()
    [f] = fails(files(etc))
    assert "loads no modules" in f.message


def test_required_and_recommended_modules_are_dialplan_modules_conf() -> None:
    """The modules.conf shipped in dialplan/ loads exactly the modules doctor requires or
    recommends, and no module is both required and recommended."""
    conf = astconf.parse_conf("modules.conf", astconf.etc_reader(str(PROJECT / "dialplan")))
    shipped = {file_checks._module(v) for v in conf.first("modules").values("load")}
    assert shipped == set(doctor.REQUIRED_MODULES) | set(doctor.RECOMMENDED_MODULES)
    assert not set(doctor.REQUIRED_MODULES) & set(doctor.RECOMMENDED_MODULES)


def test_ami_user_checks(etc: Path) -> None:
    """doctor fails when manager.conf has no real [extbill] AMI user (a template does not count, a
    user built from one does), when its secret is not extbill's ami_secret, or when it lacks the
    permissions to read system events and run CoreShowChannels."""
    manager = etc / "manager.conf"
    edit(manager, "[extbill]", "[extbill](!)")  # a template is no user
    [f] = fails(files(etc))
    assert "no [extbill] AMI user" in f.message and "write = reporting" in f.fix
    edit(manager, "[extbill](!)", "[extbill-tpl](!)")  # a user built from it is one
    with open(manager, "a") as fh:
        fh.write("\n[extbill](extbill-tpl)\n")
    assert fails(files(etc)) == []
    assert (
        fails(files(etc, settings=Settings(ami_secret="other")))[0].message
        == "manager.conf: the [extbill] secret is not extbill's ami_secret"
    )
    edit(manager, "read = system,call", "read = call")
    edit(manager, "write = reporting", "write = originate")
    messages = [f.message for f in fails(files(etc))]
    assert any("cannot read the system events" in m for m in messages)
    assert any("may not run CoreShowChannels" in m for m in messages)


def test_unreadable_manager_conf() -> None:
    """If doctor cannot read manager.conf (often 0640 asterisk:asterisk), it fails saying so and
    suggests giving the user the asterisk group."""

    def read(pattern: str):  # manager.conf is often 0640 asterisk:asterisk
        raise astconf.ConfUnreadable(f"/etc/asterisk/{pattern} (Permission denied)")

    conf = astconf.parse_conf("manager.conf", read)
    [f] = doctor.check_manager(conf, "/etc/asterisk", SETTINGS)
    assert f.status == doctor.FAIL and "cannot read /etc/asterisk/manager.conf" in f.message
    assert "asterisk group" in f.fix


# ---- the parser: pyst2 plus what it lacks ----------------------------------------------------


def reader(files_: dict[str, str]) -> astconf.Reader:
    def read(pattern: str):
        import fnmatch

        return [(n, t) for n, t in sorted(files_.items()) if fnmatch.fnmatch(n, pattern)]

    return read


def test_pyst2_alone_cannot_read_includes_or_section_options(tmp_path: Path) -> None:
    """Why doctor prepares the text before pyst2 parses it."""
    for text in (
        '[general]\n#include "manager.d/*.conf"\n',
        "[directories](!)\nastdatadir => /x\n",
        "[globals](+)\nX=1\n",
    ):
        (tmp_path / "x.conf").write_text(text)
        with pytest.raises(asterisk.config.ParseError):
            asterisk.config.Config(str(tmp_path / "x.conf"))
    (tmp_path / "x.conf").write_text("[c]\nexten => s,1,NoOp(a\\;b) ; note\n same => n,Hangup()\n")
    items = [(i.name, i.value) for i in asterisk.config.Config(str(tmp_path / "x.conf")).categories[0].items]
    assert items == [("exten", "s,1,NoOp(a\\"), ("same", "n,Hangup()")]  # `\;` lost, `same =>` fine


def test_parser_handles_what_asterisk_files_use() -> None:
    """doctor reads Asterisk config files the way Asterisk does, with block comments, templates,
    `(+)` additions, escaped semicolons, `same =>` lines, `#include` globs and `#tryinclude`, later
    globals overriding earlier ones, and only a nonsense line reported as a non-fatal problem."""
    conf = astconf.parse_conf(
        "extensions.conf",
        reader(
            {
                "extensions.conf": (
                    ";-- a block\ncomment [nope] --;\n[globals]\nA=1 ; comment\n"
                    "[tpl](!)\nexten => t,1,NoOp()\n"
                    "[ctx](tpl)\nexten => s,1,NoOp(a\\;b)\n same => n,Hangup()\n"
                    '#include "ext.d/*.conf"\n#tryinclude "missing.conf"\n'
                    "[globals](+)\nB=3\nnonsense line\n"
                ),
                "ext.d/a.conf": "[globals]\nA=2\n[other]\nexten => s,1,NoOp()\n",
                "ext.d/b.conf": "[ctx](+)\n same => n,Return()\n",
            }
        ),
    )
    assert [s.name for s in conf.sections] == ["globals", "tpl", "ctx", "globals", "other"]
    assert conf.first("tpl") is None and conf.first("ctx").template is False
    assert [(n, v) for n, v, _ in conf.first("ctx").items] == [
        ("exten", "t,1,NoOp()"),
        ("exten", "s,1,NoOp(a;b)"),
        ("same", "n,Hangup()"),
        ("same", "n,Return()"),
    ]
    assert conf.first("ctx").items[-1][2] == "ext.d/b.conf:2"
    assert astconf.dialplan_globals(conf) == {"A": "2", "B": "3"}
    assert [p.fatal for p in conf.problems] == [False]  # only the nonsense line
    assert conf.includes[0][2] == ["ext.d/a.conf", "ext.d/b.conf"]


def test_include_loops_and_missing_globs_are_fatal() -> None:
    """An include loop or an `#include` glob that matches no file is reported as a fatal problem,
    and a config file that does not exist reads as absent."""
    conf = astconf.parse_conf(
        "a.conf", reader({"a.conf": '#include "b.conf"\n', "b.conf": "#include a.conf\n"})
    )
    assert [p.fatal for p in conf.problems] == [True]
    conf = astconf.parse_conf("a.conf", reader({"a.conf": "#include <none/*.conf>\n[x]\ny=1\n"}))
    assert conf.problems[0].fatal and conf.problems[0].target == "none/*.conf"
    assert astconf.parse_conf("absent.conf", reader({})) is None


# Debian sid's stock files of its asterisk package (the ones .ci/asterisk-root installs),
# shipped so that this test runs everywhere.
STOCK_ETC = Path(__file__).resolve().parent / "fixtures" / "asterisk-etc-debian"


def test_debian_stock_files_parse_as_asterisk_reads_them() -> None:
    """Debian's stock Asterisk config files parse without fatal problems, with manager.conf's
    `manager.d/*.conf` include, its enabled [general], the default astdatadir and [globals] all read
    as Asterisk reads them."""
    read = astconf.etc_reader(str(STOCK_ETC))
    for name in ("extensions.conf", "manager.conf", "modules.conf", "asterisk.conf", "pjsip.conf"):
        conf = astconf.parse_conf(name, read)
        assert conf is not None and not [p for p in conf.problems if p.fatal], name
    manager = astconf.parse_conf("manager.conf", read)
    assert manager.includes and manager.includes[0][1] == "manager.d/*.conf"
    assert astconf.ast_true(manager.first("general").value("enabled"))
    assert doctor.astdatadir(astconf.parse_conf("asterisk.conf", read)) == "/usr/share/asterisk"  # (!)
    assert astconf.parse_conf("extensions.conf", read).first("globals") is not None


# ---- the database --------------------------------------------------------------------------


async def _make_db(path: Path, *, demo: bool = True, en_number: bool = False) -> None:
    store = await SqliteStore.open(str(path))
    try:
        with capture_logs():
            if demo:
                await store.run(seed)
            if en_number:
                await store.run(tx_admin.add_number, "4009990000", "English desk", None, 0, "en", None, 5)
    finally:
        await store.close()


def test_database_ok_with_its_languages(tmp_path: Path) -> None:
    """On a seeded extbill database doctor reports OK with the schema version, the number count and
    the languages in use, and keeps those languages and a number to probe FastAGI with."""
    db = tmp_path / "x.db"
    run(_make_db(db, en_number=True))
    finding, facts = doctor.check_database(str(db))
    assert finding.status == doctor.OK, finding
    assert f"schema version {SCHEMA_VERSION}, 2 numbers, languages en, zh" in finding.message
    assert facts.langs == {"zh", "en"} and facts.number == DEMO_NUMBER


def test_database_empty_extbill_db_warns(tmp_path: Path) -> None:
    """An extbill database with no 400 numbers yet makes doctor warn rather than fail."""
    db = tmp_path / "x.db"
    run(_make_db(db, demo=False))
    finding, facts = doctor.check_database(str(db))
    assert finding.status == doctor.WARN and "no 400 numbers" in finding.message and facts.number is None


def test_database_missing_is_not_created(tmp_path: Path) -> None:
    """When the database file does not exist, doctor fails and tells the admin to run `extbill db
    init`, without creating the file itself."""
    db = tmp_path / "none.db"
    finding, _ = doctor.check_database(str(db))
    assert finding.status == doctor.FAIL and finding.fix.startswith(f"extbill db init --db {db}")
    assert not db.exists()


def test_database_wrong_files(tmp_path: Path) -> None:
    """doctor fails, with a fix, when the database path is another program's SQLite file, a database
    from a newer extbill, a file that is no database, or an empty file, and leaves the empty file
    empty."""
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    newer = tmp_path / "newer.db"
    run(_make_db(newer, demo=False))
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    results = {p.name: doctor.check_database(str(p))[0] for p in (other, newer, junk, empty)}
    assert all(f.status == doctor.FAIL and f.fix for f in results.values()), results
    assert "not an extbill one" in results["other.db"].message
    assert f"schema version 99, newer than this extbill ({SCHEMA_VERSION})" in results["newer.db"].message
    assert "empty" in results["empty.db"].message and empty.stat().st_size == 0


# ---- FastAGI: a real server in-process, and a closed port -----------------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fastagi_lookup_round_trip_and_closed_port(tmp_path: Path) -> None:
    """With `extbill serve` running, doctor's FastAGI check makes a real lookup and reports OK with
    the prompt and language it got back, and with nothing listening it fails with connection
    refused, probing 0.0.0.0 as 127.0.0.1, and shows the fix."""

    async def go() -> None:
        service = Service(Settings(db=str(tmp_path / "agi.db"), agi_bind="127.0.0.1:0", demo=False))
        with capture_logs():
            await service.start()
            try:
                ok = await doctor.check_fastagi(
                    "FastAGI", "127.0.0.1", service.agi.port, None, timeout_s=2, fix_down="start it"
                )
            finally:
                await service.stop()
        assert ok.status == doctor.OK, ok
        assert f"lookup {doctor.PROBE_NUMBER} -> prompt not-in-service, language zh" in ok.message
        down = await doctor.check_fastagi(
            "FastAGI", "0.0.0.0", closed_port(), None, timeout_s=1, fix_down="start it"
        )
        assert down.status == doctor.FAIL and "connection refused" in down.message
        assert down.fix == "start it" and "127.0.0.1:" in down.message

    run(go())


def test_fastagi_something_else_on_the_port() -> None:
    """If something other than extbill's FastAGI server listens on the port and hangs up without
    answering, doctor fails saying it got no valid EXTBILL_RESULT."""

    async def go() -> None:
        async def not_agi(reader, writer):  # reads the request, then hangs up without an answer
            await reader.readuntil(b"\n\n")
            writer.close()

        server = await asyncio.start_server(not_agi, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            f = await doctor.check_fastagi("FastAGI", "127.0.0.1", port, None, timeout_s=1, fix_down="x")
        finally:
            server.close()
        assert f.status == doctor.FAIL and "without a valid EXTBILL_RESULT" in f.message

    run(go())


# ---- AMI: a small fake manager -------------------------------------------------------------


class FakeAmi:
    def __init__(self, *, banner: bytes = b"Asterisk Call Manager/9.0.0\r\n", reporting: bool = True):
        self.banner, self.reporting, self.actions = banner, reporting, []

    async def __aenter__(self) -> FakeAmi:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    @staticmethod
    def block(*pairs) -> bytes:
        return "".join(f"{k}: {v}\r\n" for k, v in pairs).encode() + b"\r\n"

    async def handle(self, reader, writer) -> None:
        writer.write(self.banner)
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                f = dict(line.split(": ", 1) for line in raw.decode().strip().split("\r\n"))
                action, aid = f["Action"].lower(), ("ActionID", f["ActionID"])
                self.actions.append(action)
                if action == "login" and f.get("Username") == "extbill" and f.get("Secret") == SECRET:
                    writer.write(
                        self.block(("Response", "Success"), aid, ("Message", "Authentication accepted"))
                    )
                elif action == "login":
                    writer.write(self.block(("Response", "Error"), aid, ("Message", "Authentication failed")))
                    break
                elif action == "coreshowchannels" and self.reporting:
                    writer.write(self.block(("Event", "FullyBooted"), ("Status", "Fully Booted")))
                    writer.write(
                        self.block(
                            ("Response", "Success"),
                            aid,
                            ("EventList", "start"),
                            ("Message", "Channels will follow"),
                        )
                    )
                    writer.write(
                        self.block(
                            ("Event", "CoreShowChannelsComplete"),
                            aid,
                            ("EventList", "Complete"),
                            ("ListItems", "0"),
                        )
                    )
                elif action == "coreshowchannels":
                    writer.write(self.block(("Response", "Error"), aid, ("Message", "Permission denied")))
                elif action == "logoff":
                    writer.write(
                        self.block(("Response", "Goodbye"), aid, ("Message", "Thanks for all the fish."))
                    )
                    break
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ami_settings(port: int, secret: str = SECRET) -> Settings:
    return Settings(ami_host="127.0.0.1", ami_port=port, ami_secret=secret)


def test_ami_login_and_permissions() -> None:
    """doctor's AMI check logs in, runs CoreShowChannels and logs off to report OK, fails on a wrong
    secret, a user without `write = reporting`, a port that is not an Asterisk manager or nothing
    listening, and only warns when no AMI secret is configured."""

    async def go() -> None:
        async with FakeAmi() as ami:
            ok = await doctor.check_ami(ami_settings(ami.port), timeout_s=2)
            assert ok.status == doctor.OK, ok
            assert ami.actions == ["login", "coreshowchannels", "logoff"]
            bad = await doctor.check_ami(ami_settings(ami.port, "wrong"), timeout_s=2)
            assert bad.status == doctor.FAIL and "refused (Authentication failed)" in bad.message
            assert "secret" in bad.fix and "manager reload" in bad.fix
        async with FakeAmi(reporting=False) as ami:
            denied = await doctor.check_ami(ami_settings(ami.port), timeout_s=2)
            assert denied.status == doctor.FAIL and "(Permission denied)" in denied.message
            assert "`write = reporting`" in denied.fix
        async with FakeAmi(banner=b"SSH-2.0-OpenSSH_9.2\r\n") as ami:
            other = await doctor.check_ami(ami_settings(ami.port), timeout_s=2)
            assert other.status == doctor.FAIL and "not an Asterisk manager" in other.message
        down = await doctor.check_ami(ami_settings(closed_port()), timeout_s=1)
        assert down.status == doctor.FAIL and "connection refused" in down.message
        off = await doctor.check_ami(ami_settings(closed_port(), secret=""), timeout_s=1)
        assert off.status == doctor.WARN and "EXTBILL_AMI_SECRET" in off.fix

    run(go())


# ---- the command -----------------------------------------------------------------------------


def doctor_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="extbill")
    cli_doctor.add_parsers(parser.add_subparsers(dest="command", required=True), cli._sub)
    return parser


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EXTBILL_"):
            monkeypatch.delenv(name)


def test_command_exit_status_and_output(etc: Path, tmp_path: Path, clean_env, capsys) -> None:
    """`extbill doctor` prints an OK line per check and a summary and exits 0 when everything is
    right, and with `--json` on a manager.conf missing channelvars it exits 1 with that failure and
    its fix in the JSON."""
    db = tmp_path / "cmd.db"
    run(_make_db(db))

    async def go(argv: list[str]) -> int:
        service = Service(Settings(db=str(db), agi_bind="127.0.0.1:0", demo=False))
        with capture_logs():
            await service.start()
            try:
                async with FakeAmi() as ami:
                    settings = tmp_path / "extbill.toml"
                    settings.write_text(
                        f'db = "{db}"\nagi_bind = "127.0.0.1:{service.agi.port}"\n'
                        f'ami_port = {ami.port}\nami_secret = "{SECRET}"\n'
                    )
                    # the dialplan sends calls where the server listens (else a second check)
                    edit_globals = etc / "extensions.conf"
                    edit_globals.write_text(
                        TRUNK + INCLUDE + f"[globals](+)\nEXTBILL_AGI=127.0.0.1:{service.agi.port}\n"
                    )
                    # manager.conf's port is what extbill's ami_port must match
                    text = (etc / "manager.conf").read_text()
                    (etc / "manager.conf").write_text(re.sub(r"(?m)^port = \d+$", f"port = {ami.port}", text))
                    a = doctor_parser().parse_args(
                        [
                            "doctor",
                            "--asterisk-etc",
                            str(etc),
                            "--config",
                            str(settings),
                            "--timeout",
                            "2",
                            *argv,
                        ]
                    )
                    return await a.fn(a)
            finally:
                await service.stop()

    assert run(go([])) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert all(line.startswith("OK    ") for line in lines[:-1]), out
    assert lines[-1] == f"doctor: {len(lines) - 1} OK, 0 WARN, 0 FAIL"
    assert f"lookup {DEMO_NUMBER} -> collect, language zh" in out

    edit(etc / "manager.conf", "channelvars = EXTBILL_ID", "")
    assert run(go(["--json"])) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False
    [f] = [c for c in doc["checks"] if c["status"] == "FAIL"]
    assert "channelvars" in f["message"] and "channelvars = EXTBILL_ID" in f["fix"]


def test_command_nothing_running(
    etc: Path, tmp_path: Path, clean_env, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no database and no FastAGI server running, `extbill doctor` exits 1 with exactly those
    two failures, suggests `extbill db init`, and does not create the database."""
    port = closed_port()  # not 4573: an extbill serve running on this machine must not matter
    monkeypatch.setenv("EXTBILL_AGI_BIND", f"127.0.0.1:{port}")
    with open(etc / "extensions.conf", "a") as fh:
        fh.write(f"\n[globals](+)\nEXTBILL_AGI=127.0.0.1:{port}\n")
    a = doctor_parser().parse_args(
        ["doctor", "--asterisk-etc", str(etc), "--db", str(tmp_path / "no.db"), "--timeout", "1"]
    )
    assert run(a.fn(a)) == 1
    out = capsys.readouterr().out
    assert out.count("\nFAIL") + out.startswith("FAIL") == 2  # no database, no FastAGI server
    assert "fix: extbill db init" in out and not (tmp_path / "no.db").exists()


def test_command_without_asterisk_files(tmp_path: Path, clean_env, capsys) -> None:
    """With `--no-asterisk-files`, `extbill doctor` skips the Asterisk config checks and reports
    only the database, FastAGI and AMI checks, in that order."""
    a = doctor_parser().parse_args(
        ["doctor", "--no-asterisk-files", "--db", str(tmp_path / "no.db"), "--timeout", "1"]
    )
    run(a.fn(a))
    out = capsys.readouterr().out
    assert "database:" in out and "FastAGI" in out and "AMI:" in out
    assert [line.split()[1] for line in out.splitlines() if line[:4] in ("OK  ", "WARN", "FAIL")] == [
        "database:",
        "FastAGI",
        "AMI:",
    ]


def test_command_bad_settings_file(tmp_path: Path, clean_env, capsys) -> None:
    """A settings file with an unknown key makes `extbill doctor` exit 1 with a FAIL line for the
    config file."""
    bad = tmp_path / "bad.toml"
    bad.write_text("no_such_key = 1\n")
    a = doctor_parser().parse_args(["doctor", "--config", str(bad)])
    assert run(a.fn(a)) == 1
    assert "FAIL  settings: config file" in capsys.readouterr().out


def test_registered_in_the_extbill_command(tmp_path: Path, clean_env, capsys) -> None:
    """`extbill doctor` runs from the main extbill command and, pointed at an empty Asterisk etc
    dir, exits 1 reporting that extensions.conf is not found."""
    rc = cli.main(
        ["doctor", "--asterisk-etc", str(tmp_path), "--db", str(tmp_path / "none.db"), "--timeout", "1"]
    )
    assert rc == 1
    assert "FAIL  extensions.conf: not found" in capsys.readouterr().out


# ---- docker/: the example files pass what they configure ------------------------------------


def test_docker_example_settings_load() -> None:
    """The docker example extbill.toml loads with the demo off and the database at
    /var/lib/extbill/extbill.db."""
    settings = config.load(str(PROJECT / "docker" / "extbill.toml"), env={})
    assert settings.demo is False and settings.db == "/var/lib/extbill/extbill.db"


def test_docker_asterisk_config_passes_doctor(tmp_path: Path) -> None:
    """docker/asterisk/extensions.conf plus what asterisk-entrypoint.sh writes, on Debian's
    manager.conf layout ([general], then #include "manager.d/*.conf")."""
    etc, data = tmp_path / "etc", tmp_path / "data"
    (etc / "extbill").mkdir(parents=True)
    (etc / "manager.d").mkdir()
    shutil.copyfile(PROJECT / "docker" / "asterisk" / "extensions.conf", etc / "extensions.conf")
    shutil.copyfile(PROJECT / "dialplan" / "extensions.conf", etc / "extbill" / "extensions.conf")
    (etc / "manager.conf").write_text(
        '[general]\nenabled = yes\nport = 5038\nbindaddr = 127.0.0.1\n\n#include "manager.d/*.conf"\n'
    )
    (etc / "modules.conf").write_text("[modules]\nautoload = yes\n")
    (etc / "asterisk.conf").write_text(f"[directories]\nastdatadir => {data}\n")
    shutil.copytree(PROJECT / "sounds" / "zh" / "extbill", data / "sounds" / "zh" / "extbill")
    script = (PROJECT / "docker" / "asterisk-entrypoint.sh").read_text()
    script = re.sub(r"(?m)^(exec|chgrp) .*$", ":", script.replace("/etc/asterisk", str(etc)))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "EXTBILL_AMI_SECRET": SECRET,
        "EXTBILL_AGI": "extbill:4573",
    }
    subprocess.run(["sh", "-c", script], env=env, check=True)
    findings = files(etc)
    assert by_status(findings, doctor.OK) == findings, doctor.render(findings)
    assert any("EXTBILL_AGI=extbill:4573" in f.message for f in findings)
    bad = subprocess.run(
        ["sh", "-c", script], env={**env, "EXTBILL_AMI_SECRET": "a;b"}, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "must not contain" in bad.stderr
