"""The quick check: is the folder exactly as the last pass that ended in step left it?

Proving that an unchanged tree needs nothing the slow way (reading every sidecar, loading every
belief, planning) costs ~10x a `find`. So a pass that ends in step leaves an *in-step marker*
in the ledger (deleted by any later ledger write), and the next pass first walks the tree with
`stat` only and compares digests of every image's and sidecar's (path, size, mtime, ctime,
inode) and of the plan-shaping settings with the marker's. The engine then ends the pass (the
tree in step; for a full pass, the remote listing's digest too), scopes it to the images that
changed (`changed_paths`), or runs the full path. Anything this walk does not model exactly (a
symlink to follow, an unreadable folder, a special file with an image name, a timestamp inside
the racy window) answers "don't know". The rules and their reasons: docs/dataset-rules.md,
"The quick check".
"""

from __future__ import annotations

import fnmatch
import hashlib
import itertools
import json
import marshal
import operator
import os
import re
import signal
import stat as statmod
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from syncd import __version__
from syncd.config import Config
from syncd.scanner import RACY_WINDOW_NS
from syncd.sidecar import SIDECAR_EXTENSIONS

#: Bumped when what the marker means changes: an old marker is then simply not trusted.
MARKER_FORMAT = 2
#: Changed images beyond 1/this of the tree: a full scan costs less than one scoped by path.
MAX_CHANGED_SHARE = 4
#: How the walk opens a folder to list it (`os.scandir` of a descriptor).
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Walk:
    """What a stat-only walk found: how many images, and a digest of the sorted stat lines of
    the images and of the sidecars (the lines themselves are not kept: ~15 MB at 100,000).

    `settled` is False when a sidecar changed within the racy window: its stat then proves
    nothing about its bytes, and no marker may be built from this walk.
    """

    images: int
    images_digest: str
    sidecars_digest: str
    settled: bool
    # kept only until the engine has compared them with the ledger (see `changed_paths`)
    image_lines: tuple[str, ...] = ()
    sidecar_dirs: frozenset[str] = frozenset()  # folders holding a sidecar ("" is the root)

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.images_digest} {self.sidecars_digest}".encode()).hexdigest()


