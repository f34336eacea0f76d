"""Shared helpers for the end-to-end tests: a dataset root plus a config pointing at an
emulator, `syncd` run through click's CliRunner or as a real subprocess, waiting on a
condition, a recorder of every body the emulator accepted, and remote-state assertions.

Everything here is real: files in temporary folders, the ledger's SQLite file, HTTP over
loopback. Nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
import structlog
from click.testing import CliRunner, Result

from syncd.cli import main
from syncd.config import load_config
from syncd.emulator import Emulator
from syncd.engine import Engine, PassOptions, SyncReport, open_engine
from syncd.ledger import Ledger
from syncd.model import MARKER_KEY, derive_input_id, normalize_metadata
from syncd.sample import png_bytes

#: The environment variable every test config names as `remote.api_key_env`.
KEY_ENV = "SYNCD_E2E_API_KEY"
#: Limits of the inputs API (clarifai-api.md section 4).
MAX_BATCH = 128
MAX_PER_PAGE = 1000
WRITE_METHODS = ("POST", "PATCH", "DELETE")
REPO = Path(__file__).resolve().parent.parent

T = TypeVar("T")

# --- the setup: root, config, ledger -----------------------------------------------------------


@dataclass
class Site:
    """One dataset root mirrored into one emulator: its config file, ledger and key."""

    root: Path
    config: Path
    ledger: Path
    emu: Emulator
    source: str
    env: dict[str, str]

    def input_id(self, rel: str) -> str:
        """The id syncd derives for an image without an explicit sidecar id."""
        return derive_input_id(self.source, rel)

    def image(self, rel: str, seed: int, **sidecar: Any) -> Path:
        """Write a small PNG at `rel` (and a JSON sidecar `<stem>.json` when given fields)."""
        return write_image(self.root, rel, seed, **sidecar)

    def open_ledger(self) -> Ledger:
        """The ledger opened read-only, without its lock (as `syncd status` opens it)."""
        return Ledger.open(self.ledger, lock=False)

    def ledger_inputs(self) -> dict[str, Any]:
        with self.open_ledger() as ledger:
            return ledger.inputs()


def toml_value(value: Any) -> str:
    """A str, bool, number, path or list of str spelled as TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML spelling for {value!r}")


