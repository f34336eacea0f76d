"""Safety and secrets: deletes only when it is safe or explicitly allowed, the API key never
written anywhere, and inputs without this source's marker never patched or deleted.

Each test ends on the invariant of `tests/invariants.py` (or on "the remote is exactly as it
was", for passes that must not delete), checked through the emulator's control API.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    KEY_ENV,
    Site,
    api_call,
    b64,
    make_site,
    open_site_engine,
    run_cli,
    run_syncd,
    wait_out_racy_window,
    write_config,
    write_sidecar,
)
from invariants import SyncdChild, Want, check_invariant, foreign_inputs, wait_for
from proto import ProtoRecorder
from structlog.testing import capture_logs

from syncd.api import ClarifaiApi
from syncd.config import load_config, resolve_api_key
from syncd.emulator import Emulator
from syncd.engine import Engine, PassOptions, open_engine
from syncd.errors import SyncdError, WaitRequested
from syncd.ledger import Ledger
from syncd.model import MARKER_KEY, FileStat, LocalImage, LocalSnapshot
from syncd.sample import png_bytes
from syncd.scanner import ScanResult, ScanStats

N = 30
SECRET = "sk-SECRETSECRET-1234"
OTHER = "sk-OTHERSECRET-5678"


class Writes:
    """A validator hook keeping the ids named by every PATCH and DELETE request."""

    def __init__(self, check: ProtoRecorder) -> None:
        self.check = check
        self.patched: list[str] = []
        self.deleted: list[str] = []

    def __call__(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        self.check(kind, direction, body)
        if direction != "request":
            return
        if kind == "PatchInputs":
            self.patched += [item.get("id", "") for item in body.get("inputs", [])]
        elif kind == "DeleteInputs":
            self.deleted += list(body.get("ids", []))
        elif kind == "DeleteInput":
            self.deleted.append(body.get("input_id", ""))


@pytest.fixture
def writes(proto_recorder: ProtoRecorder) -> Writes:
    return Writes(proto_recorder)


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], writes: Writes) -> Emulator:
    return make_emulator(processing_delay=0.05, delete_delay=0.05, validator=writes)


def populate(site: Site, n: int = N) -> dict[str, Want]:
    want = {}
    for i in range(n):
        site.image(f"{i:02d}.png", i, concepts=["cat"])
        want[f"{i:02d}.png"] = Want(concepts={"cat": 1.0})
    return want


def reconcile(site: Site, *flags: str) -> Any:
    return run_cli(["reconcile", "--config", str(site.config), *flags], env=site.env)


def remote_view(emu: Emulator) -> list[dict[str, Any]]:
    """The whole store without processing statuses: equal means nothing was touched."""
    return [{k: v for k, v in e.items() if k != "status"} for e in emu.store_snapshot()]


# --- delete guards --------------------------------------------------------------------------


def _unmounted(site: Site) -> None:
    site.root.rename(site.root.with_name("elsewhere"))


def _empty_mountpoint(site: Site) -> None:
    site.root.rename(site.root.with_name("elsewhere"))
    site.root.mkdir()


def _emptied(site: Site) -> None:
    for path in list(site.root.iterdir()):
        path.unlink()


def _renamed(site: Site) -> None:
    site.root.rename(site.root.with_name("pets-2024"))  # config still names the old path


@pytest.mark.parametrize(
    "lose_root",
    [_unmounted, _empty_mountpoint, _emptied, _renamed],
    ids=["unmounted", "empty_mountpoint", "emptied", "renamed"],
)
@pytest.mark.parametrize("allow", [False, True], ids=["guarded", "mass_delete_allowed"])
def test_lost_root_never_deletes(
    tmp_path: Path, emu: Emulator, writes: Writes, lose_root: Callable[[Site], None], allow: bool
) -> None:
    """With the root unmounted, emptied or renamed, reconcile sends no delete at all, even
    with --allow-mass-delete: the remote and the ledger's beliefs stay exactly as they were."""
    site = make_site(tmp_path, emu, sync={"max_delete_fraction": 1.0, "max_delete": 1000})
    populate(site)
    assert reconcile(site).exit_code == 0
    before, beliefs = remote_view(emu), site.ledger_inputs()
    lose_root(site)

    result = reconcile(site, *(["--allow-mass-delete"] if allow else []))

    assert result.exit_code in (0, 4), result.output
    assert writes.deleted == []
    assert remote_view(emu) == before
    assert site.ledger_inputs() == beliefs