def lines_digest(lines: list[str]) -> str:
    """The digest of sorted stat lines (the walk's, or the ledger's rows spelled alike)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def stat_line(rel: str, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    """One file as the walk and the marker spell it."""
    return f"{rel}\0{size} {mtime_ns} {ctime_ns} {inode}"


def fingerprint(config: Config) -> str:
    """A digest of everything besides the files and the ledger that shapes the plan."""
    src, remote = config.source, config.remote
    shaping = {
        "syncd": __version__,
        "format": MARKER_FORMAT,
        # what else decides how a file reads and parses: who reads it (permissions), and the
        # Python and Unicode versions (concept ids are checked with unicodedata)
        "uid": os.geteuid(),
        "python": list(sys.version_info[:2]),
        "unicode": unicodedata.unidata_version,
        "root": os.fspath(src.root),
        "name": src.name,
        "include": list(src.include),
        "exclude": list(src.exclude),
        "labels_from_dirs": src.labels_from_dirs,
        "follow_symlinks": src.follow_symlinks,
        "url_base": src.url_base,
        "max_file_bytes": config.sync.max_file_bytes,
        "remote": [remote.api_base.rstrip("/"), remote.user_id, remote.app_id, remote.dataset_id],
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()


def walk(
    config: Config,
    *,
    now_ns: int | None = None,
    fork: bool = True,
    while_waiting: Callable[[], None] | None = None,
) -> Walk | None:
    """Stat every image and sidecar under the root as the scanner would see them, or None
    when the tree holds anything this walk does not model exactly.

    The walk is Python work per file: when this process is single-threaded (and `fork`), a
    forked child walks half of the root's sub-folders, so a second core halves it.
    `while_waiting` is called once this process has walked its part and a child still may
    be walking (never without a child): the caller may start work of its own there.
    """
    src = config.source
    if src.follow_symlinks:
        return None  # loops, targets outside the root: the scanner's business
    root = os.fspath(src.root)
    try:
        if not statmod.S_ISDIR(os.stat(root).st_mode):
            return None
    except OSError:
        return None
    walker = _Walker(
        _classifier(src.include, src.exclude),
        (time.time_ns() if now_ns is None else now_ns) - RACY_WINDOW_NS,
    )
    if not walker.walk([("", root)], descend=False):
        return None
    subdirs, walker.subdirs = walker.subdirs, []
    child = None
    if fork and len(subdirs) > 1 and _can_fork():
        child = _fork_walker(walker, subdirs[1::2])
    try:
        ok = walker.walk(subdirs if child is None else subdirs[0::2], descend=True)
        if ok and child is not None and while_waiting is not None:
            while_waiting()
    finally:
        found = None if child is None else child.collect()  # reaped and closed, always
    if not ok or (child is not None and found is None):
        return None
    if found is not None:
        # each part sorted in its own process: the sort in `result` then merges two runs
        walker.images.sort()
        walker.absorb(*found)
    return walker.result()


class _Walker:
    """The lines found so far by one process's part of the walk."""

    def __init__(self, classify: Callable[[str], Any], racy_from: int) -> None:
        self.classify = classify
        self.racy_from = racy_from
        self.images: list[str] = []
        self.sidecars: list[str] = []
        self.settled = True
        self.subdirs: list[tuple[str, str]] = []

    def walk(self, start: list[tuple[str, str]], *, descend: bool) -> bool:
        """Walk these (relative, absolute) folders, and below them if `descend` (otherwise
        their sub-folders are left in `subdirs`); False when the tree holds anything the quick
        walk does not model."""
        classify, images = self.classify, self.images
        stack = list(start)
        pending = stack if descend else self.subdirs
        try:
            while stack:
                rel_dir, abs_dir = stack.pop()
                prefix = f"{rel_dir}/" if rel_dir else ""
                abs_prefix = f"{abs_dir}/"
                # listed through a descriptor: each entry's stat is then an fstatat() of its
                # name in that folder, not an lstat() resolving the whole path again (~15%
                # of the walk at 100,000 files)
                fd = os.open(abs_dir, _DIR_FLAGS)
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            name = entry.name
                            match = classify(name)
                            kind = None if match is None else match.lastgroup
                            if kind == "excluded":
                                continue
                            # d_type answers these without a system call; a symlink is neither
                            if not entry.is_file(follow_symlinks=False):
                                if entry.is_dir(follow_symlinks=False):
                                    pending.append((prefix + name, abs_prefix + name))
                                elif kind is not None and not entry.is_symlink():
                                    return False  # a special file with an image name: "skipped"
                                continue  # symlinks are skipped by the scanner, silently
                            if kind == "image":
                                st = entry.stat(follow_symlinks=False)
                                images.append(
                                    f"{prefix}{name}\0{st.st_size} {st.st_mtime_ns} "
                                    f"{st.st_ctime_ns} {st.st_ino}"
                                )  # stat_line, inlined: this loop runs once per file
                            elif kind == "sidecar":
                                self._sidecar(prefix + name, entry.stat(follow_symlinks=False))
                finally:
                    os.close(fd)
        except OSError:
            return False  # unreadable or vanishing mid-walk: the full scan says what and where
        return True

    def _sidecar(self, rel: str, st: os.stat_result) -> None:
        self.sidecars.append(stat_line(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))
        if max(st.st_mtime_ns, st.st_ctime_ns) >= self.racy_from:
            self.settled = False

    def absorb(self, images: list[str], sidecars: list[str], settled: bool) -> None:
        self.images.extend(images)
        self.sidecars.extend(sidecars)
        self.settled = self.settled and settled

    def result(self) -> Walk:
        self.images.sort()
        self.sidecars.sort()
        return Walk(
            len(self.images),
            lines_digest(self.images),
            lines_digest(self.sidecars),
            self.settled,
            tuple(self.images),
            frozenset(line.split("\0", 1)[0].rpartition("/")[0] for line in self.sidecars),
        )


