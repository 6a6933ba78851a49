"""Asterisk .conf files read as Asterisk reads them: pyst2's parser plus the syntax it lacks.

Pure except `etc_reader`, which opens files: `parse_conf` gets every file's text through a
reader function, so the same parser serves the admin's /etc/asterisk and tests' dicts.

Asterisk behaviour relied on (verified against Asterisk 22 from Debian sid): a missing
`#include` target (even a glob that matches nothing) or a `[name](+)` with no earlier
`[name]` makes Asterisk refuse the WHOLE file. From Asterisk's main/config.c: includes
nest at most MAX_INCLUDE_LEVEL (10) levels below the file itself, and there is no loop
check (a loop ends at that limit); an #include that cannot be loaded refuses the whole
file, a #tryinclude that cannot be loaded is skipped.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from asterisk.config import Config as _Pyst2Config
from asterisk.config import ParseError

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
Raises ConfUnreadable for a file that exists but cannot be read. A reader may also have
`identity(name) -> str`, the file's real path, so an include loop is found whichever
spelling (relative, absolute, through a symlink) names the file again."""

INCLUDE_LEVELS_MAX = 10
"""#include levels below the file itself that Asterisk reads (main/config.c MAX_INCLUDE_LEVEL)."""
CONF_BYTES_MAX = 4 * 1024 * 1024
"""etc_reader reads at most this much of one file."""

_ESCAPED_SEMICOLON = "\ue000"
_HEADER = re.compile(r"^\[([^\]]+)\]\s*(?:\(([^)]*)\))?")
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*(.*)$")


class ConfUnreadable(OSError):
    pass


@dataclass
class ConfProblem:
    where: str  # file:line
    message: str
    fatal: bool  # Asterisk refuses the whole file
    target: str = ""  # a missing #include's target path
    kind: str = "syntax"  # syntax | missing (an #include target) | loop | depth (of #includes)


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


class _Prepared:
    """The text of a file and its #includes, prepared for pyst2 (see above)."""

    def __init__(self, conf: Conf, read: Reader) -> None:
        self.conf, self.read = conf, read
        self.identity: Callable[[str], str] = getattr(read, "identity", None) or (lambda name: name)
        self.lines: list[str] = []
        self.origins: list[str] = []  # prepared line number - 1 -> file:line
        self.header_opts: dict[int, list[str]] = {}  # prepared line number -> (options)

    def emit(self, text: str, where: str) -> None:
        self.lines.append(text + "\n")
        self.origins.append(where)

    def expand(self, name: str, text: str, stack: tuple[str, ...]) -> None:
        """One file's lines; stack: the identities of the files including it, itself last."""
        problems = self.conf.problems
        depth = 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            where = f"{name}:{lineno}"
            stripped, depth = _strip_comments(raw, depth)
            s = stripped.strip()
            if not s:
                continue
            d = _DIRECTIVE.match(s)
            if d:
                self.directive(d.group(1).lower(), _unquote(d.group(2)), where, stack)
                continue
            h = _HEADER.match(s)
            if h:
                self.emit(f"[{h.group(1).strip()}]", where)
                opts = [o.strip() for o in (h.group(2) or "").split(",") if o.strip()]
                self.header_opts[len(self.lines)] = opts
            elif s.startswith("["):
                problems.append(ConfProblem(where, f"malformed section header {s!r}", fatal=False))
            elif "=" in s:
                self.emit(s, where)
            else:
                problems.append(
                    ConfProblem(where, f"{s!r} is not `name = value`; Asterisk skips it", fatal=False)
                )

    def directive(self, kind: str, target: str, where: str, stack: tuple[str, ...]) -> None:
        conf = self.conf
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
            found = self.read(target)
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
                        f'#include "{target}": no such file, so Asterisk refuses to load {conf.name} at all',
                        fatal=True,
                        target=target,
                        kind="missing",
                    )
                )
            return
        for name, text in found:
            problem = self._nesting_problem(kind, target, where, name, stack)
            if problem is not None:
                conf.problems.append(problem)
                continue
            self.expand(name, text, (*stack, self.identity(name)))

    def _nesting_problem(
        self, kind: str, target: str, where: str, name: str, stack: tuple[str, ...]
    ) -> ConfProblem | None:
        """A loop, or one level more than Asterisk reads (stack[0] is the file itself)."""
        # An #include Asterisk cannot load refuses the file; a #tryinclude is skipped.
        fatal = kind == "include"
        outcome = f"so Asterisk refuses to load {self.conf.name} at all" if fatal else "Asterisk skips it"
        if self.identity(name) in stack:
            return ConfProblem(
                where, f'#{kind} "{target}" loops back to {name}, {outcome}', fatal=fatal, kind="loop"
            )
        if len(stack) > INCLUDE_LEVELS_MAX:
            return ConfProblem(
                where,
                f'#{kind} "{target}": {name} would be nested more than {INCLUDE_LEVELS_MAX} '
                f"#include levels deep, {outcome}",
                fatal=fatal,
                kind="depth",
            )
        return None


