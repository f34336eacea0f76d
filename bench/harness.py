"""The benchmark's moving parts: an emulator in its own process, measured child processes,
syncd sites (a root, a config, a ledger) and the statistics the table is made of.

Everything measured runs as a separate process, so its wall time, CPU time and peak RSS are
its own, and the emulator never shares a GIL with the client it serves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
BASELINES = BENCH / "baselines"
PYTHON = sys.executable
#: The one key the benchmark emulator accepts; it is not a secret (loopback emulator only).
API_KEY = "syncd-bench-key-00000000000000000000"
KEY_ENV = "SYNCD_BENCH_API_KEY"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- the emulator -------------------------------------------------------------------------------


class EmulatorProcess:
    """`python -m syncd emulator --port 0` as a child process, with its control API."""

    def __init__(
        self,
        workdir: Path,
        *,
        processing_delay: float = 0.05,
        delete_delay: float = 0.05,
        throttle_rps: float | None = None,
    ) -> None:
        argv = [
            PYTHON,
            "-m",
            "syncd",
            "emulator",
            "--port",
            "0",
            "--api-key",
            API_KEY,
            "--processing-delay",
            str(processing_delay),
            "--delete-delay",
            str(delete_delay),
        ]
        if throttle_rps is not None:
            argv += ["--throttle-rps", str(throttle_rps)]
        workdir.mkdir(parents=True, exist_ok=True)
        self._log = (workdir / "emulator.log").open("wb")
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO, text=True
        )
        assert self.proc.stdout is not None
        first = ""
        for _ in range(20):  # log lines (e.g. faults set) may come first
            first = self.proc.stdout.readline().strip()
            if first.startswith("listening on ") or not first:
                break
        if not first.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"emulator did not start: {first!r}")
        self.url = first.removeprefix("listening on ")
        # drain the rest of stdout so the child never blocks on a full pipe
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def cpu_seconds(self) -> float:
        """utime + stime of the emulator process so far, from /proc/PID/stat."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def control(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")

    def stats(self) -> dict[str, Any]:
        return self.control("GET", "stats")

    def store(self) -> list[dict[str, Any]]:
        return self.control("GET", "store")

    def reset(self) -> None:
        self.control("POST", "reset", {})

    def set_faults(self, **faults: Any) -> None:
        self.control("POST", "faults", faults)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def count(stats: Mapping[str, Any], route: str) -> int:
    """Requests to one route template, both path spellings together (e.g. "POST /inputs")."""
    method, suffix = route.split(" ", 1)
    return sum(
        n
        for key, n in stats.get("requests", {}).items()
        if key.startswith(method + " ")
        and key.endswith(suffix)
        and key.split(" ", 1)[1].replace("/users/{user_id}/apps/{app_id}", "") == "/v2" + suffix
    )


# --- measured child processes -------------------------------------------------------------------


