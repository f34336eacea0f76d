"""The watchdog edge: filesystem events become dirty relative paths; nothing else happens here.

Events are hints. Observer threads only record which relative paths changed (with a monotonic
time) in a `ChangeQueue` and wake the daemon loop; the scan of those paths is the truth. What
peers get wrong, and what is done about it here:

- Queue overflow (IN_Q_OVERFLOW): watchdog 7 rebuilds its watches but tells no handler, so the
  watch group is subclassed to request a full rescan as well.
- Watch limits (ENOSPC / EMFILE): watchdog raises them for the root but swallows them for
  subdirectories; both are caught, the exact sysctl to raise is logged and the watcher falls
  back to the polling observer instead of dying.
- Observer threads that die (an error, the root deleted or unmounted): `check()` notices,
  restarts the observer when the root is back and requests a full rescan.
- New directories: a created or moved-in directory is recorded as a path; the scan of a
  directory is recursive, so files written before its watch existed are found.
- Half-written files and editor saves: `Settler` holds a path until its stat stopped changing
  (and its sidecar's too); the arrival end of a rename counts as a finished write.

Only this module imports watchdog.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import posixpath
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import structlog
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from syncd.sidecar import is_sidecar_name, sidecar_candidates

log = structlog.get_logger(__name__)

#: The events syncd cares about. Opens, reads and closes without writing are left out, so the
#: scanner reading a file never makes that file dirty again.
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]
#: A close-after-write shortens the settle wait to this fraction of `settle_seconds`.
CLOSED_FRACTION = 0.25
#: Default seconds between two snapshots of the polling observer (the fallback).
POLLING_INTERVAL = 2.0
#: The smallest `fs.inotify.max_user_watches` syncd suggests.
MIN_SUGGESTED_WATCHES = 524288
LIMIT_ERRNOS = frozenset({errno.ENOSPC, errno.EMFILE})


# --- the queue between observer threads and the loop ---------------------------------------


@dataclass(frozen=True)
class Change:
    """A relative path that an event touched.

    `closed`: the last event was a close-after-write or the arrival end of a rename, so the
    content is likely complete. `partner`: the other end of a move, when both are in the root.
    `is_dir`: the event was about a directory.
    """

    path: str
    at: float
    closed: bool = False
    partner: str | None = None
    is_dir: bool = False


@dataclass(frozen=True)
class Drained:
    """What the observers recorded since the last drain."""

    changes: Mapping[str, Change]
    rescans: Mapping[str, str]  # relative subtree ("" = everything) -> reason
    events: int


class ChangeQueue:
    """Dirty paths and rescan requests, shared by observer threads and the daemon loop.

    Cheap and non-blocking for the writers (no I/O under the lock); the loop sleeps in `wait()`
    until something is recorded, `wake()` is called, or the timeout passes.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.RLock())
        self._changes: dict[str, Change] = {}
        self._rescans: dict[str, str] = {}
        self._events = 0
        self._woken = False

    def add(
        self, path: str, *, closed: bool = False, partner: str | None = None, is_dir: bool = False
    ) -> None:
        with self._cond:
            self._events += 1
            old = self._changes.get(path)
            self._changes[path] = Change(
                path,
                self._clock(),
                closed=closed,
                partner=partner or (old.partner if old else None),
                is_dir=is_dir or (old.is_dir if old else False),
            )
            self._cond.notify_all()

    def rescan(self, reason: str, path: str = "") -> None:
        """Ask for a scan of the subtree `path` ("" for the whole root) whatever else happened."""
        with self._cond:
            self._rescans.setdefault(path, reason)
            self._cond.notify_all()

    def wake(self) -> None:
        """Make the loop's current or next `wait()` return at once."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not (self._changes or self._rescans or self._woken):
                self._cond.wait(max(0.0, timeout))
            self._woken = False

    def drain(self) -> Drained:
        with self._cond:
            out = Drained(dict(self._changes), dict(self._rescans), self._events)
            self._changes.clear()
            self._rescans.clear()
            self._events = 0
            return out


# --- settling -----------------------------------------------------------------------------

Signature = tuple[int, int, int, int, int]  # (mode type, size, mtime_ns, ctime_ns, inode)
_UNSEEN: Any = object()


class Ready(NamedTuple):
    """A settled path, when it was first queued, and whether it is a directory."""

    path: str
    first: float
    is_dir: bool


@dataclass
class _Pending:
    changed: float  # last event, last observed stat change, or first look
    closed: bool
    partner: str | None
    is_dir: bool
    first: float  # the first event since the path became pending
    sig: Any = _UNSEEN  # a Signature; None: the path does not exist


class Settler:
    """Holds dirty paths until they are safe to scan: the stat stopped changing.

    A path is ready when its (type, size, mtime, ctime, inode) was unchanged for
    `settle_seconds`, or for `CLOSED_FRACTION` of that after a close-after-write or a rename
    onto it; a path that no longer exists is ready at once (its absence is the truth). An
    image waits for its pending sidecars and a sidecar for its pending images, so the two go out
    as one add with labels; a directory waits for everything pending under it; the two ends of
    a move wait for each other, so a rename is one pass.
    """

    def __init__(
        self,
        root: Path | str,
        settle_seconds: float,
        *,
        stat: Callable[[str], os.stat_result] = os.lstat,
    ) -> None:
        self.root = os.fspath(root)
        self.settle_seconds = settle_seconds
        self._stat = stat
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending

    def note(self, change: Change) -> None:
        entry = self._pending.get(change.path)
        if entry is None:
            self._pending[change.path] = _Pending(
                change.at, change.closed, change.partner, change.is_dir, first=change.at
            )
            return
        entry.changed = max(entry.changed, change.at)
        entry.closed = change.closed
        entry.partner = change.partner or entry.partner
        entry.is_dir = entry.is_dir or change.is_dir

    def ready(self, now: float) -> list[str]:
        """Look at every pending path once; remove and return those ready to be scanned."""
        return [ready.path for ready in self.take_ready(now)]

    def take_ready(self, now: float) -> list[Ready]:
        """As `ready()`, with the time of each path's first event (when it was first queued)
        and whether it is a directory."""
        settled = {path for path, entry in self._pending.items() if self._settled(path, entry, now)}
        blocked: set[str] = set()
        for path, entry in self._pending.items():
            if path in settled:
                continue
            if entry.partner is not None:
                blocked.add(entry.partner)  # the two ends of a move go out together
            blocked.update(_parents(path))  # a directory waits for everything under it
            if entry.is_dir:
                continue
            # an unsettled image holds its sidecars back, an unsettled sidecar its images
            blocked.update(sidecar_candidates(path))
            if is_sidecar_name(posixpath.basename(path)):
                blocked.update(p for p in settled if path in sidecar_candidates(p))
        out = sorted(p for p in settled if p not in blocked)
        taken = [(path, self._pending.pop(path)) for path in out]
        return [Ready(path, entry.first, entry.is_dir) for path, entry in taken]

    def next_check(self, now: float) -> float | None:
        """When `ready()` could next return something (None when nothing is pending)."""
        if not self._pending:
            return None
        wait = [
            entry.changed + self._wait(entry) if entry.sig is not None else now
            for entry in self._pending.values()
        ]
        return max(now, min(wait))

    def unsettled(self) -> int:
        return len(self._pending)

    def _wait(self, entry: _Pending) -> float:
        return self.settle_seconds * (CLOSED_FRACTION if entry.closed else 1.0)

    def _settled(self, path: str, entry: _Pending, now: float) -> bool:
        sig = self._look(path)
        if entry.sig is _UNSEEN:
            entry.sig = sig
            entry.changed = max(entry.changed, now) if sig is not None else entry.changed
        elif sig != entry.sig:
            entry.sig = sig
            entry.changed = now
            entry.closed = False
        if sig is None:
            return True
        if statmod.S_ISDIR(sig[0]):
            entry.is_dir = True
        return now - entry.changed >= self._wait(entry)

    def _look(self, path: str) -> Signature | None:
        full = os.path.join(self.root, path) if path else self.root
        try:
            st = self._stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            # unreadable: still "present"; the scan reports the problem on the file
            return (0, -1, exc.errno or 0, 0, 0)
        return (statmod.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _parents(path: str) -> Iterable[str]:
    while path:
        path = posixpath.dirname(path)
        if path:
            yield path


def minimal_scope(paths: Iterable[str]) -> tuple[str, ...]:
    """The paths without those below another one of them (a scan of a directory is recursive)."""
    out: list[str] = []
    for path in sorted(set(paths), key=lambda p: p.split("/")):  # a folder, then its contents
        if path == "":
            return ("",)
        if out and path.startswith(out[-1] + "/"):
            continue
        out.append(path)
    return tuple(out)


def with_sidecar_users(
    root: Path | str,
    paths: Iterable[str],
    *,
    listdir: Callable[[str], Iterable[str]] = os.listdir,
) -> tuple[str, ...]:
    """`paths` plus, for each sidecar among them, the images in its folder it applies to.

    A changed, new or deleted `name.json` concerns `name.*` (and `name.ext.json` concerns
    `name.ext`); naming those images in the scope makes the scan look at them even when the
    sidecar is gone. Sorted, without duplicates.
    """
    out = set(paths)
    by_dir: dict[str, set[str]] = {}
    for path in out:
        if is_sidecar_name(posixpath.basename(path)):
            by_dir.setdefault(posixpath.dirname(path), set()).add(path)
    for rel_dir, sidecars in by_dir.items():
        try:
            names = list(listdir(os.path.join(os.fspath(root), rel_dir)))
        except OSError:
            continue  # the folder is gone: nothing in it to rescan
        for name in names:
            if is_sidecar_name(name):
                continue
            image = f"{rel_dir}/{name}" if rel_dir else name
            if sidecars.intersection(sidecar_candidates(image)):
                out.add(image)
    return tuple(sorted(out))


# --- which paths matter -----------------------------------------------------------------------


def path_filter(include: Iterable[str], exclude: Iterable[str]) -> Callable[[str, bool], bool]:
    """A predicate (relative path, is_dir) -> whether an event on it can matter to a scan.

    As the scanner sees it: no path component may match an `exclude` pattern (temporary and
    editor files, dot-folders), and a file must be an image (`include`) or a sidecar.
    Case-insensitive, like the scanner.
    """
    inc = [p.lower() for p in include]
    exc = [p.lower() for p in exclude]

    def relevant(rel: str, is_dir: bool) -> bool:
        parts = rel.lower().split("/")
        if any(fnmatch.fnmatchcase(part, p) for part in parts for p in exc):
            return False
        if is_dir:
            return True
        name = parts[-1]
        return is_sidecar_name(name) or any(fnmatch.fnmatchcase(name, p) for p in inc)

    return relevant


# --- the observer --------------------------------------------------------------------------


class _Sink(Protocol):
    def overflow(self) -> None: ...
    def limit(self, exc: OSError) -> None: ...


class _Handler(FileSystemEventHandler):
    """Runs on the observer's thread: turns events into relative paths, nothing more."""

    def __init__(
        self, root: str, queue: ChangeQueue, relevant: Callable[[str, bool], bool]
    ) -> None:
        self.root = root
        self.queue = queue
        self.relevant = relevant

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._record(event)
        except Exception:  # never let the dispatcher thread die on a strange path
            log.warning("watch_event_unhandled", event=event.event_type, exc_info=True)
            self.queue.rescan("an event could not be handled")

    def _record(self, event: FileSystemEvent) -> None:
        src = self._relative(event.src_path)
        if src == "" and isinstance(event, DirDeletedEvent):
            self.queue.rescan("the root was deleted or moved away")
            return
        dest = self._relative(event.dest_path) if event.dest_path else None
        is_dir = event.is_directory
        src_ok = src is not None and src != "" and self.relevant(src, is_dir)
        dest_ok = dest is not None and dest != "" and self.relevant(dest, is_dir)
        if src_ok:
            assert src is not None
            self.queue.add(
                src,
                closed=isinstance(event, FileClosedEvent),
                partner=dest if dest_ok else None,
                is_dir=is_dir,
            )
        if dest_ok:
            assert dest is not None
            self.queue.add(dest, closed=True, partner=src if src_ok else None, is_dir=is_dir)

    def _relative(self, raw: bytes | str) -> str | None:
        path = os.fsdecode(raw)
        if path == self.root:
            return ""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            return None
        return path[len(prefix) :]


