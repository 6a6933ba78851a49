"""A real Asterisk 22 for extbill, in the chroot built by .ci/asterisk-root.

Used by the end-to-end tests (tests/e2e) and by `extbill sandbox` (for people without an
Asterisk of their own). The root is EXTBILL_ASTERISK_ROOT, default
/var/cache/extbill/asterisk-root; the project files it loads (dialplan/, sounds/) come
from the source tree this package sits in (EXTBILL_PROJECT_DIR overrides it).

    ast = Asterisk()                  # root: EXTBILL_ASTERISK_ROOT or the default
    ast.start()                       # fresh config dir inside the root, waits for AMI
    async with ast.ami() as ami:      # asyncio AMI client (harness user)
        await ami.set_agi("127.0.0.1:4573")       # where the dialplan's FastAGI goes
        call = await ami.originate("4001234567", dtmf="1", hold=10)
        await call.wait_done()
        call.prompts()                # ['extbill/welcome', ...] (dialplan Read/Playback)
        call.dial_strings()           # ['Local/talk-1-3@extbill-test-branch']
        call.bridged()                # True once caller and callee shared a bridge
    ast.played(call)                  # [('extbill/welcome', 'zh'), ...] from Asterisk's log,
                                      # includes the in-bridge Dial L() warning prompt
    ast.cli("core show channels")     # asterisk -rx against this instance
    ast.ami_sessions()                # manager show connected, parsed
    ast.kick_ami("extbill")           # drop that user's AMI TCP sessions (manager kick session)
    ast.stop()                        # core stop now, kill by PID, remove the config dir

AMI: ast.ami_port on 127.0.0.1; users ast.harness_user (reads what [extbill] reads, writes
all: Originate, Setvar) and ast.extbill_user = ("extbill", secret), the project's
[extbill] user from dialplan/manager.conf, for the real server's AMI client.
FastAGI: the dialplan calls agi://${EXTBILL_AGI}; set it per test with
`await ami.set_agi("127.0.0.1:PORT")` (a global variable) or Asterisk(agi_address=...).

The config dir (ROOT/opt/extbill-e2e-<pid>-<n>/) holds: the project's
dialplan/extensions.conf copied UNCHANGED to etc/extbill/extensions.conf and #included by
a test extensions.conf (EXTBILL_AGI override + test-only contexts), a manager.conf made
from the project's (port changed, a harness user added), the project's modules.conf plus
the test-only modules, and the project's sounds under data/sounds/<lang>/extbill/.

Test-only contexts (see TEST_EXTENSIONS):
  extbill-test-caller, exten sim: the simulated caller. The call is an AMI Originate of
      Local/<400 number>@extbill-ivr; its ;2 half runs the IVR, its ;1 half runs `sim`,
      driven by channel variables: SIM_DTMF_DELAY (s, then) SIM_DTMF (SendDTMF digits,
      'w' = 0.5 s pause, empty = press nothing), SIM_HOLD (s on the line, then Hangup).
  extbill-test-branch: simulated branch phones, as Dial strings
      Local/talk-R-T@extbill-test-branch  ring R s, answer, talk T s, hang up
      Local/busy@extbill-test-branch      busy
      Local/noanswer@extbill-test-branch  rings for ever
      Local/congestion@extbill-test-branch
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def project_dir() -> Path:
    """The source tree holding dialplan/ and sounds/: EXTBILL_PROJECT_DIR, else the one
    this package sits in."""
    env = os.environ.get("EXTBILL_PROJECT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2]


PROJECT = project_dir()
DEFAULT_ROOT = "/var/cache/extbill/asterisk-root"
ASTERISK_BIN = "/usr/sbin/asterisk"

LOG_QUIET_S = 0.5  # played(): the verbose log is caught up once it is this long unchanged
LOG_CATCH_UP_MAX_S = 3.0  # ... or after this long in any case
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
; Test-only contexts of the extbill Asterisk harness (fastagi/asterisk_harness.py).

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

_dir_counter = itertools.count(1)


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
    ) -> None:
        self.root = Path(root) if root else default_root()
        # more dialplan contexts, appended as written (the benchmark's request loop)
        self.extra_extensions = extra_extensions
        self.project = Path(project) if project else PROJECT
        self.name = f"extbill-e2e-{os.getpid()}-{next(_dir_counter)}"
        self.dir_in_root = f"/opt/{self.name}"
        self.dir = self.root / "opt" / self.name
        self.ami_port = free_port()
        # Nothing listens here until a test points EXTBILL_AGI somewhere (set_agi).
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
        d = self.dir
        if d.exists():
            shutil.rmtree(d)
        for sub in ("etc/extbill", "run", "log", "spool", "db", "varlib", "cache", "data/sounds", "agi-bin"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # The stock documentation (XML app docs) stays where the package put it.
        (d / "data" / "documentation").symlink_to("/usr/share/asterisk/documentation")
        for lang in ("zh", "en"):
            src = self.project / "sounds" / lang
            if src.is_dir():
                shutil.copytree(src, d / "data" / "sounds" / lang)

        x = self.dir_in_root
        etc = d / "etc"
        (etc / "asterisk.conf").write_text(f"""\
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
verbose = {self.verbose}
nofork = yes
documentation_language = en_US
""")
        # The admin's file, unchanged, and a test extensions.conf that #includes it.
        shutil.copyfile(self.project / "dialplan" / "extensions.conf", etc / "extbill" / "extensions.conf")
        (etc / "extensions.conf").write_text(
            "; extbill e2e: the project dialplan, unchanged, plus test-only contexts.\n"
            '#include "extbill/extensions.conf"\n\n'
            "[globals](+)\n"
            f"EXTBILL_AGI={self.agi_address}\n\n"
            + TEST_EXTENSIONS.format(caller=CALLER_CONTEXT, branch=BRANCH_CONTEXT)
            + (f"\n{self.extra_extensions}" if self.extra_extensions else "")
        )
        (etc / "manager.conf").write_text(self._manager_conf())
        modules = (self.project / "dialplan" / "modules.conf").read_text()
        modules += "\n; extbill e2e test-only modules\n" + "".join(f"load => {m}\n" for m in TEST_MODULES)
        (etc / "modules.conf").write_text(modules)
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

    def _manager_conf(self) -> str:
        """The project's manager.conf: same [general] and [extbill] user, with our port
        and a known secret, plus a harness user. The harness user READS exactly what the
        [extbill] user reads (so recorded streams are what extbill gets in production)
        and may write everything (Originate, Setvar, ...). It also reads dialplan events
        (Newexten): that is how a test knows which prompts a caller heard."""
        text = (self.project / "dialplan" / "manager.conf").read_text()
        text = re.sub(r"(?m)^(\s*port\s*=).*$", rf"\g<1> {self.ami_port}", text)
        text = re.sub(r"(?m)^(\s*secret\s*=).*$", rf"\g<1> {EXTBILL_SECRET}", text)
        read = _conf_value(_section(text, EXTBILL_USER), "read") or "all"
        return text + (
            f"\n[{HARNESS_USER}]\nsecret = {HARNESS_SECRET}\n"
            "deny = 0.0.0.0/0.0.0.0\npermit = 127.0.0.1/255.255.255.255\n"
            f"read = {read},dialplan\nwrite = all\nwritetimeout = 5000\n"
        )

    # ---------------------------------------------------------------- process
    def start(self, timeout: float = 30.0) -> Asterisk:
        self.write_config()
        cmd = ["chroot", str(self.root), ASTERISK_BIN, "-C", self.conf_path, "-f", "-n"]
        cmd += ["-" + "v" * self.verbose] if self.verbose else []
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
        if self.tz:
            env["TZ"] = self.tz
        self._console = open(self.console_path, "wb")
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
        if getattr(self, "_console", None):
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
        return Ami("127.0.0.1", self.ami_port, username, secret, timeout=timeout)


class AmiError(Exception):
    pass


Message = dict[str, Any]


class Call:
    """One simulated call: all AMI events of its channels, in arrival order."""

    def __init__(self, number: str, ids: Iterable[str], action_id: str) -> None:
        self.number = number
        self.action_id = action_id
        self.ids: set[str] = set(ids)
        self.caller_id, self.ivr_id = list(ids)[:2]
        self.events: list[Message] = []
        self.live: set[str] = set()
        self.seen_channel = False
        self.failed: str | None = None
        self.done = asyncio.Event()
        self._last_hangup = 0.0

    # -- event routing
    def matches(self, ev: Message) -> bool:
        if ev.get("ActionID") == self.action_id:
            return True
        for key in ("Uniqueid", "Linkedid", "DestUniqueid", "DestLinkedid", "UniqueID", "LinkedID"):
            v = ev.get(key)
            if isinstance(v, str) and v in self.ids:
                return True
        return False

    def feed(self, ev: Message) -> None:
        self.events.append(ev)
        for key in ("Uniqueid", "DestUniqueid"):
            v = ev.get(key)
            if isinstance(v, str) and v:
                self.ids.add(v)
        name = ev.get("Event")
        if name == "Newchannel":
            self.live.add(ev.get("Uniqueid", ""))
            self.seen_channel = True
        elif name == "Hangup":
            self.live.discard(ev.get("Uniqueid", ""))
            self._last_hangup = time.monotonic()
        elif name == "OriginateResponse" and ev.get("Response") != "Success":
            self.failed = ev.get("Reason", "originate failed")
            self.done.set()

    @property
    def finished(self) -> bool:
        return self.seen_channel and not self.live

    async def wait_done(self, timeout: float = 60.0, settle: float = 0.5) -> Call:
        """Wait until every channel of the call has hung up, then `settle` more seconds
        for the late events (Cdr)."""
        deadline = time.monotonic() + timeout
        while not (self.finished or self.failed):
            if time.monotonic() > deadline:
                raise TimeoutError(f"call to {self.number} still has channels {self.live}")
            await asyncio.sleep(0.05)
        await asyncio.sleep(settle)
        self.done.set()
        return self

    # -- questions
    def of(self, *names: str) -> list[Message]:
        return [e for e in self.events if e.get("Event") in names]

    def channel_names(self) -> set[str]:
        return {e["Channel"] for e in self.events if "Channel" in e and isinstance(e["Channel"], str)}

    def ivr_events(self) -> list[Message]:
        return [e for e in self.events if e.get("Uniqueid") == self.ivr_id]

    def prompts(self) -> list[str]:
        """extbill/ prompts the dialplan played to the caller (Read/Playback Newexten
        events of the IVR channel, in order). Not the in-bridge L() prompts: Asterisk.played."""
        out = []
        for e in self.of("Newexten"):
            app, data = e.get("Application", ""), e.get("AppData", "")
            if app == "Playback":
                files = data.split(",")[0].split("&")
            elif app in ("Read", "Background"):
                files = (data.split(",")[1] if app == "Read" and "," in data else data.split(",")[0]).split(
                    "&"
                )
            else:
                continue
            out += [f for f in files if f.startswith("extbill/")]
        return out

    def applications(self, channel_id: str | None = None) -> list[tuple[str, str]]:
        cid = channel_id or self.ivr_id
        return [
            (e.get("Application", ""), e.get("AppData", ""))
            for e in self.of("Newexten")
            if e.get("Uniqueid") == cid
        ]

    def dial_strings(self) -> list[str]:
        """What the IVR dialled (DialBegin DialString, e.g. Local/talk-1-3@extbill-test-branch)."""
        out = []
        for e in self.of("DialBegin"):
            if e.get("Uniqueid") == self.ivr_id:
                ds = e.get("DialString", "")
                # DialBegin's DialString omits the technology: rebuild it from DestChannel.
                tech = e.get("DestChannel", "").split("/", 1)[0]
                out.append(f"{tech}/{ds}" if tech and not ds.startswith(tech + "/") else ds)
        return out

    def dial_statuses(self) -> list[str]:
        return [e.get("DialStatus", "") for e in self.of("DialEnd") if e.get("Uniqueid") == self.ivr_id]

    def dialed(self) -> bool:
        """Did the IVR dial anything? (The Originate's own DialBegin, which has no
        caller channel, does not count.)"""
        return any(e.get("Uniqueid") == self.ivr_id for e in self.of("DialBegin")) or any(
            a == "Dial" for a, _ in self.applications()
        )

    def bridged(self) -> bool:
        """True if the IVR channel shared a bridge with another channel."""
        members: dict[str, set[str]] = {}
        for e in self.of("BridgeEnter"):
            members.setdefault(e.get("BridgeUniqueid", ""), set()).add(e.get("Uniqueid", ""))
        return any(self.ivr_id in m and len(m) >= 2 for m in members.values())

    def bridge_times(self) -> tuple[float, float] | None:
        """(enter, leave) AMI Timestamps of the IVR channel's bridge, if it was bridged."""
        enter = [float(e["Timestamp"]) for e in self.of("BridgeEnter") if e.get("Uniqueid") == self.ivr_id]
        leave = [float(e["Timestamp"]) for e in self.of("BridgeLeave") if e.get("Uniqueid") == self.ivr_id]
        if not enter or not leave:
            return None
        return enter[0], leave[-1]

    def var(self, name: str, channel_id: str | None = None) -> str | None:
        """Last VarSet value of `name` on a channel (default: the IVR channel)."""
        cid = channel_id or self.ivr_id
        val = None
        for e in self.of("VarSet"):
            if e.get("Variable") == name and (cid == "*" or e.get("Uniqueid") == cid):
                val = e.get("Value")
        return val


