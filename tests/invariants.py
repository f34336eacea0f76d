"""The invariant every reliability test ends on, and the soak-mode knobs and counters.

The invariant, checked against the emulator's *full store* through its control API
(`GET /_emulator/store`, `GET /_emulator/stats`, so it works for an emulator in this process or
in a child process) and against the ledger file:

1. the remote holds exactly one input per local image (counted by the ownership marker's
   path), under the image's input id, with exactly its concepts, its metadata plus the marker,
   and its bytes (sha256);
2. no owned input exists without a local file;
3. foreign inputs (no marker of this source) are untouched;
4. the ledger agrees with both: one record per owned input, same path, sha256 and labels, in
   the state the remote's status code means, and nothing else.

"No input was added twice" is checked apart (`check_created_once`): the emulator refuses a
second input under a taken id, so a duplicate could only ever come from a *creation* beyond the
first; every creation takes the next sequence number (`seq`), so with no delete in the scenario
the stored seqs are exactly 1..N. The per-id POST counts the emulator keeps
(`posts_per_input_id`) count *attempts* (a re-POST answered "duplicate ID" is one) and are only
reported and bounded.

Soak mode: `bench/soak.py` sets SYNCD_SOAK_* variables; the crash and fault tests read their
sizes from `Soak.from_env()` and append their counters to SYNCD_SOAK_REPORT (JSON lines).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from syncd.ledger import Ledger
from syncd.model import MARKER_KEY, derive_input_id, marker_path, normalize_metadata

#: What the scanner takes for an image by default (docs/dataset-rules.md), for the oracle.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".bmp", ".webp")
EXCLUDED_SUFFIXES = ("~", ".tmp", ".part", ".crdownload", ".swp")
SUCCESS, FAILED = 30000, 30002
MAX_SHOWN = 30


# --- soak knobs and counters --------------------------------------------------------------------


@dataclass(frozen=True)
class Soak:
    """Sizes for the crash and fault suites: small in `make test`, large under `make soak`."""

    images: int = 2000
    kills: int = 3
    seed: int = field(default_factory=lambda: random.SystemRandom().randrange(2**32))
    report: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Soak:
        def number(name: str, default: int) -> int:
            text = environ.get(name, "").strip()
            return int(text) if text else default

        seed = environ.get("SYNCD_SOAK_SEED", "").strip()
        report = environ.get("SYNCD_SOAK_REPORT", "").strip()
        return cls(
            images=number("SYNCD_SOAK_IMAGES", cls.images),
            kills=number("SYNCD_SOAK_KILLS", cls.kills),
            **({"seed": int(seed)} if seed else {}),
            report=Path(report) if report else None,
        )

    def record(self, test: str, **counts: Any) -> None:
        """Append one JSON line of counters for `bench/soak.py` (nothing outside soak mode)."""
        if self.report is None:
            return
        line = json.dumps({"test": test, "seed": self.seed, "at": time.time(), **counts})
        with open(self.report, "a", encoding="utf-8") as out:
            out.write(line + "\n")


SOAK = Soak.from_env()


# --- the control API ------------------------------------------------------------------------------


class Control:
    """The emulator's control API over HTTP (never throttled, faulted or counted)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()

    def store(self) -> list[dict[str, Any]]:
        return self._get("store")

    def stats(self) -> dict[str, Any]:
        return self._get("stats")

    def posts(self) -> int:
        """POST /v2/inputs requests seen so far (both route spellings)."""
        return sum(
            n
            for route, n in self.stats()["requests"].items()
            if route.startswith("POST ") and route.endswith("/inputs")
        )

    def set_faults(self, **faults: Any) -> None:
        resp = self._session.post(f"{self.url}/_emulator/faults", json=faults, timeout=10)
        resp.raise_for_status()

    def close(self) -> None:
        self._session.close()

    def _get(self, name: str) -> Any:
        resp = self._session.get(f"{self.url}/_emulator/{name}", timeout=30)
        resp.raise_for_status()
        return resp.json()


# --- what the folder says -------------------------------------------------------------------------


@dataclass(frozen=True)
class Want:
    """What one image's input must carry besides the marker: sidecar concepts and metadata."""

    concepts: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    input_id: str | None = None


