"""The watcher: real observers on real temp dirs; settling with an injected stat and clock."""

from __future__ import annotations

import errno
import os
import shutil
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import helpers
import pytest
from structlog.testing import capture_logs

from syncd.watcher import (
    Change,
    ChangeQueue,
    Settler,
    Watcher,
    minimal_scope,
    path_filter,
    suggested_max_user_watches,
    with_sidecar_users,
)

TIMEOUT = 10.0


def wait_until(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "") -> Any:
    """`helpers.wait_until` with this file's longer default timeout (real observers, real
    subprocesses)."""
    return helpers.wait_until(predicate, timeout=timeout, what=what)


class Collector:
    """Accumulates what a ChangeQueue received across drains."""

    def __init__(self, queue: ChangeQueue) -> None:
        self.queue = queue
        self.changes: dict[str, Change] = {}
        self.rescans: dict[str, str] = {}

    def poll(self) -> Collector:
        drained = self.queue.drain()
        self.changes.update(drained.changes)
        self.rescans.update(drained.rescans)
        return self

    def has(self, *paths: str) -> bool:
        self.poll()
        return all(p in self.changes for p in paths)

    def clear(self) -> None:
        self.poll()
        self.changes.clear()
        self.rescans.clear()


@pytest.fixture(name="root")
def _root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture(name="watch")
def _watch(root: Path) -> Iterator[Callable[..., tuple[Watcher, Collector]]]:
    """Start Watchers on `root` (options forwarded); all stopped, threads joined, afterwards."""
    before = set(threading.enumerate())
    started: list[Watcher] = []

    def make(**options: Any) -> tuple[Watcher, Collector]:
        queue = ChangeQueue()
        options.setdefault("relevant", path_filter(["*.png", "*.jpg"], [".*", "*.tmp"]))
        watcher = Watcher(root, queue, **options)
        started.append(watcher)
        watcher.start()
        return watcher, Collector(queue)

    yield make
    for watcher in started:
        watcher.stop()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"watcher threads left running: {leaked}"


# --- the queue ------------------------------------------------------------------------------


def test_queue_wait_returns_when_a_change_arrives() -> None:
    """A change recorded by another thread wakes a waiting loop well before its timeout."""
    queue = ChangeQueue()
    timer = threading.Timer(0.05, lambda: queue.add("a.png"))
    timer.start()
    started = time.monotonic()
    queue.wait(5.0)
    timer.join()
    assert time.monotonic() - started < 2.0
    drained = queue.drain()
    assert set(drained.changes) == {"a.png"}
    assert drained.events == 1
    assert queue.drain().changes == {}


def test_queue_keeps_the_last_event_per_path() -> None:
    """Repeated events on a path collapse into one change carrying the latest time and kind."""
    now = iter([1.0, 2.0, 3.0])
    queue = ChangeQueue(clock=lambda: next(now))
    queue.add("a.png", closed=True)
    queue.add("a.png")
    queue.rescan("overflow")
    drained = queue.drain()
    assert drained.changes["a.png"] == Change("a.png", 2.0, closed=False)
    assert drained.rescans == {"": "overflow"}
    assert drained.events == 2


# --- settling -------------------------------------------------------------------------------


