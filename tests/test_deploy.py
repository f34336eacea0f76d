"""The systemd units in deploy/: parsed for the settings syncd relies on, and checked with
`systemd-analyze` (verify, and the security exposure score of the template)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.config import env_var_name, load_config, resolve_api_key
from syncd.daemon import STOP_BOUND

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TEMPLATE = DEPLOY / "syncd@.service"
USER_UNIT = DEPLOY / "syncd-user.service"
MAX_EXPOSURE = 2.0
INSTALL_HINT = (
    "systemd-analyze is missing: install it with `apt-get update && apt-get install -y systemd` "
    "(the Makefile's test target does this where it is missing)"
)


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as (key, value) lists: keys such as Environment= may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path}: setting outside a section: {line}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{section}.{key}: expected one value, found {found}"
    return found[0]


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", text)
    assert match, f"unsupported time span {text!r}"
    return int(match[1]) * (60 if match[2] == "min" else 1)


def environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    return dict(v.split("=", 1) for v in values(unit, "Service", "Environment"))


def systemd_analyze() -> str:
    """The systemd-analyze binary; the test fails (never skips) when it is missing."""
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail(INSTALL_HINT)
    return found


def installed_syncd() -> str:
    """The `syncd` entry point of the environment running the tests (it must exist for verify)."""
    path = Path(sys.executable).parent / "syncd"
    assert path.exists(), f"{path} is missing: install the project (pip install -e .)"
    return str(path)


# --- the template unit ----------------------------------------------------------------------


def test_template_runs_one_instance_per_dataset() -> None:
    """syncd@pets runs `syncd run` on /etc/syncd/pets.toml, as Type=notify with a watchdog."""
    unit = parse_unit(TEMPLATE)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "ExecStart") == (
        "/usr/local/bin/syncd run --config /etc/syncd/%i.toml"
    )
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "RestartSec")) > 0
    assert seconds(one(unit, "Service", "WatchdogSec")) >= 10
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > STOP_BOUND
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_template_key_and_ledger_reach_the_config() -> None:
    """The key comes through LoadCredential= and the ledger lives in StateDirectory=, both
    handed to syncd through the environment variables its config reads."""
    unit = parse_unit(TEMPLATE)
    assert one(unit, "Service", "LoadCredential") == "clarifai-pat:/etc/syncd/%i.pat"
    assert one(unit, "Service", "StateDirectory") == "syncd/%i"
    env = environment(unit)
    assert env[env_var_name("remote", "api_key_file")] == "%d/clarifai-pat"
    assert env[env_var_name("ledger", "path")] == "%S/syncd/%i/ledger.db"


def test_unit_environment_configures_syncd(tmp_path: Path) -> None:
    """What systemd sets (%S and %d expanded) overrides the config file's ledger path and key
    file, and the key is read from the credentials directory."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "clarifai-pat").write_text("pat-0123456789abcdef\n")
    (creds / "clarifai-pat").chmod(0o400)
    config_file = tmp_path / "pets.toml"
    config_file.write_text(f'[source]\nroot = "{tmp_path}/data"\n[remote]\nuser_id = "me"\n')
    environ = {
        "SYNCD_LEDGER_PATH": f"{tmp_path}/state/syncd/pets/ledger.db",
        "SYNCD_REMOTE_API_KEY_FILE": f"{creds}/clarifai-pat",
    }
    config = load_config(config_file, environ=environ)
    assert config.ledger.path == tmp_path / "state/syncd/pets/ledger.db"
    assert resolve_api_key(config, environ).value == "pat-0123456789abcdef"


def test_template_is_sandboxed() -> None:
    """The dataset (the whole file system) is read-only; only the state directory is written."""
    unit = parse_unit(TEMPLATE)
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "read-only",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, key
    assert "@system-service" in values(unit, "Service", "SystemCallFilter")
    assert not values(unit, "Service", "ReadWritePaths")
    assert not values(unit, "Service", "PrivateNetwork"), "syncd must reach the API"


def test_template_security_exposure(tmp_path: Path) -> None:
    """`systemd-analyze security --offline=yes` rates an instance of the template 2.0 or lower."""
    analyze = systemd_analyze()
    instance = tmp_path / "syncd@test.service"
    shutil.copy(TEMPLATE, instance)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for syncd@test\.service: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def test_template_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze verify` reports nothing for an instance of the template.

    verify insists that ExecStart's binary exists, and /usr/local/bin/syncd does not on a build
    machine: the copy points ExecStart at the `syncd` installed in the test environment instead;
    every other line is verified as shipped.
    """
    analyze = systemd_analyze()
    instance = tmp_path / "syncd@test.service"
    instance.write_text(TEMPLATE.read_text().replace("/usr/local/bin/syncd", installed_syncd()))
    result = subprocess.run(
        [analyze, "verify", str(instance)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""


# --- the user unit --------------------------------------------------------------------------


def test_user_unit_settings() -> None:
    """The workstation unit is Type=notify with a watchdog, restarts on failure, and starts with
    the user's session."""
    unit = parse_unit(USER_UNIT)
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "ExecStart").endswith("syncd run --config %E/syncd/syncd.toml")
    assert one(unit, "Service", "Restart") == "on-failure"
    assert seconds(one(unit, "Service", "WatchdogSec")) >= 10
    assert seconds(one(unit, "Service", "TimeoutStopSec")) > STOP_BOUND
    assert environment(unit)[env_var_name("remote", "api_key_file")] == "%E/syncd/clarifai.pat"
    assert one(unit, "Install", "WantedBy") == "default.target"


def test_user_unit_verifies_cleanly(tmp_path: Path) -> None:
    """`systemd-analyze --user verify` reports nothing (ExecStart pointed at the test env's
    syncd, as for the template)."""
    analyze = systemd_analyze()
    unit = tmp_path / "syncd.service"
    unit.write_text(USER_UNIT.read_text().replace("%h/.local/bin/syncd", installed_syncd()))
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    result = subprocess.run(
        [analyze, "--user", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
