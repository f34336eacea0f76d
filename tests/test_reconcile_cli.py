"""`syncd reconcile` end to end: flags, output, exit codes and the delete guards.

Runs the real command (click's CliRunner in this process, or `python -m syncd` as a child
process) against an emulator on a loopback port, over real files and a real ledger.
Exit codes: 0 in step, 1 failed or held inputs, 2 usage or config error, 3 remote unreachable
or auth refused, 4 stopped by a delete guard.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from helpers import (
    KEY_ENV,
    Site,
    Traffic,
    api_call,
    make_site,
    remote_inputs,
    requests_by_method,
    run_cli,
    run_syncd,
    wait_until,
    write_config,
    write_requests,
    write_sidecar,
)

from syncd.emulator import Emulator
from syncd.ledger import Ledger
from syncd.model import InputState
from syncd.sample import png_bytes

SUMMARY_FIELDS = (
    "added",
    "relabeled",
    "deleted",
    "failed",
    "held",
    "foreign",
    "bytes_sent",
    "requests",
    "seconds",
)


def reconcile(site: Site, *flags: str, env: dict[str, Any] | None = None) -> Result:
    return run_cli(["reconcile", "--config", str(site.config), *flags], env=env or site.env)


def populate(site: Site, n: int) -> None:
    for i in range(n):
        site.image(f"{i:02d}.png", i, concepts=["cat"])


def ledger_state(site: Site) -> tuple[Any, ...]:
    """Everything the ledger API exposes, to compare before and after a pass."""
    with Ledger.open(site.ledger, lock=False) as ledger:
        return (
            ledger.inputs(),
            ledger.known_files(),
            ledger.file_errors(),
            ledger.last_pass(),
            ledger.counts_by_state(),
            ledger.get_meta("blocked_ids"),
        )


# --- output ---------------------------------------------------------------------------------


def test_summary_line_and_exit_zero_when_in_step(site: Site) -> None:
    """A pass prints one closing summary (added, relabeled, deleted, failed, held, foreign,
    bytes sent, requests, seconds) and exits 0 once the remote is in step."""
    populate(site, 3)

    result = reconcile(site)

    assert result.exit_code == 0, result.output
    summary = result.stdout.strip().splitlines()[-1]
    for word in (
        "added 3",
        "relabeled 0",
        "deleted 0",
        "failed 0",
        "held 0",
        "foreign 0",
        "requests",
        "bytes sent",
    ):
        assert word in summary, summary
    assert summary.endswith("s")
    again = reconcile(site)
    assert again.exit_code == 0
    assert "added 0" in again.stdout and " 0 bytes sent" in again.stdout


def test_no_wait_leaves_inputs_pending_and_exits_zero(site: Site) -> None:
    """`--no-wait` returns once the adds are sent: the inputs are reported pending, and that
    is what was asked for, not a failure (exit 0)."""
    populate(site, 3)

    result = reconcile(site, "--no-wait", "--json")

    report = json.loads(result.stdout)
    assert (report["pending"], report["waited"], report["added"]) == (3, False, 3)
    assert result.exit_code == 0, result.output


def test_inputs_still_processing_when_the_poll_times_out_exit_1(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """A pass that waited and gave up (`sync.poll_timeout`) with inputs still processing
    exits 1 and says how many."""
    slow = make_emulator(processing_delay=600.0)
    site = make_site(tmp_path, slow, sync={"poll_timeout": 0.2})
    populate(site, 3)

    result = reconcile(site, "--json")

    report = json.loads(result.stdout)
    assert (report["pending"], report["waited"]) == (3, True)
    assert result.exit_code == 1, result.output


def test_json_report_carries_the_summary(site: Site) -> None:
    """`--json` prints one JSON document with the summary fields and the exit code."""
    populate(site, 2)

    result = reconcile(site, "--json")

    assert result.exit_code == 0
    report = json.loads(result.stdout)
    assert set(SUMMARY_FIELDS) <= set(report)
    assert report["added"] == 2 and report["exit_code"] == 0
    assert report["foreign"] == 0 and report["failed"] == [] and report["held"] == []
    assert report["bytes_sent"] > 0
    assert report["requests"]["add"] == 1
    assert [op["op"] for op in report["planned"]] == ["add", "add"]


def test_dry_run_sends_no_write_and_keeps_the_ledger(site: Site, emu: Emulator) -> None:
    """`--dry-run` lists what it would send, sends no write request and leaves the ledger's
    contents unchanged."""
    populate(site, 4)
    assert reconcile(site).exit_code == 0
    site.image("new.png", 10, concepts=["cat"])
    write_sidecar(site.root, "01.png", {"concepts": ["dog"]})
    (site.root / "02.png").unlink()
    writes, before = write_requests(emu), ledger_state(site)

    result = reconcile(site, "--dry-run")

    assert result.exit_code == 0, result.output
    assert write_requests(emu) == writes
    assert ledger_state(site) == before
    assert "dry run: 3 operations would be sent" in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["add", "new.png"] for line in lines)
    assert any(line.split()[:2] == ["patch", "01.png"] for line in lines)
    assert any(line.split()[:2] == ["delete", "02.png"] for line in lines)


def test_explain_names_the_changed_stat_field_and_the_reason(site: Site) -> None:
    """`--explain` says per path which stat fields changed (so it was hashed again) and why
    an operation is sent."""
    site.image("a.png", 1, concepts=["cat"])
    site.image("b.png", 2, concepts=["cat"])
    # A hash is trusted only for a file older than the scanner's 2 s racy window.
    newest = max(os.stat(site.root / n).st_ctime_ns for n in ("a.png", "b.png"))
    wait_until(
        lambda: time.time_ns() - newest > 2.2e9,
        timeout=5,
        interval=0.1,
        what="the racy window to pass",
    )
    assert reconcile(site).exit_code == 0

    (site.root / "a.png").write_bytes(png_bytes(8, 8, seed=42))
    result = reconcile(site, "--explain")

    assert result.exit_code == 0, result.output
    hash_line = next(
        line for line in result.stdout.splitlines() if "a.png" in line and line.split()[0] == "hash"
    )
    assert "mtime_ns" in hash_line and "changed" in hash_line
    assert any(
        "a.png" in line and "content changed (sha256" in line for line in result.stdout.splitlines()
    )
    assert "b.png" not in result.stdout


def test_local_compares_with_the_ledger_only(site: Site, emu: Emulator, traffic: Traffic) -> None:
    """`--local` sends new files but never lists the remote, so an input deleted behind syncd's
    back is not noticed; the full reconcile notices and re-adds it."""
    populate(site, 3)
    assert reconcile(site).exit_code == 0
    lost = site.input_id("00.png")
    api_call(emu, "DELETE", {"ids": [lost]})
    wait_until(lambda: lost not in remote_inputs(emu, include_deleting=True), what="delete")
    site.image("new.png", 9, concepts=["cat"])
    traffic.clear()

    result = reconcile(site, "--local")

    assert result.exit_code == 0, result.output
    assert "foreign -" in result.stdout
    assert all("ids" in body for body in traffic.bodies("ListInputs"))  # polls only
    assert site.input_id("new.png") in remote_inputs(emu)
    assert lost not in remote_inputs(emu)

    full = reconcile(site, "--json")
    assert json.loads(full.stdout)["missing_readded"] == 1
    assert lost in remote_inputs(emu)


def test_real_subprocess_run(site: Site, emu: Emulator) -> None:
    """`python -m syncd reconcile --json` as a child process syncs the folder and exits 0."""
    populate(site, 2)

    done = run_syncd(["reconcile", "--config", str(site.config), "--json"], env=site.env)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 2
    assert len(remote_inputs(emu)) == 2
    assert emu.api_key not in done.stdout + done.stderr


# --- delete guards --------------------------------------------------------------------------


def synced(site: Site, n: int = 10) -> None:
    populate(site, n)
    result = reconcile(site)
    assert result.exit_code == 0, result.output


def assert_nothing_deleted(site: Site, emu: Emulator, n: int = 10) -> None:
    assert requests_by_method(emu).get("DELETE", 0) == 0
    assert len(remote_inputs(emu, include_deleting=True)) == n
    assert not any(e["deleting"] for e in remote_inputs(emu, include_deleting=True).values())
    assert len(site.ledger_inputs()) == n


def test_missing_root_deletes_nothing(site: Site, emu: Emulator) -> None:
    """With the root folder gone (an unmounted disk), no delete is sent even with
    --allow-mass-delete, the ledger keeps every input, and the pass exits 4."""
    synced(site)
    site.root.rename(site.root.with_name("unmounted"))

    result = reconcile(site, "--allow-mass-delete")

    assert result.exit_code == 4, result.output
    assert_nothing_deleted(site, emu)


def test_root_that_is_not_a_folder_deletes_nothing(site: Site, emu: Emulator) -> None:
    """A root that cannot be listed (here: replaced by a plain file) sends no delete, even
    with --allow-mass-delete, and the pass exits 4."""
    synced(site)
    site.root.rename(site.root.with_name("moved"))
    site.root.write_text("not a folder")

    result = reconcile(site, "--allow-mass-delete")

    assert result.exit_code == 4, result.output
    assert_nothing_deleted(site, emu)


@pytest.mark.parametrize("damage", ["missing", "file"])
def test_unusable_root_stops_with_exit_4(site: Site, emu: Emulator, damage: str) -> None:
    """A missing root, or one that is not a folder, stops the pass with exit 4 and a guard
    line naming the root's problem."""
    synced(site)
    site.root.rename(site.root.with_name("away"))
    if damage == "file":
        site.root.write_text("not a folder")

    result = reconcile(site)

    assert result.exit_code == 4, result.output
    guard = [line for line in result.stdout.splitlines() if line.startswith("guard")]
    assert guard and str(site.root) in guard[0]
    assert_nothing_deleted(site, emu)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any folder whatever its mode")
