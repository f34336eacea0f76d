"""`syncd doctor`: each check against real files, a real ledger and the emulator over loopback."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from syncd.cli import doctor as doctor_command
from syncd.doctor import FAIL, OK, SKIP, WARN, Check, exit_code, render, run_checks
from syncd.emulator import Emulator
from syncd.ledger import Ledger
from syncd.sample import png_bytes


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


@pytest.fixture(name="inotify")
def _inotify(tmp_path: Path) -> Path:
    """A stand-in for /proc/sys/fs/inotify with generous limits."""
    path = tmp_path / "inotify"
    path.mkdir()
    (path / "max_user_watches").write_text("524288\n")
    (path / "max_user_instances").write_text("128\n")
    return path


@pytest.fixture(name="dataset")
def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "cats").mkdir(parents=True)
    (root / "cats" / "a.png").write_bytes(png_bytes(8, 8, seed=1))
    (root / "cats" / "a.json").write_text('{"concepts": ["cat"]}')
    (root / "b.png").write_bytes(png_bytes(8, 8, seed=2))
    return root


def write_config(tmp_path: Path, root: Path, api_base: str, **extra: str) -> Path:
    path = tmp_path / "pets.toml"
    remote = "\n".join(f'{k} = "{v}"' for k, v in extra.items())
    path.write_text(
        f'[source]\nroot = "{root}"\nname = "pets"\n'
        f'[remote]\napi_base = "{api_base}"\nuser_id = "me"\napp_id = "demo-app"\n{remote}\n'
        f'[ledger]\npath = "{tmp_path}/state/ledger.db"\n'
    )
    return path


def test_all_checks_pass(tmp_path: Path, dataset: Path, emulator: Emulator, inotify: Path) -> None:
    """A good config, key, reachable API, readable root and fresh ledger pass every check."""
    config = write_config(tmp_path, dataset, emulator.url)
    checks = run_checks(config, environ={"CLARIFAI_PAT": emulator.api_key}, inotify_dir=inotify)
    assert {c.name: c.status for c in checks} == {
        "config": OK,
        "credentials": OK,
        "remote": OK,
        "root": OK,
        "inotify": OK,
        "ledger": OK,
    }
    found = by_name(checks)
    assert "2 folders, 2 images" in found["root"].detail
    assert "created at first run" in found["ledger"].detail
    assert exit_code(checks) == 0
    assert emulator.api_key not in render(checks)


def test_bad_config_skips_the_rest(tmp_path: Path) -> None:
    """An unusable config fails with its one-line reason; nothing else can be checked."""
    path = tmp_path / "bad.toml"
    path.write_text("[sorce]\nroot = 1\n")
    checks = run_checks(path, environ={})
    assert checks[0].status == FAIL and "did you mean [source]" in checks[0].detail
    assert checks[0].fix
    assert all(c.status == SKIP for c in checks[1:])
    assert exit_code(checks) == 1


def test_missing_key_says_where_to_put_it(
    tmp_path: Path, dataset: Path, emulator: Emulator, inotify: Path
) -> None:
    """Without a key the credentials check fails with the variable and the systemd file to use."""
    config = write_config(tmp_path, dataset, emulator.url)
    found = by_name(run_checks(config, environ={}, inotify_dir=inotify))
    assert found["credentials"].status == FAIL
    assert "CLARIFAI_PAT" in (found["credentials"].fix or "")
    assert "/etc/syncd/pets.pat" in (found["credentials"].fix or "")
    assert "~/.config/syncd/clarifai.pat" in (found["credentials"].fix or "")
    assert found["remote"].status == SKIP


def test_refused_key(tmp_path: Path, dataset: Path, emulator: Emulator, inotify: Path) -> None:
    """A key the API refuses fails the remote check with a fix about the key and the app."""
    config = write_config(tmp_path, dataset, emulator.url)
    found = by_name(
        run_checks(config, environ={"CLARIFAI_PAT": "wrong-key-0123456789"}, inotify_dir=inotify)
    )
    assert found["remote"].status == FAIL
    assert "refused" in found["remote"].detail
    assert "wrong-key-0123456789" not in found["remote"].detail
    assert "app_id" in (found["remote"].fix or "")


def test_unreachable_api(tmp_path: Path, dataset: Path, inotify: Path) -> None:
    """A closed port fails the remote check as unreachable, quickly (one attempt)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, dataset, f"http://127.0.0.1:{port}")
    found = by_name(
        run_checks(config, environ={"CLARIFAI_PAT": "key-0123456789"}, inotify_dir=inotify)
    )
    assert found["remote"].status == FAIL
    assert "unreachable" in found["remote"].detail


