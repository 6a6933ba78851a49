"""Where the harness's Asterisk lives: the chroot root, the binary in it, the source tree
whose dialplan/ and sounds/ it loads, and free loopback ports."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path


def project_dir() -> Path:
    """The source tree holding dialplan/ and sounds/: EXTBILL_PROJECT_DIR, else the one
    this package sits in."""
    env = os.environ.get("EXTBILL_PROJECT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[3]


PROJECT = project_dir()
DEFAULT_ROOT = "/var/cache/extbill/asterisk-root"
ASTERISK_BIN = "/usr/sbin/asterisk"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def default_root() -> Path:
    return Path(os.environ.get("EXTBILL_ASTERISK_ROOT") or DEFAULT_ROOT)


def root_problem(root: Path) -> str | None:
    """Why this root cannot run Asterisk here (e2e tests, sandbox, bench --asterisk), or None."""
    if os.geteuid() != 0:
        return "running Asterisk in its root (chroot) needs root privileges"
    if not (root / ASTERISK_BIN.lstrip("/")).exists():
        return f"no Asterisk root at {root} (build it with .ci/asterisk-root)"
    if shutil.which("chroot") is None:
        return "chroot not found"
    return None