@dataclass
class Measured:
    """One finished child process: wall time, its own CPU time, peak RSS, output."""

    argv: list[str]
    wall: float
    user: float
    sys: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    emulator_cpu: float = 0.0

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def json(self) -> Any:
        return json.loads(self.stdout)

    def check(self, ok: Sequence[int] = (0,)) -> Measured:
        if self.returncode not in ok:
            raise RuntimeError(
                f"{' '.join(self.argv[:4])}... exited {self.returncode}: "
                f"{self.stderr[-1500:] or self.stdout[-1500:]}"
            )
        return self


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    emulator: EmulatorProcess | None = None,
    timeout: float = 1800.0,
    stdout_to_devnull: bool = False,
    cwd: Path = REPO,
) -> Measured:
    """Run argv to completion; wall clock around spawn..reap, rusage of exactly this child."""
    full_env = {**os.environ, **(env or {})}
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"syncd-bench-{os.getpid()}.out"
    err_path = out_path.with_suffix(".err")
    cpu_before = emulator.cpu_seconds() if emulator else 0.0
    with out_path.open("w+b") as out, err_path.open("w+b") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            cwd=cwd,
            stdout=subprocess.DEVNULL if stdout_to_devnull else out,
            stderr=err,
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        peak = _PeakRss(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
            peak.stop()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    out_path.unlink(missing_ok=True)
    err_path.unlink(missing_ok=True)
    return Measured(
        list(argv),
        wall,
        usage.ru_utime,
        usage.ru_stime,
        peak.kb / 1024,
        proc.returncode,
        stdout,
        stderr,
        emulator_cpu=(emulator.cpu_seconds() - cpu_before) if emulator else 0.0,
    )


class _PeakRss:
    """Polls VmHWM (peak RSS) of a running child from /proc/PID/status.

    Not ru_maxrss: Linux folds the pre-exec address space's high-water mark into it, and a
    vfork()ed child's pre-exec space is this (large) parent's, so it would report our RSS.
    VmHWM belongs to the exec'd image only and never decreases, so polling loses at most the
    growth of the last interval before exit.
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.kb = 0
        self._path = f"/proc/{pid}/status"
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self._interval):
                return

    def _sample(self) -> None:
        try:
            with open(self._path) as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        self.kb = max(self.kb, int(line.split()[1]))
                        return
        except (OSError, ValueError):
            pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --- a syncd site -------------------------------------------------------------------------------


@dataclass
class Site:
    """One dataset root synced into one emulator: config file, ledger path, environment."""

    root: Path
    config: Path
    ledger: Path
    env: dict[str, str]

    def syncd(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "syncd", *args, "--config", str(self.config)]

    def reconcile(
        self, *flags: str, emulator: EmulatorProcess | None = None, ok: Sequence[int] = (0,)
    ) -> Measured:
        return run_measured(
            self.syncd("reconcile", "--json", *flags), env=self.env, emulator=emulator
        ).check(ok)

    def forget_ledger(self) -> None:
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(str(self.ledger) + suffix).unlink(missing_ok=True)

    def ledger_bytes(self) -> int:
        return sum(
            Path(str(self.ledger) + s).stat().st_size
            for s in ("", "-wal")
            if Path(str(self.ledger) + s).exists()
        )


def make_site(
    workdir: Path, root: Path, url: str, *, name: str = "bench", sync: Mapping[str, Any] = {}
) -> Site:
    """Write a config mirroring `root` into the emulator at `url` (no rate limit by default)."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = {
        "workers": 4,
        "max_requests_per_second": 1000.0,
        "poll_timeout": 600.0,
        "max_delete_fraction": 1.0,
        "max_delete": 10_000_000,
        **sync,
    }
    ledger = workdir / "ledger.db"
    lines = [
        "[source]",
        f"root = {json.dumps(str(root))}",
        f'name = "{name}"',
        "",
        "[remote]",
        f'api_base = "{url}"',
        f'api_key_env = "{KEY_ENV}"',
        "",
        "[sync]",
        *(f"{k} = {json.dumps(v)}" for k, v in settings.items()),
        "",
        "[ledger]",
        f"path = {json.dumps(str(ledger))}",
        "",
        "[log]",
        'level = "warning"',
        'format = "json"',
        "",
    ]
    config = workdir / "syncd.toml"
    config.write_text("\n".join(lines))
    return Site(root, config, ledger, {KEY_ENV: API_KEY})


# --- data ---------------------------------------------------------------------------------------


def wait_out_racy_window(root: Path, window: float = 2.0) -> None:
    """Wait until every file under root is older (mtime and ctime) than the racy window.

    The scanner never trusts a hash of a file changed within 2 s of the scan; a benchmark of
    an "unchanged" tree must not start inside that window.
    """
    newest = 0.0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            newest = max(newest, st.st_mtime, st.st_ctime)
    delay = newest + window + 0.2 - time.time()
    if delay > 0:
        time.sleep(delay)


def touch_files(root: Path, count_: int, *, seed: int = 1) -> list[Path]:
    """Append one byte to `count_` image files spread over the tree (content really changes)."""
    import random

    files = sorted(p for p in root.rglob("*.png"))
    chosen = random.Random(seed).sample(files, count_)
    for path in chosen:
        with path.open("ab") as fh:
            fh.write(b"\0")
    return chosen


def tree_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- statistics ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of the results table: a measurement, optionally checked against a target."""

    item: str
    metric: str
    value: float | int | str
    unit: str = ""
    target: str = ""
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "metric": self.metric,
            "value": self.value,
            "unit": self.unit,
            "target": self.target,
            "met": self.met,
            "detail": self.detail,
        }


def ratio_row(
    item: str,
    metric: str,
    ours: Sequence[float],
    floor: Sequence[float],
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    detail: Mapping[str, Any] = {},
) -> Row:
    """A ratio of medians (same run, same data); target `ratio <= at_most` or `>= at_least`."""
    ratio = median(ours) / median(floor) if median(floor) > 0 else float("inf")
    met: bool | None = None
    target = ""
    if at_most is not None:
        met, target = ratio <= at_most, f"<= {at_most}x"
    if at_least is not None:
        met, target = ratio >= at_least, f">= {at_least}x"
    info = {
        "ours_s": [round(x, 4) for x in ours],
        "floor_s": [round(x, 4) for x in floor],
        "ours_median_s": round(median(ours), 4),
        "floor_median_s": round(median(floor), 4),
        **detail,
    }
    return Row(item, metric, round(ratio, 3), "x", target, met, info)


def check_row(
    item: str,
    metric: str,
    value: Any,
    expected: Any,
    *,
    unit: str = "",
    detail: Mapping[str, Any] = {},
    op: Callable[[Any, Any], bool] | None = None,
    target: str | None = None,
) -> Row:
    """A count or flag checked against its target (equality unless `op` is given)."""
    met = op(value, expected) if op else value == expected
    return Row(item, metric, value, unit, target or f"== {expected}", met, dict(detail))
