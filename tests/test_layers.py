"""The layers of fastagi/ and the one direction imports may go (docs/architecture.md).

    core  <-  runtime  <-  store  <-  asterisk, service  <-  admin, web
                                                               dev (may import all)

A module may import its own layer and the layers to its left; asterisk and service are
peers (serve wires the call routes, the call routes settle through service/settlement).
core/ is pure on top of that: only core/ and the standard library's modules without I/O.
No module outside dev/ imports fastagi.dev. Every import statement counts, also one inside
a function or under `if TYPE_CHECKING:`, since each is a dependency someone has to follow.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "fastagi"

# The layer order: a module of rank r may import fastagi modules of rank <= r.
LAYER_RANK = {
    "core": 0,
    "runtime": 1,
    "store": 2,
    "asterisk": 3,
    "service": 3,
    "admin": 4,
    "web": 4,
    "dev": 5,
}
TOP_LEVEL_RANK = 4  # fastagi/__main__.py runs the CLI: it sits with admin/

# What core/ may use from the standard library: computation only, no clock, file, socket,
# process, thread or event loop. Anything else (os, time, socket, asyncio, sqlite3, ...,
# and every third-party package) fails the test.
CORE_STDLIB_ALLOWED = frozenset(
    {
        "__future__",
        "abc",
        "bisect",
        "collections",
        "collections.abc",
        "dataclasses",
        "datetime",
        "decimal",
        "enum",
        "fractions",
        "functools",
        "hashlib",
        "heapq",
        "hmac",
        "itertools",
        "math",
        "numbers",
        "operator",
        "re",
        "string",
        "types",
        "typing",
        "unicodedata",
        "urllib.parse",
        # the system's time zone rules: read-only data, like the code itself (a number's
        # month runs in its own time zone)
        "zoneinfo",
    }
)


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    """`fastagi.store.sqlite` -> "store"; None for a top-level module like fastagi.__main__."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYER_RANK:
        return parts[1]
    return None


