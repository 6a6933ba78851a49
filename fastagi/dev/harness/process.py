"""The harness's Asterisk process: one Asterisk 22 in the chroot with its own config dir;
start (waits for AMI FullyBooted), the CLI (asterisk -rx), AMI sessions, stop, its logs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, BinaryIO

from fastagi.dev.harness.ami import Ami, AmiError
from fastagi.dev.harness.calls import Call
from fastagi.dev.harness.config import (
    EXTBILL_SECRET,
    EXTBILL_USER,
    HARNESS_SECRET,
    HARNESS_USER,
    write_config_dir,
)
from fastagi.dev.harness.paths import ASTERISK_BIN, PROJECT, default_root, free_port

LOG_QUIET_S = 0.5  # played(): the verbose log is caught up once it is this long unchanged
LOG_CATCH_UP_MAX_S = 3.0  # ... or after this long in any case

_dir_counter = itertools.count(1)


class Asterisk:
    """One Asterisk process in the chroot with its own config dir."""

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        agi_address: str | None = None,
        tz: str | None = "Asia/Shanghai",
        verbose: int = 3,
        keep: bool | None = None,
        project: str | Path | None = None,
        extra_extensions: str = "",
        system_name: str = "",
    ) -> None:
        self.root = Path(root) if root else default_root()
        # more dialplan contexts, appended as written (the benchmark's request loop)
        self.extra_extensions = extra_extensions
        self.project = Path(project) if project else PROJECT
        # asterisk.conf's systemname: Uniqueids become "<name>-epoch.seq" (the calls' owner)
        self.system_name = system_name
        self.name = f"extbill-e2e-{os.getpid()}-{next(_dir_counter)}"
        self.dir_in_root = f"/opt/{self.name}"
        self.dir = self.root / "opt" / self.name
        self.ami_port = free_port()
        # Nothing listens here until a test points EXTBILL_AGI somewhere (set_agi); several
        # servers (failover) are joined by "&", as in the dialplan.
        self.agi_address = agi_address or f"127.0.0.1:{free_port()}"
        self.tz = tz
        self.verbose = verbose
        self.keep = bool(os.environ.get("EXTBILL_E2E_KEEP")) if keep is None else keep
        self.proc: subprocess.Popen[bytes] | None = None
        self.extbill_user = (EXTBILL_USER, EXTBILL_SECRET)
        self.harness_user = (HARNESS_USER, HARNESS_SECRET)

    # ---------------------------------------------------------------- paths
    @property
    def conf_path(self) -> str:
        return f"{self.dir_in_root}/etc/asterisk.conf"

    @property
    def log_path(self) -> Path:
        return self.dir / "log" / "full"

    @property
    def console_path(self) -> Path:
        return self.dir / "log" / "console.out"

    # ---------------------------------------------------------------- config
    def remove_stale_dirs(self) -> None:
        """Config dirs left by test runs that were killed (their PID is gone)."""
        for old in (self.root / "opt").glob("extbill-e2e-*-*"):
            m = re.fullmatch(r"extbill-e2e-(\d+)-\d+", old.name)
            if m and not Path(f"/proc/{m.group(1)}").exists():
                shutil.rmtree(old, ignore_errors=True)

    def write_config(self) -> None:
        self.remove_stale_dirs()
        write_config_dir(
            self.dir,
            self.dir_in_root,
            self.project,
            verbose=self.verbose,
            agi_address=self.agi_address,
            ami_port=self.ami_port,
            extra_extensions=self.extra_extensions,
            system_name=self.system_name,
        )

    # ---------------------------------------------------------------- process
    def start(self, timeout: float = 30.0) -> Asterisk:
        self.write_config()
        cmd = ["chroot", str(self.root), ASTERISK_BIN, "-C", self.conf_path, "-f", "-n"]
        cmd += ["-" + "v" * self.verbose] if self.verbose else []
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        if self.tz:
            env["TZ"] = self.tz
        self._console: BinaryIO | None = open(self.console_path, "wb")
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._console,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            asyncio.run(self._wait_ready(timeout))
        except BaseException:
            self.stop()
            raise
        return self

    async def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"asterisk exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                async with self.ami(timeout=2) as ami:
                    await ami.wait_fully_booted(timeout=max(1.0, deadline - time.monotonic()))
                    return
            except (TimeoutError, OSError, AmiError) as e:
                last = e
                await asyncio.sleep(0.2)
        raise TimeoutError(f"AMI on port {self.ami_port} not ready: {last!r}\n{self.log_tail()}")

    def cli(self, command: str, timeout: float = 10.0) -> str:
        """Run an Asterisk CLI command (asterisk -rx) against this instance."""
        out = subprocess.run(
            ["chroot", str(self.root), ASTERISK_BIN, "-C", self.conf_path, "-rx", command],
            capture_output=True,
            timeout=timeout,
        )
        return out.stdout.decode(errors="replace")

    def ami_sessions(self) -> list[dict[str, str]]:
        """The connected AMI sessions (manager show connected): username, ip, fd, ..."""
        out = []
        for line in self.cli("manager show connected").splitlines():
            parts = line.split()
            # "  extbill  127.0.0.1  1732650000  12  37  0  system,call,...  reporting"
            if len(parts) >= 5 and parts[2].isdigit() and parts[4].isdigit():
                out.append(
                    {
                        "username": parts[0],
                        "ip": parts[1],
                        "start": parts[2],
                        "elapsed": parts[3],
                        "fd": parts[4],
                    }
                )
        return out

    def kick_ami(self, username: str) -> list[str]:
        """Drop every AMI session of `username` (manager kick session <fd>: Asterisk closes
        the TCP connection; the client sees EOF). Returns the file descriptors kicked."""
        fds = [s["fd"] for s in self.ami_sessions() if s["username"] == username]
        for fd in fds:
            self.cli(f"manager kick session {fd}")
        return fds

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(Exception):
                self.cli("core stop now", timeout=5)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if getattr(self, "_console", None) is not None:
            assert self._console is not None
            self._console.close()
            self._console = None
        if not self.keep and self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Asterisk:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- logs
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_caught_up(self, quiet_s: float = LOG_QUIET_S, max_s: float = LOG_CATCH_UP_MAX_S) -> None:
        """Wait until the verbose log stops growing: Asterisk's logger thread may write a
        call's last lines after the AMI events (and the settlement) that ended it."""
        deadline = time.monotonic() + max_s
        size, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                now = self.log_path.stat().st_size
            except FileNotFoundError:
                now = 0
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.05)

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_text()
        if not text:
            try:
                text = self.console_path.read_text(errors="replace")
            except FileNotFoundError:
                text = ""
        return "\n".join(text.splitlines()[-lines:])

    _PLAYING = re.compile(r"<([^>]+)> Playing '([^']+)' \(language '([^']*)'\)")

    def played(self, call: Call | None = None, prefix: str = "extbill/") -> list[tuple[str, str]]:
        """Sound files Asterisk played, in order, as (name without extension, language),
        from its verbose log; only on `call`'s channels if given. Unlike Call.prompts()
        this includes prompts played inside the bridge (Dial L() warning / timeout)."""
        chans = call.channel_names() if call is not None else None
        self._log_caught_up()
        out = []
        for m in self._PLAYING.finditer(self.log_text()):
            chan, file, lang = m.groups()
            if chans is not None and chan not in chans:
                continue
            name = re.sub(r"\.[A-Za-z0-9]+$", "", file)
            if name.startswith(prefix):
                out.append((name, lang))
        return out

    # ---------------------------------------------------------------- AMI
    def ami(self, user: tuple[str, str] | None = None, timeout: float = 5.0) -> Ami:
        username, secret = user or self.harness_user
        return Ami(
            "127.0.0.1", self.ami_port, username, secret, timeout=timeout, system_name=self.system_name
        )