class FakeFs:
    """A stat function over a dict: path -> (size, mtime) or "dir"; absent means missing."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.entries: dict[str, Any] = {}

    def stat(self, full: str) -> Any:
        rel = os.path.relpath(full, self.root)
        entry = self.entries.get(rel)
        if entry is None:
            raise FileNotFoundError(full)
        if entry == "dir":
            return SimpleNamespace(
                st_mode=statmod.S_IFDIR, st_size=0, st_mtime_ns=0, st_ctime_ns=0, st_ino=1
            )
        size, mtime = entry
        return SimpleNamespace(
            st_mode=statmod.S_IFREG,
            st_size=size,
            st_mtime_ns=mtime,
            st_ctime_ns=mtime,
            st_ino=hash(rel) & 0xFFFF,
        )


@pytest.fixture(name="fs")
def _fs() -> FakeFs:
    return FakeFs("/r")


def settler(fs: FakeFs, settle: float = 1.0) -> Settler:
    return Settler("/r", settle, stat=fs.stat)


def test_file_is_ready_once_its_stat_held_still_for_settle_seconds(fs: FakeFs) -> None:
    """A growing file is held; it is ready settle_seconds after its stat last changed."""
    s = settler(fs)
    fs.entries["a.png"] = (10, 1)
    s.note(Change("a.png", 0.0))
    assert s.ready(0.0) == []
    fs.entries["a.png"] = (20, 2)  # still being written
    assert s.ready(0.9) == []
    assert s.ready(1.5) == []  # changed at 0.9: not yet
    assert s.ready(1.95) == ["a.png"]
    assert len(s) == 0


def test_close_after_write_shortens_the_wait(fs: FakeFs) -> None:
    """After a close-after-write the wait is a quarter of settle_seconds."""
    s = settler(fs)
    fs.entries["a.png"] = (10, 1)
    s.note(Change("a.png", 0.0, closed=True))
    assert s.ready(0.0) == []
    assert s.ready(0.3) == ["a.png"]


def test_vanished_path_is_ready_at_once(fs: FakeFs) -> None:
    """A path that no longer exists needs no settling: its absence is what the scan reports."""
    s = settler(fs)
    s.note(Change("gone.png", 0.0))
    assert s.ready(0.0) == ["gone.png"]


def test_image_and_sidecar_go_out_together(fs: FakeFs) -> None:
    """An image waits for its pending sidecar (and the sidecar for it) so both are one add."""
    s = settler(fs)
    fs.entries["a.png"] = (10, 1)
    fs.entries["a.json"] = (5, 1)
    s.note(Change("a.png", 0.0))
    s.note(Change("a.json", 0.0))
    assert s.ready(0.0) == []
    fs.entries["a.json"] = (7, 2)  # the sidecar is still being written
    assert s.ready(1.1) == []  # the image settled, its sidecar did not
    assert s.ready(2.2) == ["a.json", "a.png"]


def test_sidecar_waits_for_the_image_it_labels(fs: FakeFs) -> None:
    """A settled sidecar is held while an image it applies to (name.ext.json) is written."""
    s = settler(fs)
    fs.entries["b.jpg"] = (10, 1)
    fs.entries["b.jpg.json"] = (5, 1)
    s.note(Change("b.jpg.json", 0.0))
    s.note(Change("b.jpg", 0.5))
    assert s.ready(0.0) == []
    assert s.ready(1.2) == []
    assert s.ready(1.6) == ["b.jpg", "b.jpg.json"]


def test_directory_waits_for_pending_paths_below_it(fs: FakeFs) -> None:
    """A new folder is not scanned while a file inside it is still changing."""
    s = settler(fs)
    fs.entries["new"] = "dir"
    fs.entries["new/x.png"] = (1, 1)
    s.note(Change("new", 0.0, is_dir=True))
    s.note(Change("new/x.png", 0.0))
    assert s.ready(0.0) == []
    fs.entries["new/x.png"] = (2, 2)
    assert s.ready(1.0) == []
    assert s.ready(2.0) == ["new", "new/x.png"]


def test_both_ends_of_a_move_go_out_together(fs: FakeFs) -> None:
    """The vanished source of a move waits for its destination, so a rename is one pass."""
    s = settler(fs)
    fs.entries["b.png"] = (10, 1)
    s.note(Change("a.png", 0.0, partner="b.png"))
    s.note(Change("b.png", 0.0, closed=True, partner="a.png"))
    assert s.ready(0.0) == []
    assert s.ready(0.3) == ["a.png", "b.png"]


def test_take_ready_reports_when_a_path_was_first_queued(fs: FakeFs) -> None:
    """The batch window counts from a path's first event, so take_ready returns that time."""
    s = settler(fs)
    fs.entries["a.png"] = (10, 1)
    s.note(Change("a.png", 5.0))
    s.note(Change("a.png", 5.5))
    assert s.take_ready(5.6) == []
    assert s.take_ready(7.0) == [("a.png", 5.0, False)]


