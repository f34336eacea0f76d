"""Send planned operations to the remote, bracketing every request with ledger writes.

Intent goes into the ledger before a request (an add is `adding`, a delete `deleting`) and the
outcome after it, so a crash at any moment leaves a ledger that the next pass can finish from:
an `adding` input is simply added again, and a "duplicate ID" answer for it is adopted.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from syncd.batcher import batches
from syncd.envelope import ItemResult, RemoteRecord
from syncd.errors import (
    AuthError,
    RejectedError,
    TransientError,
    WaitRequested,
    os_error_reason,
)
from syncd.model import FileStat, InputRecord, InputState, Labels, Operation
from syncd.planner import marked_labels, state_for_code
from syncd.remote import remote_input
from syncd.scanner import FileRecord, judge_bytes, read_up_to
from syncd.sidecar import display_path

log = structlog.get_logger(__name__)

#: Per-input codes meaning "no such input" in PATCH answers.
MISSING_CODES = frozenset({30102, 11101})


class Api(Protocol):
    def add_inputs(self, inputs: Sequence[dict[str, Any]]) -> list[ItemResult]: ...
    def patch_inputs(self, inputs: Sequence[dict[str, Any]], action: str) -> list[ItemResult]: ...
    def delete_inputs(self, ids: Sequence[str]) -> None: ...
    def get_input(self, input_id: str) -> RemoteRecord | None: ...


class LedgerWriter(Protocol):
    def transaction(self) -> AbstractContextManager[None]: ...
    def put_files(self, records: Iterable[FileRecord]) -> None: ...
    def put_inputs(self, records: Iterable[InputRecord]) -> None: ...
    def drop_inputs(self, ids: Iterable[str]) -> None: ...
    def set_input_states(
        self, updates: Iterable[tuple[str, InputState, int | None, str | None, str | None]]
    ) -> None: ...


@dataclass
class Outcome:
    """What happened to the operations of one pass."""

    added: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    relabeled: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (input id, path, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    blocked: dict[str, str] = field(default_factory=dict)  # input id -> why (foreign owner)
    errors: list[str] = field(default_factory=list)  # request-level failures
    unreachable: bool = False  # one of them was the remote being down or throttling
    retry_after: float | None = None  # the longest wait the remote asked for (Retry-After)
    vanished: list[str] = field(default_factory=list)  # paths whose input a PATCH found gone
    #: (path, problem) of deferred images that the add read and found not to be images
    held: list[tuple[str, str]] = field(default_factory=list)
    bytes_read: int = 0
    files_hashed: int = 0  # deferred images read, hashed and judged by the add
    bytes_hashed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, fn: Callable[[Outcome], None]) -> None:
        with self._lock:
            fn(self)


@dataclass
class Executor:
    api: Api
    ledger: LedgerWriter
    root: Path
    source_name: str
    batch_size: int = 128
    workers: int = 4
    dataset_id: str | None = None
    url_base: str | None = None
    max_file_bytes: int = 20_000_000
    outcome: Outcome = field(default_factory=Outcome)
    #: path -> the scanned stat, for files whose stat proves their bytes (outside the racy
    #: window); set by `add`
    _settled: Mapping[str, FileStat] = field(default_factory=dict, repr=False)
    #: path -> size as scanned; set by `add`
    _sizes: Mapping[str, int] = field(default_factory=dict, repr=False)
    #: path -> the scanned stat of deferred images (not read by the scan); set by `add`
    _unread: Mapping[str, FileStat] = field(default_factory=dict, repr=False)
    #: files changed at or after this time (ns) are too recent for their stat to be trusted
    _racy_from_ns: int = 0

    # --- adds --------------------------------------------------------------------------

    def add(
        self,
        ops: Sequence[Operation],
        sizes: Mapping[str, int],
        settled: Mapping[str, FileStat] | None = None,
        *,
        unread: Mapping[str, FileStat] | None = None,
        racy_from_ns: int = 0,
    ) -> None:
        """Create inputs, `workers` batches at a time; sizes (by path) keep bodies bounded.

        `settled`: path -> stat as scanned, only for files last changed before the scanner's
        racy window. A file read with exactly that stat is sent without hashing it again (the
        evidence the stat cache trusts); any other file is hashed to prove its bytes.

        `unread`: path -> stat as scanned, for the deferred images (operations without a
        sha256): the scan did not read them. Each is read once, here: its bytes must come with
        that stat, are hashed and judged as the scan would have (a file that is not a whole
        image is held, not sent), and its file row is written with the intent.
        `racy_from_ns` decides whether that row's hash may be trusted by later scans.
        """
        self._settled = {} if settled is None else settled  # (a view: no bool(), no len())
        self._sizes = sizes
        self._unread = {} if unread is None else unread
        self._racy_from_ns = racy_from_ns
        groups = batches(ops, size=self.batch_size, weight=lambda op: sizes.get(op.path, 0))
        if self.workers <= 1:
            for group in groups:
                prepared = self._prepare_adds(group)
                if prepared is not None:
                    self._send_adds(*prepared)
            return
        self._pipeline(groups)

    def _pipeline(self, groups: Iterable[list[Operation]]) -> None:
        """Prepare batches on this thread and send them on `workers` threads.

        Reading, encoding and the intent of batch N+1 happen here while up to `workers`
        batches are in flight, so a freed sender starts at once. One thread reads every file:
        several threads doing small reads mostly trade the GIL back and forth (measured: 10,000
        files of 2-20 KB read in 0.2 s by one thread, 1.1 s by four). At most `workers` + 1
        prepared batches are in memory. An exception in a sender (an AuthError) stops the
        preparing; the batches already submitted finish, then it is raised.
        """
        slots = threading.Semaphore(self.workers)
        errors: list[BaseException] = []

        def finished(fut: Future[None]) -> None:
            error = None if fut.cancelled() else fut.exception()
            if error is not None:
                errors.append(error)
            slots.release()

        with ThreadPoolExecutor(self.workers, thread_name_prefix="syncd-send") as pool:
            for group in groups:
                if errors:  # a stopped pass reads no further batch (but the one it was reading)
                    break
                prepared = self._prepare_adds(group)
                if prepared is None:
                    continue
                slots.acquire()
                if errors:
                    break
                pool.submit(self._send_adds, *prepared).add_done_callback(finished)
                del prepared  # the sender holds the encoded batch now
        if errors:
            raise errors[0]

    def _prepare_adds(
        self, ops: list[Operation]
    ) -> tuple[list[dict[str, Any]], list[Operation]] | None:
        """Read and encode the files of one batch and record the intent (`adding`) of those
        that can be sent; None when none can."""
        payload: list[dict[str, Any]] = []
        sendable: list[Operation] = []
        read = _BatchRead()
        for planned in ops:
            prepared = self._image_field(planned, read)
            if prepared is None:
                continue
            image, op = prepared  # a deferred image's add now has its sha256 and marker
            payload.append(self._input_json(op, image))
            sendable.append(op)
        self.outcome.record(read.count)
        if not sendable:
            if read.files:
                self.ledger.put_files(read.files)
            return None
        with self.ledger.transaction():
            # a deferred image's row (its stat and hash) goes with its intent: after a crash
            # the next pass finds both, and adopts the input if the add did land
            if read.files:
                self.ledger.put_files(read.files)
            self.ledger.put_inputs(_intent(op, InputState.ADDING) for op in sendable)
        return payload, sendable

    def _send_adds(self, payload: list[dict[str, Any]], sendable: list[Operation]) -> None:
        """Send one prepared batch and record each input's outcome.

        The outcome changes only the state columns of the intent row written for the same
        operation just before (path, hash and labels are the intent's): an UPDATE of those,
        not an upsert of whole rows, which would encode every input's labels a second time.
        """
        results = self._send_splitting("add", self.api.add_inputs, payload, sendable)
        payload.clear()  # the encoded images are not needed while the outcome is recorded
        updates: list[tuple[str, InputState, int | None, str | None, str | None]] = []
        duplicates: list[Operation] = []
        added: list[str] = []
        for op, result in results:
            if result is None:
                continue  # request-level failure, already noted; the intent stays `adding`
            if result.duplicate:
                duplicates.append(op)
            elif result.ok:
                state = state_for_code(result.code)
                updates.append((op.input_id, state, result.code, result.description, None))
                added.append(op.input_id)
            else:
                reason = _reason(result)
                updates.append(
                    (op.input_id, InputState.FAILED, result.code, result.description, reason)
                )
                self.outcome.record(
                    lambda o, op=op, r=reason: o.failed.append((op.input_id, op.path, r))
                )
                log.warning("add_failed", path=op.path, input_id=op.input_id, reason=reason)
        self.ledger.set_input_states(updates)
        if added:
            self.outcome.record(lambda o: o.added.extend(added))
        for op in duplicates:
            self._adopt(op)

    def _adopt(self, op: Operation) -> None:
        """An add met an existing id: take it over if it is ours, else hold the file."""
        if op.path in self.outcome.vanished:
            # a PATCH just found it gone, yet its id is still taken: a delete made elsewhere is
            # in progress. Adopting the dying input would leave the image without one.
            self.ledger.drop_inputs([op.input_id])
            self._skip(
                op,
                "the remote is still deleting an older input with this id; "
                "it is added again on a later pass",
            )
            return
        found = self.api.get_input(op.input_id)
        if found is None:
            # gone meanwhile (a delete finishing): forget the intent, the next pass adds it
            self.ledger.drop_inputs([op.input_id])
            return
        item = remote_input(found)
        if item.marker is None or item.marker.source != self.source_name:
            why = (
                f"input id {op.input_id} already exists remotely and is not owned by syncd "
                f"source {self.source_name!r}; give {op.path} another id in its sidecar"
            )
            self.ledger.drop_inputs([op.input_id])
            self.outcome.record(lambda o: o.blocked.__setitem__(op.input_id, why))
            log.warning("input_id_taken", path=op.path, input_id=op.input_id)
            return
        self.ledger.put_inputs(
            [
                InputRecord(
                    input_id=op.input_id,
                    path=item.marker.path,
                    state=state_for_code(item.status_code),
                    sha256=item.marker.sha256,
                    labels=item.labels,
                    code=item.status_code,
                )
            ]
        )
        self.outcome.record(lambda o: o.adopted.append(op.input_id))
        log.info("input_adopted", path=op.path, input_id=op.input_id)

    def _image_field(
        self, op: Operation, read: _BatchRead
    ) -> tuple[dict[str, Any], Operation] | None:
        """(the input's image field, the operation to send) for one add, or None when the
        file cannot be sent now (skipped or held, and said so). A deferred image's operation
        comes back with its sha256 and marker, and its file row goes into `read`."""
        if self.url_base:
            url = (
                self.url_base.rstrip("/")
                + "/"
                + urllib.parse.quote(op.path.encode("utf-8", "surrogateescape"))
            )
            return {"url": url, "allow_duplicate_url": True}, op
        unread = self._unread.get(op.path) if op.sha256 is None else None
        try:
            # O_NONBLOCK: a file swapped for a named pipe since the scan must not hang the pass
            flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK
            fd = os.open(os.path.join(self.root, op.path), flags)
        except OSError as exc:
            self._unreadable(op, unread, exc, read)
            return None
        try:
            # the size as scanned (no fstat of its own: the stat after the read, and the hash
            # or the settled stat, prove the bytes); one byte past it (capped) shows growth.
            # read(max_file_bytes + 1) would allocate a 20 MB buffer per file.
            size = self._sizes.get(op.path)
            if size is None:
                size = os.fstat(fd).st_size
            want = min(size, self.max_file_bytes) + 1
            data = os.read(fd, want)
            if len(data) < size:  # a short read need not be the end (FUSE answers in pieces)
                data = read_up_to(fd, want, data)
            after = os.fstat(fd)  # after the read: a write meanwhile moves ctime
        except OSError as exc:
            self._unreadable(op, unread, exc, read)
            return None
        finally:
            os.close(fd)
        if len(data) > min(size, self.max_file_bytes) or not self._same_bytes(
            op, unread, data, after
        ):
            self._skip(op, "changed since it was scanned; it goes out on the next pass")
            return None
        if unread is not None:
            judged = self._judge_unread(op, unread, data, read)
            if judged is None:
                return None
            op = judged
        read.bytes_read += len(data)
        # bytes, not str: the client splices them into the body without another copy or scan
        return {"base64": base64.b64encode(data)}, op

    def _judge_unread(
        self, op: Operation, scanned: FileStat, data: bytes, read: _BatchRead
    ) -> Operation | None:
        """Hash and judge the bytes of a deferred image as the scan would have: the add to
        send (with the sha256 and the marker), or None when they are not a whole image (the
        file is held, its row says why)."""
        sha256, problem = judge_bytes(data)
        read.files_hashed += 1
        read.bytes_hashed += len(data)
        if problem is not None:
            self._hold(op, scanned, problem, sha256, read)
            return None
        _, mtime_ns, ctime_ns, _ = scanned.fields()
        trusted = max(mtime_ns, ctime_ns) < self._racy_from_ns
        read.files.append(FileRecord(op.path, scanned, sha256, trusted, None))
        assert op.labels is not None
        labels = marked_labels(op.labels, self.source_name, op.path, sha256)
        return Operation(op.kind, op.input_id, op.path, op.reason, sha256, labels)

    def _same_bytes(
        self, op: Operation, unread: FileStat | None, data: bytes, after: os.stat_result
    ) -> bool:
        """Whether `data` are the bytes scanned (and hashed) for `op`: proven by an unchanged
        stat for a settled file, by the hash otherwise; for a deferred image (`unread`, its
        stat as scanned), by that stat, the only evidence there is."""
        if op.sha256 is None:
            return (
                unread is not None and after.st_size == len(data) and unread == FileStat.key(after)
            )
        scanned = self._settled.get(op.path)
        if scanned is not None and after.st_size == len(data) and scanned == FileStat.key(after):
            return True
        return hashlib.sha256(data).hexdigest() == op.sha256

    def _unreadable(
        self, op: Operation, unread: FileStat | None, exc: OSError, read: _BatchRead
    ) -> None:
        reason = f"unreadable: {os_error_reason(exc)}"
        if unread is None or isinstance(exc, FileNotFoundError):
            self._skip(op, reason)
            return
        # a deferred image is met here for the first time: held, as the scan holds a file
        # it cannot read (a removed one is simply gone: the next pass does not see it)
        self._hold(op, unread, reason, None, read)

    def _hold(
        self,
        op: Operation,
        scanned: FileStat,
        problem: str,
        sha256: str | None,
        read: _BatchRead,
    ) -> None:
        read.files.append(FileRecord(op.path, scanned, sha256, False, problem))
        read.held.append((op.path, problem))
        log.warning("scan_image_problem", path=display_path(op.path), problem=problem)

    def _skip(self, op: Operation, reason: str) -> None:
        self.outcome.record(lambda o: o.skipped.append((op.path, reason)))
        log.info("add_skipped", path=op.path, reason=reason)

    def _input_json(self, op: Operation, image: dict[str, Any]) -> dict[str, Any]:
        assert op.labels is not None
        item: dict[str, Any] = {
            "id": op.input_id,
            "data": {
                "image": image,
                "concepts": _concepts_json(op.labels),
                "metadata": op.labels.metadata_dict(),
            },
        }
        if self.dataset_id:
            item["dataset_ids"] = [self.dataset_id]
        return item

    # --- patches -----------------------------------------------------------------------

    def patch(self, ops: Sequence[Operation], beliefs: Mapping[str, InputRecord]) -> None:
        """Relabel inputs: every `remove` first, then every `merge`."""
        removes = [op for op in ops if op.remove is not None]
        merges = [op for op in ops if op.merge is not None]
        failed: set[str] = set()
        for action, group in (("remove", removes), ("merge", merges)):
            todo = [op for op in group if op.input_id not in failed]
            chunks = list(batches(todo, size=self.batch_size))
            self._run_parallel(
                lambda chunk, a=action: self._patch_batch(chunk, a, failed, beliefs), chunks
            )
        done = [op for op in ops if op.input_id not in failed]
        self.ledger.put_inputs(
            dataclasses.replace(beliefs[op.input_id], path=op.path, labels=op.labels, error=None)
            for op in done
        )
        self.outcome.record(lambda o: o.relabeled.extend(op.input_id for op in done))

    def _patch_batch(
        self,
        ops: list[Operation],
        action: str,
        failed: set[str],
        beliefs: Mapping[str, InputRecord],
    ) -> None:
        payload = []
        for op in ops:
            body = op.remove if action == "remove" else op.merge
            assert body is not None
            data: dict[str, Any] = {}
            if body.concepts:
                data["concepts"] = (
                    [{"id": cid} for cid, _ in body.concepts]
                    if action == "remove"
                    else _concepts_json(body)
                )
            metadata = body.metadata_dict()
            if metadata:
                data["metadata"] = metadata
            payload.append({"id": op.input_id, "data": data})
        results = self._send_splitting(
            f"patch {action}", lambda items: self.api.patch_inputs(items, action), payload, ops
        )
        for op, result in results:
            if result is not None and result.ok:
                continue
            self.outcome.record(lambda _o, i=op.input_id: failed.add(i))
            if result is None:
                continue
            if result.code in MISSING_CODES:
                # gone, or going: someone deleted it. Its id may stay taken until the delete
                # completes, so wait for that (as after a replacement delete), then add again
                self.ledger.put_inputs(
                    [dataclasses.replace(beliefs[op.input_id], state=InputState.DELETING)]
                )
                self.outcome.record(lambda o, op=op: o.vanished.append(op.path))
                log.warning("patch_target_missing", path=op.path, input_id=op.input_id)
            else:
                reason = _reason(result)
                self.outcome.record(
                    lambda o, op=op, r=reason: o.failed.append((op.input_id, op.path, r))
                )
                log.warning("patch_failed", path=op.path, input_id=op.input_id, reason=reason)

    # --- deletes -----------------------------------------------------------------------

    def delete(self, ops: Sequence[Operation]) -> None:
        """Delete inputs by id; the intent (`deleting`) is written first."""
        chunks = list(batches(ops, size=self.batch_size))
        self._run_parallel(self._delete_batch, chunks)

    def _delete_batch(self, ops: list[Operation]) -> None:
        before = [self.ledger.input(op.input_id) for op in ops]
        self.ledger.put_inputs(_intent(op, InputState.DELETING) for op in ops)
        try:
            self.api.delete_inputs([op.input_id for op in ops])
        except WaitRequested:
            # refused (429/503) or never sent: nothing was deleted, so no delete intent stays
            # behind to be resent later without a plan (the files may be back by then)
            self.ledger.put_inputs(r for r in before if r is not None)
            raise
        except (TransientError, RejectedError) as exc:
            self._request_failed("delete", exc)
            return
        self.outcome.record(lambda o: o.deleted.extend(op.input_id for op in ops))

    # --- plumbing ----------------------------------------------------------------------

    def _send_splitting(
        self,
        what: str,
        send: Callable[[list[dict[str, Any]]], list[ItemResult]],
        payload: list[dict[str, Any]],
        ops: list[Operation],
    ) -> list[tuple[Operation, ItemResult | None]]:
        """Send one batch; when every item failed, split it in halves and send again.

        A server that fails a whole batch for one bad item (a duplicate id, a missing input)
        is survived this way: the culprit ends up alone and the rest goes through.
        Re-sending is safe: patches are idempotent, and an add that did land answers
        "duplicate ID", which is adopted.
        """

        def halves() -> list[tuple[Operation, ItemResult | None]]:
            mid = len(payload) // 2
            return self._send_splitting(what, send, payload[:mid], ops[:mid]) + (
                self._send_splitting(what, send, payload[mid:], ops[mid:])
            )

        try:
            results = send(payload)
        except WaitRequested:
            raise  # the pass stops (as for an AuthError): the caller waits, then resumes
        except (TransientError, RejectedError) as exc:
            if len(payload) > 1 and isinstance(exc, RejectedError):
                return halves()
            self._request_failed(what, exc)
            return [(op, None) for op in ops]
        # "duplicate ID" is a definitive per-input answer (the input exists: adopt it); any
        # other failure of a whole batch may be collateral damage of one bad item
        if (
            len(payload) > 1
            and results
            and not any(r.ok for r in results)
            and not all(r.duplicate for r in results)
        ):
            return halves()
        by_id = {r.input_id: r for r in results}
        return [(op, by_id.get(op.input_id)) for op in ops]

    def _request_failed(self, what: str, exc: Exception) -> None:
        message = f"{what} request failed: {exc}"

        def note(o: Outcome) -> None:
            o.errors.append(message)
            o.unreachable = o.unreachable or isinstance(exc, TransientError)
            asked = exc.retry_after if isinstance(exc, TransientError) else None
            if asked is not None:
                o.retry_after = max(asked, o.retry_after or 0.0)

        self.outcome.record(note)
        log.warning("request_failed", what=what, error=str(exc))

    def _run_parallel(self, fn: Callable[[Any], None], jobs: Sequence[Any]) -> None:
        """Run `fn` over jobs on `workers` threads; an AuthError stops everything at once."""
        if not jobs:
            return
        if self.workers <= 1 or len(jobs) == 1:
            for job in jobs:
                fn(job)
            return
        stop = threading.Event()

        def guarded(job: Any) -> None:
            if stop.is_set():
                return
            try:
                fn(job)
            except (AuthError, WaitRequested):
                stop.set()
                raise

        with ThreadPoolExecutor(self.workers, thread_name_prefix="syncd-send") as pool:
            futures: list[Future[None]] = [pool.submit(guarded, job) for job in jobs]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if exc is not None:
                    stop.set()
                    for other in futures:
                        other.cancel()
                    raise exc
            wait(futures)
            for fut in futures:
                if not fut.cancelled() and fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]


@dataclass
class _BatchRead:
    """What reading one batch's files found, recorded into the Outcome once per batch."""

    files: list[FileRecord] = field(default_factory=list)  # rows of the deferred images read
    held: list[tuple[str, str]] = field(default_factory=list)
    bytes_read: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0

    def count(self, outcome: Outcome) -> None:
        outcome.bytes_read += self.bytes_read
        outcome.files_hashed += self.files_hashed
        outcome.bytes_hashed += self.bytes_hashed
        outcome.held.extend(self.held)


def _concepts_json(labels: Labels) -> list[dict[str, Any]]:
    return [{"id": cid, "value": value} for cid, value in labels.concepts]


def _intent(op: Operation, state: InputState) -> InputRecord:
    return InputRecord(
        input_id=op.input_id, path=op.path, state=state, sha256=op.sha256, labels=op.labels
    )


def _reason(result: ItemResult) -> str:
    text = f"{result.code} {result.description}".strip()
    return f"{text}: {result.details}" if result.details else text
