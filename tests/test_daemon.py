"""`syncd run` as a real subprocess against the emulator on a real temporary folder.

Every scenario waits on a condition with a timeout (the remote converging, a log line, a notify
datagram), never on a fixed sleep. A few in-process tests pin the loop's failure handling with a
fake engine, because a real outage outlasting the client's own retries takes ~15 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helpers
import pytest
import requests
from structlog.testing import capture_logs

from syncd.config import Config, load_config
from syncd.daemon import BATCH_WINDOW, Backoff, Daemon, Job, Throttle, merge_reload
from syncd.emulator import Emulator
from syncd.engine import SyncReport
from syncd.errors import AuthError, TransientError
from syncd.model import derive_input_id
from syncd.sample import png_bytes
from syncd.watcher import Change, Settler

TIMEOUT = 15.0
SOURCE = "pets"


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """`helpers.wait_until` with this file's longer default timeout (real observers, real
    subprocesses)."""
    return helpers.wait_until(predicate, timeout=timeout, what=what)


def image(seed: int) -> bytes:
    return png_bytes(8, 8, seed=seed)


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def labels(*concepts: str) -> str:
    return json.dumps({"concepts": list(concepts)})


def remote(emu: Emulator) -> dict[str, dict[str, Any]]:
    """Live inputs by their marker path."""
    return {
        x["data"]["metadata"]["syncd"]["path"]: x for x in emu.store_snapshot() if not x["deleting"]
    }


def concepts(entry: dict[str, Any]) -> set[str]:
    return {c["id"] for c in entry["data"].get("concepts", []) if c["value"] > 0.5}


def converged(emu: Emulator, expected: dict[str, set[str]]) -> bool:
    """The remote holds exactly these paths, with these concepts, all processed."""
    now = remote(emu)
    return set(now) == set(expected) and all(
        concepts(now[p]) == c and now[p]["status"]["code"] == 30000 for p, c in expected.items()
    )


def posts(emu: Emulator) -> dict[str, int]:
    return emu.stats()["posts_per_input_id"]


def requests_of(emu: Emulator, method: str) -> int:
    return sum(n for route, n in emu.stats()["requests"].items() if route.startswith(method + " "))


# --- the subprocess -----------------------------------------------------------------------------


class DaemonProcess:
    """One `syncd run` subprocess: config file, environment, JSON log file."""

    def __init__(self, tmp_path: Path, root: Path, emu_url: str, api_key: str) -> None:
        self.tmp_path = tmp_path
        self.root = root
        self.config = tmp_path / "syncd.toml"
        self.ledger = tmp_path / "state" / "ledger.db"
        self.log_path = tmp_path / "daemon.log"
        self.env = {**os.environ, "CLARIFAI_PAT": api_key}
        for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "SYNCD_CONFIG"):
            self.env.pop(var, None)
        self.settings: dict[str, dict[str, Any]] = {
            "source": {"root": str(root), "name": SOURCE},
            "remote": {"api_base": emu_url, "user_id": "me", "app_id": "demo-app", "timeout": 10},
            "sync": {"settle_seconds": 0.3, "rescan_interval": 0, "max_delete_fraction": 1.0},
            "ledger": {"path": str(self.ledger)},
            "log": {"format": "json", "level": os.environ.get("SYNCD_TEST_LOG_LEVEL", "info")},
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def write_config(self) -> None:
        lines = []
        for section, values in self.settings.items():
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> DaemonProcess:
        self.write_config()
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", "run", "--config", str(self.config)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def events(self, name: str | None = None, *, this_run: bool = True) -> list[dict[str, Any]]:
        """Parsed JSON log lines (of the current run only, by default)."""
        with self.log_path.open("rb") as log:
            if this_run:
                log.seek(self._log_offset)
            lines = log.read().decode(errors="replace").splitlines()
        out = []
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and (name is None or event.get("event") == name):
                    out.append(event)
        return out

    def wait_event(self, name: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        def seen() -> dict[str, Any] | None:
            if self.proc is not None and self.proc.poll() is not None:
                pytest.fail(f"syncd run exited with {self.proc.returncode}:\n{self.tail()}")
            found = self.events(name)
            return found[-1] if found else None

        return wait_until(seen, timeout, what=f"log event {name}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture(name="root")
def _root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture(name="daemon")
def _daemon(tmp_path: Path, root: Path, emulator: Emulator) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(tmp_path, root, emulator.url, emulator.api_key)
    yield proc
    proc.kill()


class NotifyListener:
    """A real AF_UNIX datagram socket (abstract namespace) standing in for systemd; a thread
    drains it as systemd would, so the sender's queue never fills."""

    def __init__(self) -> None:
        self.name = f"@syncd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.sock.settimeout(0.05)
        self._messages: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._read, name="notify-listener")
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            with self._lock:
                self._messages.append(message)

    def poll(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._messages)

    def first(self, key: str) -> int | None:
        return next((i for i, m in enumerate(self.poll()) if key in m), None)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.sock.close()


# --- acceptance scenarios --------------------------------------------------------------------