def _native_observer_class() -> Callable[[_Sink], BaseObserver] | None:
    """An inotify observer that reports overflows and watch-limit errors, or None off Linux."""
    try:
        from watchdog.observers.inotify import (  # noqa: PLC0415 - Linux only
            InotifyEmitter,
            InotifyWatchGroup,
        )
        from watchdog.observers.inotify_c import InotifyFD  # noqa: PLC0415
    except (ImportError, OSError):
        return None

    def build(sink: _Sink) -> BaseObserver:
        class Group(InotifyWatchGroup):
            def on_queue_overflow(self) -> None:
                super().on_queue_overflow()
                sink.overflow()

            def _add_callback(self, path: bytes) -> None:
                # watchdog swallows every error below the root; a watch limit must not be
                try:
                    wd = self._inotify_fd.add_callback(
                        path, self.event_mask, self._callback, self._id
                    )
                except OSError as exc:
                    if exc.errno in LIMIT_ERRNOS:
                        sink.limit(exc)
                    if path == self.path:
                        raise
                    return
                self._active_callbacks_by_path[path] = wd
                self._active_callbacks_by_watch[wd] = path

        class Emitter(InotifyEmitter):
            def on_thread_start(self) -> None:
                self._inotify = Group(
                    self._inotify_fd,
                    os.fsencode(self.watch.path),
                    is_recursive=self.watch.is_recursive,
                    event_mask=self.get_event_mask_from_filter(),
                    follow_symlink=self.watch.follow_symlink,
                )

        class Observer(BaseObserver):
            def __init__(self) -> None:
                self._inotify_fd = InotifyFD()
                self._inotify_fd.start()
                super().__init__(Emitter, timeout=1.0, inotify_fd=self._inotify_fd)

            def on_thread_stop(self) -> None:
                super().on_thread_stop()
                self._inotify_fd.stop()
                self._inotify_fd.join()

        return Observer()

    return build