def parse_conf(filename: str, read: Reader) -> Conf | None:
    """Parse an Asterisk config file as Asterisk reads it; None when it does not exist."""
    conf = Conf(filename)
    prepared = _Prepared(conf, read)
    try:
        top = read(filename)
    except ConfUnreadable as exc:
        conf.unreadable.append(str(exc))
        return conf
    if not top:
        return None
    for name, text in top:
        prepared.expand(name, text, (prepared.identity(name),))
    try:
        cfg = _PreparedConfig(prepared.lines)
    except ParseError as exc:  # not expected: the lines were prepared for it
        where = prepared.origins[exc.args[0] - 1] if exc.args else filename
        conf.problems.append(ConfProblem(where, f"cannot parse: {exc}", fatal=True))
        return conf
    for cat in cfg.categories:
        _add_section(conf, cat, prepared)
    return conf


def _add_section(conf: Conf, cat: Any, prepared: _Prepared) -> None:
    """One pyst2 category with its header options applied: (+) appends, (!) marks a
    template, (name) copies name's items first."""
    origins = prepared.origins
    opts = prepared.header_opts.get(cat.number, [])
    items = [
        (it.name.strip(), it.value.strip().replace(_ESCAPED_SEMICOLON, ";"), origins[it.number - 1])
        for it in cat.items
    ]
    name: str = cat.name
    where = origins[cat.number - 1]
    refused = f"so Asterisk refuses to load {conf.name} at all"
    if "+" in opts:
        base = conf.first(name)
        if base is None:
            conf.problems.append(
                ConfProblem(
                    where, f"[{name}](+) adds to a section that does not exist before it, {refused}", True
                )
            )
        else:
            base.items.extend(items)
        return
    inherited: list[tuple[str, str, str]] = []
    for opt in opts:
        if opt == "!":
            continue
        parent = next((s for s in conf.sections if s.name.lower() == opt.lower()), None)
        if parent is None:
            conf.problems.append(
                ConfProblem(
                    where, f"[{name}]({opt}) inherits from a section that does not exist, {refused}", True
                )
            )
        else:
            inherited.extend(parent.items)
    conf.sections.append(ConfSection(name, "!" in opts, where, inherited + items))


def ast_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("yes", "true", "y", "t", "1", "on")


def csv_values(value: str | None) -> list[str]:
    """A comma-separated setting's values, blanks dropped."""
    return [x.strip() for x in (value or "").split(",") if x.strip()]


def dialplan_globals(conf: Conf | None) -> dict[str, str]:
    """The globals as pbx_config sets them: every [globals] section in order, last one wins."""
    values: dict[str, str] = {}
    for section in conf.all("globals") if conf else []:
        for name, value, _ in section.items:
            values[name] = value
    return values


# ---- the I/O: files as Asterisk finds them -------------------------------------------------


def etc_reader(etc_dir: str) -> EtcReader:
    """Files as Asterisk finds them: relative paths under the config directory, globs allowed."""
    return EtcReader(etc_dir)


class EtcReader:
    """A Reader over a config directory. Names are shown relative to it when the pattern is
    relative, else as given; `identity` resolves either spelling to the real path."""

    def __init__(self, etc_dir: str) -> None:
        self.etc_dir = etc_dir

    def _path(self, pattern: str) -> str:
        return pattern if os.path.isabs(pattern) else os.path.join(self.etc_dir, pattern)

    def identity(self, name: str) -> str:
        """The real path of a file this reader named (an include loop check compares these)."""
        return os.path.realpath(self._path(name))

    def __call__(self, pattern: str) -> list[tuple[str, str]]:
        path = self._path(pattern)
        names = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        out = []
        for name in names:
            if not os.path.isfile(name):
                continue
            shown = os.path.relpath(name, self.etc_dir) if not os.path.isabs(pattern) else name
            try:
                with open(name, "rb") as fh:
                    out.append((shown, fh.read(CONF_BYTES_MAX).decode("utf-8", "replace")))
            except OSError as exc:
                raise ConfUnreadable(f"{name} ({exc.strerror})") from None
        return out