def _can_fork() -> bool:
    # never with other threads running (the daemon's): a forked child holds only the calling
    # thread, and locks other threads held stay locked in it; never with SIGCHLD ignored (as
    # some supervisors leave it): the kernel then reaps the child and its exit status is lost
    return (
        hasattr(os, "fork")
        and hasattr(os, "memfd_create")
        and threading.active_count() == 1
        and signal.getsignal(signal.SIGCHLD) is not signal.SIG_IGN
    )


class _Child:
    """A forked process walking some folders; its lines come back through a memfd."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd

    def collect(self) -> tuple[list[str], list[str], bool] | None:
        """Wait for the child; its (images, sidecars, settled), or None if its walk failed."""
        try:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                return None  # reaped by someone else: whether it finished is unknown
            if os.waitstatus_to_exitcode(status) != 0:
                return None
            size = os.fstat(self.fd).st_size
            data = os.pread(self.fd, size, 0)
            while len(data) < size:
                data += os.pread(self.fd, size - len(data), len(data))
            found = marshal.loads(data)
            return found if isinstance(found, tuple) else None
        finally:
            os.close(self.fd)


def _fork_walker(walker: _Walker, folders: list[tuple[str, str]]) -> _Child | None:
    try:
        fd = os.memfd_create("syncd-quickcheck", os.MFD_CLOEXEC)
    except OSError:
        return None  # no memfd here (seccomp, old kernel): walk everything in this process
    try:
        pid = os.fork()
    except OSError:
        os.close(fd)
        return None
    if pid:
        return _Child(pid, fd)
    code = 1  # the child: walk, write, and leave without running any of the parent's exit code
    try:
        # only what the child finds goes back: the parent keeps what it found before the fork
        walker.images, walker.sidecars, walker.settled = [], [], True
        if walker.walk(folders, descend=True):
            walker.images.sort()  # in parallel with the parent's walk (see `walk`)
            data = marshal.dumps((walker.images, walker.sidecars, walker.settled))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            code = 0
    finally:
        os._exit(code)


class ListingDigest:
    """A digest of the remote's whole listing, page by page, as the remote sent it.

    Each page's response body is taken byte for byte, less its request id (`status.req_id`,
    the one part that differs on every request): equal digests mean the remote listed the
    very same inputs, labels, metadata and statuses. (Re-encoding each page's parsed inputs
    instead cost ~5 ms a page of 1,000, ~0.5 s of a no-op pass over 100,000.) A remote that
    spells the same listing otherwise (a new server build's whitespace) only costs one
    pass on the full path, which leaves a marker with the new digest.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, body: bytes) -> None:
        self._hash.update(_REQ_ID.sub(b"", body, count=1))
        self._hash.update(b"\n")

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


#: The first `"req_id": "..."` member of a response body (the envelope's, which comes first).
_REQ_ID = re.compile(rb'"req_id"\s*:\s*"(?:[^"\\]|\\.)*"')