def test_unreadable_root_deletes_nothing(site: Site, emu: Emulator) -> None:
    """A root without read permission sends no delete, even with --allow-mass-delete, and the
    pass exits 4."""
    synced(site)
    site.root.chmod(0)
    try:
        result = reconcile(site, "--allow-mass-delete")
    finally:
        site.root.chmod(0o755)
    assert result.exit_code == 4, result.output
    assert_nothing_deleted(site, emu)


def test_emptied_root_deletes_nothing_even_when_allowed(site: Site, emu: Emulator) -> None:
    """A root whose images were all removed looks like an emptied disk: no delete is sent,
    even with --allow-mass-delete, and the pass exits 4."""
    synced(site)
    for path in site.root.iterdir():
        path.unlink()

    result = reconcile(site, "--allow-mass-delete", "--explain")

    assert result.exit_code == 4, result.output
    assert "holds no images" in result.stdout
    assert any(line.split()[:1] == ["guard"] for line in result.stdout.splitlines())
    assert_nothing_deleted(site, emu)


def _drop(site: Site, names: range) -> None:
    for i in names:
        (site.root / f"{i:02d}.png").unlink()
        (site.root / f"{i:02d}.json").unlink()


def test_max_delete_guard_stops_and_says_how_to_proceed(tmp_path: Path, emu: Emulator) -> None:
    """More deletes than sync.max_delete stop the pass before any delete with exit 4 and a
    message naming --allow-mass-delete; with that flag the deletes go out."""
    site = make_site(tmp_path, emu, sync={"max_delete": 2})
    synced(site)
    _drop(site, range(3))

    result = reconcile(site, "--json")

    assert result.exit_code == 4, result.output
    report = json.loads(result.stdout)
    assert "--allow-mass-delete" in report["guard"] and "max_delete = 2" in report["guard"]
    assert_nothing_deleted(site, emu)
    text = reconcile(site)
    assert text.exit_code == 4 and "--allow-mass-delete" in text.stdout

    allowed = reconcile(site, "--allow-mass-delete")
    assert allowed.exit_code == 0, allowed.output
    assert "deleted 3" in allowed.stdout
    assert len(remote_inputs(emu, include_deleting=True)) == 7
    assert len(site.ledger_inputs()) == 7


