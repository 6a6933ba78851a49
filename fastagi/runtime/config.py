"""Settings: one dataclass, from defaults < TOML file (--config) < environment < flags.

Every setting has an environment override EXTBILL_<NAME upper-cased>; a bad value is
refused at start with an error naming the key and where it came from.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from fastagi.core.quota import QUOTA_S_DEFAULT, RENEW_BEFORE_S_DEFAULT
from fastagi.core.vocab import UnsettledPolicy
from fastagi.runtime.peers import PeerAllowlist, PeerListError

# The defaults other modules share: their one home (Settings uses them, others import them).
AGI_HOST = "127.0.0.1"
AGI_PORT = 4573  # FastAGI's registered port
AGI_BIND = f"{AGI_HOST}:{AGI_PORT}"
DIAL_TIMEOUT_S = 30
SWEEP_GRACE_S = 120
UNSETTLED_POLICY = UnsettledPolicy.MARK
QUOTA_S = QUOTA_S_DEFAULT  # the core decides with it too, so its home is core/quota.py
RENEW_BEFORE_S = RENEW_BEFORE_S_DEFAULT


class ConfigError(ValueError):
    """A setting with a bad value; the message names the key and its source."""


@dataclass(frozen=True)
class Settings:
    db: str = field(default="extbill.db", metadata={"help": "SQLite database file, or a postgresql:// URL"})
    agi_bind: str = field(default=AGI_BIND, metadata={"help": "FastAGI listen address host:port"})
    agi_allow: str = field(
        default="",
        metadata={
            "help": "who may connect to FastAGI: Asterisk servers' addresses or networks, comma "
            "separated (empty: loopback only); others are refused unread"
        },
    )
    ami_host: str = field(default="127.0.0.1", metadata={"help": "Asterisk AMI host"})
    ami_port: int = field(default=5038, metadata={"help": "Asterisk AMI port"})
    ami_user: str = field(default="extbill", metadata={"help": "AMI user (manager.conf section)"})
    ami_secret: str = field(default="", metadata={"help": "AMI secret; empty disables the AMI consumer"})
    asterisk_system_name: str = field(
        default="",
        metadata={
            "help": "systemname (asterisk.conf) of the Asterisk whose AMI this serve reads; set one per "
            "Asterisk when several share a PostgreSQL database: reconcile then closes only its calls"
        },
    )
    dial_timeout_s: int = field(
        default=DIAL_TIMEOUT_S, metadata={"help": "how long a branch phone may ring, s"}
    )
    unsettled_policy: UnsettledPolicy = field(
        default=UNSETTLED_POLICY,
        metadata={
            "help": "a reservation nobody settled: 'mark' releases it and marks the call unrated, "
            "'charge' charges the whole grant"
        },
    )
    quota_s: int = field(
        default=QUOTA_S,
        metadata={
            "help": "talk time one grant holds (a chunk), s: calls share an account's money and "
            "are renewed mid-call while AMI is up"
        },
    )
    renew_before_s: int = field(
        default=RENEW_BEFORE_S,
        metadata={"help": "a call asks for its next chunk this long before its granted end, s"},
    )
    sweep_interval_s: int = field(
        default=30, metadata={"help": "how often the sweeper looks for stale reservations, s"}
    )
    sweep_grace_s: int = field(
        default=SWEEP_GRACE_S, metadata={"help": "a reservation older than ring + grant + this is stale, s"}
    )
    connections_max: int = field(
        default=1000, metadata={"help": "FastAGI connections at once; more are refused"}
    )
    workers: int = field(
        default=1,
        metadata={
            "help": "FastAGI processes sharing the port (one per core to spare); the first also runs AMI and the sweeper"
        },
    )
    header_timeout_s: float = field(
        default=5.0, metadata={"help": "a FastAGI client must send its headers within this, s"}
    )
    drain_timeout_s: float = field(
        default=10.0, metadata={"help": "on SIGTERM, calls in setup get this long to finish, s"}
    )
    log_format: str = field(default="json", metadata={"help": "json or console"})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    http_bind: str = field(
        default="",
        metadata={"help": "console, JSON API and /metrics listen address host:port; empty: off"},
    )
    webhook_url: str = field(
        default="",
        metadata={
            "help": "where serve POSTs signed notifications (http:// or https://); empty: kept in the outbox"
        },
    )
    webhook_secret: str = field(
        default="", metadata={"help": "HMAC-SHA256 key of the webhooks' X-Extbill-Signature header"}
    )
    webhook_retry_s: int = field(
        default=10, metadata={"help": "first retry of a failed webhook after this, s; doubling up to an hour"}
    )
    demo: bool = field(
        default=True, metadata={"help": "seed a demo number, extensions and plan into a new database"}
    )

    def __post_init__(self) -> None:
        _validate(self)
        # a policy read from a file, the environment or a flag arrives as its text
        object.__setattr__(self, "unsettled_policy", UnsettledPolicy(self.unsettled_policy))


SWEEP_GRACE_S_MIN = 10
CHOICES = {
    "unsettled_policy": tuple(UnsettledPolicy),
    "log_format": ("json", "console"),
    "log_level": ("debug", "info", "warning", "error"),
}
POSITIVE = {
    "ami_port": 65535,
    "dial_timeout_s": 600,
    "quota_s": 86400,
    "renew_before_s": 3600,
    "sweep_interval_s": 3600,
    "sweep_grace_s": 86400,
    "connections_max": 100_000,
    "workers": 64,
    "header_timeout_s": 300,
    "drain_timeout_s": 600,
    "webhook_retry_s": 3600,
}
WEBHOOK_SECRET_CHARS_MIN = 16  # a shorter shared secret is too easy to guess


def _validate(s: Settings) -> None:
    for key, allowed in CHOICES.items():
        if getattr(s, key) not in allowed:
            raise ConfigError(f"{key}: {getattr(s, key)!r} must be one of {', '.join(allowed)}")
    for key, top in POSITIVE.items():
        value = getattr(s, key)
        if not 0 < value <= top:
            raise ConfigError(f"{key}: {value!r} must be greater than 0 and at most {top}")
    if s.sweep_grace_s < SWEEP_GRACE_S_MIN:
        # the limit-reached prompt plays after the cut, so a granted call can report a few
        # seconds past ring + grant: a shorter grace would close live calls as unrated
        raise ConfigError(f"sweep_grace_s: {s.sweep_grace_s!r} must be at least {SWEEP_GRACE_S_MIN}")
    parse_hostport(s.agi_bind, "agi_bind")
    try:
        PeerAllowlist.parse(s.agi_allow)
    except PeerListError as exc:
        raise ConfigError(f"agi_allow: {exc}") from None
    if s.http_bind:
        parse_hostport(s.http_bind, "http_bind")
    if not s.db:
        raise ConfigError("db: must not be empty")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{0,64}", s.asterisk_system_name):
        raise ConfigError(
            f"asterisk_system_name: {s.asterisk_system_name!r} must be up to 64 letters, digits, _, - or ."
        )
    _validate_webhook(s)


def _validate_webhook(s: Settings) -> None:
    if not s.webhook_url:
        return
    if not s.webhook_url.startswith(("http://", "https://")) or any(c.isspace() for c in s.webhook_url):
        raise ConfigError(f"webhook_url: {s.webhook_url!r} must be an http:// or https:// URL")
    if len(s.webhook_secret) < WEBHOOK_SECRET_CHARS_MIN:
        raise ConfigError(
            f"webhook_secret: must be at least {WEBHOOK_SECRET_CHARS_MIN} characters when webhook_url is set"
        )


def parse_hostport(text: str, key: str = "address") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{key}: {text!r} must be host:port, e.g. {AGI_BIND}")
    return host.strip("[]"), int(port)


def _coerce(key: str, value: Any, typ: Any, source: str) -> Any:
    typ_name = typ if isinstance(typ, str) else typ.__name__
    if typ_name == UnsettledPolicy.__name__:
        typ_name = "str"  # read as text; Settings checks it is one of the choices
    try:
        if typ_name == "bool":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ_name == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if typ_name == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # timeouts only; never money
        if not isinstance(value, str):
            raise ValueError
        return value
    except (TypeError, ValueError):
        raise ConfigError(f"{key} ({source}): {value!r} is not a valid {typ_name}") from None


def env_name(key: str) -> str:
    return f"EXTBILL_{key.upper()}"


def load(
    config_file: str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults, then the TOML file, then EXTBILL_* variables, then command-line flags."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(Settings)}
    # the value each key takes and the layer it comes from: only the winning layer's value
    # is parsed and checked, so a valid flag overrides a malformed variable or file entry
    chosen: dict[str, tuple[Any, str]] = {}
    if config_file:
        for key, value in _read_file(config_file).items():
            if key not in known:
                raise ConfigError(f"config file {config_file}: unknown key {key!r}")
            chosen[key] = (value, config_file)
    for key in known:
        if env_name(key) in env:
            chosen[key] = (env[env_name(key)], env_name(key))
    for key, value in (overrides or {}).items():
        if value is not None:
            chosen[key] = (value, "command line")
    values = {key: _coerce(key, value, known[key].type, source) for key, (value, source) in chosen.items()}
    try:
        return replace(Settings(), **values)
    except ConfigError as exc:
        key, _, problem = str(exc).partition(":")
        source = chosen[key][1] if key in chosen else "default"
        raise ConfigError(f"{key} ({source}):{problem}") from None


def _read_file(config_file: str) -> dict[str, Any]:
    try:
        with open(config_file, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"config file {config_file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {config_file}: {exc}") from None


def describe() -> str:
    """The settings table for `extbill serve --help`."""
    lines = ["settings (TOML key / environment variable, default):"]
    for f in fields(Settings):
        default = f.default if not f.name.endswith("_secret") else "(empty)"
        lines.append(f"  {f.name:<18} {env_name(f.name):<28} {default!s:<16} {f.metadata['help']}")
    return "\n".join(lines)