def _mount_tmpfs(folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "syncd-test", str(folder)], check=False)
    return done.returncode == 0


def _site_with_a_disk_inside(tmp_path: Path, emu: Emulator) -> tuple[Site, Path]:
    """A site with no delete limits and a tmpfs mounted at `nas` in its root (skips unless
    this runs as root)."""
    site = make_site(tmp_path, emu, sync={"max_delete_fraction": 1.0, "max_delete": 1000})
    nas = site.root / "nas"
    if os.geteuid() != 0 or not _mount_tmpfs(nas):
        pytest.skip("needs root to mount a tmpfs")
    return site, nas


def _umount(folder: Path) -> None:
    subprocess.run(["umount", str(folder)], check=True)


def test_a_disk_unmounted_inside_the_root_is_not_deleted(
    tmp_path: Path, emu: Emulator, writes: Writes
) -> None:
    """A real file system mounted in a folder of the root, then unmounted (an empty folder
    left) after passes that ended in step (so the quick check runs): its inputs stay, pass
    after pass, whatever the delete limits, and the folder is reported. Files put back after
    mounting again are in step; removing the folder deletes its inputs."""
    site, nas = _site_with_a_disk_inside(tmp_path, emu)
    try:
        site.image("local.png", 1)
        for i in range(3):
            site.image(f"nas/{i}.png", 10 + i)
        assert reconcile(site).exit_code == 0
        wait_out_racy_window(site.root)
        assert reconcile(site).exit_code == 0
        with site.open_ledger() as ledger:
            assert ledger.in_step_marker() is not None  # the next pass takes the quick check
        before = remote_view(emu)
        assert len(before) == 4

        _umount(nas)
        for _ in range(2):
            result = reconcile(site)
            assert writes.deleted == [] and remote_view(emu) == before
            assert "mounted here and is not now" in result.output

        assert _mount_tmpfs(nas)
        for i in range(3):
            site.image(f"nas/{i}.png", 10 + i)
        assert reconcile(site).exit_code == 0
        assert writes.deleted == [] and remote_view(emu) == before
    finally:
        subprocess.run(["umount", str(nas)], check=False)
    nas.rmdir()  # unmounted and removed: the user's word that the data is gone
    assert reconcile(site).exit_code == 0
    assert len(writes.deleted) == 3 and len(emu.store_snapshot()) == 1


def test_a_ledger_that_never_noted_the_mount_points_learns_them_first(
    tmp_path: Path, emu: Emulator, writes: Writes
) -> None:
    """A ledger in step that has no note of mount points (one written by an older syncd)
    does not take the quick check while a disk is mounted in the root: the full path notes
    it, so a later unmount deletes nothing."""
    site, nas = _site_with_a_disk_inside(tmp_path, emu)
    try:
        site.image("local.png", 1)
        site.image("nas/0.png", 10)
        assert reconcile(site).exit_code == 0
        wait_out_racy_window(site.root)
        assert reconcile(site).exit_code == 0
        with sqlite3.connect(site.ledger) as db:  # as an older syncd left it: marker, no note
            db.execute("DELETE FROM meta WHERE key = 'mount_points'")
        with site.open_ledger() as ledger:
            assert ledger.in_step_marker() is not None
        assert reconcile(site).exit_code == 0
        with site.open_ledger() as ledger:
            assert ledger.get_meta("mount_points") == '["nas"]'
        _umount(nas)
        reconcile(site)
        assert writes.deleted == [] and len(emu.store_snapshot()) == 2
    finally:
        subprocess.run(["umount", str(nas)], check=False)