def test_take_ready_says_which_paths_are_folders(fs: FakeFs) -> None:
    """A folder is known by its event or, when the event did not say (a move), by its stat:
    the daemon batches files and scans folders whole."""
    s = settler(fs)
    fs.entries["new"] = "dir"
    fs.entries["moved"] = "dir"
    fs.entries["new/x.png"] = (1, 1)
    s.note(Change("new", 0.0, is_dir=True))
    s.note(Change("moved", 0.0))
    s.note(Change("new/x.png", 0.0))
    assert s.take_ready(0.0) == []  # first look
    assert [(r.path, r.is_dir) for r in s.take_ready(2.0)] == [
        ("moved", True),
        ("new", True),
        ("new/x.png", False),
    ]


def test_next_check_tracks_the_earliest_deadline(fs: FakeFs) -> None:
    """next_check says when a ready() call could return something."""
    s = settler(fs)
    assert s.next_check(0.0) is None
    fs.entries["a.png"] = (10, 1)
    s.note(Change("a.png", 0.0))
    s.ready(0.1)
    assert s.next_check(0.2) == pytest.approx(1.1)


def test_minimal_scope_drops_paths_below_another() -> None:
    """A scope keeps a folder and drops what is below it, but not a sibling sharing a prefix."""
    assert minimal_scope(["a/x.png", "a", "a b/y.png", "c.png"]) == ("a", "a b/y.png", "c.png")
    assert minimal_scope(["x", ""]) == ("",)


def test_sidecar_scope_names_the_images_it_labels(tmp_path: Path) -> None:
    """A dirty sidecar, even a deleted one, brings the images it applies to into the scope."""
    for name in ("a.png", "a.jpg", "b.png", "b.png.json", "ab.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpg").write_bytes(b"x")
    scope = with_sidecar_users(tmp_path, ["a.json", "b.png.json", "sub/c.txt", "gone/d.json"])
    assert scope == (
        "a.jpg",
        "a.json",
        "a.png",
        "b.png",
        "b.png.json",
        "gone/d.json",
        "sub/c.jpg",
        "sub/c.txt",
    )


def test_path_filter_skips_temp_files_and_unrelated_names() -> None:
    """Temp and dot names never matter; images, sidecars and folders do."""
    relevant = path_filter(["*.jpg", "*.png"], [".*", "*.tmp", "*~"])
    assert relevant("cats/a.JPG", False)
    assert relevant("cats/a.json", False)
    assert relevant("cats", True)
    assert not relevant("cats/a.jpg.tmp", False)
    assert not relevant(".git/x.png", False)
    assert not relevant("notes.md", False)


def test_suggested_watch_limit() -> None:
    """The sysctl suggestion is twice the folder count, a power of two, at least 524288."""
    assert suggested_max_user_watches(10) == 524288
    assert suggested_max_user_watches(300_000) == 1 << 20


# --- real observers -------------------------------------------------------------------------


def test_native_watcher_records_created_files(root: Path, watch: Callable[..., Any]) -> None:
    """Writing an image under the root is recorded as a dirty relative path, closed on close."""
    (root / "sub").mkdir()
    watcher, got = watch()
    assert watcher.status.mode == "native"
    (root / "sub" / "a.png").write_bytes(b"x")
    wait_until(lambda: got.has("sub/a.png"))
    wait_until(lambda: got.poll().changes["sub/a.png"].closed, what="close-after-write")
    (root / "sub" / "new").mkdir()
    wait_until(lambda: got.has("sub/new"))
    assert got.changes["sub/new"].is_dir


def test_temp_names_and_reads_are_not_recorded(root: Path, watch: Callable[..., Any]) -> None:
    """Temp files are ignored and reading a file (as the scanner does) records nothing."""
    (root / "a.png").write_bytes(b"x")
    _watcher, got = watch()
    (root / "b.png.tmp").write_bytes(b"y")
    (root / "a.png").read_bytes()
    (root / "marker.png").write_bytes(b"z")
    wait_until(lambda: got.has("marker.png"))
    assert set(got.changes) == {"marker.png"}


