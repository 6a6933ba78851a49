"""The Asterisk harness: a real Asterisk 22 for extbill, in the chroot built by .ci/asterisk-root.

Used by the end-to-end tests (tests/e2e) and by `extbill sandbox` (for people without an
Asterisk of their own). The root is EXTBILL_ASTERISK_ROOT, default
/var/cache/extbill/asterisk-root; the project files it loads (dialplan/, sounds/) come
from the source tree this package sits in (EXTBILL_PROJECT_DIR overrides it).

    ast = Asterisk()                  # root: EXTBILL_ASTERISK_ROOT or the default
                                      # (system_name="pbx-a": asterisk.conf systemname, and
                                      # the calls' ids "pbx-a-epoch.seq")
    ast.start()                       # fresh config dir inside the root, waits for AMI
    async with ast.ami() as ami:      # asyncio AMI client (harness user)
        await ami.set_agi("127.0.0.1:4573")       # where the dialplan's FastAGI goes
                                      # (several: set_agi(a, b), tried in turn: failover)
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

from fastagi.dev.harness.ami import Ami, AmiError, Message
from fastagi.dev.harness.calls import Call
from fastagi.dev.harness.config import (
    BRANCH_CONTEXT,
    CALLER_CONTEXT,
    EXTBILL_SECRET,
    EXTBILL_USER,
    HARNESS_SECRET,
    HARNESS_USER,
    IVR_CONTEXT,
    TEST_EXTENSIONS,
    TEST_MODULES,
)
from fastagi.dev.harness.paths import (
    ASTERISK_BIN,
    DEFAULT_ROOT,
    PROJECT,
    default_root,
    free_port,
    project_dir,
    root_problem,
)
from fastagi.dev.harness.process import Asterisk

__all__ = [
    "ASTERISK_BIN",
    "BRANCH_CONTEXT",
    "CALLER_CONTEXT",
    "DEFAULT_ROOT",
    "EXTBILL_SECRET",
    "EXTBILL_USER",
    "HARNESS_SECRET",
    "HARNESS_USER",
    "IVR_CONTEXT",
    "PROJECT",
    "TEST_EXTENSIONS",
    "TEST_MODULES",
    "Ami",
    "AmiError",
    "Asterisk",
    "Call",
    "Message",
    "default_root",
    "free_port",
    "project_dir",
    "root_problem",
]
