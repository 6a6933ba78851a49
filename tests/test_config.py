"""Settings: defaults < TOML file < EXTBILL_* environment < flags; bad values are named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fastagi.runtime import config
from fastagi.runtime.config import ConfigError


def test_each_layer_overrides_the_one_before(tmp_path: Path) -> None:
    """An admin's TOML beats the defaults, the environment beats the file, a flag beats both."""
    toml = tmp_path / "extbill.toml"
    toml.write_text('ami_port = 6000\nami_user = "from-file"\ndial_timeout_s = 40\n')
    s = config.load(
        str(toml),
        env={"EXTBILL_AMI_USER": "from-env", "EXTBILL_DIAL_TIMEOUT_S": "45"},
        overrides={"dial_timeout_s": 50},
    )
    assert (s.ami_port, s.ami_user, s.dial_timeout_s) == (6000, "from-env", 50)
    assert config.load(env={}).agi_bind == "127.0.0.1:4573"


@pytest.mark.parametrize(
    "toml_text, env, named",
    [
        ("no_such_key = 1\n", {}, "unknown key 'no_such_key'"),
        ("ami_port = 'x'\n", {}, "ami_port"),
        ("", {"EXTBILL_AMI_PORT": "70000"}, "ami_port"),
        ("", {"EXTBILL_UNSETTLED_POLICY": "forgive"}, "unsettled_policy"),
        ("", {"EXTBILL_AGI_BIND": "nohostport"}, "agi_bind"),
        ("", {"EXTBILL_SWEEP_GRACE_S": "3"}, "sweep_grace_s"),
        ("ami_port = [\n", {}, "config file"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_key(
    tmp_path: Path, toml_text: str, env: dict[str, str], named: str
) -> None:
    """A bad value stops the start with an error that names the key."""
    toml = tmp_path / "extbill.toml"
    toml.write_text(toml_text)
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        config.load(str(toml), env=env)


def test_serve_refuses_a_bad_setting_in_one_line(tmp_path: Path) -> None:
    """`extbill serve` with a bad setting exits 2 with one line naming it, and creates no database."""
    db = tmp_path / "x.db"
    proc = subprocess.run(
        [sys.executable, "-m", "fastagi", "serve", "--db", str(db)],
        env={"EXTBILL_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "log_format" in proc.stderr
    assert not db.exists()


def test_serve_help_lists_every_setting() -> None:
    """`extbill serve --help` shows every setting with its environment variable."""
    out = subprocess.run(
        [sys.executable, "-m", "fastagi", "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for f in config.fields(config.Settings):
        assert f.name in out and config.env_name(f.name) in out


def test_a_valid_flag_overrides_a_malformed_environment_variable() -> None:
    """A malformed EXTBILL_* value is not used when a flag sets the same key: the start goes on."""
    s = config.load(
        env={"EXTBILL_AMI_PORT": "not-a-port", "EXTBILL_WORKERS": "0"},
        overrides={"ami_port": 5039, "workers": 2},
    )
    assert (s.ami_port, s.workers) == (5039, 2)


def test_a_valid_environment_variable_overrides_a_malformed_file_value(tmp_path: Path) -> None:
    toml = tmp_path / "extbill.toml"
    toml.write_text("ami_port = 'x'\nsweep_interval_s = 0\n")
    s = config.load(str(toml), env={"EXTBILL_AMI_PORT": "5040", "EXTBILL_SWEEP_INTERVAL_S": "60"})
    assert (s.ami_port, s.sweep_interval_s) == (5040, 60)


@pytest.mark.parametrize(
    "toml_text, env, flags, source",
    [
        ("sweep_interval_s = 0\n", {}, {}, "extbill.toml"),
        ("", {"EXTBILL_SWEEP_INTERVAL_S": "99999"}, {}, "EXTBILL_SWEEP_INTERVAL_S"),
        (
            "sweep_interval_s = 60\n",
            {"EXTBILL_SWEEP_INTERVAL_S": "30"},
            {"sweep_interval_s": 0},
            "command line",
        ),
        ("", {"EXTBILL_UNSETTLED_POLICY": "forgive"}, {}, "EXTBILL_UNSETTLED_POLICY"),
        ("", {}, {"agi_bind": "nohostport"}, "command line"),
        ("sweep_grace_s = 3\n", {}, {}, "extbill.toml"),
    ],
)
def test_a_range_error_names_the_layer_it_came_from(
    tmp_path: Path, toml_text: str, env: dict[str, str], flags: dict, source: str
) -> None:
    """The file, the environment variable or the command line: the one whose value is used."""
    toml = tmp_path / "extbill.toml"
    toml.write_text(toml_text)
    with pytest.raises(ConfigError) as err:
        config.load(str(toml), env=env, overrides=flags)
    text = str(err.value)
    key = text.split(" ", 1)[0]
    assert text.startswith(f"{key} ({toml if source == 'extbill.toml' else source}): "), text
    assert "check --config" not in text  # the layer is known: no list of places to look


def test_webhook_settings_are_checked() -> None:
    from fastagi.runtime.config import ConfigError, load

    s = load(env={"EXTBILL_WEBHOOK_URL": "https://hq.example/hooks", "EXTBILL_WEBHOOK_SECRET": "x" * 16})
    assert (s.webhook_url, s.webhook_retry_s) == ("https://hq.example/hooks", 10)
    with pytest.raises(
        ConfigError, match=r"webhook_secret \(EXTBILL_WEBHOOK_SECRET\): must be at least 16 characters"
    ):
        load(env={"EXTBILL_WEBHOOK_URL": "https://hq.example/hooks", "EXTBILL_WEBHOOK_SECRET": "short"})
    with pytest.raises(ConfigError, match=r"webhook_url \(EXTBILL_WEBHOOK_URL\): 'ftp://x' must be an http"):
        load(env={"EXTBILL_WEBHOOK_URL": "ftp://x", "EXTBILL_WEBHOOK_SECRET": "x" * 16})
    with pytest.raises(ConfigError, match="webhook_retry_s"):
        load(env={"EXTBILL_WEBHOOK_RETRY_S": "0"})