ObserverFactory = Callable[[_Sink], BaseObserver]


@dataclass
class WatcherStatus:
    """What the daemon reports about the watcher (STATUS=, doctor, logs)."""

    mode: str = "stopped"  # native | polling | waiting (root missing) | stopped
    restarts: int = 0
    overflows: int = 0
    limit_hits: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Watcher:
    """Watches the root recursively and feeds a ChangeQueue; degrades, never dies.

    `native_factory` / `polling_factory` build observers (injected by tests to force watch
    limits or errors); `check()` is called by the loop to restart or degrade as needed.
    """

    def __init__(
        self,
        root: Path | str,
        queue: ChangeQueue,
        *,
        relevant: Callable[[str, bool], bool] = lambda _p, _d: True,
        follow_symlinks: bool = False,
        native_factory: ObserverFactory | None = None,
        polling_factory: ObserverFactory | None = None,
        polling_interval: float = POLLING_INTERVAL,
        count_dirs: Callable[[str], int] | None = None,
    ) -> None:
        self.root = os.path.realpath(os.fspath(root))
        self.queue = queue
        self.relevant = relevant
        self.follow_symlinks = follow_symlinks
        self._native = native_factory if native_factory is not None else _native_observer_class()
        self._polling = polling_factory or (lambda _sink: PollingObserver(timeout=polling_interval))
        self._count_dirs = count_dirs or count_directories
        self._observer: BaseObserver | None = None
        self._identity: tuple[int, int] | None = None
        self._restart_reason: str | None = None
        self._limit: OSError | None = None
        self._lock = threading.Lock()
        self._force_polling = self._native is None
        self.status = WatcherStatus()

    # called from observer threads

    def overflow(self) -> None:
        self.status.overflows += 1
        log.warning("watch_queue_overflow", root=self.root, action="full rescan")
        self.queue.rescan("inotify event queue overflowed (events were lost)")

    def limit(self, exc: OSError) -> None:
        with self._lock:
            self._limit = exc
        self.queue.wake()

    # called from the loop

    def start(self) -> bool:
        """Start watching; False when the root is missing (try again with `check()`)."""
        identity = _identity(self.root)
        if identity is None:
            self.status.mode = "waiting"
            return False
        if not self._force_polling and self._start(native=True):
            self._identity = identity
            return True
        if self._start(native=False):
            self._identity = identity
            return True
        self.status.mode = "waiting"
        return False

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            _stop(observer)
        self.status.mode = "stopped"

    def request_restart(self, reason: str) -> None:
        """Restart the observer at the next `check()` (a disk mounted or unmounted inside the
        root: the watches stay on the file system they were put on)."""
        with self._lock:
            self._restart_reason = reason

    def check(self) -> bool:
        """Restart or degrade the observer when needed; True if a full rescan is now due."""
        with self._lock:
            limit, self._limit = self._limit, None
            asked, self._restart_reason = self._restart_reason, None
        if limit is not None and self.status.mode == "native":
            self._degrade(limit)
            return True
        identity = _identity(self.root)
        unchanged = identity == self._identity and asked is None
        if self._observer is not None and unchanged and self._alive():
            return False
        if self._observer is None and self.status.mode == "stopped":
            return False
        if self._observer is not None:
            if identity != self._identity:
                reason = "root changed (remounted?)"
            else:
                reason = asked or "thread died"
            log.warning("watcher_restarting", root=self.root, reason=reason)
            _stop(self._observer)
            self._observer = None
            self.status.mode = "waiting"
        if identity is None:
            return False
        if not self.start():
            return False
        self.status.restarts += 1
        log.info("watcher_restarted", root=self.root, mode=self.status.mode)
        return True

    # internals

    def _start(self, *, native: bool) -> bool:
        factory = self._native if native else self._polling
        assert factory is not None
        observer: BaseObserver | None = None
        try:
            observer = factory(self)
            observer.schedule(
                _Handler(self.root, self.queue, self.relevant),
                self.root,
                recursive=True,
                event_filter=EVENT_FILTER,
                follow_symlink=self.follow_symlinks,
            )
            observer.start()
        except OSError as exc:
            if observer is not None:
                _stop(observer)
            if native and exc.errno in LIMIT_ERRNOS:
                self._log_limit(exc)
                self._force_polling = True
                return False
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return False
            log.error(
                "watcher_start_failed",
                root=self.root,
                error=exc.strerror or str(exc),
                native=native,
            )
            if native:
                self._force_polling = True
            return False
        with self._lock:
            limit, self._limit = self._limit, None
        if native and limit is not None:  # a subdirectory could not be watched
            _stop(observer)
            self._log_limit(limit)
            self._force_polling = True
            return False
        self._observer = observer
        self.status.mode = "native" if native else "polling"
        log.info("watcher_started", root=self.root, mode=self.status.mode)
        return True

    def _degrade(self, exc: OSError) -> None:
        self._log_limit(exc)
        self._force_polling = True
        if self._observer is not None:
            _stop(self._observer)
            self._observer = None
        if not self._start(native=False):
            self.status.mode = "waiting"

    def _log_limit(self, exc: OSError) -> None:
        self.status.limit_hits += 1
        dirs = self._count_dirs(self.root)
        if exc.errno == errno.EMFILE:
            log.error(
                "inotify_instance_limit",
                root=self.root,
                fix="sudo sysctl fs.inotify.max_user_instances=1024",
                action="falling back to polling",
            )
            return
        n = suggested_max_user_watches(dirs)
        log.error(
            "inotify_watch_limit",
            root=self.root,
            directories=dirs,
            fix=f"sudo sysctl fs.inotify.max_user_watches={n}",
            persist=f"echo fs.inotify.max_user_watches={n} | sudo tee /etc/sysctl.d/90-syncd.conf",
            action="falling back to polling",
        )

    def _alive(self) -> bool:
        observer = self._observer
        if observer is None or not observer.is_alive():
            return False
        return all(emitter.is_alive() for emitter in observer.emitters)


def _stop(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except Exception:  # an observer that never started cannot be joined
        log.debug("watcher_stop_failed", exc_info=True)


def _identity(root: str) -> tuple[int, int] | None:
    try:
        st = os.stat(root)
    except OSError:
        return None
    if not statmod.S_ISDIR(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)


def count_directories(root: str) -> int:
    """How many directories (the root included) an inotify watch of `root` needs."""
    total = 0
    for _dirpath, _dirnames, _files in os.walk(root):
        total += 1
    return total


def suggested_max_user_watches(directories: int) -> int:
    """Twice the folder count rounded up to a power of two, and at least 524288."""
    want = max(1, 2 * directories)
    return max(MIN_SUGGESTED_WATCHES, 1 << (want - 1).bit_length())
