"""`syncd run`: the watch loop around the same sync pass `syncd reconcile` runs.

One thread owns the loop: it drains the watcher's dirty paths, settles them, batches them, and
starts at most one job at a time (a pass or a status poll) on a worker thread, so a signal is
always answered promptly and an in-flight pass can be waited for with a bound. Pending work
lives in the ledger, never only in memory: a pass records intent before each request, and the
catch-up scan at start finds whatever changed while nothing was watching.

Order of work when idle: catch-up (once, at start), a full local rescan after lost events
(overflow, watcher restart, root back), rescans of subtrees, the settled batch (flushed at
`batch_size` paths or one second after the first), the periodic full rescan with the remote
listing (`rescan_interval` +-25%), then status polls of inputs still processing remotely.
See docs/daemon.md.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import structlog

from syncd.config import Config, check_root, resolve_api_key
from syncd.errors import AuthError, ConfigError, LedgerError, SyncdError, TransientError
from syncd.logs import configure_logging
from syncd.model import OpKind
from syncd.scanner import mount_table
from syncd.sdnotify import Notifier, watchdog_interval
from syncd.watcher import (
    ChangeQueue,
    Settler,
    Watcher,
    minimal_scope,
    path_filter,
    with_sidecar_users,
)

log = structlog.get_logger(__name__)

#: Seconds an in-flight job may take to finish after SIGTERM before it is abandoned.
STOP_BOUND = 20.0
#: A batch is flushed this many seconds after the first event of its first path (or at once
#: when it holds `batch_size` paths). In a burst, the part of a batch left over is held for
#: the files still settling at most this long after the last request went out.
BATCH_WINDOW = 1.0
#: The longest Retry-After a pass sleeps out inside a request; a longer one ends the pass and
#: the loop waits it out (a sleep past STALL_SECONDS would look like a wedged pass).
MAX_WAIT_IN_REQUEST = 30.0
#: Backoff after a failed pass: doubles from BACKOFF_START up to BACKOFF_CAP (jittered).
BACKOFF_START = 1.0
BACKOFF_CAP = 60.0
#: A repeated failure (remote down, root missing) is logged at most once per this many seconds.
LOG_INTERVAL = 60.0
#: Status polls of inputs still processing remotely: first interval and cap.
POLL_START = 1.0
POLL_CAP = 30.0
#: The first status poll after a replacement delete (its add waits for the delete to land).
REPLACE_POLL = 0.25
#: The periodic full rescan fires at rescan_interval times a factor within 1 +- this.
RESCAN_JITTER = 0.25
#: A periodic rescan waits for unsettled paths at most this long.
RESCAN_MAX_DEFER = 60.0
#: A job that shows no progress this long (no CPU, no request, same stack) stops WATCHDOG=1.
STALL_SECONDS = 120.0
#: Seconds between checks that the root is still there.
ROOT_CHECK_INTERVAL = 1.0
#: How long the start timeout is extended by each EXTEND_TIMEOUT_USEC during the catch-up.
EXTEND_SECONDS = 30.0
#: Settings a SIGHUP applies; everything else needs a restart.
RELOADABLE = ("sync", "log", "remote.timeout", "remote.api_key_env", "remote.api_key_file")

EngineFactory = Callable[[Config], Any]


# --- small pure helpers -----------------------------------------------------------------------


class Backoff:
    """Exponential backoff with jitter, from `start` doubling up to `cap`; honours retry-after."""

    def __init__(
        self,
        start: float = BACKOFF_START,
        cap: float = BACKOFF_CAP,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.start, self.cap, self._rng = start, cap, rng
        self.failures = 0
        self.until = float("-inf")
        self.since: float | None = None

    def failed(
        self, now: float, *, retry_after: float | None = None, at_cap: bool = False
    ) -> float:
        """Record a failure at `now`; returns the delay before the next attempt."""
        self.failures += 1
        if self.since is None:
            self.since = now
        delay = self.cap if at_cap else min(self.cap, self.start * 2 ** (self.failures - 1))
        delay *= 0.75 + 0.5 * self._rng()  # +-25%: restarted daemons do not retry in step
        if retry_after is not None:
            delay = max(delay, retry_after)
        self.until = now + delay
        return delay

    def succeeded(self) -> tuple[int, float | None]:
        """Reset; returns (failures before this success, when the failures started)."""
        out = (self.failures, self.since)
        self.failures, self.since, self.until = 0, None, float("-inf")
        return out

    def waiting(self, now: float) -> bool:
        return now < self.until


class Throttle:
    """Says whether a repeated message may be logged now: at most once per `interval` per key."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}

    def allow(self, key: str, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True

    def reset(self, key: str) -> None:
        self._last.pop(key, None)


def merge_reload(old: Config, new: Config) -> tuple[Config, list[str], list[str]]:
    """(effective config, dotted keys applied, dotted keys that need a restart) for a SIGHUP.

    [sync] and [log] settings, remote.timeout and where the key is read from are applied;
    everything else (root, source name, patterns, ledger path, remote identity) keeps its old
    value until the daemon is restarted.
    """
    applied: list[str] = []
    restart: list[str] = []
    sections: dict[str, Any] = {}
    for section in ("source", "remote", "sync", "ledger", "log"):
        before, after = getattr(old, section), getattr(new, section)
        kept: dict[str, Any] = {}
        for f in dataclasses.fields(before):
            a, b = getattr(before, f.name), getattr(after, f.name)
            dotted = f"{section}.{f.name}"
            if a == b:
                continue
            if section in RELOADABLE or dotted in RELOADABLE:
                kept[f.name] = b
                applied.append(dotted)
            else:
                restart.append(dotted)
        sections[section] = dataclasses.replace(before, **kept)
    return dataclasses.replace(old, **sections), applied, restart


# --- jobs -----------------------------------------------------------------------------------


@dataclass
class Job:
    """One pass or poll running on a worker thread."""

    kind: str  # catchup | watch | subtree | full | rescan | poll
    scope: tuple[str, ...] | None
    fn: Callable[[], Any]
    started: float
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


def _thread_cpu(native_id: int | None) -> int | None:
    """utime + stime (clock ticks) of one thread of this process, from /proc (Linux)."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def _stack(thread: threading.Thread | None, depth: int = 6) -> tuple[tuple[str, int], ...]:
    frame: FrameType | None = sys._current_frames().get(thread.ident) if thread else None
    out = []
    while frame is not None and len(out) < depth:
        out.append((frame.f_code.co_name, frame.f_lineno))
        frame = frame.f_back
    return tuple(out)


# --- the daemon -------------------------------------------------------------------------------


class Daemon:
    """The `syncd run` loop. Construct, then call `run()` from the main thread."""

    def __init__(
        self,
        config: Config,
        *,
        engine_factory: EngineFactory | None = None,
        reload_config: Callable[[], Config] | None = None,
        notifier: Notifier | None = None,
        watcher_factory: Callable[[Config, ChangeQueue], Watcher] | None = None,
        environ: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        stop_bound: float = STOP_BOUND,
    ) -> None:
        if engine_factory is None:
            from syncd.engine import open_engine  # noqa: PLC0415 - keeps imports light for tests

            # a long Retry-After is waited out here, in the loop (which answers signals and
            # feeds the watchdog), not asleep inside a request that looks stalled
            engine_factory = functools.partial(open_engine, max_wait=MAX_WAIT_IN_REQUEST)
        self.config = config
        self._engine_factory = engine_factory
        self._reload_config = reload_config
        self.notifier = notifier if notifier is not None else Notifier(environ)
        self._watcher_factory = watcher_factory or _default_watcher
        self._watchdog = watchdog_interval(environ)
        self._clock = clock
        self._rng = rng or random.Random()
        self.stop_bound = stop_bound
        # a request may legitimately hang for its timeout, twice (a retry)
        self.stall_seconds = max(STALL_SECONDS, 2 * config.remote.timeout + 60)
        self.queue = ChangeQueue(clock)
        self.settler = Settler(config.source.root, config.sync.settle_seconds)
        self.backoff = Backoff(rng=self._rng.random)
        self.throttle = Throttle()
        self.engine: Any = None
        self.watcher: Watcher | None = None
        self.job: Job | None = None
        # work waiting to be done
        self.batch: dict[str, float] = {}
        self.batch_started: float | None = None
        self.held_since: float | None = None  # a burst's partial batch waits for its rest
        self.batch_dirs: set[str] = set()  # the folders in the batch (scanned whole)
        self.subtrees: dict[str, str] = {}
        self.full_local: str | None = "catch-up"  # reason for a full stat-only pass
        self.next_rescan = float("inf")
        self.rescan_due_since: float | None = None
        self.pending_remote = 0
        self.replacing: set[str] = set()  # paths whose add waits for a replacement delete
        self.next_poll = float("inf")
        self.poll_interval = POLL_START
        # state
        self.ready_sent = False
        self.root_missing: str | None = None
        self.next_root_check = float("-inf")
        self.mounts: dict[str, int] | None = None  # inside the root, at the last root check
        self.server_wait_until = float("-inf")  # a Retry-After not to cut short
        self.totals = {"added": 0, "relabeled": 0, "deleted": 0, "failed": 0, "held": 0}
        self.last_error: str | None = None
        self.passes = 0
        self._stop_signal: int | None = None
        self._signals = 0
        self._reload = False
        self._progress: tuple[Any, ...] = ()
        self._progress_at = 0.0
        self._last_ping = float("-inf")
        self._last_extend = float("-inf")
        self._status = ""
        self._status_at = float("-inf")

    # --- signals (run on the main thread, between bytecodes: set flags and wake) ----------

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        self._signals += 1
        if self._stop_signal is None:
            self._stop_signal = signum
        self.queue.wake()

    def request_reload(self) -> None:
        self._reload = True
        self.queue.wake()

    def _install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        handlers = {
            signal.SIGTERM: lambda s, _f: self.request_stop(s),
            signal.SIGINT: lambda s, _f: self.request_stop(s),
            signal.SIGHUP: lambda _s, _f: self.request_reload(),
        }
        for signum, handler in handlers.items():
            previous[signum] = signal.signal(signum, handler)
        return previous

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        """Catch up, then watch until SIGTERM/SIGINT; returns the exit code (0 on a signal)."""
        previous = self._install_signals()
        old_hook = threading.excepthook
        threading.excepthook = _log_thread_exception
        self.notifier.notify(STATUS="opening the ledger")
        try:
            self.engine = self._engine_factory(self.config)
        except BaseException:
            self._restore(previous, old_hook)
            raise
        code = 0
        try:
            log.info(
                "daemon_started",
                root=str(self.config.source.root),
                source=self.config.source.name,
                settle_seconds=self.config.sync.settle_seconds,
                rescan_interval=self.config.sync.rescan_interval,
                watchdog_seconds=self._watchdog,
                systemd=self.notifier.enabled,
            )
            self.watcher = self._watcher_factory(self.config, self.queue)
            self.watcher.start()  # before the catch-up scan: nothing written during it is missed
            code = self._loop()
        finally:
            self._shutdown()
            self._restore(previous, old_hook)
        return code

    def _restore(self, previous: dict[int, Any], hook: Any) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        threading.excepthook = hook

    def _loop(self) -> int:
        while self._stop_signal is None:
            now = self._clock()
            if self.job is not None and self.job.done.is_set():
                fatal = self._finish(self.job, now)
                if fatal is not None:
                    return fatal
            if self._reload and self.job is None:
                self._reload = False
                self._apply_reload()
            self._collect(now)
            self._check_root(now)
            if self.job is None:
                self._start_next(now)
            self._notify(now)
            self.queue.wait(self._timeout(self._clock()))
        return 0

    def _shutdown(self) -> None:
        signame = signal.Signals(self._stop_signal).name if self._stop_signal else None
        log.info("daemon_stopping", signal=signame, in_flight=self.job.kind if self.job else None)
        self.notifier.notify(STOPPING=1, STATUS="stopping")
        if self.watcher is not None:
            self.watcher.stop()
        job = self.job
        if job is not None and not job.done.is_set():
            deadline = self._clock() + self.stop_bound
            while not job.done.wait(0.1):
                if self._clock() >= deadline or self._signals > 1:  # a second signal: now
                    self._abandon(job)
        if job is not None and job.done.is_set():
            # a pass that ended while stopping still counts (totals, a recovery, a failure)
            self._finish(job, self._clock())
        if self.engine is not None:
            try:
                self.engine.close()
            except Exception:
                log.warning("engine_close_failed", exc_info=True)
        log.info("daemon_stopped", passes=self.passes, **self.totals)
        self.notifier.close()

    def _abandon(self, job: Job) -> None:
        """The in-flight job outlived the stop bound: exit now. Its intent is in the ledger, so
        the next start finishes it; SQLite rolls back an unfinished transaction."""
        log.warning(
            "shutdown_abandoned",
            job=job.kind,
            seconds=round(self._clock() - job.started, 1),
            bound=self.stop_bound,
        )
        self.notifier.notify(STATUS="stopped (in-flight work abandoned; resumed at next start)")
        self.notifier.close()
        logging.shutdown()
        os._exit(0)

    # --- one loop iteration ---------------------------------------------------------------

    def _collect(self, now: float) -> None:
        """Drain the watcher, settle paths, move ready ones to the batch."""
        if self.watcher is not None and self.watcher.check():
            self._want_full("watcher restarted")
        drained = self.queue.drain()
        for change in drained.changes.values():
            self.settler.note(change)
        for path, reason in drained.rescans.items():
            if path == "":
                self.next_root_check = float("-inf")  # the root itself may be gone: look now
                self._want_full(reason)
            else:
                self.subtrees.setdefault(path, reason)
        ready = self.settler.take_ready(now)
        expired = self.held_since is not None and now - self.held_since >= BATCH_WINDOW
        if ready and not self.batch and expired:
            self.held_since = None  # a burst long over: the next one starts afresh
        for path, first, is_dir in ready:
            # the batch window counts from the first event, not from when its path settled
            self.batch.setdefault(path, first)
            if is_dir:
                self.batch_dirs.add(path)
            started = self.batch_started
            self.batch_started = first if started is None else min(started, first)

    def _want_full(self, reason: str) -> None:
        if self.full_local is None:
            log.info("full_rescan_requested", reason=reason)
            self.full_local = reason

    def _start_next(self, now: float) -> None:
        if self.backoff.waiting(now):
            return
        if self.root_missing:
            if not self.ready_sent:
                self._ready()  # running, and waiting for the disk: not a failed start
            if self.pending_remote and now >= self.next_poll:
                self._start_poll(now)
            return
        if self.full_local is not None:
            self._start_pass(now, "catchup" if not self.ready_sent else "full", None)
        elif self.subtrees:
            scope = minimal_scope(self.subtrees)
            self.subtrees.clear()
            self._start_pass(now, "subtree", scope)
        elif self.batch and self._batch_due(now, self.config.sync.batch_size):
            self._send_batch(now, self.config.sync.batch_size)
        elif self._rescan_due(now):
            self._start_pass(now, "rescan", None, local_only=False)
        elif self.pending_remote and now >= self.next_poll:
            self._start_poll(now)

    def _send_batch(self, now: float, size: int) -> None:
        """Start a watch pass over the paths ready, in whole batches while a burst settles.

        A burst is known by a whole batch of files being ready, or able to form with the
        paths still settling, and lasts while files settle within BATCH_WINDOW of its last
        request. Then only whole batches go, oldest files first, and the rest waits for the
        files to come, so no partial request goes out mid-burst. It waits at most
        BATCH_WINDOW after the last request, and not at all once nothing is settling. A
        trickle (fewer than a batch in all) goes at once: holding it would only add latency.
        Folders do not count towards a batch and wait while files are held: a folder's pass
        scans it whole, so it would send its held files with the batch, one request too many.
        """
        ready = [p for p in self.batch if p not in self.settler]  # changed again: wait
        files = [p for p in ready if p not in self.batch_dirs]
        whole = len(files) - len(files) % size
        rest, settling = len(files) - whole, len(self.settler)
        hold_expired = self.held_since is not None and now - self.held_since >= BATCH_WINDOW
        # a burst goes on while whole batches went within the window and files still settle,
        # so its last few files wait for each other too
        going_on = self.held_since is not None and not hold_expired
        burst = whole > 0 or rest + settling >= size or going_on
        if rest and settling and burst and not hold_expired:
            sent = files[:whole]
            kept = set(ready) - set(sent)
            self.batch = {p: first for p, first in self.batch.items() if p in kept}
            self.batch_dirs &= kept
            if sent or self.held_since is None:
                self.held_since = now
        else:
            sent = ready
            self.batch.clear()
            self.batch_dirs.clear()
            self.batch_started = None
            self.held_since = now if sent and settling and burst and not hold_expired else None
        if sent:
            self._start_pass(now, "watch", tuple(sorted(sent)))

    def _batch_due(self, now: float, batch_size: int) -> bool:
        if len(self.batch) >= batch_size:
            return True
        if self.held_since is not None:  # a burst's rest: until nothing settles, or the hold ends
            return not self.settler or now >= self._batch_deadline(now)
        return now >= self._batch_deadline(now)

    def _batch_deadline(self, now: float) -> float:
        """When the batch goes out even if it is not full."""
        start = self.held_since if self.held_since is not None else self.batch_started
        return (now if start is None else start) + BATCH_WINDOW

    def _rescan_due(self, now: float) -> bool:
        if now < self.next_rescan:
            return False
        if self.rescan_due_since is None:
            self.rescan_due_since = now
        # wait for files being written, within reason
        return len(self.settler) == 0 or now - self.rescan_due_since >= RESCAN_MAX_DEFER

    def _schedule_rescan(self, now: float) -> None:
        interval = self.config.sync.rescan_interval
        self.rescan_due_since = None
        if interval <= 0:
            self.next_rescan = float("inf")
            return
        factor = 1 + RESCAN_JITTER * (2 * self._rng.random() - 1)
        self.next_rescan = now + interval * factor

    def _start_pass(
        self, now: float, kind: str, scope: tuple[str, ...] | None, *, local_only: bool = True
    ) -> None:
        """Start a pass: full (scope None) or over these paths. The list of sidecars' images
        and the pass itself run on the worker thread (they read the disk)."""
        from syncd.engine import PassOptions  # noqa: PLC0415 - the engine pulls in requests

        engine, root = self.engine, self.config.source.root
        if scope is None:  # a full pass covers every dirty path settled so far
            self.full_local = None
            self.subtrees.clear()
            self.batch.clear()
            self.batch_dirs.clear()
            self.batch_started = self.held_since = None
        ledger_kind = {"catchup": "catchup", "watch": "watch", "subtree": "watch"}.get(
            kind, "rescan"
        )
        log.debug(
            "pass_starting",
            kind=kind,
            paths=None if scope is None else len(scope),
            scope=None if scope is None else list(scope[:20]),
        )

        def run() -> Any:
            wanted = None if scope is None else minimal_scope(with_sidecar_users(root, scope))
            options = PassOptions(scope=wanted, local_only=local_only, wait=False, kind=ledger_kind)
            return engine.sync_once(options)

        self._spawn(Job(kind, scope, run, now))

    def _start_poll(self, now: float) -> None:
        engine = self.engine
        self._spawn(Job("poll", None, lambda: engine.poll(deadline=engine.clock()), now))

    def _spawn(self, job: Job) -> None:
        def work() -> None:
            try:
                job.result = job.fn()
            except BaseException as exc:
                job.error = exc
            finally:
                job.done.set()
                self.queue.wake()

        job.thread = threading.Thread(target=work, name=f"syncd-{job.kind}", daemon=True)
        self.job = job
        self._progress = ()
        self._progress_at = job.started
        job.thread.start()

    # --- results ------------------------------------------------------------------------------

    def _finish(self, job: Job, now: float) -> int | None:
        """Take a finished job's result; returns an exit code when the daemon must stop."""
        self.job = None
        error = job.error
        report = job.result if job.kind != "poll" else None
        if error is None and report is not None and report.errors:
            error = TransientError("; ".join(report.errors[:3]))
            error.retry_after = report.retry_after  # a throttled upload's Retry-After
        if error is None:
            self._succeeded(job, report, now)
            return None
        if isinstance(error, LedgerError):
            log.error("ledger_failed", error=str(error), action="exiting")
            self.last_error = str(error)
            return error.exit_code
        if job.kind != "poll":
            self._requeue(job, now)
        self._failed(job, error, now)
        return None

    def _succeeded(self, job: Job, report: Any, now: float) -> None:
        failures, since = self.backoff.succeeded()
        if failures:
            log.info(
                "remote_recovered",
                failures=failures,
                outage_seconds=round(now - since, 1) if since is not None else None,
            )
            self.throttle.reset("remote")
        if job.kind == "poll":
            before, self.pending_remote = self.pending_remote, int(job.result or 0)
            stuck = self.pending_remote and self.pending_remote >= before
            self.poll_interval = min(POLL_CAP, self.poll_interval * 2) if stuck else POLL_START
            self.next_poll = now + self.poll_interval
            if self.replacing and self.pending_remote < before:
                # replacement deletes were confirmed: the adds of the new bytes can go now
                for path in self.replacing:
                    self.batch.setdefault(path, now)
                self.batch_started = now - BATCH_WINDOW
            return
        self.passes += 1
        for key in ("added", "relabeled", "deleted"):
            self.totals[key] += getattr(report, key)
        self.totals["failed"] += len(report.failed)
        self.totals["held"] = len(report.held)
        self.pending_remote = report.pending
        self.poll_interval = POLL_START
        self.next_poll = now + POLL_START
        replaced = {
            op.path for op in report.planned if op.kind is OpKind.DELETE and op.replace
        } | set(report.vanished)
        if job.scope is None:
            self.replacing.clear()
        self.replacing -= {op.path for op in report.planned if op.kind is OpKind.ADD}
        self.replacing |= replaced
        if replaced:
            self.next_poll = now + REPLACE_POLL
        if report.guard and self.throttle.allow("guard", now):
            log.warning("delete_guard_tripped", reason=report.guard)
        if job.kind in ("catchup", "rescan"):
            self._schedule_rescan(now)
        if not self.ready_sent and self._stop_signal is None:
            self._ready()

    def _failed(self, job: Job, error: BaseException, now: float) -> None:
        self.last_error = _one_line(error)
        if isinstance(error, AuthError | ConfigError):
            delay = self.backoff.failed(now, at_cap=True)
            if self.throttle.allow("auth", now):
                log.error(
                    "remote_auth_failed",
                    error=self.last_error,
                    retry_in=round(delay, 1),
                    fix="check the API key (a SIGHUP re-reads it), remote.user_id and app_id",
                )
        elif isinstance(error, SyncdError):
            asked = getattr(error, "retry_after", None)
            delay = self.backoff.failed(now, retry_after=asked)
            if asked is not None:
                self.server_wait_until = now + asked
            if self.throttle.allow("remote", now):
                log.warning(
                    "remote_unavailable",
                    error=self.last_error,
                    failures=self.backoff.failures,
                    retry_in=round(delay, 1),
                    job=job.kind,
                )
        else:
            delay = self.backoff.failed(now)
            if self.throttle.allow("bug", now):
                log.error(
                    "job_crashed",
                    job=job.kind,
                    retry_in=round(delay, 1),
                    exc_info=(type(error), error, error.__traceback__),
                )
        if job.kind == "catchup" and not self.ready_sent:
            self._ready()  # the local side is known; the uploads are retried with backoff

    def _requeue(self, job: Job, now: float) -> None:
        """A failed pass's work is done again after the backoff."""
        if job.scope is None:
            if job.kind == "rescan":
                self.next_rescan = now  # retried (with the remote listing) after the backoff
            else:
                self.full_local = self.full_local or f"{job.kind} pass failed"
            return
        root = self.config.source.root
        for path in job.scope:
            self.batch.setdefault(path, now)
            if os.path.isdir(os.path.join(root, path)):  # a folder still counts as one
                self.batch_dirs.add(path)
        if self.batch_started is None:
            self.batch_started = now

    def _ready(self) -> None:
        self.ready_sent = True
        self.notifier.notify(READY=1, STATUS=self._status_text())
        log.info("daemon_ready", watcher=self.watcher.status.mode if self.watcher else None)

    # --- the root -------------------------------------------------------------------------

    def _check_root(self, now: float) -> None:
        if now < self.next_root_check:
            return
        self.next_root_check = now + ROOT_CHECK_INTERVAL
        self._check_mounts()
        problem = check_root(self.config)
        if problem is not None:
            self.root_missing = problem
            if self.throttle.allow("root", now):  # the first time, then once per interval
                log.error("root_missing", problem=problem, action="deletes paused until it returns")
            return
        if self.root_missing is not None:
            log.warning("root_returned", root=str(self.config.source.root), action="full rescan")
            self.root_missing = None
            self.throttle.reset("root")
            if self.full_local is None:  # else the pending catch-up is that full rescan
                self.next_rescan = now  # a full pass with the remote listing
                self.rescan_due_since = now - RESCAN_MAX_DEFER

    def _check_mounts(self) -> None:
        """A disk mounted or unmounted inside the root (the kernel's mount table, which names
        them without reading them): the watches stay on the file system they were put on, so
        the watcher restarts, and a full local pass looks (an unmounted disk's folder is judged
        without deleting its inputs, see syncd/mounts.py)."""
        src = self.config.source
        mounts = mount_table(src.root, src.exclude)
        if mounts is None or mounts == self.mounts:
            return
        if self.mounts is not None:
            before = self.mounts
            log.warning(
                "mounts_changed",
                mounted=sorted(m for m, mount_id in mounts.items() if before.get(m) != mount_id),
                unmounted=sorted(m for m in before if m not in mounts),
                action="watcher restart and full rescan",
            )
            if self.watcher is not None:
                self.watcher.request_restart("a disk was mounted or unmounted in the root")
            self._want_full("mount points changed")
        self.mounts = mounts

    # --- SIGHUP ---------------------------------------------------------------------------

    def _apply_reload(self) -> None:
        if self._reload_config is None:
            log.warning("config_reload_unsupported")
            return
        try:
            new = self._reload_config()
        except SyncdError as exc:
            log.error("config_reload_failed", error=str(exc), action="keeping the old config")
            return
        effective, applied, restart = merge_reload(self.config, new)
        if restart:
            log.warning("config_change_needs_restart", keys=restart)
        try:
            resolve_api_key(effective)
        except ConfigError as exc:
            log.error("config_reload_failed", error=str(exc), action="keeping the old config")
            return
        configure_logging(effective.log.level, effective.log.format)
        old_engine, old_config = self.engine, self.config
        old_engine.close()
        try:
            self.engine = self._engine_factory(effective)
        except SyncdError as exc:
            log.error("config_reload_failed", error=str(exc), action="keeping the old config")
            self.engine = self._engine_factory(old_config)
            return
        self.config = effective
        self.settler.settle_seconds = effective.sync.settle_seconds
        if effective.sync.rescan_interval != old_config.sync.rescan_interval:
            self._schedule_rescan(self._clock())
        if self._clock() >= self.server_wait_until:  # not before a wait the remote asked for
            self.backoff.succeeded()  # a fixed key or endpoint deserves an immediate try
        log.info("config_reloaded", applied=applied, credentials="re-read")

    # --- systemd --------------------------------------------------------------------------

    def _progressing(self, now: float) -> bool:
        """Whether the loop is making progress: it is (we are here), and any running job has
        shown a sign of life (CPU time, a request, a different stack) within STALL_SECONDS."""
        job = self.job
        if job is None or job.done.is_set():
            return True
        api = getattr(self.engine, "api", None)
        stats = getattr(api, "stats", None)
        probe = (
            _thread_cpu(job.thread.native_id if job.thread else None),
            repr(stats.as_dict()) if stats is not None else None,
            _stack(job.thread),
        )
        if probe != self._progress:
            self._progress = probe
            self._progress_at = now
        return now - self._progress_at < self.stall_seconds

    def _notify(self, now: float) -> None:
        if not self.notifier.enabled:
            return
        progressing = self._progressing(now)
        if self._watchdog is not None and now - self._last_ping >= self._watchdog / 2:
            if progressing:
                self.notifier.notify(WATCHDOG=1)
                self._last_ping = now
            elif self.throttle.allow("stall", now):
                log.error(
                    "job_stalled",
                    job=self.job.kind if self.job else None,
                    action="watchdog pings withheld",
                )
        if not self.ready_sent and progressing and now - self._last_extend >= EXTEND_SECONDS / 3:
            self.notifier.notify(EXTEND_TIMEOUT_USEC=int(EXTEND_SECONDS * 1_000_000))
            self._last_extend = now
        text = self._status_text()
        if text != self._status and now - self._status_at >= 1.0:
            self.notifier.notify(STATUS=text)
            self._status, self._status_at = text, now

    def _status_text(self) -> str:
        if self.root_missing:
            phase = "root missing, deletes paused"
        elif not self.ready_sent:
            phase = "catching up"
        elif self.backoff.failures:
            phase = f"remote unavailable ({self.backoff.failures} failures)"
        else:
            phase = f"watching ({self.watcher.status.mode if self.watcher else '-'})"
        queue = len(self.settler) + len(self.batch) + len(self.subtrees)
        t = self.totals
        return (
            f"{phase}; queue {queue}; added {t['added']}, relabeled {t['relabeled']}, "
            f"deleted {t['deleted']}, failed {t['failed']}, held {t['held']}; "
            f"pending {self.pending_remote}; last error: {self.last_error or 'none'}"
        )

    def _timeout(self, now: float) -> float:
        deadlines = [now + 1.0, self.next_root_check]
        if self.job is None:
            nxt = self.settler.next_check(now)
            if nxt is not None:
                deadlines.append(nxt)
            if self.batch:
                deadlines.append(self._batch_deadline(now))
            deadlines.append(self.next_rescan)
            if self.pending_remote:
                deadlines.append(self.next_poll)
            deadlines.append(self.backoff.until)
        elif self.settler.next_check(now) is not None:
            deadlines.append(now + 0.1)
        if self._watchdog is not None:
            deadlines.append(self._last_ping + self._watchdog / 2)
        return min(1.0, max(0.01, min(deadlines) - now))


def _default_watcher(config: Config, queue: ChangeQueue) -> Watcher:
    src = config.source
    return Watcher(
        src.root,
        queue,
        relevant=path_filter(src.include, src.exclude),
        follow_symlinks=src.follow_symlinks,
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    log.error(
        "thread_crashed",
        thread=args.thread.name if args.thread else None,
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


def run_daemon(
    config: Config,
    *,
    reload_config: Callable[[], Config] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> int:
    """Run `syncd run` until a signal; the exit code (0 after SIGTERM/SIGINT)."""
    return Daemon(config, reload_config=reload_config, environ=environ).run()
