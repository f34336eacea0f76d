"""`syncd status` end to end: what the ledger knows, what is wrong, and the remote's counts.

Each test first runs a real `syncd reconcile` against an emulator on a loopback port, then
`syncd status` (in this process through CliRunner, or as a child process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import Result
from helpers import (
    KEY_ENV,
    REPO,
    Site,
    api_call,
    run_cli,
    run_syncd,
    write_sidecar,
)

from syncd.emulator import Emulator

HOLD_LOCK = """
import sys
from syncd.ledger import Ledger

ledger = Ledger.open(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
ledger.close()
"""


def status(site: Site, *flags: str, env: dict[str, Any] | None = None) -> Result:
    return run_cli(["status", "--config", str(site.config), *flags], env=env or site.env)


def troubled(site: Site, emu: Emulator) -> str:
    """Sync 4 good images, 1 whose processing fails remotely and 1 with an invalid sidecar;
    returns the failing input's id."""
    for i in range(4):
        site.image(f"ok{i}.png", i, concepts=["cat"])
    site.image("broken.png", 10, concepts=["cat"])
    site.image("held.png", 11)
    write_sidecar(site.root, "held.png", '{"concepts": ["cat"')
    bad = site.input_id("broken.png")
    emu.set_faults(fail_processing_ids=[bad])
    result = run_cli(["reconcile", "--config", str(site.config)], env=site.env)
    assert result.exit_code == 1, result.output
    return bad


def wait_for_line(stream: Any, wanted: str) -> None:
    """Read a child's output until the line `wanted` (its log lines may come first)."""
    for line in stream:
        if line.strip() == wanted:
            return
    raise AssertionError(f"the child process ended without printing {wanted!r}")


def test_status_shows_counts_failures_last_pass_and_remote_counts(
    site: Site, emu: Emulator
) -> None:
    """After a pass with a processing failure, status shows the counts by state, the failed
    input with its path and remote code, the last pass with its exit code, and the remote's
    inputs/status counts."""
    bad = troubled(site, emu)

    result = status(site)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "inputs: adding 0, deleting 0, failed 1, pending 0, processed 4" in lines
    failed = [line for line in lines if line.startswith("failed")]
    assert len(failed) == 1 and "broken.png" in failed[0] and bad in failed[0]
    assert "30002" in failed[0]
    last = next(line for line in lines if line.startswith("last pass:"))
    assert "reconcile" in last and "exit code 1" in last
    remote = next(line for line in lines if line.startswith("remote:"))
    assert "processed 4" in remote and "errors 1" in remote and "to_process 0" in remote


def test_status_json(site: Site, emu: Emulator) -> None:
    """`status --json` carries the same facts as data: counts by state, failures with reasons,
    the last pass with its summary, and the remote counts."""
    bad = troubled(site, emu)

    result = status(site, "--json")

    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["inputs_by_state"] == {
        "adding": 0,
        "pending": 0,
        "processed": 4,
        "failed": 1,
        "deleting": 0,
    }
    assert [(f["input_id"], f["path"]) for f in info["failed_inputs"]] == [(bad, "broken.png")]
    assert info["failed_inputs"][0]["reason"].startswith("30002")
    assert info["last_pass"]["exit_code"] == 1
    assert info["last_pass"]["summary"]["added"] == 5
    assert info["last_pass"]["summary"]["held"] == 1
    assert info["remote_counts"]["processed"] == 4
    assert info["remote_counts"]["errors"] == 1


def test_status_shows_held_file_until_fixed(site: Site, emu: Emulator) -> None:
    """A file held for an invalid sidecar is listed by status with its path and reason, in
    text and JSON, until the sidecar is fixed."""
    troubled(site, emu)

    text = status(site)
    info = json.loads(status(site, "--json").stdout)

    held = [line for line in text.stdout.splitlines() if line.startswith("held")]
    assert len(held) == 1 and "held.png" in held[0] and "held.json" in held[0]
    assert [row["path"] for row in info["held_files"]] == ["held.png"]
    assert "held.json" in info["held_files"][0]["reason"]

    write_sidecar(site.root, "held.png", {"concepts": ["cat"]})
    run_cli(["reconcile", "--config", str(site.config)], env=site.env)
    assert "held.png" not in status(site).stdout


def test_status_shows_inputs_blocked_by_a_foreign_id(site: Site, emu: Emulator) -> None:
    """A file whose explicit id belongs to a foreign input is shown by status as blocked, with
    the reason."""
    body = {"inputs": [{"id": "taken", "data": {"image": {"url": "https://x.example/a.png"}}}]}
    api_call(emu, "POST", body)
    site.image("mine.png", 1, id="taken", concepts=["cat"])
    site.image("other.png", 2, concepts=["cat"])
    assert run_cli(["reconcile", "--config", str(site.config)], env=site.env).exit_code == 1

    result = status(site)

    blocked = [line for line in result.stdout.splitlines() if line.startswith("blocked")]
    assert len(blocked) == 1 and "taken" in blocked[0] and "mine.png" in blocked[0]


def test_status_before_any_pass(site: Site) -> None:
    """Without a ledger yet, status says to run reconcile first and still shows the remote
    counts."""
    result = status(site)

    assert result.exit_code == 0, result.output
    assert "no ledger yet" in result.stdout
    assert "remote: processed 0" in result.stdout


def test_status_with_a_refused_key_still_shows_the_ledger(site: Site, emu: Emulator) -> None:
    """When the remote refuses the key, status still shows what the ledger knows and says the
    remote is unavailable, naming the key's source but never the key."""
    troubled(site, emu)

    result = status(site, env={KEY_ENV: "wrong-key-999"})

    assert result.exit_code == 0, result.output
    assert "processed 4" in result.stdout
    remote = next(line for line in result.stdout.splitlines() if line.startswith("remote:"))
    assert "unavailable" in remote and KEY_ENV in remote
    assert "wrong-key-999" not in result.stdout + result.stderr


def test_status_works_while_another_process_holds_the_ledger(site: Site, emu: Emulator) -> None:
    """While another process holds the ledger's lock (as a running daemon does), `syncd
    status` (a child process here) reads it and exits 0, and `syncd reconcile` refuses with
    exit 2 naming the holder."""
    troubled(site, emu)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(site.ledger)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None
        wait_for_line(holder.stdout, "locked")

        shown = run_syncd(["status", "--config", str(site.config), "--json"], env=site.env)
        refused = run_cli(["reconcile", "--config", str(site.config)], env=site.env)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=10)
        if holder.stdout is not None:
            holder.stdout.close()

    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["inputs_by_state"]["processed"] == 4
    assert info["remote_counts"]["processed"] == 4
    assert refused.exit_code == 2
    assert f"pid {holder.pid}" in refused.stderr
    assert holder.returncode == 0


def test_a_ledger_path_that_cannot_be_reached_is_said_plainly(site: Site, tmp_path: Path) -> None:
    """`status` and `reconcile` with a ledger path this user cannot reach (a name too long
    here; another user's folder in life): exit 2 and one line saying why, no traceback."""
    far = tmp_path / ("x" * 300) / "ledger.db"
    for command, reason in (("status", "cannot reach the ledger"), ("reconcile", "cannot create")):
        result = run_cli(
            [command, "--config", str(site.config), "--set", f"ledger.path={far}"], env=site.env
        )
        assert result.exit_code == 2, result.output
        assert f"syncd: {reason}" in result.stderr
        assert "File name too long" in result.stderr