def rank_of(module: str) -> int:
    layer = layer_of(module)
    return LAYER_RANK[layer] if layer is not None else TOP_LEVEL_RANK


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, at any depth."""
    module = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from fastagi import dev` imports fastagi.dev: name the submodule when it is one
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_fastagi_module(sub) else target))
    return list(dict.fromkeys(found))  # `from x import a, b` is one dependency


def _is_fastagi_module(name: str) -> bool:
    if not name.startswith("fastagi."):
        return False
    rel = Path(*name.split(".")[1:])
    return (PACKAGE_DIR / rel).is_dir() or (PACKAGE_DIR / rel).with_suffix(".py").is_file()


def violations_of(path: Path) -> list[str]:
    """One line per import that breaks a rule: `module:line imports X (why)`."""
    module = module_name(path)
    rel = path.relative_to(PACKAGE_DIR.parent)
    layer = layer_of(module)
    bad: list[str] = []
    for line, target in imports_of(path):
        where = f"{module} ({rel}:{line}) imports {target}"
        top = target.split(".")[0]
        if top == "fastagi":
            target_layer = layer_of(target)
            if target_layer == "dev" and layer != "dev":
                bad.append(f"{where}: product code must not import fastagi.dev")
            elif rank_of(target) > rank_of(module):
                bad.append(f"{where}: {layer or 'fastagi'} may not depend on {target_layer or target}")
        elif layer == "core" and not _core_may_import(target):
            if top in sys.stdlib_module_names:
                why = f"{target} is not among the standard modules core/ may use (no I/O, clock, processes)"
            else:
                why = f"{top} is a third-party package"
            bad.append(f"{where}: core/ is pure: {why}")
    return bad


def _core_may_import(target: str) -> bool:
    # `urllib.parse` is pure, `urllib.request` is not: a dotted allowance covers only itself
    return target in CORE_STDLIB_ALLOWED or target.split(".")[0] in CORE_STDLIB_ALLOWED


MODULES = sorted(PACKAGE_DIR.rglob("*.py"))


def test_the_tree_has_every_layer() -> None:
    layers = {layer_of(module_name(p)) for p in MODULES} - {None}
    assert {"core", "runtime", "store", "asterisk", "service", "admin", "dev"} <= layers


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE_DIR.parent)))
def test_imports_follow_the_layers(path: Path) -> None:
    bad = violations_of(path)
    assert not bad, "imports against the layers (docs/architecture.md):\n  " + "\n  ".join(bad)


def _write(tmp: Path, rel: str, source: str) -> Path:
    path = tmp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


@pytest.mark.parametrize(
    ("rel", "source", "expected"),
    [
        ("core/money.py", "import sqlite3\n", "sqlite3 is not among the standard modules core/ may use"),
        (
            "core/money.py",
            "def f():\n    import time\n",
            "fastagi.core.money (fastagi/core/money.py:2) imports time",
        ),
        ("core/money.py", "import structlog\n", "structlog is a third-party package"),
        ("core/money.py", "from urllib.request import urlopen\n", "imports urllib.request"),
        ("core/money.py", "from fastagi.runtime import clock\n", "core may not depend on runtime"),
        ("store/base.py", "from fastagi.service import serve\n", "store may not depend on service"),
        ("store/base.py", "from fastagi.admin.cli import main\n", "store may not depend on admin"),
        ("service/serve.py", "from fastagi.admin import demo\n", "service may not depend on admin"),
        ("admin/cli.py", "def f():\n    from fastagi.dev import sandbox\n", "must not import fastagi.dev"),
        ("admin/cli.py", "from ..dev.bench import cli\n", "imports fastagi.dev.bench.cli"),
    ],
)
def test_a_wrong_import_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str, source: str, expected: str
) -> None:
    """The checker itself: each kind of wrong import fails, naming the module and the import."""
    monkeypatch.setattr(f"{__name__}.PACKAGE_DIR", tmp_path / "fastagi")
    path = _write(tmp_path, f"fastagi/{rel}", source)
    _write(tmp_path, "fastagi/dev/sandbox.py", "")
    _write(tmp_path, "fastagi/dev/bench/cli.py", "")
    bad = violations_of(path)
    assert len(bad) == 1 and expected in bad[0], bad


@pytest.mark.parametrize(
    ("rel", "source"),
    [
        ("core/money.py", "from __future__ import annotations\nimport re\nfrom urllib.parse import quote\n"),
        ("core/calls.py", "from fastagi.core.ledger import Account\nfrom collections.abc import Mapping\n"),
        ("service/serve.py", "from fastagi.asterisk.call_routes import CallRoutes\nimport socket\n"),
        ("asterisk/call_routes.py", "from fastagi.service.settlement import Settlement\n"),
        ("dev/sandbox.py", "from fastagi.admin.cli import main\nfrom fastagi.dev.bench import cli\n"),
    ],
)
def test_a_right_import_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rel: str, source: str
) -> None:
    monkeypatch.setattr(f"{__name__}.PACKAGE_DIR", tmp_path / "fastagi")
    _write(tmp_path, "fastagi/dev/bench/cli.py", "")
    assert violations_of(_write(tmp_path, f"fastagi/{rel}", source)) == []


def test_the_architecture_page_lists_every_module() -> None:
    """docs/architecture.md's folder table names exactly the modules each layer folder has."""
    page = (PACKAGE_DIR.parent / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `(\w+)/` \| (.+?) \|", page, re.MULTILINE)
    assert {folder for folder, _ in rows} == set(LAYER_RANK)
    problems = []
    for folder, cell in rows:
        listed = [name.rstrip("/") for name in re.findall(r"`([\w*/]+)`", cell)]
        present = {
            p.stem if p.is_file() else p.name
            for p in (PACKAGE_DIR / folder).iterdir()
            if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
        }
        missing = sorted(m for m in present if not any(fnmatch.fnmatch(m, pat) for pat in listed))
        gone = sorted(pat for pat in listed if not fnmatch.filter(present, pat))
        problems += [f"{folder}/{m} is not in the table" for m in missing]
        problems += [f"{folder}/{g} is in the table but not in the tree" for g in gone]
    assert not problems, "docs/architecture.md does not match fastagi/:\n  " + "\n  ".join(problems)