@pytest.mark.parametrize(
    ("limits", "drop"),
    [({"max_delete": 5}, 8), ({"max_delete_fraction": 0.2}, 7)],
    ids=["count", "fraction"],
)
def test_mass_delete_needs_explicit_permission_and_dry_run_lists_it(
    tmp_path: Path, emu: Emulator, writes: Writes, limits: dict[str, Any], drop: int
) -> None:
    """A pass that would delete more than sync.max_delete inputs, or more than
    sync.max_delete_fraction of them, sends no delete (exit 4, naming the limit and the flag);
    `--dry-run --allow-mass-delete` lists each input that would go without sending anything;
    only `--allow-mass-delete` deletes them, and then the invariant holds."""
    site = make_site(tmp_path, emu, sync=limits)
    want = populate(site)
    assert reconcile(site).exit_code == 0
    gone = [f"{i:02d}.png" for i in range(drop)]
    for rel in gone:
        (site.root / rel).unlink()
        (site.root / rel).with_suffix(".json").unlink()
        del want[rel]
    before = remote_view(emu)

    guarded = reconcile(site)
    dry = reconcile(site, "--dry-run")
    dry_allowed = reconcile(site, "--dry-run", "--allow-mass-delete")

    assert guarded.exit_code == 4, guarded.output
    assert "--allow-mass-delete" in guarded.stdout and next(iter(limits)) in guarded.stdout
    assert dry.exit_code == 4 and "guard" in dry.stdout
    assert dry_allowed.exit_code == 0, dry_allowed.output
    for shown in (dry.stdout, dry_allowed.stdout):
        assert f"dry run: {drop} operations would be sent" in shown
        for rel in gone:
            assert f"delete  {rel} ({site.input_id(rel)}): file removed" in shown
    assert writes.deleted == [] and remote_view(emu) == before

    allowed = reconcile(site, "--allow-mass-delete")

    assert allowed.exit_code == 0, allowed.output
    assert sorted(writes.deleted) == sorted(site.input_id(rel) for rel in gone)
    check_invariant(emu.url, root=site.root, source=site.source, ledger=site.ledger, want=want)


def test_daemon_mass_delete_is_stopped_by_the_guard(tmp_path: Path, emu: Emulator) -> None:
    """`syncd run` seeing most files deleted at once sends no delete, logs the guard, and keeps
    every input; it still exits cleanly on SIGTERM."""
    site = make_site(
        tmp_path,
        emu,
        sync={"max_delete": 3, "settle_seconds": 0.2, "rescan_interval": 0},
    )
    populate(site)
    assert reconcile(site).exit_code == 0
    before = remote_view(emu)
    daemon = SyncdChild(["run", "--config", str(site.config)], env=site.env, workdir=tmp_path)
    daemon.start()
    try:
        wait_for(lambda: '"catchup"' in _passes(site), timeout=30, what="the catch-up pass")
        for i in range(20):
            (site.root / f"{i:02d}.png").unlink()
        wait_for(
            lambda: "delete_guard_tripped" in daemon.output()[1],
            timeout=30,
            what="the guard to trip",
        )
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.close()
    assert emu.stats()["requests"].get("DELETE /v2/inputs", 0) == 0
    assert remote_view(emu) == before


def _passes(site: Site) -> str:
    with sqlite3.connect(f"file:{site.ledger}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT kind FROM passes WHERE finished_at IS NOT NULL").fetchall()
    return json.dumps(rows)


# --- foreign inputs -------------------------------------------------------------------------


def _foreign_items(site: Site) -> list[dict[str, Any]]:
    def item(input_id: str, seed: int, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"image": {"base64": b64(png_bytes(8, 8, seed=seed))}}
        data["concepts"] = [{"id": "theirs", "value": 1}]
        if metadata is not None:
            data["metadata"] = metadata
        return {"id": input_id, "data": data}

    return [
        item("no-metadata", 900),
        item("plain-metadata", 901, {"owner": "someone", "path": "00.png"}),
        item("other-source", 902, {MARKER_KEY: {"source": "x", "path": "01.png", "sha256": "a"}}),
        item("no-sha", 903, {MARKER_KEY: {"source": site.source, "path": "02.png"}}),
        item("bad-path", 904, {MARKER_KEY: {"source": site.source, "path": 7, "sha256": "b"}}),
        item("not-a-dict", 905, {MARKER_KEY: "pets"}),
        item(site.input_id("squatted.png"), 906, {"owner": "someone"}),  # our id, not ours
    ]