def test_new_images_and_systemd_notifications(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """Catch-up, READY=1, new images with and without sidecars (one add each, labels included),
    STATUS and WATCHDOG=1 while running, STOPPING=1 and exit 0 on SIGTERM."""
    write(root / "old.png", image(1))
    listener = NotifyListener()
    daemon.env.update(NOTIFY_SOCKET=listener.name, WATCHDOG_USEC="1000000")
    try:
        daemon.start()
        wait_until(lambda: listener.first("READY") is not None, what="READY=1")
        assert converged(emulator, {"old.png": set()}) or wait_until(
            lambda: converged(emulator, {"old.png": set()})
        )
        write(root / "cats" / "a.png", image(2))
        write(root / "cats" / "a.json", labels("cat"))
        write(root / "plain.png", image(3))
        written = time.time()
        expected = {"old.png": set(), "cats/a.png": {"cat"}, "plain.png": set()}
        wait_until(lambda: converged(emulator, expected), what="new images on the remote")
        latency = time.time() - written
        assert requests_of(emulator, "PATCH") == 0, "labels must come with the add"
        assert set(posts(emulator).values()) == {1}
        wait_until(lambda: any("WATCHDOG" in m for m in listener.poll()), what="WATCHDOG=1")
        wait_until(
            lambda: any("added 3" in m.get("STATUS", "") for m in listener.poll()),
            what="STATUS with counts",
        )
        assert daemon.stop() == 0
        stopping = listener.first("STOPPING")
        assert stopping is not None and stopping > listener.first("READY")
        assert latency < 5.0
    finally:
        listener.close()


def test_slowly_written_image_is_never_sent_half_written(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """An image written in chunks slower than nothing but faster than settle_seconds is sent
    once, whole."""
    daemon.start()
    daemon.wait_event("daemon_ready")
    data = png_bytes(64, 64, seed=7, noise=1.0)
    path = root / "slow.png"
    with path.open("wb") as handle:
        step = len(data) // 8 + 1
        for offset in range(0, len(data), step):
            handle.write(data[offset : offset + step])
            handle.flush()
            time.sleep(0.1)  # the slow writer being simulated, not a wait for the daemon
    wait_until(lambda: converged(emulator, {"slow.png": set()}))
    stored = remote(emulator)["slow.png"]
    assert stored["image"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert posts(emulator) == {stored["id"]: 1}


def test_sidecar_edit_is_a_patch(daemon: DaemonProcess, root: Path, emulator: Emulator) -> None:
    """Editing a sidecar (in place, and by an editor's write-temp-then-rename) patches labels;
    the image is not sent again."""
    write(root / "a.png", image(1))
    write(root / "a.json", labels("cat"))
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": {"cat"}}))
    write(root / "a.json", labels("cat", "fluffy"))
    wait_until(lambda: converged(emulator, {"a.png": {"cat", "fluffy"}}), what="in-place edit")
    write(root / ".a.json.swp", labels("dog"))
    os.replace(root / ".a.json.swp", root / "a.json")
    wait_until(lambda: converged(emulator, {"a.png": {"dog"}}), what="rename-over edit")
    assert requests_of(emulator, "PATCH") >= 2
    assert set(posts(emulator).values()) == {1}


def test_image_saved_by_rename_over_is_replaced(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """An image saved the way editors do (write a temp file, rename it over) sends the new bytes."""
    write(root / "a.png", image(1))
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": set()}))
    new = image(2)
    write(root / "a.png.tmp", new)
    os.replace(root / "a.png.tmp", root / "a.png")
    sha = hashlib.sha256(new).hexdigest()
    wait_until(
        lambda: (
            converged(emulator, {"a.png": set()})
            and remote(emulator)["a.png"]["image"]["sha256"] == sha
        ),
        what="new bytes on the remote",
    )


def test_moves_and_renames(daemon: DaemonProcess, root: Path, emulator: Emulator) -> None:
    """A renamed file and a renamed folder end up under their new paths only."""
    write(root / "a.png", image(1))
    write(root / "cats" / "x.png", image(2))
    write(root / "cats" / "x.json", labels("cat"))
    write(root / "cats" / "deep" / "y.png", image(3))
    daemon.start()
    wait_until(
        lambda: converged(
            emulator, {"a.png": set(), "cats/x.png": {"cat"}, "cats/deep/y.png": set()}
        )
    )
    (root / "a.png").rename(root / "b.png")
    (root / "cats").rename(root / "felines")
    expected = {"b.png": set(), "felines/x.png": {"cat"}, "felines/deep/y.png": set()}
    wait_until(lambda: converged(emulator, expected), what="moved paths on the remote")
    ids = {x["id"] for x in emulator.store_snapshot() if not x["deleting"]}
    assert derive_input_id(SOURCE, "a.png") not in ids


def test_moves_into_and_out_of_the_root(
    daemon: DaemonProcess, root: Path, tmp_path: Path, emulator: Emulator
) -> None:
    """A folder moved in with files already inside is sent; one moved out is deleted."""
    write(root / "keep.png", image(1))
    write(root / "leaving" / "l.png", image(2))
    outside = tmp_path / "outside"
    write(outside / "inner" / "n.png", image(3))
    write(outside / "inner" / "n.json", labels("new"))
    daemon.start()
    wait_until(lambda: converged(emulator, {"keep.png": set(), "leaving/l.png": set()}))
    (root / "leaving").rename(tmp_path / "gone")
    outside.rename(root / "arrived")
    expected = {"keep.png": set(), "arrived/inner/n.png": {"new"}}
    wait_until(lambda: converged(emulator, expected), what="moves across the root boundary")


def test_folder_created_with_files_at_once(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """Files written into a brand-new folder tree before its watches exist are all found."""
    daemon.start()
    daemon.wait_event("daemon_ready")
    base = root / "new" / "deeper" / "deepest"
    base.mkdir(parents=True)
    expected = {}
    for i in range(12):
        rel = f"new/deeper/deepest/f{i}.png" if i % 2 else f"new/f{i}.png"
        write(root / rel, image(100 + i))
        expected[rel] = set()
    wait_until(lambda: converged(emulator, expected), what="every file of the new tree")


def test_a_burst_goes_out_in_whole_batches(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """End to end, with a real watcher: files written over two seconds into new folders
    (item 5's burst in bench/, scaled to batch_size 8: 203 files round-robin into 10 folders)
    go out as full requests and one last partial one, 26 POSTs, each input once. The
    batching decisions themselves are pinned by the tests after this one's section."""
    # settle as long as the batch window (as in the bench): a settled path is due at once
    daemon.settings["sync"].update(batch_size=8, settle_seconds=1.0)
    daemon.start()
    daemon.wait_event("daemon_ready")
    burst = {f"burst/d{i % 10}/{i:03d}.png": image(2000 + i) for i in range(203)}
    for rel, data in burst.items():
        write(root / rel, data)
        time.sleep(0.01)  # the writer's pace is the scenario, not a wait for the daemon
    expected: dict[str, set[str]] = {rel: set() for rel in burst}
    wait_until(lambda: converged(emulator, expected), what="the burst")
    assert requests_of(emulator, "POST") == 26
    assert set(posts(emulator).values()) == {1}


def test_deletes(daemon: DaemonProcess, root: Path, emulator: Emulator) -> None:
    """Deleting a file, a sidecar and a folder removes inputs and labels remotely."""
    write(root / "a.png", image(1))
    write(root / "b.png", image(2))
    write(root / "b.json", labels("bee"))
    write(root / "dir" / "c.png", image(3))
    write(root / "dir" / "d.png", image(4))
    daemon.start()
    wait_until(
        lambda: converged(
            emulator, {"a.png": set(), "b.png": {"bee"}, "dir/c.png": set(), "dir/d.png": set()}
        )
    )
    (root / "a.png").unlink()
    (root / "b.json").unlink()
    for p in (root / "dir").iterdir():
        p.unlink()
    (root / "dir").rmdir()
    wait_until(lambda: converged(emulator, {"b.png": set()}), what="deletes on the remote")


def test_changes_made_while_stopped(daemon: DaemonProcess, root: Path, emulator: Emulator) -> None:
    """A restart catches up with adds, label edits and deletes made while nothing watched."""
    write(root / "a.png", image(1))
    write(root / "a.json", labels("one"))
    write(root / "b.png", image(2))
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": {"one"}, "b.png": set()}))
    assert daemon.stop(signal.SIGINT) == 0
    write(root / "a.json", labels("two"))
    (root / "b.png").unlink()
    write(root / "c" / "c.png", image(3))
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": {"two"}, "c/c.png": set()}))
    assert daemon.wait_event("daemon_ready")
    assert set(posts(emulator).values()) == {1}


def test_sigterm_during_a_large_batch(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """SIGTERM while a 150-image pass is in flight: exit 0, and after a restart everything is
    there exactly once."""
    daemon.start()
    daemon.wait_event("daemon_ready")
    emulator.set_faults(latency=0.3)
    expected = {}
    for i in range(150):
        rel = f"bulk/{i:03d}.png"
        write(root / rel, image(1000 + i))
        expected[rel] = set()
    wait_until(lambda: requests_of(emulator, "POST") >= 1, what="the first add request")
    assert daemon.stop() == 0
    assert daemon.events("daemon_stopping")[-1]["in_flight"] is not None
    assert daemon.events("daemon_stopped")
    emulator.set_faults()
    daemon.start()
    wait_until(lambda: converged(emulator, expected), what="all 150 inputs")
    assert len(emulator.store_snapshot()) == 150
    assert max(posts(emulator).values()) == 1


def test_second_signal_abandons_the_in_flight_pass(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """A second SIGTERM does not wait for a slow request: exit 0 at once, intent is in the
    ledger, and the restart finishes the work without duplicating inputs."""
    daemon.start()
    daemon.wait_event("daemon_ready")
    emulator.set_faults(latency=3.0)
    write(root / "a.png", image(1))
    wait_until(lambda: requests_of(emulator, "POST") >= 1, what="the add request")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.wait_event("daemon_stopping")
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 2.5
    assert daemon.events("shutdown_abandoned")
    emulator.set_faults()
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": set()}))
    assert len(emulator.store_snapshot()) == 1


def test_emulator_down_for_a_while(
    tmp_path: Path, root: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """Changes made while the remote is unreachable are sent once it is back."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    emu = make_emulator(port=port, processing_delay=0.05, delete_delay=0.05)
    daemon = DaemonProcess(tmp_path, root, emu.url, emu.api_key)
    try:
        write(root / "a.png", image(1))
        daemon.start()
        wait_until(lambda: converged(emu, {"a.png": set()}))
        emu.stop()
        write(root / "b.png", image(2))
        write(root / "b.json", labels("bee"))
        daemon.wait_event("api_retry")
        emu.start()
        wait_until(lambda: converged(emu, {"a.png": set(), "b.png": {"bee"}}))
        assert daemon.stop() == 0
    finally:
        daemon.kill()


def test_a_long_retry_after_is_waited_out_by_the_loop(
    tmp_path: Path, root: Path, manual_emulator: Emulator
) -> None:
    """A 429 asking for 300 s ends the pass at once and the loop waits it out: asleep inside
    the request, the pass looked stalled, and under systemd the watchdog killed a healthy
    daemon (seen live). Meanwhile the daemon answers SIGTERM at once, with nothing in flight.
    The emulator's clock stands still, so its one-second window, once full, stays full."""
    emu = manual_emulator
    emu.set_faults(throttle_rps=1, retry_after=300)
    daemon = DaemonProcess(tmp_path, root, emu.url, emu.api_key)
    daemon.settings["sync"].update(batch_size=4, workers=2)
    try:
        daemon.start()
        daemon.wait_event("daemon_ready")
        filled = requests.get(
            f"{emu.url}/v2/inputs/status",
            headers={"Authorization": f"Key {emu.api_key}"},
            timeout=10,
        )
        assert filled.status_code == 200  # the window is full from now on
        for i in range(40):
            write(root / f"{i:02d}.png", image(i))
        unavailable = daemon.wait_event("remote_unavailable")
        assert unavailable["retry_in"] >= 300.0
        assert daemon.events("api_wait_deferred")
        # the pass stops at the first answer asking to wait: only the requests then in flight
        # (one per worker) went out, not one per batch
        assert requests_of(emu, "POST") <= 2
        assert not daemon.events("request_failed"), "no batch after it is prepared or tried"
        assert daemon.stop() == 0
        assert daemon.events("daemon_stopping")[-1]["in_flight"] is None
        assert not daemon.events("shutdown_abandoned")
    finally:
        daemon.kill()


def test_root_unmounted_pauses_deletes(
    daemon: DaemonProcess, root: Path, tmp_path: Path, emulator: Emulator
) -> None:
    """A root that disappears deletes nothing and is logged; when it is back, sync resumes."""
    write(root / "a.png", image(1))
    write(root / "b.png", image(2))
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": set(), "b.png": set()}))
    root.rename(tmp_path / "unmounted")
    daemon.wait_event("root_missing")
    (tmp_path / "unmounted").rename(root)
    daemon.wait_event("root_returned")
    write(root / "c.png", image(3))
    wait_until(lambda: converged(emulator, {"a.png": set(), "b.png": set(), "c.png": set()}))
    assert requests_of(emulator, "DELETE") == 0


def test_a_disk_mounted_in_the_root_is_watched_across_unmount_and_remount(
    daemon: DaemonProcess, root: Path, emulator: Emulator
) -> None:
    """A real tmpfs mounted in a folder of the root, the daemon started on a ledger in step
    (its catch-up takes the quick check, no scan): unmounted, its inputs stay and the folder
    is reported; mounted again, files written into it are sent at once (the watcher restarts
    onto the new file system; its watches had stayed on the old one)."""
    nas = root / "nas"
    nas.mkdir()
    mount = ["mount", "-t", "tmpfs", "syncd-test", str(nas)]
    if os.geteuid() != 0 or subprocess.run(mount, check=False).returncode:
        pytest.skip("needs root to mount a tmpfs")
    try:
        write(root / "a.png", image(1))
        write(nas / "b.png", image(2))
        daemon.write_config()
        reconcile = [sys.executable, "-m", "syncd", "reconcile", "--config", str(daemon.config)]
        subprocess.run(reconcile, env=daemon.env, check=True, capture_output=True)
        helpers.wait_out_racy_window(root)
        subprocess.run(reconcile, env=daemon.env, check=True, capture_output=True)
        daemon.start()
        daemon.wait_event("quick_check_in_step")  # the catch-up scanned nothing
        subprocess.run(["umount", str(nas)], check=True)
        daemon.wait_event("mounts_changed")
        daemon.wait_event("scan_mount_missing")
        subprocess.run(mount, check=True)
        write(nas / "c.png", image(3))
        expected = {"a.png": set(), "nas/b.png": set(), "nas/c.png": set()}
        wait_until(lambda: converged(emulator, expected), what="the file in the remounted disk")
        assert requests_of(emulator, "DELETE") == 0
        assert daemon.stop() == 0
    finally:
        subprocess.run(["umount", str(nas)], check=False)


def test_periodic_rescan_repairs_what_no_event_reported(
    daemon: DaemonProcess, root: Path, emulator: Emulator, client_for: Callable[..., Any]
) -> None:
    """The jittered full rescan (with the remote listing) runs whatever the events said: an
    input deleted behind syncd's back (no local event at all) is added again."""
    daemon.settings["sync"]["rescan_interval"] = 1.0
    write(root / "a.png", image(1))
    daemon.start()
    wait_until(lambda: converged(emulator, {"a.png": set()}))
    input_id = remote(emulator)["a.png"]["id"]
    assert client_for(emulator).request("DELETE", f"/inputs/{input_id}").status_code == 200
    wait_until(lambda: "a.png" not in remote(emulator), what="the out-of-band delete")
    wait_until(lambda: converged(emulator, {"a.png": set()}), what="the input added again")
    assert posts(emulator)[input_id] == 2


def test_sighup_rereads_the_config(daemon: DaemonProcess, root: Path, emulator: Emulator) -> None:
    """SIGHUP applies sync settings and logs the ones (like source.root) that need a restart."""
    daemon.start()
    daemon.wait_event("daemon_ready")
    daemon.settings["sync"]["settle_seconds"] = 0.1
    daemon.settings["source"]["root"] = str(root.parent / "elsewhere")
    daemon.write_config()
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    reloaded = daemon.wait_event("config_reloaded")
    assert reloaded["applied"] == ["sync.settle_seconds"]
    assert daemon.events("config_change_needs_restart")[-1]["keys"] == ["source.root"]
    write(root / "after.png", image(5))
    wait_until(lambda: converged(emulator, {"after.png": set()}))


# --- the loop's failure handling, in process --------------------------------------------------


class FlakyEngine:
    """Stands in for Engine: fails `failures` passes with `error`, then succeeds."""

    def __init__(self, error: Exception, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0
        self.closed = False
        self.clock = time.monotonic

    def sync_once(self, _options: Any) -> SyncReport:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return SyncReport()

    def poll(self, *, deadline: float) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def run_in_process(tmp_path: Path, engine: FlakyEngine, until: Callable[[Daemon], bool]) -> Daemon:
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    config = load_config(
        None,
        environ={},
        overrides={"source.root": str(root), "ledger.path": str(tmp_path / "l.db")},
    )
    daemon = Daemon(config, engine_factory=lambda _c: engine, environ={})
    daemon.backoff = Backoff(start=0.01, cap=0.05)

    def stop_when_done() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not until(daemon) and time.monotonic() < deadline:
            time.sleep(0.01)
        daemon.request_stop()

    stopper = threading.Thread(target=stop_when_done)
    stopper.start()
    try:
        assert daemon.run() == 0
    finally:
        stopper.join()
    return daemon


def test_remote_outage_is_logged_once_then_recovered(tmp_path: Path) -> None:
    """Repeated transient failures back off, log remote_unavailable once, then one
    remote_recovered line; the daemon keeps running."""
    engine = FlakyEngine(TransientError("connection refused"), failures=4)
    with capture_logs() as logs:
        # stopped once the daemon has taken the first good pass's result, not merely once
        # the engine returned it (the daemon may not have looked at it yet)
        daemon = run_in_process(tmp_path, engine, lambda d: d.passes >= 1)
    names = [e["event"] for e in logs]
    assert names.count("remote_unavailable") == 1
    assert names.count("remote_recovered") == 1
    recovered = next(e for e in logs if e["event"] == "remote_recovered")
    assert recovered["failures"] == 4
    assert daemon.ready_sent and engine.closed


class ThrottledEngine(FlakyEngine):
    """Stands in for Engine: every pass ends with its uploads throttled, the remote asking
    for a wait of `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(TransientError("unused"), failures=0)
        self.retry_after = retry_after

    def sync_once(self, _options: Any) -> SyncReport:
        self.calls += 1
        return SyncReport(
            errors=["add request failed: throttled"], unreachable=True, retry_after=self.retry_after
        )


def test_a_throttled_pass_waits_what_the_remote_asked(tmp_path: Path) -> None:
    """When a pass's uploads gave up on 429s with Retry-After, the daemon's next try waits at
    least that long (not its own, shorter backoff)."""
    engine = ThrottledEngine(retry_after=30.0)
    with capture_logs() as logs:
        daemon = run_in_process(tmp_path, engine, lambda d: d.backoff.failures >= 1)
    unavailable = next(e for e in logs if e["event"] == "remote_unavailable")
    assert unavailable["retry_in"] >= 30.0
    assert daemon.backoff.until - time.monotonic() > 25.0
    assert engine.calls == 1


def test_a_reload_does_not_cut_short_a_wait_the_remote_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP (logrotate, `systemctl reload`) gives a fixed key an immediate try, but not
    inside a Retry-After: the next try still waits what the remote asked."""
    monkeypatch.setenv("CLARIFAI_PAT", "a-key-long-enough-for-the-check-0123456789")
    engine = ThrottledEngine(retry_after=30.0)
    daemon = run_in_process(tmp_path, engine, lambda d: d.backoff.failures >= 1)
    until = daemon.backoff.until
    rebuilt: list[Config] = []
    daemon._reload_config = lambda: daemon.config
    daemon._engine_factory = lambda c: rebuilt.append(c) or engine
    daemon._apply_reload()
    assert len(rebuilt) == 1  # the reload went through
    assert daemon.backoff.until == until > time.monotonic() + 25.0


def test_auth_failure_keeps_watching(tmp_path: Path) -> None:
    """A refused key is logged loudly with a fix, retried at the backoff cap, and not fatal."""
    engine = FlakyEngine(AuthError("the remote refused the API key"), failures=2)
    with capture_logs() as logs:
        run_in_process(tmp_path, engine, lambda _d: engine.calls >= 3)
    auth = [e for e in logs if e["event"] == "remote_auth_failed"]
    assert len(auth) == 1
    assert "SIGHUP" in auth[0]["fix"]


def test_a_pass_that_ends_while_stopping_is_counted(tmp_path: Path) -> None:
    """Stop requested while the catch-up pass is in flight: the daemon waits for it, takes
    its result (passes and totals in daemon_stopped), and sends no READY=1 while stopping."""
    started, release = threading.Event(), threading.Event()

    class SlowEngine(FlakyEngine):
        def sync_once(self, options: Any) -> SyncReport:
            started.set()
            release.wait(TIMEOUT)
            super().sync_once(options)
            return SyncReport(added=3)

    engine = SlowEngine(TransientError("unused"), failures=0)

    def stop_then_release() -> None:
        started.wait(TIMEOUT)
        daemon.request_stop()
        release.set()

    root = tmp_path / "data"
    root.mkdir()
    config = load_config(
        None, environ={}, overrides={"source.root": str(root), "ledger.path": str(tmp_path / "l")}
    )
    daemon = Daemon(config, engine_factory=lambda _c: engine, environ={})
    stopper = threading.Thread(target=stop_then_release)
    stopper.start()
    with capture_logs() as logs:
        assert daemon.run() == 0
    stopper.join()
    stopped = next(e for e in logs if e["event"] == "daemon_stopped")
    assert stopped["passes"] == 1 and stopped["added"] == 3
    assert daemon.passes == 1 and not daemon.ready_sent


def test_watchdog_pings_only_while_the_pass_makes_progress(tmp_path: Path) -> None:
    """A pass stuck without CPU, requests or a moving stack stops WATCHDOG=1 (after
    EXTEND_TIMEOUT_USEC kept the start alive); pings resume once it moves again."""
    release = threading.Event()

    class StuckEngine(FlakyEngine):
        def sync_once(self, options: Any) -> SyncReport:
            release.wait()
            return super().sync_once(options)

    engine = StuckEngine(TransientError("unused"), failures=0)
    listener = NotifyListener()
    root = tmp_path / "data"
    root.mkdir()
    config = load_config(
        None, environ={}, overrides={"source.root": str(root), "ledger.path": str(tmp_path / "l")}
    )
    environ = {"NOTIFY_SOCKET": listener.name, "WATCHDOG_USEC": "100000"}
    daemon = Daemon(config, engine_factory=lambda _c: engine, environ=environ)
    daemon.stall_seconds = 0.5
    pings_at_stall: list[int] = []

    def pings() -> int:
        return sum("WATCHDOG" in m for m in listener.poll())

    def drive(logs: list[dict[str, Any]]) -> None:
        try:
            wait_until(lambda: any(e["event"] == "job_stalled" for e in logs), what="stall")
            pings_at_stall.append(pings())
            time.sleep(0.5)  # a window in which no ping may arrive (absence needs a window)
            pings_at_stall.append(pings())
            release.set()
            wait_until(lambda: listener.first("READY") is not None, what="READY=1")
            before = pings()
            wait_until(lambda: pings() > before, what="pings to resume")
        finally:
            release.set()
            daemon.request_stop()

    try:
        with capture_logs() as logs:
            driver = threading.Thread(target=drive, args=(logs,))
            driver.start()
            assert daemon.run() == 0
            driver.join()
    finally:
        listener.close()
    assert pings_at_stall[0] >= 1, "pings while the pass was young"
    assert pings_at_stall[1] == pings_at_stall[0], "no ping while stalled"
    assert listener.first("EXTEND_TIMEOUT_USEC") is not None
    assert listener.first("STOPPING") is not None


def test_lost_events_trigger_a_full_local_rescan(tmp_path: Path) -> None:
    """A rescan request from the watcher (queue overflow) runs a full stat-only pass."""

    class RecordingEngine(FlakyEngine):
        def __init__(self) -> None:
            super().__init__(TransientError("unused"), failures=0)
            self.options: list[Any] = []

        def sync_once(self, options: Any) -> SyncReport:
            self.options.append(options)
            return super().sync_once(options)

    engine = RecordingEngine()
    holder: list[Daemon] = []

    def overflow_once_ready() -> bool:
        if len(engine.options) == 1 and holder and holder[0].ready_sent:
            holder[0].queue.rescan("inotify event queue overflowed (events were lost)")
            holder.clear()
        return len(engine.options) >= 2

    root = tmp_path / "data"
    root.mkdir()
    config = load_config(
        None, environ={}, overrides={"source.root": str(root), "ledger.path": str(tmp_path / "l")}
    )
    daemon = Daemon(config, engine_factory=lambda _c: engine, environ={})
    holder.append(daemon)

    def drive() -> None:
        try:
            wait_until(overflow_once_ready, what="the rescan pass")
        finally:
            daemon.request_stop()

    driver = threading.Thread(target=drive)
    driver.start()
    assert daemon.run() == 0
    driver.join()
    catchup, rescan = engine.options
    assert (catchup.kind, catchup.scope, catchup.local_only) == ("catchup", None, True)
    assert (rescan.kind, rescan.scope, rescan.local_only) == ("rescan", None, True)


def _batching_daemon(tmp_path: Path) -> tuple[Daemon, list[tuple[str, ...]]]:
    """A daemon whose passes are only recorded (scope of each), for its batching decisions."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    config = load_config(
        None,
        environ={},
        overrides={
            "source.root": str(root),
            "ledger.path": str(tmp_path / "l"),
            "sync.batch_size": 4,
        },
    )
    engine = FlakyEngine(TransientError("unused"), failures=0)
    daemon = Daemon(config, engine_factory=lambda _c: engine, environ={})
    daemon.ready_sent = True  # past the catch-up pass
    daemon.full_local = None
    started: list[tuple[str, ...]] = []
    daemon._start_pass = lambda _now, _kind, scope, **_kw: started.append(scope)  # type: ignore[method-assign]
    return daemon, started


@pytest.mark.parametrize(
    ("ready", "changed_again", "sent", "kept"),
    [
        (10, 0, 8, 2),  # whole batches now, the remainder waits for the rest of the burst
        (4, 1, 0, 3),  # a batch's worth came, one changed again: no partial request yet
        (8, 0, 8, 0),  # exactly whole batches: all of them
    ],
)
def test_a_burst_still_settling_sends_only_whole_batches(
    tmp_path: Path, ready: int, changed_again: int, sent: int, kept: int
) -> None:
    """While files of a burst are still settling, a pass takes only whole batches of the
    paths ready (batch_size 4 here), even when some of a batch's worth changed again; the
    rest joins the files still to come."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    paths = [f"b/{i:02d}.png" for i in range(ready)]
    daemon.batch = dict.fromkeys(paths, now)
    daemon.batch_started = now
    daemon.settler.note(Change("b/still-writing.png", now))
    for path in paths[:changed_again]:
        daemon.settler.note(Change(path, now))

    daemon._start_next(now)

    ready_now = paths[changed_again:]
    assert started == ([tuple(ready_now[:sent])] if sent else [])
    assert sorted(daemon.batch) == ready_now[sent:] and len(daemon.batch) == kept


def test_a_partial_batch_goes_out_at_once_in_a_trickle(tmp_path: Path) -> None:
    """With only a trickle still settling (fewer than a batch with the paths ready), the
    paths ready go out at once, partial batch or not: holding them would only add latency."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    daemon.batch = {"a.png": now - 2, "b.png": now - 2}
    daemon.batch_started = now - 2  # the window has passed
    daemon.settler.note(Change("c.png", now))  # 2 ready + 1 settling < batch_size 4
    daemon._start_next(now)
    assert started == [("a.png", "b.png")] and daemon.batch == {}
    assert daemon.held_since is None


def _still_settling(daemon: Daemon, names: list[str], now: float) -> None:
    daemon.settler = Settler(daemon.config.source.root, daemon.config.sync.settle_seconds)
    for name in names:
        daemon.settler.note(Change(name, now))


def _held_burst(tmp_path: Path) -> tuple[Daemon, list[tuple[str, ...]], float]:
    """Two paths ready and three still settling (batch_size 4): a batch can form, so the
    two are held for the rest of the burst rather than sent as a partial request."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    daemon.batch = {"a.png": now - 2, "b.png": now - 2}
    daemon.batch_started = now - 2
    for name in ("c.png", "d.png", "e.png"):
        daemon.settler.note(Change(name, now))
    daemon._start_next(now)
    assert started == [] and list(daemon.batch) == ["a.png", "b.png"]
    assert daemon.held_since == now
    return daemon, started, now


def test_a_burst_holds_its_first_paths_until_a_whole_batch_is_ready(tmp_path: Path) -> None:
    """The first paths of a burst to settle wait for a batch's worth (the bench's 5,000-file
    burst sent partial requests whenever fewer than a batch were ready after a pass)."""
    daemon, started, now = _held_burst(tmp_path)
    assert daemon._batch_deadline(now) == now + BATCH_WINDOW  # its wake-up, not a busy wait
    _still_settling(daemon, ["e.png"], now)  # two more settled: a whole batch
    daemon.batch.update({"c.png": now - 1, "d.png": now - 1})
    daemon._start_next(now + 0.1)
    assert started == [("a.png", "b.png", "c.png", "d.png")] and daemon.batch == {}


def test_a_held_batch_goes_once_nothing_is_settling(tmp_path: Path) -> None:
    """When the files still settling turn out to be fewer (deleted, ignored), the held rest
    goes as soon as nothing is left settling, not at the end of the hold."""
    daemon, started, now = _held_burst(tmp_path)
    _still_settling(daemon, [], now)
    daemon._start_next(now + 0.1)
    assert started == [("a.png", "b.png")] and daemon.batch == {} and daemon.held_since is None


def test_a_held_batch_waits_at_most_one_window(tmp_path: Path) -> None:
    """Files that keep changing cannot hold the rest of a burst for ever: one window after
    the last request it goes, partial or not."""
    daemon, started, now = _held_burst(tmp_path)
    daemon._start_next(now + BATCH_WINDOW - 0.01)
    assert started == []
    daemon._start_next(now + BATCH_WINDOW)
    assert started == [("a.png", "b.png")] and daemon.batch == {}


def test_whole_batches_take_the_oldest_paths_first(tmp_path: Path) -> None:
    """During a long burst the rest held back is always the newest paths, so no path waits
    behind later ones whatever its name."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    names = ["z.png", "y.png", "x.png", "w.png", "a.png", "b.png"]  # in the order they settled
    daemon.batch = dict.fromkeys(names, now - 2)
    daemon.batch_started = now - 2
    daemon.settler.note(Change("still-writing.png", now))
    daemon._start_next(now)
    assert started == [("w.png", "x.png", "y.png", "z.png")]
    assert list(daemon.batch) == ["a.png", "b.png"] and daemon.held_since == now


def test_the_last_files_of_a_burst_wait_for_each_other(tmp_path: Path) -> None:
    """After whole batches went, the burst's last few files (fewer than a batch with those
    still settling) are held for each other rather than sent as they settle; once a window
    has passed since the last request, files are a trickle again and go at once."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    daemon.batch = dict.fromkeys([f"b/{i}.png" for i in range(8)], now - 2)
    daemon.batch_started = now - 2
    daemon.settler.note(Change("b/8.png", now))
    daemon.settler.note(Change("b/9.png", now))
    daemon._start_next(now)  # two whole batches, two files still settling
    assert len(started) == 1 and len(started[0]) == 8 and daemon.held_since == now
    _still_settling(daemon, ["b/9.png"], now)
    daemon.batch = {"b/8.png": now - 1}
    daemon.batch_started = now - 1
    daemon._start_next(now + 0.2)
    assert len(started) == 1, "the tail of the burst waits for its last file"
    _still_settling(daemon, [], now)
    daemon.batch["b/9.png"] = now - 1
    daemon._start_next(now + 0.3)
    assert started[1:] == [("b/8.png", "b/9.png")] and daemon.held_since is None

    daemon.batch = {"c.png": now + 2}  # later: a lone file, another still settling
    daemon.batch_started = now + 2 - BATCH_WINDOW
    daemon.settler.note(Change("d.png", now + 2))
    daemon._start_next(now + 2)
    assert started[2:] == [("c.png",)]


def test_a_burst_long_over_does_not_make_the_next_one_partial(tmp_path: Path) -> None:
    """The mark a burst leaves (to hold its last files) expires with it: paths that settle
    into an empty batch a window later start afresh, so the next burst's first ready paths
    are held for a whole batch, not sent at once as an expired hold's rest."""
    daemon, started = _batching_daemon(tmp_path)
    root = Path(daemon.config.source.root)
    now = time.monotonic()
    daemon.held_since = now - 5 * BATCH_WINDOW  # left by a burst long over
    for name in ("a.png", "b.png"):
        (root / name).write_bytes(b"x")
        daemon.settler.note(Change(name, now - 10))
    for name in ("c.png", "d.png", "e.png"):  # the rest of the new burst, still being written
        (root / name).write_bytes(b"x")
        daemon.settler.note(Change(name, now + 100))
    daemon.settler.take_ready(now)  # the first look at a.png and b.png
    daemon._collect(now + 2)
    assert list(daemon.batch) == ["a.png", "b.png"] and daemon.held_since is None
    daemon._start_next(now + 2)
    assert started == []


def test_a_failed_pass_requeues_its_folders_as_folders(tmp_path: Path) -> None:
    """After a failed watch pass its paths wait for the next try, and its folders still do
    not count towards a batch (else they could go with held files: one request too many)."""
    daemon, _started = _batching_daemon(tmp_path)
    root = Path(daemon.config.source.root)
    (root / "d").mkdir()
    now = time.monotonic()
    job = Job("watch", ("d", "d/a.png"), lambda: None, now)
    daemon._requeue(job, now)
    assert list(daemon.batch) == ["d", "d/a.png"] and daemon.batch_dirs == {"d"}


def test_folders_wait_with_a_held_batch(tmp_path: Path) -> None:
    """A folder's pass scans it whole, so it would send the files held back with it: while
    files are held, the folders ready wait too (though they settled first), and they do not
    count towards a batch."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    names = ["d", "g", "d/a.png", "d/b.png", "d/c.png", "d/e.png", "d/f.png"]  # as they settled
    daemon.batch = dict.fromkeys(names, now - 2)
    daemon.batch_dirs = {"d", "g"}
    daemon.batch_started = now - 2
    daemon.settler.note(Change("d/still-writing.png", now))
    daemon._start_next(now)
    assert started == [("d/a.png", "d/b.png", "d/c.png", "d/e.png")]
    assert list(daemon.batch) == ["d", "g", "d/f.png"] and daemon.batch_dirs == {"d", "g"}
    _still_settling(daemon, [], now)  # the burst is over: the rest and the folders go
    daemon._start_next(now + 0.1)
    assert started[1:] == [("d", "d/f.png", "g")]
    assert daemon.batch == {} and daemon.batch_dirs == set()


def test_a_folder_does_not_complete_a_batch(tmp_path: Path) -> None:
    """Three files and a folder ready, one file settling (batch_size 4): not a whole batch of
    files, so nothing goes yet; the four files go together once the last one settled."""
    daemon, started = _batching_daemon(tmp_path)
    now = time.monotonic()
    daemon.batch = dict.fromkeys(["d", "d/a.png", "d/b.png", "d/c.png"], now - 2)
    daemon.batch_dirs = {"d"}
    daemon.batch_started = now - 2
    daemon.settler.note(Change("d/e.png", now))
    daemon._start_next(now)
    assert started == [] and len(daemon.batch) == 4
    _still_settling(daemon, [], now)
    daemon.batch["d/e.png"] = now - 1
    daemon._start_next(now + 0.1)
    assert started == [("d", "d/a.png", "d/b.png", "d/c.png", "d/e.png")]


def test_backoff_doubles_to_a_cap_and_honours_retry_after() -> None:
    """Delays double from the start to the cap (+-25% jitter); Retry-After is a floor."""
    b = Backoff(start=1.0, cap=8.0, rng=lambda: 0.5)
    assert [b.failed(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.failed(0.0, retry_after=30.0) == 30.0
    assert b.succeeded() == (6, 0.0)
    assert not b.waiting(0.0)


def test_throttle_allows_once_per_interval() -> None:
    """A repeated message passes once per interval per key."""
    t = Throttle(interval=60)
    assert t.allow("remote", 0.0)
    assert not t.allow("remote", 59.0)
    assert t.allow("root", 59.0)
    assert t.allow("remote", 60.0)


def test_merge_reload_applies_only_safe_settings(tmp_path: Path) -> None:
    """Sync and log settings are applied on SIGHUP; the root and remote identity are not."""
    base = {"source.root": str(tmp_path), "ledger.path": str(tmp_path / "l.db")}
    old = load_config(None, environ={}, overrides=base)
    new = load_config(
        None,
        environ={},
        overrides={
            **base,
            "source.root": str(tmp_path / "x"),
            "source.name": "other",
            "sync.batch_size": 7,
            "log.level": "debug",
            "remote.app_id": "elsewhere",
        },
    )
    merged, applied, restart = merge_reload(old, new)
    assert applied == ["sync.batch_size", "log.level"]
    assert restart == ["source.root", "source.name", "remote.app_id"]
    assert merged.sync.batch_size == 7 and merged.log.level == "debug"
    assert merged.source.root == old.source.root and merged.remote.app_id is None