def write_config(path: Path, sections: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write a TOML config of {section: {key: value}}; None values are left out."""
    lines: list[str] = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {toml_value(v)}" for key, v in table.items() if v is not None]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def site_config(
    site_dir: Path,
    root: Path,
    api_base: str,
    *,
    source: str = "pets",
    source_opts: Mapping[str, Any] | None = None,
    remote: Mapping[str, Any] | None = None,
    sync: Mapping[str, Any] | None = None,
) -> Path:
    """The config of a test site: fast polling, a generous rate limit, JSON logs."""
    return write_config(
        site_dir / "syncd.toml",
        {
            "source": {"root": root, "name": source, **(source_opts or {})},
            "remote": {"api_base": api_base, "api_key_env": KEY_ENV, **(remote or {})},
            "sync": {
                "max_requests_per_second": 500.0,
                "poll_timeout": 20.0,
                "workers": 4,
                **(sync or {}),
            },
            "ledger": {"path": site_dir / "state" / "ledger.db"},
            "log": {"level": "warning", "format": "json"},
        },
    )


def make_site(
    tmp_path: Path,
    emu: Emulator,
    *,
    source: str = "pets",
    source_opts: Mapping[str, Any] | None = None,
    remote: Mapping[str, Any] | None = None,
    sync: Mapping[str, Any] | None = None,
) -> Site:
    """A fresh root folder under `tmp_path` and a config that mirrors it into `emu`."""
    root = tmp_path / source
    root.mkdir(parents=True, exist_ok=True)
    config = site_config(
        tmp_path,
        root,
        emu.url,
        source=source,
        source_opts=source_opts,
        remote=remote,
        sync=sync,
    )
    return Site(
        root=root,
        config=config,
        ledger=tmp_path / "state" / "ledger.db",
        emu=emu,
        source=source,
        env={KEY_ENV: emu.api_key},
    )


def write_image(root: Path, rel: str, seed: int, **sidecar: Any) -> Path:
    """A real 8x8 PNG at root/rel; with fields, also its JSON sidecar `<stem>.json`."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(8, 8, seed=seed))
    if sidecar:
        write_sidecar(root, rel, sidecar)
    return path


def write_sidecar(root: Path, image_rel: str, doc: Mapping[str, Any] | str) -> Path:
    """Write `<stem>.json` next to an image: a JSON object, or raw text (e.g. broken JSON)."""
    path = (root / image_rel).with_suffix(".json")
    text = doc if isinstance(doc, str) else json.dumps(doc)
    path.write_text(text, encoding="utf-8")
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- running syncd -----------------------------------------------------------------------------


def sync_pass(site: Site, *, explain: bool = False, **options: Any) -> SyncReport:
    """One `Engine.sync_once` over the site's config (the key comes from `site.env`)."""
    engine = open_site_engine(site, explain=explain)
    try:
        return engine.sync_once(PassOptions(**options))
    finally:
        engine.close()


def open_site_engine(site: Site, *, explain: bool = False, max_wait: float | None = None) -> Engine:
    saved = {k: os.environ.get(k) for k in site.env}
    os.environ.update(site.env)
    try:
        return open_engine(load_config(site.config), explain=explain, max_wait=max_wait)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_cli(args: list[str], *, env: Mapping[str, str | None] | None = None) -> Result:
    """`syncd ARGS` in this process through click's CliRunner (stdout and stderr apart)."""
    return CliRunner().invoke(main, args, env=dict(env or {}), catch_exceptions=False)


def run_syncd(
    args: list[str], *, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`python -m syncd ARGS` as a real child process; its output is captured as text."""
    full_env = {**os.environ, **env}
    full_env.pop("SYNCD_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )


def wait_until(
    predicate: Callable[[], T], timeout: float = 5.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy (returned) or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


#: Seconds: the scanner (and the quick check) distrust timestamps younger than this.
RACY_WINDOW = 2.0


def wait_out_racy_window(root: Path) -> None:
    """Block until every file's ctime (which os.utime cannot move back) is outside the racy
    window: a condition on the files' own timestamps, not a guess; returns at once if true."""
    newest = max((p.stat().st_ctime for p in root.rglob("*") if p.is_file()), default=0.0)
    while time.time() < newest + RACY_WINDOW + 0.05:
        time.sleep(min(0.1, max(0.0, newest + RACY_WINDOW + 0.05 - time.time())))


@contextmanager
def restored_logging() -> Iterator[None]:
    """Undo what `syncd.cli` does to logging (root handler, levels, structlog config)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    urllib3_level = logging.getLogger("urllib3").level
    try:
        yield
    finally:
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        logging.getLogger("urllib3").setLevel(urllib3_level)
        structlog.reset_defaults()


# --- what the emulator saw ---------------------------------------------------------------------


@dataclass
class Traffic:
    """An emulator validator hook: checks every body against the protobufs (by delegating to
    the conftest recorder) and keeps each accepted request body, in arrival order."""

    check: Callable[[str, str, dict[str, Any]], None]
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    hold: Mapping[str, float] = field(default_factory=dict)  # kind -> seconds to stall
    in_flight: int = 0
    max_in_flight: dict[str, int] = field(default_factory=dict)
    connections: set[int] = field(default_factory=set)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        self.check(kind, direction, body)
        if direction != "request":
            return
        with self._lock:
            self.requests.append((kind, json.loads(json.dumps(body))))
            thread = threading.current_thread()
            if id(thread) not in self.connections:
                self._threads.append(thread)  # keep it alive so its id() stays unique
                self.connections.add(id(thread))
            self.in_flight += 1
            self.max_in_flight[kind] = max(self.max_in_flight.get(kind, 0), self.in_flight)
        try:
            if kind in self.hold:
                time.sleep(self.hold[kind])
        finally:
            with self._lock:
                self.in_flight -= 1

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight.clear()
            self.connections.clear()
            self._threads.clear()

    def bodies(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [body for k, body in self.requests if k == kind]

    def kinds(self) -> list[str]:
        with self._lock:
            return [k for k, _ in self.requests]

    def writes(self) -> list[str]:
        """Kinds of the write requests, in arrival order."""
        return [k for k in self.kinds() if k in WRITE_KINDS]

    def patch_actions(self) -> list[str]:
        return [body.get("action", "") for body in self.bodies("PatchInputs")]

    def assert_within_limits(self, batch_size: int = MAX_BATCH) -> None:
        """No request carried more inputs or ids than the API (and `batch_size`) allow."""
        limit = min(batch_size, MAX_BATCH)
        for kind in ("PostInputs", "PatchInputs"):
            for body in self.bodies(kind):
                assert 1 <= len(body.get("inputs", [])) <= limit, (kind, len(body["inputs"]))
        for body in self.bodies("DeleteInputs"):
            assert 1 <= len(body.get("ids", [])) <= limit, ("DeleteInputs", len(body["ids"]))
        for body in self.bodies("ListInputs"):
            assert len(body.get("ids", [])) <= MAX_BATCH, ("ListInputs ids", len(body["ids"]))
            assert body.get("per_page", 0) <= MAX_PER_PAGE, ("ListInputs per_page", body)


WRITE_KINDS = frozenset({"PostInputs", "PatchInputs", "DeleteInputs", "DeleteInput"})


def requests_by_method(emu: Emulator) -> dict[str, int]:
    """The emulator's request counts summed per HTTP method (both route spellings)."""
    out: dict[str, int] = {}
    for route, n in emu.stats()["requests"].items():
        method = route.split(" ", 1)[0]
        out[method] = out.get(method, 0) + n
    return out


def write_requests(emu: Emulator) -> int:
    """How many POST, PATCH and DELETE requests the emulator has seen."""
    counts = requests_by_method(emu)
    return sum(counts.get(m, 0) for m in WRITE_METHODS)


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


# --- what the remote holds ---------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def api_call(
    emu: Emulator, method: str, body: Mapping[str, Any], path: str = "/v2/inputs"
) -> dict[str, Any]:
    """One plain HTTP request to the emulator's v2 API with its key (like someone else's
    client or the web UI would send); asserts it succeeded and returns the JSON answer."""
    resp = requests.request(
        method,
        emu.url + path,
        json=dict(body),
        headers={"Authorization": f"Key {emu.api_key}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def remote_inputs(emu: Emulator, *, include_deleting: bool = False) -> dict[str, dict[str, Any]]:
    """Every input in the emulator's store by id (those being deleted left out by default)."""
    return {
        entry["id"]: entry
        for entry in emu.store_snapshot()
        if include_deleting or not entry["deleting"]
    }


def untouched_view(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An input's content and timestamps, without its processing status (which moves on)."""
    return {k: v for k, v in entry.items() if k != "status"}


def concepts_of(entry: Mapping[str, Any]) -> dict[str, float]:
    return {c["id"]: c["value"] for c in entry["data"].get("concepts", [])}


def metadata_of(entry: Mapping[str, Any]) -> dict[str, Any]:
    return entry["data"].get("metadata", {})


def expected_metadata(
    site: Site, rel: str, user_metadata: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The metadata syncd must write for the image at `rel`: the sidecar's plus the marker."""
    meta = normalize_metadata(dict(user_metadata or {}))
    meta[MARKER_KEY] = {"source": site.source, "path": rel, "sha256": sha256_of(site.root / rel)}
    return meta


def assert_remote_input(
    site: Site,
    rel: str,
    *,
    concepts: Mapping[str, float] | None = None,
    metadata: Mapping[str, Any] | None = None,
    input_id: str | None = None,
) -> dict[str, Any]:
    """The remote input of `rel` exists with exactly these concepts and metadata (+ marker),
    and holds the file's bytes."""
    input_id = input_id or site.input_id(rel)
    entry = remote_inputs(site.emu).get(input_id)
    assert entry is not None, f"no remote input {input_id} for {rel}"
    assert concepts_of(entry) == dict(concepts or {}), rel
    assert metadata_of(entry) == expected_metadata(site, rel, metadata), rel
    assert entry["image"]["sha256"] == sha256_of(site.root / rel), rel
    return entry


def owned_ids(emu: Emulator, source: str) -> set[str]:
    """Ids of the remote inputs carrying this source's ownership marker."""
    return {
        input_id
        for input_id, entry in remote_inputs(emu).items()
        if isinstance(metadata_of(entry).get(MARKER_KEY), dict)
        and metadata_of(entry)[MARKER_KEY].get("source") == source
    }