def local_images(root: Path) -> list[str]:
    """Relative paths of the images under `root` by the default rules, found independently of
    syncd's scanner: regular files (no symlinks) with an image suffix, no dot-name on the way,
    no excluded suffix. Names that are not UTF-8 come back as surrogate escapes, as in syncd."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if _kept(d)]
        for name in filenames:
            full = os.path.join(dirpath, name)
            lower = name.lower()
            if not _kept(name) or not lower.endswith(IMAGE_SUFFIXES) or os.path.islink(full):
                continue
            found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def _kept(name: str) -> bool:
    return not name.startswith(".") and not name.lower().endswith(EXCLUDED_SUFFIXES)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- the invariant ---------------------------------------------------------------------------


@dataclass
class Checked:
    """What one check looked at (for soak counters and messages)."""

    images: int = 0
    owned: int = 0
    foreign: int = 0
    ledger_rows: int = 0
    failed: int = 0


def check_invariant(
    url: str,
    *,
    root: Path,
    source: str,
    ledger: Path | None,
    want: Mapping[str, Want] | None = None,
    held: Iterable[str] = (),
    failed: Iterable[str] = (),
    foreign_before: Mapping[str, Mapping[str, Any]] | None = None,
    context: str = "",
) -> Checked:
    """Assert the invariant (see the module docstring); return what was checked.

    `want` gives the labels of images that have any (others carry none); `held` are local
    images that are bad and must have no input; `failed` are images whose processing failed
    remotely (their input stays, at 30002, and the ledger says `failed`). `foreign_before` is
    `foreign_inputs(store)` taken before syncd ran. `ledger` None skips part 4.
    """
    control = Control(url)
    try:
        store = control.store()
    finally:
        control.close()
    want = dict(want or {})
    held_set, failed_set = set(held), set(failed)
    images = [p for p in local_images(root) if p not in held_set]
    problems: list[str] = []
    checked = Checked(images=len(images), failed=len(failed_set))

    live = [e for e in store if not e["deleting"]]
    owned = [e for e in live if _owner(e) == source]
    by_path: dict[str, list[dict[str, Any]]] = {}
    for entry in owned:
        by_path.setdefault(_metadata(entry)[MARKER_KEY]["path"], []).append(entry)
    checked.owned = len(owned)

    expected_ids: dict[str, str] = {}
    for rel in images:
        spec = want.get(rel, Want())
        input_id = spec.input_id or derive_input_id(source, rel)
        expected_ids[input_id] = rel
        entries = by_path.pop(marker_path(rel), [])
        if len(entries) != 1:
            problems.append(f"{rel!r}: {len(entries)} owned inputs, expected exactly 1")
            continue
        entry = entries[0]
        sha = file_sha256(root / rel)
        if entry["id"] != input_id:
            problems.append(f"{rel!r}: input id {entry['id']}, expected {input_id}")
        if _concepts(entry) != {k: float(v) for k, v in spec.concepts.items()}:
            problems.append(f"{rel!r}: concepts {_concepts(entry)}, expected {dict(spec.concepts)}")
        meta = normalize_metadata(dict(spec.metadata))
        meta[MARKER_KEY] = {"source": source, "path": marker_path(rel), "sha256": sha}
        if _metadata(entry) != meta:
            problems.append(f"{rel!r}: metadata {_metadata(entry)}, expected {meta}")
        if entry["image"]["sha256"] != sha:
            problems.append(
                f"{rel!r}: remote bytes {entry['image']['sha256'][:12]}, local {sha[:12]}"
            )
        code = entry["status"]["code"]
        if code != (FAILED if rel in failed_set else SUCCESS):
            problems.append(f"{rel!r}: remote status {code}")
    for path, entries in sorted(by_path.items()):
        ids = ", ".join(e["id"] for e in entries)
        problems.append(f"owned input(s) {ids} for {path!r}, which is not a local image")
    for entry in store:
        if entry["deleting"] and entry["id"] in expected_ids:
            problems.append(f"{expected_ids[entry['id']]!r}: its input is being deleted")

    foreign_now = foreign_inputs(store, source)
    checked.foreign = len(foreign_now)
    for input_id, before in (foreign_before or {}).items():
        now = foreign_now.get(input_id)
        if now is None:
            problems.append(f"foreign input {input_id} is gone")
        elif _untouched(now) != _untouched(before):
            problems.append(f"foreign input {input_id} was modified: {before} -> {now}")

    if ledger is not None:
        checked.ledger_rows = _check_ledger(ledger, owned, problems)

    if problems:
        shown = "\n  ".join(problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise AssertionError(f"invariant violated ({context}):\n  {shown}{more}")
    return checked


def _check_ledger(path: Path, owned: list[dict[str, Any]], problems: list[str]) -> int:
    with Ledger.open(path, lock=False) as ledger:
        records = ledger.inputs()
    remote = {e["id"]: e for e in owned}
    for input_id, rec in sorted(records.items()):
        entry = remote.get(input_id)
        if entry is None:
            problems.append(f"ledger holds {input_id} ({rec.path!r}, {rec.state}) absent remotely")
            continue
        marker = _metadata(entry)[MARKER_KEY]
        if marker_path(rec.path) != marker["path"]:
            problems.append(f"ledger {input_id}: path {rec.path!r}, remote {marker['path']!r}")
        if rec.sha256 != marker["sha256"]:
            problems.append(f"ledger {input_id}: sha256 differs from the remote marker")
        code = entry["status"]["code"]
        state = "processed" if code == SUCCESS else "failed" if code == FAILED else "pending"
        if rec.state.value != state:
            problems.append(f"ledger {input_id}: state {rec.state.value}, remote code {code}")
        if rec.labels is None:
            problems.append(f"ledger {input_id}: labels unknown")
        elif (dict(rec.labels.concepts), json.loads(rec.labels.metadata)) != (
            _concepts(entry),
            _metadata(entry),
        ):
            problems.append(f"ledger {input_id}: labels differ from the remote's")
    for input_id in sorted(remote.keys() - records.keys()):
        problems.append(f"owned input {input_id} is missing from the ledger")
    return len(records)


def check_created_once(url: str, *, context: str = "") -> dict[str, int]:
    """Assert no input was created twice (for scenarios without deletes); return counters.

    Every stored id is unique and the stored sequence numbers are exactly 1..N: each creation
    takes the next number, so a second creation (after a delete) would leave a gap.
    Also returns the POST attempts per id the emulator counted (re-POSTs answered "duplicate
    ID" included) since its last start.
    """
    control = Control(url)
    try:
        store, stats = control.store(), control.stats()
    finally:
        control.close()
    ids = Counter(e["id"] for e in store)
    seqs = sorted(e["seq"] for e in store)
    twice = [i for i, n in ids.items() if n > 1]
    assert not twice, f"ids stored more than once ({context}): {twice[:10]}"
    gaps = len(store) and seqs != list(range(1, len(store) + 1))
    assert not gaps, f"{seqs[-1] - len(store)} creation(s) beyond one per stored input ({context})"
    attempts = stats["posts_per_input_id"]
    return {
        "inputs": len(store),
        "duplicates": len(twice),
        "max_posts_per_id": max(attempts.values(), default=0),
        "reposted_ids": sum(1 for n in attempts.values() if n > 1),
    }


def foreign_inputs(store: list[dict[str, Any]], source: str) -> dict[str, dict[str, Any]]:
    """The inputs of `store` that do not carry this source's marker, by id."""
    return {e["id"]: e for e in store if _owner(e) != source}


def _owner(entry: Mapping[str, Any]) -> str | None:
    marker = _metadata(entry).get(MARKER_KEY)
    if not isinstance(marker, dict):
        return None
    fields = [marker.get(k) for k in ("source", "path", "sha256")]
    if not all(isinstance(v, str) and v for v in fields):
        return None
    return marker["source"]


def _metadata(entry: Mapping[str, Any]) -> dict[str, Any]:
    return entry["data"].get("metadata") or {}


def _concepts(entry: Mapping[str, Any]) -> dict[str, float]:
    return {c["id"]: float(c["value"]) for c in entry["data"].get("concepts") or ()}


def _untouched(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Content and timestamps, without the processing status (which moves on by itself)."""
    return {k: v for k, v in entry.items() if k != "status"}


# --- child processes and kills ---------------------------------------------------------------


class SyncdChild:
    """`python -m syncd ARGS` as a child process, its output going to files (never a pipe that
    could fill up and stall it)."""

    def __init__(
        self, args: list[str], *, env: Mapping[str, str], workdir: Path, name: str = "syncd"
    ) -> None:
        self.args = args
        self.name = name
        self.env = {**os.environ, **env}
        self.env.pop("SYNCD_CONFIG", None)
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self) -> SyncdChild:
        self.runs += 1
        out = open(self._file("out", self.runs), "wb")  # noqa: SIM115
        err = open(self._file("err", self.runs), "wb")  # noqa: SIM115
        with out, err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "syncd", *self.args],
                env=self.env,
                stdout=out,
                stderr=err,
                cwd=self.workdir,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after `timeout` seconds."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> bool:
        """SIGKILL it; True if it was still running (the kill landed)."""
        assert self.proc is not None
        landed = self.proc.poll() is None
        if landed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return landed

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)

    def output(self, run: int | None = None) -> tuple[str, str]:
        """(stdout, stderr) of one run (the last by default)."""
        n = run or self.runs
        return tuple(  # type: ignore[return-value]
            self._file(kind, n).read_text(errors="replace") for kind in ("out", "err")
        )

    def _file(self, kind: str, run: int) -> Path:
        return self.workdir / f"{self.name}-{kind}-{run}.txt"

    def close(self) -> None:
        if self.alive():
            self.kill()


class EmulatorChild:
    """`python -m syncd emulator --state FILE` as a child process, restartable on its port."""

    def __init__(self, state: Path, workdir: Path, *, delay: float = 0.05) -> None:
        self.state = state
        self.workdir = workdir
        self.delay = delay
        self.port = 0
        self.child: SyncdChild | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> str:
        """Start (on the same port as before, if it ran before); returns its URL."""
        args = ["emulator", "--port", str(self.port), "--state", str(self.state)]
        args += ["--processing-delay", str(self.delay), "--delete-delay", str(self.delay)]
        if self.child is None:
            self.child = SyncdChild(args, env={}, workdir=self.workdir, name="emulator")
        self.child.args = args
        self.child.start()
        deadline = time.monotonic() + timeout
        while True:
            first = self.child.output()[0].split("\n", 1)
            if len(first) == 2 and first[0].startswith("listening on http://"):
                self.port = int(first[0].rsplit(":", 1)[1])
                return self.url
            if not self.child.alive() or time.monotonic() > deadline:
                err = self.child.output()[1]
                self.child.close()
                raise AssertionError(f"the emulator did not start: {err[-2000:]}")
            time.sleep(0.01)

    def kill(self) -> None:
        assert self.child is not None
        self.child.kill()

    def stop(self) -> None:
        if self.child is not None and self.child.alive():
            self.child.signal(signal.SIGTERM)
            if self.child.wait(10) is None:
                self.child.kill()


class KillSwitch:
    """An emulator validator hook that SIGKILLs a child at the n-th request or response of one
    kind: at a request, the server still applies it after the client died; at a response, the
    server has applied it and the client never hears. Both are the window between a request
    being applied remotely and its outcome reaching the ledger."""

    def __init__(self, check: Callable[[str, str, dict[str, Any]], None] | None = None) -> None:
        self.check = check
        self._lock = threading.Lock()
        self._armed: tuple[int, str, str, int] | None = None
        self.fired = threading.Event()

    def arm(self, pid: int, *, kind: str = "PostInputs", direction: str, after: int) -> None:
        with self._lock:
            self._armed = (pid, kind, direction, after)
            self.fired.clear()

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def __call__(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        if self.check is not None:
            self.check(kind, direction, body)
        with self._lock:
            if self._armed is None:
                return
            pid, armed_kind, armed_direction, left = self._armed
            if (kind, direction) != (armed_kind, armed_direction):
                return
            if left > 1:
                self._armed = (pid, armed_kind, armed_direction, left - 1)
                return
            self._armed = None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.fired.set()


def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)