def test_max_delete_fraction_guard(tmp_path: Path, emu: Emulator) -> None:
    """Deleting more than sync.max_delete_fraction of the owned inputs stops before any
    delete with exit 4, while the adds and patches of the same pass still go out."""
    site = make_site(tmp_path, emu, sync={"max_delete_fraction": 0.3})
    synced(site)
    _drop(site, range(4))
    site.image("new.png", 50, concepts=["cat"])

    result = reconcile(site)

    assert result.exit_code == 4, result.output
    assert "max_delete_fraction = 0.3" in result.stdout
    assert "--allow-mass-delete" in result.stdout
    assert requests_by_method(emu).get("DELETE", 0) == 0
    assert site.input_id("new.png") in remote_inputs(emu)
    assert len(remote_inputs(emu)) == 11


# --- exit codes 2 and 3 ---------------------------------------------------------------------


def test_wrong_key_exits_3_and_marks_nothing_failed(site: Site, emu: Emulator) -> None:
    """A refused key (401) stops the pass with exit 3 and a message naming where the key came
    from; the key is never printed and no input is marked failed."""
    populate(site, 3)
    wrong = "not-the-right-key-123456"

    result = reconcile(site, env={KEY_ENV: wrong})

    assert result.exit_code == 3
    assert f"environment variable {KEY_ENV}" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert requests_by_method(emu).get("POST", 0) == 0
    with Ledger.open(site.ledger, lock=False) as ledger:
        assert ledger.counts_by_state()[InputState.FAILED.value] == 0


def test_wrong_key_during_adds_marks_nothing_failed(site: Site, emu: Emulator) -> None:
    """With `--local` the refused key is met by the add requests themselves: exit 3, and no
    input is marked failed (a later pass with the right key adds them all)."""
    populate(site, 6)

    result = reconcile(site, "--local", env={KEY_ENV: "wrong-key-0000"})

    assert result.exit_code == 3, result.output
    assert f"environment variable {KEY_ENV}" in result.stderr
    with Ledger.open(site.ledger, lock=False) as ledger:
        assert ledger.counts_by_state()[InputState.FAILED.value] == 0
        assert ledger.input_errors() == []
    fixed = reconcile(site)
    assert fixed.exit_code == 0, fixed.output
    assert len(remote_inputs(emu)) == 6