class Ami:
    """A small asyncio AMI client: login, actions with timeouts, every event recorded,
    and simulated calls (originate) that collect their own events."""

    def __init__(self, host: str, port: int, username: str, secret: str, timeout: float = 5.0) -> None:
        self.host, self.port, self.username, self.secret = host, port, username, secret
        self.timeout = timeout
        self.events: list[Message] = []
        self.calls: list[Call] = []
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._lists: dict[str, list[Message]] = {}
        self._list_resp: dict[str, Message] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Any, asyncio.Future[Message]]] = []
        self.greeting = ""

    async def __aenter__(self) -> Ami:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )
        self.greeting = (await asyncio.wait_for(self._reader.readline(), self.timeout)).decode().strip()
        self._task = asyncio.create_task(self._read_loop())
        resp = await self.action("Login", Username=self.username, Secret=self.secret, Events="on")
        if resp.get("Response") != "Success":
            raise AmiError(f"login failed: {resp}")

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.action("Logoff"), 1)
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        self._writer = self._reader = self._task = None

    async def _read_loop(self) -> None:
        assert self._reader is not None
        msg: Message = {}
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
                if line == "":
                    if msg:
                        self._dispatch(msg)
                    msg = {}
                    continue
                key, sep, value = line.partition(":")
                if not sep:
                    continue
                key, value = key.strip(), value.strip()
                if key in msg:  # repeated keys (ChanVariable, Output...) become lists
                    prev = msg[key]
                    msg[key] = (prev if isinstance(prev, list) else [prev]) + [value]
                else:
                    msg[key] = value
        finally:
            err = AmiError("AMI connection closed")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            for _, fut in self._waiters:
                if not fut.done():
                    fut.set_exception(err)

    def _dispatch(self, msg: Message) -> None:
        aid = msg.get("ActionID")
        if "Response" in msg and aid in self._pending:
            if msg.get("EventList") == "start":
                self._lists[aid] = []
                self._list_resp[aid] = msg
                return
            fut = self._pending.pop(aid)
            if not fut.done():
                fut.set_result(msg)
            return
        if "Event" not in msg:
            return
        if aid in self._lists:
            if msg.get("EventList") == "Complete":
                items = self._lists.pop(aid)
                resp = dict(self._list_resp.pop(aid))
                resp["events"] = items
                fut = self._pending.pop(aid)
                if not fut.done():
                    fut.set_result(resp)
            else:
                self._lists[aid].append(msg)
            return
        self.events.append(msg)
        for call in self.calls:
            if call.matches(msg):
                call.feed(msg)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(msg):
                fut.set_result(msg)
                self._waiters.remove((pred, fut))

    async def action(
        self, name: str, fields: Iterable[tuple[str, str]] = (), *, timeout: float | None = None, **kw: Any
    ) -> Message:
        """Send an action; returns its Response (for list actions: the response with
        the listed events under "events"). Repeated headers: pass (key, value) pairs."""
        assert self._writer is not None, "not connected"
        aid = f"h{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        lines = [f"Action: {name}", f"ActionID: {aid}"]
        lines += [f"{k}: {v}" for k, v in kw.items()]
        lines += [f"{k}: {v}" for k, v in fields]
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[aid] = fut
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()
        try:
            return await asyncio.wait_for(fut, timeout or self.timeout)
        finally:
            self._pending.pop(aid, None)

    async def wait_event(self, pred: Any, timeout: float = 10.0) -> Message:
        for ev in self.events:
            if pred(ev):
                return ev
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        return await asyncio.wait_for(fut, timeout)

    async def wait_fully_booted(self, timeout: float = 10.0) -> None:
        await self.wait_event(lambda e: e.get("Event") == "FullyBooted", timeout)

    async def set_global(self, name: str, value: str) -> None:
        resp = await self.action("Setvar", Variable=name, Value=value)
        if resp.get("Response") != "Success":
            raise AmiError(f"Setvar {name}: {resp}")

    async def set_agi(self, address: str) -> None:
        """Point the dialplan's FastAGI (global EXTBILL_AGI) at host:port."""
        await self.set_global("EXTBILL_AGI", address)

    async def originate(
        self,
        number: str,
        *,
        dtmf: str = "",
        hold: float = 10.0,
        dtmf_delay: float = 1.5,
        callerid: str = "13800138000",
        variables: dict[str, str] | None = None,
    ) -> Call:
        """Call <number> into extbill-ivr from a simulated caller that waits `dtmf_delay`
        seconds, sends `dtmf` (SendDTMF syntax; 'w' = 0.5 s pause), then stays `hold`
        seconds and hangs up (unless the IVR hung up first)."""
        # Shaped like Asterisk's own "[systemname-]epoch.seq" Uniqueids: the IVR channel's
        # Uniqueid is the billing id, and extbill treats ids of that shape as naming the
        # caller channel, as in production.
        uid = f"{int(time.time())}.{uuid.uuid4().int % 10**9}"
        caller_id, ivr_id = f"sim-{uid}", f"ivr-{uid}"
        aid = f"orig-{uuid.uuid4().hex[:8]}"
        call = Call(number, (caller_id, ivr_id), aid)
        self.calls.append(call)
        vars_ = {"SIM_DTMF": dtmf, "SIM_HOLD": f"{hold:g}", "SIM_DTMF_DELAY": f"{dtmf_delay:g}"}
        vars_.update(variables or {})
        fields = [("Variable", f"{k}={v}") for k, v in vars_.items()]
        resp = await self._originate(aid, number, caller_id, ivr_id, callerid, fields)
        if resp.get("Response") != "Success":
            raise AmiError(f"Originate refused: {resp}")
        return call

    async def _originate(
        self, aid: str, number: str, caller_id: str, ivr_id: str, callerid: str, fields: list[tuple[str, str]]
    ) -> Message:
        assert self._writer is not None
        lines = [
            "Action: Originate",
            f"ActionID: {aid}",
            f"Channel: Local/{number}@{IVR_CONTEXT}",
            f"Context: {CALLER_CONTEXT}",
            "Exten: sim",
            "Priority: 1",
            f'CallerID: "sim" <{callerid}>',
            "Timeout: 30000",
            "Async: true",
            f"ChannelId: {caller_id}",
            f"OtherChannelId: {ivr_id}",
        ] + [f"{k}: {v}" for k, v in fields]
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[aid] = fut
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()
        try:
            return await asyncio.wait_for(fut, self.timeout)
        finally:
            self._pending.pop(aid, None)

    async def core_show_channels(self) -> list[Message]:
        resp = await self.action("CoreShowChannels")
        return resp.get("events", [])