def changed_paths(
    walk: Walk,
    marker: Mapping[str, Any] | None,
    fingerprint_: str,
    ledger_lines: Callable[[], list[str] | None],
) -> tuple[str, ...]:
    """The images (relative paths) to rescan when only images changed since the marker: their
    stat differs from the ledger's row, or one of the two is missing. Empty when that is not
    the whole story and the full path must run: no valid marker, other settings, a sidecar
    changed, a ledger row not clean, a changed image in a folder with sidecars (a new image
    can take over another's sidecar), or so many changes that a full scan is cheaper."""
    if not _valid(marker, fingerprint_) or marker.get("sidecars_digest") != walk.sidecars_digest:
        return ()
    rows = ledger_lines()  # read only now: ~0.1 s at 100,000 rows
    if rows is None:
        return ()
    paths = _aligned_changes(walk.image_lines, rows)
    if paths is None:
        paths = {
            line.partition("\0")[0] for line in set(rows).symmetric_difference(walk.image_lines)
        }
    if not paths or len(paths) > max(1, walk.images // MAX_CHANGED_SHARE):
        return ()
    if walk.sidecar_dirs and any(p.rpartition("/")[0] in walk.sidecar_dirs for p in paths):
        return ()
    return tuple(sorted(paths))


def _aligned_changes(seen: Sequence[str], rows: Sequence[str]) -> set[str] | None:
    """The paths whose lines differ between the walk's sorted lines and the ledger's rows when
    both name the same paths in the same order (rows a full scan wrote come in path order):
    one comparison per position, run in C, instead of two sets of every line. None when they
    do not line up (a file added or removed, rows written out of path order): then equal
    lines can sit at different positions, and only sets can tell.

    Exact: with equal lengths and the same path at every differing position, the same path
    sits at every position (equal lines have equal paths), so the lines differ exactly there.
    """
    if len(seen) != len(rows):
        return None
    paths: set[str] = set()
    for i in itertools.compress(itertools.count(), map(operator.ne, seen, rows)):
        path = seen[i].partition("\0")[0]
        if path != rows[i].partition("\0")[0]:
            return None
        paths.add(path)
    return paths


def in_step(walk: Walk, marker: Mapping[str, Any] | None, fingerprint_: str) -> bool:
    """Whether the tree `walk` saw is the one the marker describes."""
    return _valid(marker, fingerprint_) and marker.get("digest") == walk.digest


def _valid(marker: Mapping[str, Any] | None, fingerprint_: str) -> TypeGuard[Mapping[str, Any]]:
    """A marker of this format, left under these settings."""
    return (
        marker is not None
        and marker.get("format") == MARKER_FORMAT
        and marker.get("config") == fingerprint_
    )


def marker_for(
    walk: Walk,
    fingerprint_: str,
    ledger_files: str | None,
    *,
    remote: tuple[str, int | None] | None = None,
) -> dict[str, Any] | None:
    """The marker for a pass that ended in step, or None when the ledger's file rows
    (`ledger_files`: the `lines_digest` of its rows, None when one is not clean) are not
    exactly what the walk saw.

    `remote` is (listing digest, foreign inputs) when a listing of the remote was folded into
    the beliefs this marker vouches for: a full pass may then skip its fold while the listing
    stays the same.
    """
    if not walk.settled or ledger_files != walk.images_digest:
        return None
    marker: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "config": fingerprint_,
        "digest": walk.digest,
        "images": walk.images,
        "sidecars_digest": walk.sidecars_digest,
    }
    if remote is not None:
        marker["remote"], marker["foreign"] = remote
    return marker


def remote_of(marker: Mapping[str, Any] | None) -> tuple[str, int | None] | None:
    """(listing digest, foreign inputs) the marker vouches for, if any."""
    if marker is None or not isinstance(marker.get("remote"), str):
        return None
    foreign = marker.get("foreign")
    return marker["remote"], foreign if isinstance(foreign, int) else None


def _classifier(include: Iterable[str], exclude: Iterable[str]) -> Callable[[str], Any]:
    """One regex naming what a file name is to the scanner: `excluded` (checked first),
    `sidecar` (by extension, case-sensitive), `image` (include patterns); no match: neither.
    One match per name instead of three: this runs once per file of the tree."""
    sidecar = "|".join(re.escape(ext) for ext in SIDECAR_EXTENSIONS)
    parts = [
        ("excluded", "|".join(fnmatch.translate(p) for p in exclude)),
        ("sidecar", None),  # case-sensitive, as `is_sidecar_name`
        ("image", "|".join(fnmatch.translate(p) for p in include)),
    ]
    regex = "|".join(
        f"(?P<{group}>.*(?:{sidecar})\\Z)" if joined is None else f"(?P<{group}>(?i:{joined}))"
        for group, joined in parts
        if joined != ""  # no patterns: the group never matches
    )
    return re.compile(regex, re.DOTALL).match