@pytest.mark.slow
def test_unreachable_remote_exits_3(tmp_path: Path) -> None:
    """With nothing listening at remote.api_base the pass gives up after its retries and
    exits 3 with a one-line message."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = tmp_path / "pets"
    root.mkdir()
    (root / "a.png").write_bytes(png_bytes(8, 8, seed=1))
    config = write_config(
        tmp_path / "syncd.toml",
        {
            "source": {"root": root},
            "remote": {"api_base": f"http://127.0.0.1:{port}", "api_key_env": KEY_ENV},
            "ledger": {"path": tmp_path / "ledger.db"},
            "log": {"level": "error"},
        },
    )

    result = run_cli(["reconcile", "--config", str(config)], env={KEY_ENV: "some-key"})

    assert result.exit_code == 3
    assert result.stderr.startswith("syncd: ") and "127.0.0.1" in result.stderr


def test_config_errors_exit_2(tmp_path: Path, site: Site) -> None:
    """A missing config file, an unknown or invalid config key, or a missing or malformed
    API key exit 2 with a one-line message; an unknown flag is a usage error (2) too."""
    missing = run_cli(["reconcile", "--config", str(tmp_path / "nope.toml")], env=site.env)
    assert missing.exit_code == 2
    assert "cannot read the config file" in missing.stderr

    bad = tmp_path / "bad.toml"
    bad.write_text(site.config.read_text().replace("[sync]", "[sync]\nbatch_sise = 5"))
    typo = run_cli(["reconcile", "--config", str(bad)], env=site.env)
    assert typo.exit_code == 2
    assert "did you mean sync.batch_size" in typo.stderr

    big = tmp_path / "big.toml"
    big.write_text(site.config.read_text().replace("[sync]", "[sync]\nbatch_size = 129"))
    assert run_cli(["reconcile", "--config", str(big)], env=site.env).exit_code == 2

    no_key = reconcile(site, env={KEY_ENV: None})
    assert no_key.exit_code == 2
    assert f"{KEY_ENV}" in no_key.stderr

    spaced = reconcile(site, env={KEY_ENV: "two words"})
    assert spaced.exit_code == 2
    assert "two words" not in spaced.stderr

    usage = reconcile(site, "--no-such-flag")
    assert usage.exit_code == 2
    for result in (missing, typo, no_key, spaced):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_corrupt_ledger_is_rebuilt_with_rebuild_ledger(site: Site, emu: Emulator) -> None:
    """A corrupt ledger stops reconcile with exit 2 pointing at --rebuild-ledger; with that
    flag the garbage is moved aside and the ledger rebuilt from the remote markers without
    re-uploading anything."""
    populate(site, 5)
    assert reconcile(site).exit_code == 0
    writes = write_requests(emu)
    for suffix in ("-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)
    site.ledger.write_bytes(b"this is not a SQLite database" * 200)

    broken = reconcile(site)
    assert broken.exit_code == 2
    assert "--rebuild-ledger" in broken.stderr

    result = reconcile(site, "--rebuild-ledger", "--json")

    assert result.exit_code == 0, result.output
    assert write_requests(emu) == writes
    assert json.loads(result.stdout)["planned"] == []
    assert len(site.ledger_inputs()) == 5
    assert list(site.ledger.parent.glob("ledger.db.corrupt-*"))


def test_deleted_ledger_rebuilt_by_plain_reconcile(site: Site, emu: Emulator) -> None:
    """Reconcile after the ledger file was deleted adopts every input: zero POSTs."""
    populate(site, 5)
    assert reconcile(site).exit_code == 0
    posts = requests_by_method(emu)["POST"]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)

    result = reconcile(site)

    assert result.exit_code == 0, result.output
    assert requests_by_method(emu)["POST"] == posts
    assert write_requests(emu) == posts
    assert {b.state for b in site.ledger_inputs().values()} == {InputState.PROCESSED}


def test_drift_is_reported_in_the_text_output(site: Site, emu: Emulator) -> None:
    """Drift found remotely (labels edited in the web UI) is named in the text report."""
    populate(site, 2)
    assert reconcile(site).exit_code == 0
    target = site.input_id("00.png")
    edit = {"id": target, "data": {"concepts": [{"id": "ufo", "value": 1}]}}
    api_call(emu, "PATCH", {"inputs": [edit], "action": "merge"})

    result = reconcile(site)

    assert result.exit_code == 0
    assert "drift" in result.stdout and target in result.stdout