def test_missing_root(tmp_path: Path, inotify: Path) -> None:
    """A root that does not exist fails with a mount/permission fix; inotify is not judged."""
    config = write_config(tmp_path, tmp_path / "not-mounted", "http://127.0.0.1:9")
    found = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))
    assert found["root"].status == FAIL
    assert "does not exist" in found["root"].detail
    assert found["inotify"].status == SKIP
    assert found["remote"].status == SKIP


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file: permissions cannot fail")
def test_unreadable_files_are_named(tmp_path: Path, dataset: Path, inotify: Path) -> None:
    """Images the daemon's user cannot read are listed with a chmod fix."""
    (dataset / "b.png").chmod(0)
    config = write_config(tmp_path, dataset, "http://127.0.0.1:9")
    found = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))
    assert found["root"].status == WARN
    assert "b.png" in found["root"].detail
    assert "chmod -R g+rX" in (found["root"].fix or "")


@pytest.mark.parametrize(("limit", "status"), [(2, FAIL), (3, WARN), (100, OK)])
def test_inotify_limits_against_folder_count(
    tmp_path: Path, dataset: Path, inotify: Path, limit: int, status: str
) -> None:
    """Folders at or over max_user_watches fail, over half of it warn; the fix is the sysctl."""
    (inotify / "max_user_watches").write_text(f"{limit}\n")
    config = write_config(tmp_path, dataset, "http://127.0.0.1:9")
    check = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))["inotify"]
    assert check.status == status
    if status != OK:
        assert check.fix is not None
        assert "sudo sysctl fs.inotify.max_user_watches=524288" in check.fix


def test_ledger_in_use_and_healthy(tmp_path: Path, dataset: Path, inotify: Path) -> None:
    """A ledger held by a running syncd is read without its lock and reported as in use."""
    config = write_config(tmp_path, dataset, "http://127.0.0.1:9")
    ledger = Ledger.open(tmp_path / "state" / "ledger.db")
    try:
        ledger.check_identity(source_name="pets", remote="r")
        check = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))["ledger"]
    finally:
        ledger.close()
    assert check.status == OK
    assert f"in use by syncd pid {os.getpid()}" in check.detail


def test_ledger_of_another_source(tmp_path: Path, dataset: Path, inotify: Path) -> None:
    """A ledger that belongs to another source fails with a fix."""
    config = write_config(tmp_path, dataset, "http://127.0.0.1:9")
    with Ledger.open(tmp_path / "state" / "ledger.db") as ledger:
        ledger.check_identity(source_name="other", remote="r")
    check = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))["ledger"]
    assert check.status == FAIL
    assert "belongs to source 'other'" in check.detail


def test_corrupt_ledger(tmp_path: Path, dataset: Path, inotify: Path) -> None:
    """A ledger that is not a database fails with the rebuild command as the fix."""
    config = write_config(tmp_path, dataset, "http://127.0.0.1:9")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "ledger.db").write_bytes(b"not a database at all" * 100)
    check = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))["ledger"]
    assert check.status == FAIL
    assert "--rebuild-ledger" in (check.fix or "")


def test_cli_prints_each_check_with_a_fix(
    tmp_path: Path, dataset: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`syncd doctor` prints one line per check, fixes under failures, and exits 1 on failure."""
    monkeypatch.delenv("CLARIFAI_PAT", raising=False)
    config = write_config(tmp_path, dataset, emulator.url)
    result = CliRunner().invoke(doctor_command, ["--config", str(config)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("OK    config")
    assert any(line.startswith("FAIL  credentials") for line in lines)
    assert any("fix: export CLARIFAI_PAT=" in line for line in lines)
    monkeypatch.setenv("CLARIFAI_PAT", emulator.api_key)
    result = CliRunner().invoke(doctor_command, ["--config", str(config), "--json"])
    assert '"name": "remote"' in result.output


def test_a_ledger_path_that_cannot_be_reached_fails_with_a_fix(
    tmp_path: Path, dataset: Path, inotify: Path
) -> None:
    """A ledger path this user cannot even stat (a name too long here; a folder of another
    user's in life) is a failed check with the reason, not a traceback."""
    config = write_config(tmp_path, dataset, "http://127.0.0.1:9")
    long_path = tmp_path / ("x" * 300) / "ledger.db"
    text = config.read_text().replace(f"{tmp_path}/state/ledger.db", str(long_path))
    config.write_text(text)
    check = by_name(run_checks(config, environ={}, remote=False, inotify_dir=inotify))["ledger"]
    assert check.status == FAIL
    assert "cannot be reached: File name too long" in check.detail
    assert "the user syncd runs as" in (check.fix or "")
