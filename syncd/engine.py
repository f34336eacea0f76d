"""One sync pass: scan -> ledger -> (remote listing) -> plan -> guards -> execute -> status.

`syncd reconcile` calls `Engine.sync_once` once; the daemon calls the very same method for
every batch of changes and every periodic rescan.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import structlog

from syncd import quickcheck
from syncd.config import ApiKey, Config, resolve_api_key
from syncd.envelope import MAX_IDS_PER_LIST, RemoteRecord, check_api_key, chunk_ids
from syncd.ledger import Ledger
from syncd.model import (
    FileStat,
    InputRecord,
    InputState,
    LocalImage,
    LocalSnapshot,
    Operation,
    OpKind,
    RemoteInput,
)
from syncd.planner import RemoteReport, fold_remote, plan, state_for_code
from syncd.progress import NoProgress, Progress
from syncd.remote import remote_input
from syncd.report import PassOptions, SyncReport, summary_of
from syncd.scanner import (
    RACY_WINDOW_NS,
    FileRecord,
    KnownFile,
    ScanResult,
    mount_table,
    read_deferred,
    scan,
)

if TYPE_CHECKING:
    from syncd.executor import Executor, Outcome

log = structlog.get_logger(__name__)

#: Ledger meta key holding ids that belong to someone else ({input id: reason}).
BLOCKED_KEY = "blocked_ids"
#: Ledger meta: the folders under the root that were mount points when last scanned.
MOUNTS_KEY = "mount_points"
#: How many times one pass re-plans after replacement deletes complete.
MAX_ROUNDS = 3
#: settled inputs written per ledger transaction while a poll round reads its pages
POLL_WRITE_BATCH = 2_000


class Engine:
    """Brings the remote in step with the folder; holds the ledger and the API client."""

    def __init__(
        self,
        config: Config,
        ledger: Ledger,
        api: Any,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        explain: bool = False,
        progress: Progress | NoProgress | None = None,
        quick_check: bool = True,
    ) -> None:
        self.config = config
        self.quick_check = quick_check  # False: every full pass scans (tests compare the two)
        self.ledger = ledger
        self.api = api
        self.clock = clock
        self.sleep = sleep
        self.explain = explain
        self.progress = progress or NoProgress()
        self._scan_started_ns = 0

    def close(self) -> None:
        """Close the HTTP session and release the ledger (and its process lock)."""
        try:
            self.api.close()
        finally:
            self.ledger.close()

    # --- the pass ------------------------------------------------------------------------

    def sync_once(self, options: PassOptions | None = None) -> SyncReport:
        """Run one pass (by default a full one, with the remote listing); return its report."""
        options = options or PassOptions()
        started = self.clock()
        report = SyncReport(
            dry_run=options.dry_run, local_only=options.local_only, waited=options.wait
        )
        pass_id = None if options.dry_run else self.ledger.start_pass(options.kind)
        sent_before = self._api_counts()
        stopped: BaseException | None = None
        try:
            with _fewer_gc_passes():
                self._run(options, report)
            # what the report shows of an operation (kind, id, path, reason), without the
            # labels: at 100,000 adds they are ~25 MB held only for the summary and --json
            _drop_labels(report.planned)
        except BaseException as exc:
            stopped = exc  # cut short (a refused key, a wait the remote asked for): said so
            raise
        finally:
            self.progress.close()
            report.seconds = round(self.clock() - started, 3)
            report.requests, report.bytes_sent = self._api_delta(sent_before)
            if pass_id is not None:
                code = report.exit_code
                if stopped is not None:
                    report.errors.append(f"pass stopped: {stopped}")
                    code = max(code, getattr(stopped, "exit_code", 1))
                self.ledger.finish_pass(pass_id, summary=summary_of(report), exit_code=code)
        log.info("pass_finished", **summary_of(report))
        return report

    def _run(self, options: PassOptions, report: SyncReport) -> None:
        """The quick check first (syncd/quickcheck.py), then the full path (`_pass`): over the
        whole tree, or over the only images that changed since a pass that ended in step."""
        quick = self._quick_check(options)
        if quick is not None and quick.in_step and self._remote_unchanged(quick, options, report):
            self._report_in_step(quick, report, dry_run=options.dry_run)
            return
        if quick is not None and quick.changed:
            if options.local_only or self._remote_unchanged(quick, options, report):
                # only these images changed since a pass that ended in step, and the remote
                # did not: a pass scoped to them plans what a full pass would
                log.info("quick_check_changed", paths=len(quick.changed))
                self._pass(
                    dataclasses.replace(options, scope=quick.changed, local_only=True),
                    report,
                    quick,
                )
                report.files_seen = quick.walk.images
                return
            quick = dataclasses.replace(quick, changed=())
        self._pass(options, report, quick)

    def _pass(self, options: PassOptions, report: SyncReport, quick: _QuickCheck | None) -> None:
        """The full path: scan (all or `options.scope`), list and fold (unless local), plan,
        execute, poll; leave an in-step marker when `quick` walked the tree first."""
        cfg = self.config
        blocked = self._blocked()
        self.progress.stage(
            "scan",
            "reading the folder, hashing changed files"
            + ("" if options.local_only else ", listing the remote"),
        )
        # a full pass folds the listing into the beliefs while the tree is scanned (the listing
        # thread loads them); a local pass loads them after the scan, once the stat cache is
        # let go (the scan writes only the file table: they are the same rows either way)
        with _Listing(self, blocked, enabled=not options.local_only) as listing:
            # the remote listing (waiting on the server) runs while the tree is scanned
            snapshot = self._scan_and_record(options, report)
            listed = listing.result()
        beliefs: dict[str, InputRecord] = {}
        if options.local_only:
            beliefs = self._local_beliefs(snapshot)
        resend_deletes: list[InputRecord] = []
        if listed is not None:
            blocked = {k: v for k, v in blocked.items() if k in listed.present_blocked}
            self._report_remote(listed.remote, report)
            resend_deletes = [b for b in listed.folded.values() if b.state is InputState.DELETING]
            if not options.dry_run:
                self._store_beliefs(listed.beliefs, listed.folded)
                self._set_blocked(blocked)
            beliefs = listed.folded
            digest: str | None = listed.digest
            del listed  # the beliefs before the fold are not needed any more
        else:
            digest = None

        snapshot = self._read_deferred(snapshot, beliefs, report)
        snapshot = _hold_blocked(snapshot, blocked)
        report.held = sorted(
            (img.path, img.problem or "") for img in snapshot.images.values() if img.problem
        )
        for path, problem in report.held:
            log.warning("file_held", path=path, reason=problem)

        ops = plan(snapshot, beliefs, source_name=cfg.source.name)
        report.planned = ops
        report.guard = self._delete_guard(ops, beliefs, snapshot, options)
        if self.explain:
            report.explain.extend(
                {
                    "path": op.path,
                    "input_id": op.input_id,
                    "action": op.kind.value,
                    "why": op.reason,
                }
                for op in ops
            )
            if report.guard:
                report.explain.append({"path": "", "action": "guard", "why": report.guard})
        if options.dry_run:
            return

        executor = self._executor()
        if resend_deletes:
            executor.delete([_delete_op(b) for b in resend_deletes])
        outcome = executor.outcome
        total = len(ops)
        self.progress.stage(
            "upload",
            lambda: (
                f"{len(outcome.added) + len(outcome.adopted)} added, "
                f"{len(outcome.relabeled)} relabeled, {len(outcome.deleted)} deleted "
                f"of {total} operations"
            ),
        )
        for round_no in range(MAX_ROUNDS):
            if round_no:
                ops = plan(snapshot, self._local_beliefs(snapshot), source_name=cfg.source.name)
                ops = [op for op in ops if op.kind is not OpKind.DELETE or op.replace]
            vanished_before = len(executor.outcome.vanished)
            replaced = self._execute(executor, ops, beliefs, snapshot, report, options)
            # replaced inputs, and inputs a PATCH found deleted by someone else, are added
            # (again) once the remote confirms they are gone
            vanished = len(executor.outcome.vanished) - vanished_before
            if not (replaced or vanished) or not options.wait:
                break
            self.poll(deadline=self.clock() + cfg.sync.poll_timeout)
            beliefs = self._local_beliefs(snapshot)
        self._collect(executor.outcome, report)
        if executor.outcome.blocked:
            self._set_blocked({**blocked, **executor.outcome.blocked})
        # let go of what the final poll does not need: at 100,000 adds the operations' labels,
        # the snapshot and the beliefs are most of the pass's memory
        judged_whole = snapshot.root_problem is None and not snapshot.unscanned
        del snapshot, ops, beliefs, executor
        _drop_labels(report.planned)
        if options.wait:
            self.poll(deadline=self.clock() + cfg.sync.poll_timeout)
        self._report_states(report)
        if quick is not None and self._ended_in_step(report, judged_whole, blocked, resend_deletes):
            self._leave_marker(quick, digest, report)

    def _local_beliefs(self, snapshot: LocalSnapshot) -> dict[str, InputRecord]:
        """What the ledger believes, for planning `snapshot` without a listing: all of it for
        a full scan; for a scoped one, the inputs under its scope and those its images map to
        (the planner judges no other)."""
        if snapshot.scope is None:
            return self.ledger.inputs()
        return self.ledger.inputs_in(
            snapshot.scope, (img.input_id for img in snapshot.images.values())
        )

    def _quick_check(self, options: PassOptions) -> _QuickCheck | None:
        """Walk the tree with stat only and compare it with the ledger's in-step marker; None
        for scoped passes, for trees the quick walk does not model, for dry runs when there is
        no marker (nothing to compare with, and a dry run leaves none), and for a ledger that
        knows no file yet: its pass nearly always sends something (an initial sync), after
        which it leaves no marker either. (One that sends nothing, a ledger rebuilt from the
        remote, leaves none then: the next pass takes the full path and leaves it.)"""
        if options.scope is not None or not self.quick_check:
            return None
        current = self._mount_table()
        if current is not None and set(current) != self._known_mounts():
            # a disk mounted or unmounted inside the root since the mount points were noted
            # (or never noted, by an older syncd): the full path notes them, and judges an
            # unmounted one's folder without deleting its inputs
            log.info("quick_check_skipped", reason="mount points changed")
            return None
        marker = self.ledger.in_step_marker()
        if marker is None and (options.dry_run or not self.ledger.has_files()):
            return None
        lines = _LinePrefetch(self.ledger)
        try:
            walk = quickcheck.walk(
                self.config, while_waiting=None if marker is None else lines.start
            )
            if walk is None:
                return None
            fingerprint = quickcheck.fingerprint(self.config)
            in_step = quickcheck.in_step(walk, marker, fingerprint)
            changed: tuple[str, ...] = ()
            if not in_step:
                changed = quickcheck.changed_paths(walk, marker, fingerprint, lines.result)
        finally:
            lines.cancel()  # in step, or no use for the lines: the query stops
        walk = dataclasses.replace(walk, image_lines=())  # ~15 MB at 100,000: not kept
        return _QuickCheck(walk, fingerprint, marker, in_step, changed)

    def _remote_unchanged(
        self, quick: _QuickCheck, options: PassOptions, report: SyncReport
    ) -> bool:
        """Whether the remote is as the marker recorded it, as far as this pass looks: a local
        pass does not look; a full one lists the remote and compares the listing's digest (a
        marker left by a local pass has none: then the full path lists and folds it)."""
        if options.local_only:
            return True
        known = quickcheck.remote_of(quick.marker)
        if known is None:
            return False
        digest = quickcheck.ListingDigest()
        for _, body in self.api.list_page_bodies():
            digest.update(body)
        if digest.hexdigest() != known[0]:
            # someone else changed the app: the full pass lists it again and folds it
            log.info("quick_check_remote_changed")
            return False
        report.foreign = known[1]
        return True

    def _leave_marker(self, quick: _QuickCheck, listing: str | None, report: SyncReport) -> None:
        """Record that this pass ended in step (see syncd/quickcheck.py); `listing` is the
        digest of the remote listing this pass folded (None for a local pass)."""
        if listing is not None:
            remote: tuple[str, int | None] | None = (listing, report.foreign)
        elif quick.changed and not report.planned:
            # a pass scoped to changed images that sent nothing rewrote file rows only: what
            # the old marker knew of the remote (and of the inputs) still holds
            remote = quickcheck.remote_of(quick.marker)
        elif self.ledger.in_step_marker() == quick.marker:
            # a local pass that wrote nothing: what the old marker knew of the remote holds
            remote = quickcheck.remote_of(quick.marker)
        else:
            remote = None
        marker = quickcheck.marker_for(
            quick.walk, quick.fingerprint, self.ledger.clean_files_digest(), remote=remote
        )
        if marker is not None:
            self.ledger.set_in_step_marker(marker)

    def _report_in_step(self, quick: _QuickCheck, report: SyncReport, *, dry_run: bool) -> None:
        """The tree and the ledger are as the last clean pass left them: a full scan would
        rebuild the same snapshot and plan nothing (see syncd/quickcheck.py)."""
        report.quick_check = True
        report.files_seen = quick.walk.images
        if not dry_run:
            self._report_states(report)  # as the full path does: a dry run ends before it
        log.info("quick_check_in_step", files=report.files_seen)

    def _ended_in_step(
        self,
        report: SyncReport,
        judged_whole: bool,
        blocked: Mapping[str, str],
        resend_deletes: Sequence[InputRecord],
    ) -> bool:
        """Whether this (full, written) pass left the folder and the ledger in step: nothing
        planned, held, skipped, unjudged or still in flight. Inputs whose processing failed
        may remain: a pass plans nothing for them until their bytes change."""
        if (
            report.planned
            or resend_deletes
            or report.held
            or report.skipped
            or report.orphan_sidecars
            or report.errors
            or report.guard
            or report.vanished
            or blocked
            or not judged_whole  # a root problem or folders that could not be read
        ):
            return False
        counts = self.ledger.counts_by_state()
        settled = (InputState.PROCESSED.value, InputState.FAILED.value)
        return all(n == 0 for state, n in counts.items() if state not in settled)

    def _execute(
        self,
        executor: Executor,
        ops: Sequence[Operation],
        beliefs: Mapping[str, InputRecord],
        snapshot: LocalSnapshot,
        report: SyncReport,
        options: PassOptions,
    ) -> int:
        """Run one round of operations; returns how many replacement deletes were sent."""
        # adds in path order (the plan is in id order, ids being hashes): the file rows they
        # write go into the ledger's path index in order, not at random places all over it
        adds = sorted((op for op in ops if op.kind is OpKind.ADD), key=attrgetter("path"))
        patches = [op for op in ops if op.kind is OpKind.PATCH]
        replaces = [op for op in ops if op.kind is OpKind.DELETE and op.replace]
        deletes = [op for op in ops if op.kind is OpKind.DELETE and not op.replace]
        if adds:
            sizes, settled = self._add_evidence(snapshot)
            executor.add(
                adds,
                sizes,
                settled,
                unread=_Unread(snapshot.images),
                racy_from_ns=self._scan_started_ns - RACY_WINDOW_NS,
            )
            del sizes, settled
        executor.patch(patches, beliefs)
        executor.delete(replaces)
        report.replaced += len(replaces)
        if deletes and report.guard is None:
            if executor.outcome.errors:
                log.warning(
                    "deletes_withheld", count=len(deletes), reason="errors earlier in this pass"
                )
            else:
                executor.delete(deletes)
        return len(replaces)

    def _add_evidence(
        self, snapshot: LocalSnapshot
    ) -> tuple[Mapping[str, int], Mapping[str, FileStat]]:
        """(path -> size, path -> stat of settled files) for the files to add.

        Settled: stats old enough to prove the bytes unchanged (as the stat cache trusts
        them); the executor then sends those files without hashing them a second time. Both
        are views of the snapshot, answered when asked: dicts of them for 100,000 adds were
        ~10 MB of an initial sync's peak.
        """
        return _Sizes(snapshot.images), _Settled(snapshot.images, self._scan_started_ns)

    def _scan_and_record(self, options: PassOptions, report: SyncReport) -> LocalSnapshot:
        """Scan, count, and write the file cache back (unless dry run); returns the snapshot.

        The stat cache and the per-file records are dropped on return: only the snapshot is
        needed from here on, and at 100,000 files they are tens of MB.
        """
        # a full scan reads the ledger's rows folder by folder, as it reads the folders
        known = (
            self.ledger.known_files_by_folder()
            if options.scope is None
            else self.ledger.known_files(options.scope)
        )
        self._scan_started_ns = time.time_ns()
        # new images are read once, by the add that sends them (see `scan`), unless the pass
        # only looks (a dry run, --explain: they judge every file now) or sends URLs
        defer = not (options.dry_run or self.explain or self.config.source.url_base)
        mounts = self._known_mounts()
        result = self._scan(known, options.scope, defer_new=defer, known_mounts=mounts)
        report.files_seen = result.stats.files_seen
        report.files_hashed = result.stats.files_hashed
        report.bytes_hashed = result.stats.bytes_hashed
        report.orphan_sidecars = sorted(result.snapshot.orphan_sidecars.items())
        if self.explain:
            report.explain.extend(_explain_hashing(known, result))
        # symlink loops, broken links, folders that cannot be listed: shown, and kept in the
        # ledger's file table (with no stat) so that `syncd status` shows them too
        report.skipped.extend(sorted(result.skipped.items()))
        if not options.dry_run:
            skipped = [FileRecord(p, None, None, False, why) for p, why in result.skipped.items()]
            # a deferred image has no row yet (its add writes it); an old one, of an earlier
            # problem, is forgotten: the add reads the file anew
            deferred = {p for p, img in result.snapshot.images.items() if img.deferred}
            self.ledger.record_files(
                [*result.changed, *skipped],
                scope=options.scope,
                seen=(result.seen_paths() - deferred) | result.skipped.keys(),
            )
            self._remember_mounts(mounts, result, options.scope)
        return result.snapshot

    def _mount_table(self) -> dict[str, int] | None:
        src = self.config.source
        return mount_table(src.root, src.exclude)

    def _known_mounts(self) -> frozenset[str]:
        raw = self.ledger.get_meta(MOUNTS_KEY)
        return frozenset(json.loads(raw)) if raw else frozenset()

    def _remember_mounts(
        self, known: frozenset[str], result: ScanResult, scope: tuple[str, ...] | None
    ) -> None:
        """Keep the mount points the next scan checks: those in the mount table when the scan
        began or ended, those still missing (unmounted: kept until mounted again, or removed or
        given images), and those the scan could not look at (at or under an unreadable
        folder). Nothing is forgotten when the root could not be judged (a root problem, or no
        image at all: an unmounted root hides the folders of the disks inside it). A scoped
        scan only adds."""
        seen = result.mounts_seen
        snapshot = result.snapshot
        if seen is None or snapshot.root_problem is not None:
            return
        now = set(seen) | set(result.unmounted)
        if scope is None and snapshot.images:
            unscanned = snapshot.unscanned
            now |= {m for m in known if any(_at_or_under(m, u) for u in unscanned)}
        else:
            now |= known
        if now != known:  # set_meta ends the in-step marker: only on a change
            log.info("mount_points_changed", mount_points=sorted(now))
            self.ledger.set_meta(MOUNTS_KEY, json.dumps(sorted(now)))

    def list_remote(
        self, beliefs: Mapping[str, InputRecord], blocked: Mapping[str, str], stop: threading.Event
    ) -> tuple[dict[str, InputRecord], RemoteReport, set[str], str] | None:
        """List the whole remote and fold it into `beliefs`, page by page.

        Returns (folded beliefs, what the listing taught, the `blocked` ids still present, the
        listing's digest), or None when `stop` was set. Each record is reduced to a RemoteInput
        as it arrives, so the raw JSON of the whole app is never held at once.
        """
        present_blocked: set[str] = set()
        digest = quickcheck.ListingDigest()
        stopped = False

        def reduced() -> Iterator[RemoteInput]:
            nonlocal stopped
            for page, body in self.api.list_page_bodies():
                digest.update(body)
                for raw in page:
                    if stop.is_set():
                        stopped = True
                        return
                    record = RemoteRecord.from_json(raw)
                    if record.input_id in blocked:
                        present_blocked.add(record.input_id)
                    yield remote_input(record)

        folded, remote = fold_remote(beliefs, reduced(), source_name=self.config.source.name)
        return None if stopped else (folded, remote, present_blocked, digest.hexdigest())

    # --- status reconciliation -----------------------------------------------------------

    def poll(self, *, deadline: float) -> int:
        """Poll pending and deleting inputs until all settle or `deadline`; returns how many
        are still unsettled. One list request per page of ids, never one per input."""
        with ThreadPoolExecutor(self.config.sync.workers, thread_name_prefix="syncd-poll") as pool:
            return self._poll(deadline, pool)

    def _poll(self, deadline: float, pool: ThreadPoolExecutor) -> int:
        interval = 0.05
        # in ledger order, which is the order the intents were written: the oldest inputs
        # (the likeliest to be done) are asked for first, the last batch added last
        # only id -> state: whole records of 100,000 pending inputs would be the pass's peak
        waiting = self.ledger.input_states((InputState.PENDING, InputState.DELETING))
        self.progress.stage("processing", lambda: f"{len(waiting)} inputs still processing")
        while waiting:
            # one request per page of ids, `workers` of them at a time; each page's answers
            # (only the status of each listed input) are judged as they come and written in
            # bounded transactions: at 100,000 pending inputs, every answer and update of a
            # round held at once was the initial sync's peak memory
            chunks = list(chunk_ids(list(waiting), MAX_IDS_PER_LIST))
            updates: list[tuple[str, InputState, int | None, str | None, str | None]] = []
            gone: list[str] = []
            answers = pool.map(self.api.input_statuses, chunks)
            for chunk, present in zip(chunks, answers, strict=True):
                for input_id in chunk:
                    was, found = waiting[input_id], present.get(input_id)
                    if was is InputState.DELETING:
                        if found is None:
                            gone.append(input_id)
                            del waiting[input_id]
                        continue
                    if found is None:
                        gone.append(input_id)  # lost remotely: the next plan adds it again
                        del waiting[input_id]
                        log.warning(
                            "input_missing_remotely",
                            input_id=input_id,
                            path=self._path_of(input_id),
                        )
                        continue
                    code, description = found
                    state = state_for_code(code)
                    if state is not InputState.PENDING:
                        error = None
                        if state is InputState.FAILED:
                            error = f"{code} {description}".strip()
                            log.warning(
                                "input_failed",
                                input_id=input_id,
                                path=self._path_of(input_id),
                                reason=error,
                            )
                        updates.append((input_id, state, code, description, error))
                        del waiting[input_id]
                if len(updates) + len(gone) >= POLL_WRITE_BATCH:
                    self._record_settled(updates, gone)
                    updates, gone = [], []
            self._record_settled(updates, gone)
            if not waiting or self.clock() >= deadline:
                break
            self.sleep(min(interval, max(0.0, deadline - self.clock())))
            interval = min(interval * 1.5, 2.0)
        return len(waiting)

    def _record_settled(
        self,
        updates: list[tuple[str, InputState, int | None, str | None, str | None]],
        gone: list[str],
    ) -> None:
        """Write what a poll learnt: settled states, and inputs no longer listed."""
        if updates or gone:
            with self.ledger.transaction():
                # only the state columns change: the path, hash and labels stay as written
                self.ledger.set_input_states(updates)
                self.ledger.drop_inputs(gone)

    def _path_of(self, input_id: str) -> str | None:
        """The path of one input, for a log line (the poll holds no paths)."""
        record = self.ledger.input(input_id)
        return None if record is None else record.path

    # --- helpers -------------------------------------------------------------------------

    def _scan(
        self,
        known: Mapping[str, KnownFile],
        scope: tuple[str, ...] | None,
        *,
        defer_new: bool = False,
        known_mounts: frozenset[str] = frozenset(),
    ) -> ScanResult:
        src = self.config.source
        return scan(
            src.root,
            source_name=src.name,
            include=src.include,
            exclude=src.exclude,
            labels_from_dirs=src.labels_from_dirs,
            follow_symlinks=src.follow_symlinks,
            max_file_bytes=self.config.sync.max_file_bytes,
            known=known,
            scope=scope,
            defer_new=defer_new,
            known_mounts=known_mounts,
            mount_table=self._mount_table,
        )

    def _read_deferred(
        self,
        snapshot: LocalSnapshot,
        beliefs: Mapping[str, InputRecord],
        report: SyncReport,
    ) -> LocalSnapshot:
        """Read now the deferred images that an input already holds the id of (a ledger
        rebuilt from the listing, say): the planner compares their bytes with the input's."""
        due = [img for img in snapshot.images.values() if img.deferred and img.input_id in beliefs]
        if not due:
            return snapshot
        read, records, hashed, bytes_hashed = read_deferred(
            self.config.source.root,
            due,
            max_file_bytes=self.config.sync.max_file_bytes,
            racy_from_ns=self._scan_started_ns - RACY_WINDOW_NS,
        )
        report.files_hashed += hashed
        report.bytes_hashed += bytes_hashed
        self.ledger.put_files(records)
        return dataclasses.replace(
            snapshot, images={**snapshot.images, **{img.path: img for img in read}}
        )

    def _executor(self) -> Executor:
        # imported here: a pass that sends nothing (a dry run, the quick check) never needs it
        from syncd.executor import Executor  # noqa: PLC0415

        cfg = self.config
        return Executor(
            api=self.api,
            ledger=self.ledger,
            root=cfg.source.root,
            source_name=cfg.source.name,
            batch_size=cfg.sync.batch_size,
            workers=cfg.sync.workers,
            dataset_id=cfg.remote.dataset_id,
            url_base=cfg.source.url_base,
            max_file_bytes=cfg.sync.max_file_bytes,
        )

    def _delete_guard(
        self,
        ops: Sequence[Operation],
        beliefs: Mapping[str, InputRecord],
        snapshot: LocalSnapshot,
        options: PassOptions,
    ) -> str | None:
        if snapshot.root_problem is not None:
            # nothing under the root can be judged: say so, whatever was planned
            return f"no deletes: {snapshot.root_problem}"
        deletes = [op for op in ops if op.kind is OpKind.DELETE and not op.replace]
        if not deletes:
            return None
        if not snapshot.images and snapshot.scope is None:
            return (
                f"no deletes: the root {self.config.source.root} holds no images, which looks "
                f"like an unmounted or emptied disk; refusing to delete {len(deletes)} inputs"
            )
        if options.allow_mass_delete:
            return None
        if snapshot.scope is None:
            owned = sum(1 for b in beliefs.values() if b.state is not InputState.DELETING)
        else:  # a scoped pass holds only the beliefs it plans with
            owned = self.ledger.owned_count()
        sync = self.config.sync
        fraction = len(deletes) / owned if owned else 1.0
        if len(deletes) > sync.max_delete or fraction > sync.max_delete_fraction:
            return (
                f"stopped before deleting {len(deletes)} of {owned} inputs ({fraction:.0%}): "
                f"over sync.max_delete = {sync.max_delete} or sync.max_delete_fraction = "
                f"{sync.max_delete_fraction}; check the folder, then run "
                "`syncd reconcile --allow-mass-delete` to proceed"
            )
        return None

    def _store_beliefs(
        self, old: Mapping[str, InputRecord], new: Mapping[str, InputRecord]
    ) -> None:
        changed = [rec for key, rec in new.items() if old.get(key) != rec]
        with self.ledger.transaction():
            self.ledger.put_inputs(changed)
            self.ledger.drop_inputs([key for key in old if key not in new])

    def _blocked(self) -> dict[str, str]:
        raw = self.ledger.get_meta(BLOCKED_KEY)
        return json.loads(raw) if raw else {}

    def _set_blocked(self, blocked: Mapping[str, str]) -> None:
        self.ledger.set_meta(BLOCKED_KEY, json.dumps(dict(sorted(blocked.items()))))

    def _report_remote(self, remote: RemoteReport, report: SyncReport) -> None:
        report.foreign = remote.foreign
        report.missing_readded = len(remote.missing)
        report.drifted = remote.drifted
        report.adopted += len(remote.adopted)
        if remote.drifted:
            log.warning(
                "remote_drift",
                count=len(remote.drifted),
                ids=remote.drifted[:20],
                policy="local wins",
            )
        if remote.adopted:
            log.info("inputs_recognised", count=len(remote.adopted))

    def _collect(self, outcome: Outcome, report: SyncReport) -> None:
        report.added = len(outcome.added)
        report.adopted += len(outcome.adopted)
        report.relabeled = len(outcome.relabeled)
        report.deleted = len(outcome.deleted) - report.replaced
        report.failed = list(outcome.failed)
        report.skipped.extend(outcome.skipped)
        report.vanished = list(outcome.vanished)
        report.errors = list(outcome.errors)
        report.unreachable = outcome.unreachable
        report.retry_after = outcome.retry_after
        report.files_hashed += outcome.files_hashed
        report.bytes_hashed += outcome.bytes_hashed
        if outcome.held:  # deferred images the add read and found not to be images
            for path, problem in outcome.held:
                log.warning("file_held", path=path, reason=problem)
            report.held = sorted([*report.held, *outcome.held])
        report.held.extend((f"input {k}", v) for k, v in outcome.blocked.items())

    def _report_states(self, report: SyncReport) -> None:
        counts = self.ledger.counts_by_state()
        report.pending = counts[InputState.PENDING] + counts[InputState.DELETING]
        failed_now = {i for i, _, _ in report.failed}
        for b in self.ledger.inputs((InputState.FAILED,)).values():
            if b.input_id not in failed_now and b.error:
                report.failed.append((b.input_id, b.path, b.error))

    def _api_counts(self) -> tuple[dict[str, int], int]:
        stats = getattr(self.api, "stats", None)
        if stats is None:
            return {}, 0
        return dict(stats.requests), int(stats.bytes_sent)

    def _api_delta(self, before: tuple[dict[str, int], int]) -> tuple[dict[str, int], int]:
        after = self._api_counts()
        delta = {k: v - before[0].get(k, 0) for k, v in after[0].items()}
        return {k: v for k, v in delta.items() if v}, after[1] - before[1]


@dataclasses.dataclass(frozen=True, slots=True)
class _Listed:
    """What a full pass's listing yields."""

    beliefs: dict[str, InputRecord]  # as the ledger held them before the listing
    folded: dict[str, InputRecord]  # the same with the listing folded in
    remote: RemoteReport  # what the listing taught
    present_blocked: set[str]  # the blocked ids the remote still lists
    digest: str  # quickcheck.ListingDigest of the whole listing


class _LinePrefetch:
    """The ledger's stat lines (`Ledger.clean_file_line_list`), which the quick check compares
    with its walk when the tree is not in step. `start` reads them in a thread while the
    walk's child finishes: the query runs inside SQLite with the GIL released, on the core
    the child leaves (~60 ms at 100,000 rows, otherwise spent after the walk). `cancel`
    stops a read nobody will use. Without `start` (no child: the daemon), `result` reads
    them in the calling thread."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._thread: threading.Thread | None = None
        self._lines: list[str] | None = None
        self._error: BaseException | None = None
        self._wanted = False

    def start(self) -> None:
        thread = threading.Thread(target=self._read, name="syncd-quickcheck", daemon=True)
        try:
            thread.start()
        except RuntimeError:
            return  # no thread to be had: `result` reads them in the caller
        self._thread = thread

    def _read(self) -> None:
        try:
            self._lines = self._ledger.clean_file_line_list()
        except BaseException as exc:  # handed to `result`, or dropped by `cancel`
            self._error = exc

    def result(self) -> list[str] | None:
        self._wanted = True
        if self._thread is None:
            return self._ledger.clean_file_line_list()
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._lines

    def cancel(self) -> None:
        """Stop and join the thread, unless its lines were asked for (then it has ended)."""
        if self._thread is None or self._wanted:
            return
        self._ledger.interrupt()
        self._thread.join()
        self._lines = self._error = None


@dataclasses.dataclass(frozen=True, slots=True)
class _QuickCheck:
    walk: quickcheck.Walk
    fingerprint: str
    marker: dict[str, Any] | None  # as found at the start of the pass
    in_step: bool  # the walk matches the ledger's in-step marker
    changed: tuple[str, ...] = ()  # else: the only images that changed (quickcheck.changed_paths)


class _Listing:
    """The remote listing of one pass, run on its own thread while the main thread scans.

    Used as a context manager: leaving the block early (the scan raised) asks the listing to
    stop after the record in hand and waits for the thread, so none outlives the pass.
    """

    def __init__(self, engine: Engine, blocked: Mapping[str, str], *, enabled: bool) -> None:
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._future: Future[Any] | None = None
        if enabled:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="syncd-list")
            self._future = self._pool.submit(self._run, engine, blocked)

    def _run(self, engine: Engine, blocked: Mapping[str, str]) -> _Listed | None:
        beliefs = engine.ledger.inputs()
        listed = engine.list_remote(beliefs, blocked, self._stop)
        return None if listed is None else _Listed(beliefs, *listed)

    def result(self) -> _Listed | None:
        """(beliefs before, beliefs folded, what the listing taught, blocked ids present), or
        None when disabled; re-raises what the listing raised."""
        return None if self._future is None else self._future.result()

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def open_engine(
    config: Config,
    *,
    explain: bool = False,
    rebuild_ledger: bool = False,
    progress: Progress | NoProgress | None = None,
    max_wait: float | None = None,
) -> Engine:
    """Credentials, ledger and API client for one process; the caller closes the ledger.

    `max_wait`: the longest wait the client makes inside a request when the remote asks for
    one (Retry-After); a longer one fails the request with the wait in `retry_after`."""
    key = resolve_api_key(config)  # also registers the key for redaction from logs
    if rebuild_ledger:
        moved = Ledger.move_aside(config.ledger.path)
        if moved is not None:
            log.warning("ledger_moved_aside", path=str(moved))
    check_api_key(key.value, key.source)
    ledger = Ledger.open(config.ledger.path)
    try:
        ledger.check_identity(source_name=config.source.name, remote=remote_identity(config))
    except BaseException:
        ledger.close()
        raise
    api = LazyApi(config, key, max_wait=max_wait)
    return Engine(config, ledger, api, explain=explain, progress=progress)


class LazyApi:
    """The API client for `config`, built on first use.

    A pass that sends nothing (a quick check that finds the tree in step, a `--local` pass
    with nothing to do) then never imports the HTTP stack: ~50 ms of a ~0.5 s start-up.
    """

    def __init__(self, config: Config, key: ApiKey, *, max_wait: float | None = None) -> None:
        self._config = config
        self._key = key
        self._max_wait = max_wait
        self._api: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        with self._lock:
            if self._api is None:
                from syncd.api import api_for  # noqa: PLC0415 - the point of this class

                self._api = api_for(self._config, self._key, max_wait=self._max_wait)
            return self._api

    @property
    def stats(self) -> Any:
        """The client's counters; None while there is no client (no request was sent)."""
        return None if self._api is None else self._api.stats

    def close(self) -> None:
        if self._api is not None:
            self._api.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def remote_identity(config: Config) -> str:
    """Which remote app a ledger belongs to: a ledger is never reused against another."""
    remote = config.remote
    return f"{remote.api_base.rstrip('/')}/{remote.user_id or '-'}/{remote.app_id or '-'}"


#: Cyclic-GC thresholds during a pass (the defaults are (700, 10, 10)).
PASS_GC_THRESHOLD = (50_000, 20, 10)


@contextlib.contextmanager
def _fewer_gc_passes() -> Iterator[None]:
    """Run the cyclic garbage collector less often while a pass runs.

    A pass allocates a few objects per file (records, images, beliefs) that live until it
    ends and form no cycles; with the default thresholds the collector walks that growing
    heap again and again: ~0.6 s of a 2.8 s no-op pass over 100,000 files. It still runs,
    only less often, and the previous thresholds are restored afterwards.
    """
    old = gc.get_threshold()
    gc.set_threshold(*(max(a, b) for a, b in zip(old, PASS_GC_THRESHOLD, strict=True)))
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _drop_labels(ops: list[Operation]) -> None:
    """Replace each operation by its copy without labels, in place: a second list of 100,000
    operations would be held next to the first for a moment."""
    for i, op in enumerate(ops):
        if op.labels is not None or op.remove is not None or op.merge is not None:
            ops[i] = _without_labels(op)


def _without_labels(op: Operation) -> Operation:
    if op.labels is None and op.remove is None and op.merge is None:
        return op
    return Operation(op.kind, op.input_id, op.path, op.reason, op.sha256, replace=op.replace)


def _delete_op(belief: InputRecord) -> Operation:
    return Operation(OpKind.DELETE, belief.input_id, belief.path, "delete not yet confirmed")


class _Sizes(Mapping[str, int]):
    """path -> size of each scanned image, read from the snapshot when asked."""

    def __init__(self, images: Mapping[str, LocalImage]) -> None:
        self._images = images

    def __getitem__(self, path: str) -> int:
        return self._images[path].stat.size

    def __iter__(self) -> Iterator[str]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)