def test_rename_records_both_ends(root: Path, watch: Callable[..., Any]) -> None:
    """An editor-style save (temp file renamed over) and a plain rename record both names."""
    (root / "a.png").write_bytes(b"x")
    _watcher, got = watch()
    (root / "a.png").rename(root / "b.png")
    wait_until(lambda: got.has("a.png", "b.png"))
    assert got.changes["b.png"].partner == "a.png"
    assert got.changes["a.png"].partner == "b.png"
    got.clear()
    (root / ".b.png.swp").write_bytes(b"new")
    os.replace(root / ".b.png.swp", root / "b.png")
    wait_until(lambda: got.has("b.png"))
    assert got.changes["b.png"].closed


def test_folder_moved_in_from_outside_is_recorded(
    root: Path, tmp_path: Path, watch: Callable[..., Any]
) -> None:
    """A folder moved into the root (with files already in it) is recorded as the folder."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "x.png").write_bytes(b"x")
    _watcher, got = watch()
    outside.rename(root / "inside")
    wait_until(lambda: got.has("inside"))
    assert got.changes["inside"].is_dir


def test_queue_overflow_requests_a_full_rescan(root: Path, watch: Callable[..., Any]) -> None:
    """An IN_Q_OVERFLOW from the kernel (wd -1) becomes a full-rescan request."""
    from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent

    watcher, got = watch()
    observer = watcher._observer
    with capture_logs() as logs:
        observer._inotify_fd.handle_event(InotifyEvent(-1, InotifyConstants.IN_Q_OVERFLOW, 0, b""))
    assert "" in got.poll().rescans
    assert watcher.status.overflows == 1
    assert any(e["event"] == "watch_queue_overflow" for e in logs)


def test_watch_limit_at_start_falls_back_to_polling(root: Path, watch: Callable[..., Any]) -> None:
    """ENOSPC from the native observer logs the sysctl to raise and degrades to polling."""

    def no_watches(_sink: Any) -> Any:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    (root / "d1").mkdir()
    with capture_logs() as logs:
        watcher, got = watch(native_factory=no_watches, polling_interval=0.1)
    assert watcher.status.mode == "polling"
    limit = next(e for e in logs if e["event"] == "inotify_watch_limit")
    assert limit["fix"] == "sudo sysctl fs.inotify.max_user_watches=524288"
    assert limit["directories"] == 2
    (root / "d1" / "p.png").write_bytes(b"x")
    wait_until(lambda: got.has("d1/p.png"), what="polling observer event")


def test_watch_limit_below_the_root_falls_back_to_polling(
    root: Path, watch: Callable[..., Any]
) -> None:
    """A new folder that cannot get a watch (ENOSPC, swallowed by watchdog) degrades to polling."""
    watcher, got = watch(polling_interval=0.1)
    fd = watcher._observer._inotify_fd

    def refuse(*_args: Any) -> Any:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    fd.add_callback = refuse
    with capture_logs() as logs:
        (root / "newdir").mkdir()
        wait_until(watcher.check, what="check() to request a rescan")
    assert watcher.status.mode == "polling"
    assert any(e["event"] == "inotify_watch_limit" for e in logs)
    got.clear()
    (root / "newdir" / "late.png").write_bytes(b"x")
    wait_until(lambda: got.has("newdir/late.png"), what="event from the polling observer")


def test_dead_observer_thread_is_restarted(root: Path, watch: Callable[..., Any]) -> None:
    """An emitter thread that died is noticed by check(), restarted, and a rescan is due."""
    watcher, got = watch()
    for emitter in list(watcher._observer.emitters):
        emitter.stop()
        emitter.join(5)
    assert watcher.check() is True
    assert watcher.status.restarts == 1
    (root / "after.png").write_bytes(b"x")
    wait_until(lambda: got.has("after.png"))


def test_root_removed_and_back(root: Path, watch: Callable[..., Any]) -> None:
    """A root that vanishes leaves the watcher waiting; when it returns, watching resumes."""
    watcher, got = watch()
    shutil.rmtree(root)
    wait_until(lambda: "" in got.poll().rescans, what="root deletion noticed")
    wait_until(lambda: (watcher.check(), watcher.status.mode == "waiting")[1])
    root.mkdir()
    assert watcher.check() is True
    assert watcher.status.mode == "native"
    (root / "back.png").write_bytes(b"x")
    wait_until(lambda: got.has("back.png"))