def test_inputs_without_this_sources_marker_are_never_patched_or_deleted(
    tmp_path: Path, emu: Emulator, writes: Writes
) -> None:
    """Foreign inputs (no metadata, no marker, another source's marker, a malformed marker, or
    an input squatting on the id syncd derives for a local file) are never named by a PATCH or
    DELETE, through relabels, mass deletes, a lost ledger and a rebuilt one."""
    site = make_site(tmp_path, emu, sync={"max_delete_fraction": 1.0})
    api_call(emu, "POST", {"inputs": _foreign_items(site)})
    foreign = foreign_inputs(emu.store_snapshot(), site.source)
    want = populate(site, 10)
    site.image("squatted.png", 50)

    assert reconcile(site).exit_code == 1  # squatted.png is held: its id is taken
    for rel in list(want)[:5]:
        write_sidecar(site.root, rel, {"concepts": ["dog"], "metadata": {"k": 1}})
        want[rel] = Want(concepts={"dog": 1.0}, metadata={"k": 1})
    assert reconcile(site).exit_code == 1
    for rel in list(want)[5:]:
        (site.root / rel).unlink()
        (site.root / rel).with_suffix(".json").unlink()
        del want[rel]
    assert reconcile(site, "--allow-mass-delete").exit_code == 1
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)
    assert reconcile(site).exit_code == 1
    assert reconcile(site, "--rebuild-ledger", "--allow-mass-delete").exit_code == 1
    (site.root / "squatted.png").unlink()
    assert reconcile(site, "--allow-mass-delete").exit_code == 0

    assert not set(writes.patched) & set(foreign), writes.patched
    assert not set(writes.deleted) & set(foreign), writes.deleted
    check_invariant(
        emu.url,
        root=site.root,
        source=site.source,
        ledger=site.ledger,
        want=want,
        foreign_before=foreign,
    )


# --- the API key ----------------------------------------------------------------------------


@pytest.fixture
def secret_site(tmp_path: Path, make_emulator: Callable[..., Emulator]) -> Site:
    emu = make_emulator(processing_delay=0.05, delete_delay=0.05, api_keys=[SECRET])
    site = make_site(tmp_path, emu, sync={"workers": 2, "batch_size": 4})
    site.env = {KEY_ENV: SECRET}
    populate(site, 6)
    return site


def _ledger_text(site: Site) -> bytes:
    """Every byte of every ledger file, plus a dump of every table (all rows)."""
    blobs = [p.read_bytes() for p in site.ledger.parent.iterdir() if p.is_file()]
    with Ledger.open(site.ledger, lock=False):
        pass  # still opens: the dump below reads a healthy file
    with sqlite3.connect(f"file:{site.ledger}?mode=ro", uri=True) as db:
        blobs.append("\n".join(db.iterdump()).encode("utf-8", "surrogateescape"))
    return b"\n".join(blobs)