class _Settled(Mapping[str, FileStat]):
    """path -> scanned stat of the images hashed and last changed before the scan's racy
    window (their stat proves their bytes), read from the snapshot when asked."""

    def __init__(self, images: Mapping[str, LocalImage], scan_started_ns: int) -> None:
        self._images = images
        self._racy_from = scan_started_ns - RACY_WINDOW_NS

    def __getitem__(self, path: str) -> FileStat:
        img = self._images[path]
        _, mtime_ns, ctime_ns, _ = img.stat.fields()
        if img.sha256 is None or max(mtime_ns, ctime_ns) >= self._racy_from:
            raise KeyError(path)
        return img.stat

    # (iterating or counting goes through every image: the executor only looks paths up)
    def __iter__(self) -> Iterator[str]:
        return (path for path in self._images if path in self)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _Unread(Mapping[str, FileStat]):
    """path -> scanned stat of the deferred images (not read by the scan), read from the
    snapshot when asked."""

    def __init__(self, images: Mapping[str, LocalImage]) -> None:
        self._images = images

    def __getitem__(self, path: str) -> FileStat:
        img = self._images[path]
        if not img.deferred:
            raise KeyError(path)
        return img.stat

    # (iterating or counting goes through every image: the executor only looks paths up)
    def __iter__(self) -> Iterator[str]:
        return (path for path, img in self._images.items() if img.deferred)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _hold_blocked(snapshot: LocalSnapshot, blocked: Mapping[str, str]) -> LocalSnapshot:
    if not blocked:
        return snapshot
    images = {
        path: dataclasses.replace(img, problem=blocked[img.input_id])
        if img.input_id in blocked and img.problem is None
        else img
        for path, img in snapshot.images.items()
    }
    return dataclasses.replace(snapshot, images=images)


def _explain_hashing(known: Mapping[str, KnownFile], result: ScanResult) -> list[dict[str, str]]:
    out = []
    for rec in result.changed:
        old = known.get(rec.path)
        if rec.stat is None:
            continue
        if old is None:
            why = "not in the ledger: hashed"
        elif not old.trusted:
            why = "modified close to the last scan (racy timestamp): hashed again"
        else:
            fields = [
                name
                for name, now, before in zip(
                    FileStat.NAMES, rec.stat.fields(), old.stat.fields(), strict=True
                )
                if now != before
            ]
            if not fields:
                continue
            why = ", ".join(fields) + " changed: hashed"
        out.append({"path": rec.path, "action": "hash", "why": why})
    return out


def _at_or_under(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it ("" is the root)."""
    return not folder or path == folder or path.startswith(folder + "/")
