"""The Asterisk .conf reader's #include handling: loops, globs, the depth limit, relative and
real paths, and what doctor tells the admin about each."""

from __future__ import annotations

import fnmatch
from pathlib import Path

from fastagi.admin import doctor
from fastagi.asterisk import conf as astconf
from fastagi.asterisk.conf import INCLUDE_LEVELS_MAX, parse_conf


def reader(files: dict[str, str]) -> astconf.Reader:
    def read(pattern: str) -> list[tuple[str, str]]:
        return [(n, t) for n, t in sorted(files.items()) if fnmatch.fnmatch(n, pattern)]

    return read


def chain(links: int, last_directive: str = "include") -> dict[str, str]:
    """c0.conf includes c1.conf ... up to c<links>.conf; each has its own [sN] section."""
    files = {}
    for i in range(links + 1):
        text = f"[s{i}]\nv={i}\n"
        if i < links:
            directive = last_directive if i == links - 1 else "include"
            text += f'#{directive} "c{i + 1}.conf"\n'
        files[f"c{i}.conf"] = text
    return files


def test_a_file_including_itself_is_a_fatal_loop_read_once() -> None:
    conf = parse_conf("a.conf", reader({"a.conf": '[x]\ny=1\n#include "a.conf"\n'}))
    [p] = conf.problems
    assert (p.kind, p.fatal, p.where) == ("loop", True, "a.conf:3")
    assert p.message == '#include "a.conf" loops back to a.conf, so Asterisk refuses to load a.conf at all'
    assert [s.name for s in conf.sections] == ["x"]


def test_a_loop_through_a_glob_is_found_and_not_followed() -> None:
    """A glob that matches the file including it: each file reached again is a loop, none is a
    depth problem, and every file's sections are still read."""
    conf = parse_conf(
        "extensions.conf",
        reader(
            {
                "extensions.conf": '[top]\n#include "ext.d/*.conf"\n',
                "ext.d/a.conf": '[a]\n#include "ext.d/*.conf"\n',
                "ext.d/b.conf": "[b]\nx=1\n",
            }
        ),
    )
    assert conf.problems and {(p.kind, p.fatal) for p in conf.problems} == {("loop", True)}
    assert "ext.d/a.conf:2" in {p.where for p in conf.problems}
    assert {"top", "a", "b"} <= {s.name for s in conf.sections}


def test_a_deep_chain_that_is_no_loop_is_read_to_asterisks_limit() -> None:
    """Asterisk reads #include 10 levels below the file itself (main/config.c
    MAX_INCLUDE_LEVEL): a 10-link chain is fine; an 11th link is reported as nested too deep
    (fatal for #include, skipped for #tryinclude), never as a loop."""
    ok = parse_conf("c0.conf", reader(chain(INCLUDE_LEVELS_MAX)))
    assert ok.problems == [] and len(ok.sections) == INCLUDE_LEVELS_MAX + 1

    deep = parse_conf("c0.conf", reader(chain(INCLUDE_LEVELS_MAX + 1)))
    [p] = deep.problems
    assert (p.kind, p.fatal, p.where) == ("depth", True, f"c{INCLUDE_LEVELS_MAX}.conf:3")
    assert "loops" not in p.message
    assert p.message == (
        f'#include "c11.conf": c11.conf would be nested more than {INCLUDE_LEVELS_MAX} #include levels '
        "deep, so Asterisk refuses to load c0.conf at all"
    )
    assert [s.name for s in deep.sections] == [f"s{i}" for i in range(INCLUDE_LEVELS_MAX + 1)]

    tried = parse_conf("c0.conf", reader(chain(INCLUDE_LEVELS_MAX + 1, last_directive="tryinclude")))
    [p] = tried.problems
    assert (p.kind, p.fatal) == ("depth", False) and p.message.endswith("Asterisk skips it")


def test_includes_by_real_path_and_relative_path_name_the_same_file(tmp_path: Path) -> None:
    """An #include by absolute path is read and shown as written; a file included again under
    another spelling (absolute, or with ..) is the same file: a loop found at once."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "other.conf").write_text("[other]\nx=1\n")
    (tmp_path / "a.conf").write_text(f'[a]\n#include "{tmp_path}/other.conf"\n#include "{tmp_path}/a.conf"\n')
    (tmp_path / "b.conf").write_text('[b]\n#include "sub/../b.conf"\n')
    read = astconf.etc_reader(str(tmp_path))

    a = parse_conf("a.conf", read)
    assert a.first("other").where == f"{tmp_path}/other.conf:1"
    [p] = a.problems
    assert (p.kind, p.fatal, p.where) == ("loop", True, "a.conf:3")
    assert f"loops back to {tmp_path}/a.conf" in p.message

    b = parse_conf("b.conf", read)
    [p] = b.problems
    assert (p.kind, p.where) == ("loop", "b.conf:2")


def test_doctor_tells_how_to_fix_a_loop_and_a_deep_chain() -> None:
    """The FAIL line names the #include; the fix says what to do about includes, not about a
    section header."""
    looping = parse_conf(
        "modules.conf", reader({"modules.conf": '[modules]\nautoload=yes\n#include "modules.conf"\n'})
    )
    [f] = [f for f in doctor.check_modules(looping, "/etc/asterisk") if f.status == doctor.FAIL]
    assert f.message.startswith('modules.conf:3: #include "modules.conf" loops back to modules.conf')
    assert f.fix.startswith("remove the #include line at modules.conf:3")

    files = chain(INCLUDE_LEVELS_MAX + 1)
    files["c0.conf"] = "[modules]\nautoload=yes\n" + files["c0.conf"]
    deep = parse_conf("c0.conf", reader(files))
    [f] = [f for f in doctor.check_modules(deep, "/etc/asterisk") if f.status == doctor.FAIL]
    assert "nested more than 10 #include levels deep" in f.message
    assert "at most 10 levels" in f.fix and "section header" not in f.fix