def test_the_key_is_never_written_anywhere(secret_site: Site, tmp_path: Path) -> None:
    """The API key, and a refused one, never appear in stdout, stderr, logs at debug level (JSON
    and console), `--json` output, `syncd status`, `syncd doctor`, `syncd run`, exception text
    or the ledger file, including when requests fail with 401 or 5xx."""
    site, emu = secret_site, secret_site.emu
    texts: dict[str, str | bytes] = {}

    def cli(name: str, args: list[str], env: dict[str, str] | None = None) -> Any:
        result = run_syncd(
            [*args, "--config", str(site.config)], env={**site.env, **(env or {})}, timeout=120
        )
        texts[name] = result.stdout + result.stderr
        return result

    debug = ["--log-level", "debug"]
    assert cli("reconcile-json-logs", ["reconcile", *debug]).returncode == 0
    console = {"SYNCD_LOG_FORMAT": "console"}
    assert cli("reconcile-console", ["reconcile", "--json", *debug], console).returncode == 0
    cli("dry-run-explain", ["reconcile", "--dry-run", "--explain", *debug])
    cli("status", ["status", *debug])
    cli("status-json", ["status", "--json", *debug], console)
    cli("doctor", ["doctor", "--json"])
    (site.root / "00.png").write_bytes(png_bytes(8, 8, seed=1000))
    emu.set_faults(error_rate=0.5, error_status=500)
    cli("reconcile-5xx", ["reconcile", *debug])
    emu.set_faults(error_rate=1.0, error_status=503)
    cli("status-5xx", ["status", *debug])
    emu.set_faults()
    refused = cli("reconcile-401", ["reconcile", *debug], {KEY_ENV: OTHER})
    assert refused.returncode == 3
    cli("status-401", ["status", *debug], {KEY_ENV: OTHER})
    cli("doctor-401", ["doctor", "--json"], {KEY_ENV: OTHER})

    key_file = tmp_path / "clarifai-pat"
    key_file.write_text(SECRET + "\n")
    key_file.chmod(0o600)
    by_file = tmp_path / "by-file.toml"
    by_file.write_text(
        site.config.read_text().replace(
            f'api_key_env = "{KEY_ENV}"', f'api_key_env = "UNSET_VAR"\napi_key_file = "{key_file}"'
        )
    )
    result = run_syncd(["reconcile", "--config", str(by_file), *debug], env={}, timeout=120)
    texts["key-file"] = result.stdout + result.stderr
    in_file = tmp_path / "in-file.toml"
    in_file.write_text(
        site.config.read_text().replace("[remote]", f'[remote]\napi_key = "{SECRET}"')
    )
    result = run_syncd(["reconcile", "--config", str(in_file)], env=site.env, timeout=60)
    assert result.returncode == 2 and "remote.api_key" in result.stderr
    texts["key-in-config"] = result.stdout + result.stderr

    daemon = SyncdChild(
        ["run", "--config", str(site.config), *debug], env=site.env, workdir=tmp_path
    )
    daemon.start()
    try:
        wait_for(lambda: "pass_finished" in daemon.output()[1], timeout=30, what="a daemon pass")
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.close()
    texts["daemon"] = "".join(daemon.output())

    texts.update(_in_process_texts(site))
    texts["ledger"] = _ledger_text(site)

    for name, text in texts.items():
        raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
        for needle in (SECRET, OTHER, "SECRETSECRET", "OTHERSECRET"):
            assert needle.encode() not in raw, f"{needle!r} leaked into {name}"
    assert "api_request" in str(texts["reconcile-json-logs"])  # debug logs were really on
    assert "api_retry" in str(texts["reconcile-5xx"])  # and failing requests were logged


def _in_process_texts(site: Site) -> dict[str, str]:
    """Logs (every event dict at debug level), exception text and reprs, in this process."""
    out: dict[str, str] = {}
    os.environ[KEY_ENV] = SECRET
    try:
        config = load_config(site.config).with_overrides(**{"log.level": "debug"})
        out["api-key-repr"] = repr(resolve_api_key(config)) + str(resolve_api_key(config))
        with capture_logs() as logs:
            engine = open_engine(config)
            out["api-repr"] = repr(engine.api) + repr(engine)
            try:
                engine.sync_once(PassOptions())
            finally:
                engine.close()
        out["logs-ok"] = repr(logs)
        api = ClarifaiApi(config.remote.api_base, OTHER, key_source="a test", max_attempts=1)
        engine = Engine(config, Ledger.open(config.ledger.path), api)
        with capture_logs() as logs:
            try:
                engine.sync_once(PassOptions())
            except SyncdError as exc:
                out["exception"] = "".join(traceback.format_exception(exc)) + repr(exc)
                out["exception-fields"] = repr(vars(exc))
            finally:
                engine.close()
        out["logs-401"] = repr(logs)
        assert "exception" in out, "the refused key did not raise"
        site.emu.set_faults(error_rate=1.0, error_status=500)
        api = ClarifaiApi(config.remote.api_base, SECRET, key_source="a test", max_attempts=2)
        engine = Engine(config, Ledger.open(config.ledger.path), api)
        with capture_logs() as logs:
            try:
                engine.sync_once(PassOptions())
            except SyncdError as exc:
                out["exception-5xx"] = "".join(traceback.format_exception(exc)) + repr(vars(exc))
            finally:
                engine.close()
                site.emu.set_faults()
        out["logs-5xx"] = repr(logs)
        assert "HTTP 500" in out["exception-5xx"]
    finally:
        os.environ.pop(KEY_ENV, None)
    return out


def test_a_secret_in_the_config_file_is_refused_without_echoing_it(
    tmp_path: Path, emu: Emulator
) -> None:
    """A key written into the config file (under any secret-looking name) is refused with exit
    2 and a message naming the setting and where keys belong, never the value."""
    root = tmp_path / "pets"
    root.mkdir()
    config = write_config(
        tmp_path / "syncd.toml",
        {
            "source": {"root": root},
            "remote": {"api_base": emu.url, "token": SECRET},
            "ledger": {"path": tmp_path / "ledger.db"},
        },
    )

    result = run_cli(["reconcile", "--config", str(config)], env={KEY_ENV: SECRET})

    assert result.exit_code == 2
    assert "remote.token" in result.stderr and "CLARIFAI_PAT" in result.stderr
    assert "SECRETSECRET" not in result.output + result.stderr


_ONE_IMAGE = {
    "a.png": LocalImage("a.png", FileStat(1, 1, 1, 1), "id-a", "0" * 64, None),
}


@pytest.mark.parametrize(
    ("snapshot", "kept"),
    [
        (LocalSnapshot(images=_ONE_IMAGE, unscanned=("nas",)), '["nas"]'),
        (LocalSnapshot(images=_ONE_IMAGE, unscanned=("x",)), "[]"),
        (LocalSnapshot(images={}, root_problem="root is gone"), '["nas"]'),
        (LocalSnapshot(images={}), '["nas"]'),
        (LocalSnapshot(images=_ONE_IMAGE), "[]"),
    ],
    ids=[
        "mount-point-unreadable",
        "another-folder-unreadable",
        "root-problem",
        "root-holds-no-image",
        "looked-at",
    ],
)
def test_mount_points_the_scan_could_not_look_at_are_kept(
    tmp_path: Path, emu: Emulator, snapshot: LocalSnapshot, kept: str
) -> None:
    """A noted mount point is forgotten only when a full scan looked and found it neither
    mounted nor missing (the folder removed, or given images): not when the folder could not
    be read (a dead FUSE mount answers ENOTCONN), nor when the root could not be judged (gone,
    or holding no image at all: an unmounted root hides the folders of the disks inside it),
    else a later unmount would delete its inputs."""
    site = make_site(tmp_path, emu)
    engine = open_site_engine(site)
    try:
        engine.ledger.set_meta("mount_points", '["nas"]')
        stats = ScanStats(0, 0, 0, 0, 0, 0)
        result = ScanResult(snapshot, (), stats, mounts_seen=frozenset())
        engine._remember_mounts(frozenset({"nas"}), result, None)
        assert engine.ledger.get_meta("mount_points") == kept
    finally:
        engine.close()


def test_deletes_refused_with_a_long_wait_leave_no_delete_intent(
    tmp_path: Path, manual_emulator: Emulator
) -> None:
    """The daemon's client (max_wait 30 s) meeting a 429 that asks for 300 s while deleting:
    the pass stops (WaitRequested), nothing was deleted, and no input is left `deleting`
    (such an intent is resent later without a plan, though the files may be back by then).
    The pass's ledger row says it was cut short, with a non-zero exit code. The emulator's
    clock stands still, so its one-second window, once full, stays full."""
    emu = manual_emulator
    site = make_site(tmp_path, emu, sync={"max_delete_fraction": 1.0, "batch_size": 2})
    for i in range(6):
        site.image(f"{i}.png", i)
    assert reconcile(site, "--no-wait").exit_code == 0
    emu.advance(5)
    assert reconcile(site).exit_code == 0  # statuses polled: all processed
    before = site.ledger_inputs()
    assert len(before) == 6
    for i in range(4):
        (site.root / f"{i}.png").unlink()
    emu.set_faults(throttle_rps=1, retry_after=300)
    api_call(emu, "GET", {}, "/v2/inputs/status")  # fills the window
    engine = open_site_engine(site, max_wait=30.0)
    try:
        with pytest.raises(WaitRequested):
            engine.sync_once(PassOptions(local_only=True))
        last = engine.ledger.last_pass()
    finally:
        engine.close()
    assert len(emu.store_snapshot()) == 6
    assert {r.state for r in site.ledger_inputs().values()} == {r.state for r in before.values()}
    assert last is not None and last["exit_code"] == 3
    assert last["summary"]["errors"] >= 1
