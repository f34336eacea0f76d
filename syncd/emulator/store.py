"""The emulator's state: inputs, their asynchronous life cycles, all behind one lock.

Nothing runs in the background. An input's processing status and a pending delete are
computed from the injected clock whenever the store is touched:

    created ─ delay/2 ─> 30003 ─ delay/2 ─> 30000, or 30002 when its bytes are no whole image
    30001 (pending)      (in progress)

and an input deleted at t stays readable (and counts as present) until t + delete_delay.
Stored `data` dicts are never mutated in place (a PATCH swaps in a new one), so a view can be
rendered after the lock is released.
"""

from __future__ import annotations

import copy
import hashlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncd.emulator import codes
from syncd.emulator.clock import Clock, rfc3339
from syncd.emulator.patching import PatchError, apply_patch
from syncd.imageformat import sniff_format

DUPLICATE_ID = "Input has a duplicate ID."
DUPLICATE_URL = "Duplicate URL in your application. Set allow_duplicate_url to true to allow it."
INJECTED_FAILURE = "not a decodable image: processing failed (fail_processing_ids fault)"


@dataclass(slots=True)
class StoredInput:
    """One input as the emulator keeps it. `data` excludes the image (kept apart, immutable)."""

    id: str
    seq: int
    created_at: float
    modified_at: float
    data: dict[str, Any]
    image_bytes: bytes | None = None
    image_url: str | None = None
    allow_duplicate_url: bool = False
    dataset_ids: list[str] = field(default_factory=list)
    fail_reason: str | None = None
    deleted_at: float | None = None


@dataclass(frozen=True, slots=True)
class NewInput:
    """A validated input from a POST, before the store assigns it a place."""

    id: str | None
    data: dict[str, Any]
    image_bytes: bytes | None
    image_url: str | None
    allow_duplicate_url: bool = False
    dataset_ids: tuple[str, ...] = ()
    fail_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ItemError:
    """A per-input failure: the item's id (if known), its status code and details."""

    id: str | None
    code: int
    details: str
    data: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class InputView:
    """An input at one instant: what a response renders."""

    record: StoredInput
    code: int
    details: str

    @property
    def deleting(self) -> bool:
        return self.record.deleted_at is not None


Outcome = InputView | ItemError


class Persister(Protocol):
    def save(self, records: Iterable[StoredInput]) -> None: ...
    def delete(self, ids: Iterable[str]) -> None: ...
    def clear(self) -> None: ...


class Store:
    """Thread-safe inputs of the emulator's one app, in creation order."""

    def __init__(
        self,
        clock: Clock,
        *,
        processing_delay: float = 0.5,
        delete_delay: float = 0.5,
        persister: Persister | None = None,
        records: Iterable[StoredInput] = (),
    ) -> None:
        self.clock = clock
        self.processing_delay = processing_delay
        self.delete_delay = delete_delay
        self._persister = persister
        self._lock = threading.Lock()
        self._inputs: dict[str, StoredInput] = {}
        self._urls: dict[str, set[str]] = {}
        self._gone_heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count(1)
        for rec in sorted(records, key=lambda r: r.seq):
            self._insert(rec)
        if self._inputs:
            self._seq = itertools.count(max(r.seq for r in self._inputs.values()) + 1)

    # --- life cycle -------------------------------------------------------------------------

    def status_of(self, rec: StoredInput, now: float) -> tuple[int, str]:
        """The processing status of `rec` at `now`: (code, details)."""
        age = now - rec.created_at
        if age < self.processing_delay / 2:
            return codes.INPUT_PENDING, ""
        if age < self.processing_delay:
            return codes.INPUT_IN_PROGRESS, ""
        if rec.fail_reason:
            return codes.INPUT_FAILED, rec.fail_reason
        return codes.INPUT_SUCCESS, ""

    def _view(self, rec: StoredInput, now: float) -> InputView:
        code, details = self.status_of(rec, now)
        return InputView(rec, code, details)

    def _now(self) -> float:
        """Current time, after dropping every input whose delete has completed. Lock held."""
        now = self.clock.now()
        gone: list[str] = []
        while self._gone_heap and self._gone_heap[0][0] <= now:
            _, seq, input_id = heapq.heappop(self._gone_heap)
            rec = self._inputs.get(input_id)
            if rec is not None and rec.seq == seq and rec.deleted_at is not None:
                self._remove(rec)
                gone.append(input_id)
        if gone and self._persister is not None:
            self._persister.delete(gone)
        return now

    def _insert(self, rec: StoredInput) -> None:
        self._inputs[rec.id] = rec
        if rec.image_url:
            self._urls.setdefault(rec.image_url, set()).add(rec.id)
        if rec.deleted_at is not None:
            due = rec.deleted_at + self.delete_delay
            heapq.heappush(self._gone_heap, (due, rec.seq, rec.id))

    def _remove(self, rec: StoredInput) -> None:
        del self._inputs[rec.id]
        if rec.image_url:
            owners = self._urls.get(rec.image_url, set())
            owners.discard(rec.id)
            if not owners:
                self._urls.pop(rec.image_url, None)

    # --- writes -----------------------------------------------------------------------------

    def add(
        self,
        items: list[NewInput | ItemError],
        *,
        suffix_conflicts: bool = False,
        duplicate_fails_batch: bool = False,
        fail_ids: frozenset[str] = frozenset(),
    ) -> list[Outcome]:
        """Add a POST batch. Duplicates (an id present, being deleted, or earlier in the batch)
        become per-item errors and the rest goes in, or nothing does under
        `duplicate_fails_batch`. Returns one outcome per item, in order."""
        with self._lock:
            now = self._now()
            plan = self._plan_ids(items, suffix_conflicts)
            if duplicate_fails_batch and any(
                isinstance(p, ItemError) and p.details == DUPLICATE_ID for p in plan
            ):
                return [_batch_failed(p) for p in plan]
            outcomes: list[Outcome] = []
            created: list[StoredInput] = []
            for item in plan:
                if isinstance(item, ItemError):
                    outcomes.append(item)
                    continue
                input_id, new = item
                reason = new.fail_reason or (INJECTED_FAILURE if input_id in fail_ids else None)
                rec = StoredInput(
                    id=input_id,
                    seq=next(self._seq),
                    created_at=now,
                    modified_at=now,
                    data=new.data,
                    image_bytes=new.image_bytes,
                    image_url=new.image_url,
                    allow_duplicate_url=new.allow_duplicate_url,
                    dataset_ids=list(new.dataset_ids),
                    fail_reason=reason,
                )
                self._insert(rec)
                created.append(rec)
                outcomes.append(self._view(rec, now))
            if created and self._persister is not None:
                self._persister.save(created)
            return outcomes

    def _plan_ids(
        self, items: list[NewInput | ItemError], suffix_conflicts: bool
    ) -> list[ItemError | tuple[str, NewInput]]:
        seen: set[str] = set()
        urls: set[str] = set()
        plan: list[ItemError | tuple[str, NewInput]] = []
        for item in items:
            if isinstance(item, ItemError):
                plan.append(item)
                continue
            input_id = item.id or _new_id(self._inputs)
            if item.id is not None and input_id in seen:
                plan.append(ItemError(input_id, codes.INPUT_INVALID_ARGUMENT, DUPLICATE_ID))
                continue
            seen.add(input_id)
            if input_id in self._inputs:
                renamed = _suffixed(input_id, self._inputs, seen) if suffix_conflicts else None
                if renamed is None:
                    plan.append(ItemError(input_id, codes.INPUT_INVALID_ARGUMENT, DUPLICATE_ID))
                    continue
                input_id = renamed
                seen.add(input_id)
            url = item.image_url
            if url and not item.allow_duplicate_url and (url in self._urls or url in urls):
                plan.append(ItemError(input_id, codes.INPUT_DUPLICATE, DUPLICATE_URL))
                continue
            if url:
                urls.add(url)
            plan.append((input_id, item))
        return plan

    def patch(
        self, items: list[tuple[str, dict[str, Any]] | ItemError], action: str
    ) -> list[Outcome]:
        """Apply `action` with each item's data patch; unknown or deleting ids fail per item."""
        with self._lock:
            now = self._now()
            outcomes: list[Outcome] = []
            changed: list[StoredInput] = []
            for item in items:
                if isinstance(item, ItemError):
                    outcomes.append(item)
                    continue
                input_id, patch = item
                rec = self._inputs.get(input_id)
                if rec is None or rec.deleted_at is not None:
                    why = "Input does not exist" if rec is None else "Input is being deleted"
                    outcomes.append(ItemError(input_id, codes.INPUT_DOES_NOT_EXIST, why))
                    continue
                try:
                    rec.data = apply_patch(rec.data, patch, action)
                except PatchError as exc:
                    outcomes.append(ItemError(input_id, codes.INPUT_INVALID_ARGUMENT, str(exc)))
                    continue
                rec.modified_at = now
                changed.append(rec)
                outcomes.append(self._view(rec, now))
            if changed and self._persister is not None:
                self._persister.save(changed)
            return outcomes

    def delete(self, ids: Iterable[str] | None) -> int:
        """Start deleting these ids (None: every input). Unknown ids are ignored; returns how
        many deletes started."""
        with self._lock:
            now = self._now()
            targets = self._inputs.values() if ids is None else map(self._inputs.get, ids)
            started: list[StoredInput] = []
            for rec in list(targets):
                if rec is None or rec.deleted_at is not None:
                    continue
                rec.deleted_at = now
                heapq.heappush(self._gone_heap, (now + self.delete_delay, rec.seq, rec.id))
                started.append(rec)
            if started and self._persister is not None:
                self._persister.save(started)
            self._now()  # a zero delete_delay takes effect at once
            return len(started)

    def clear(self) -> None:
        """Forget every input (and the persisted state)."""
        with self._lock:
            self._inputs.clear()
            self._urls.clear()
            self._gone_heap.clear()
            if self._persister is not None:
                self._persister.clear()

    # --- reads ------------------------------------------------------------------------------

    def get(self, input_id: str) -> InputView | None:
        with self._lock:
            now = self._now()
            rec = self._inputs.get(input_id)
            return None if rec is None else self._view(rec, now)

    def list_inputs(
        self,
        *,
        ids: list[str] | None = None,
        status_code: int | None = None,
        page: int = 1,
        per_page: int = 128,
        where: Callable[[InputView], bool] | None = None,
    ) -> list[InputView]:
        """One page of inputs in creation order, optionally only these ids / this status."""
        with self._lock:
            now = self._now()
            if ids is not None:
                found = {i: self._inputs[i] for i in ids if i in self._inputs}
                records: Iterable[StoredInput] = sorted(found.values(), key=lambda r: r.seq)
            else:
                records = self._inputs.values()
            start = (page - 1) * per_page
            if status_code is None and where is None:
                page_records = itertools.islice(records, start, start + per_page)
                return [self._view(r, now) for r in page_records]
            views = (self._view(r, now) for r in records)
            matching = (
                v
                for v in views
                if (status_code is None or v.code == status_code) and (where is None or where(v))
            )
            return list(itertools.islice(matching, start, start + per_page))

    def count_where(self, where: Callable[[InputView], bool]) -> int:
        with self._lock:
            now = self._now()
            return sum(1 for r in self._inputs.values() if where(self._view(r, now)))

    def counts(self) -> dict[str, int]:
        """The eight InputCount fields; reindex counts are always 0."""
        by_code = {
            codes.INPUT_SUCCESS: 0,
            codes.INPUT_PENDING: 0,
            codes.INPUT_FAILED: 0,
            codes.INPUT_IN_PROGRESS: 0,
        }
        with self._lock:
            now = self._now()
            for rec in self._inputs.values():
                by_code[self.status_of(rec, now)[0]] += 1
        return {
            "processed": by_code[codes.INPUT_SUCCESS],
            "to_process": by_code[codes.INPUT_PENDING],
            "errors": by_code[codes.INPUT_FAILED],
            "processing": by_code[codes.INPUT_IN_PROGRESS],
            "reindexed": 0,
            "to_reindex": 0,
            "reindex_errors": 0,
            "reindexing": 0,
        }

    def image(self, input_id: str) -> bytes | None:
        with self._lock:
            self._now()
            rec = self._inputs.get(input_id)
            return None if rec is None else rec.image_bytes

    def snapshot(self) -> list[dict[str, Any]]:
        """Every input with its full state, for tests and benchmarks (GET /_emulator/store)."""
        with self._lock:
            now = self._now()
            return [_snapshot_entry(self._view(r, now)) for r in self._inputs.values()]

    def __len__(self) -> int:
        with self._lock:
            self._now()
            return len(self._inputs)


def _snapshot_entry(view: InputView) -> dict[str, Any]:
    rec = view.record
    image: dict[str, Any] = {"url": rec.image_url, "allow_duplicate_url": rec.allow_duplicate_url}
    if rec.image_bytes is not None:
        image["size"] = len(rec.image_bytes)
        image["sha256"] = hashlib.sha256(rec.image_bytes).hexdigest()
        image["format"] = sniff_format(rec.image_bytes[:32])
    status: dict[str, Any] = {"code": view.code, "description": codes.DESCRIPTIONS[view.code]}
    if view.details:
        status["details"] = view.details
    return {
        "id": rec.id,
        "seq": rec.seq,
        "created_at": rfc3339(rec.created_at),
        "modified_at": rfc3339(rec.modified_at),
        "status": status,
        "deleting": rec.deleted_at is not None,
        "deleted_at": None if rec.deleted_at is None else rfc3339(rec.deleted_at),
        "data": copy.deepcopy(rec.data),
        "image": image,
        "dataset_ids": list(rec.dataset_ids),
        "fail_reason": rec.fail_reason,
    }


def _batch_failed(item: ItemError | tuple[str, NewInput]) -> ItemError:
    if isinstance(item, ItemError):
        return item
    input_id, new = item
    why = "Not added: another input in this batch has a duplicate ID (duplicate_fails_batch)"
    return ItemError(input_id, codes.FAILURE, why, new.data)


def _new_id(taken: dict[str, StoredInput]) -> str:
    while True:
        candidate = os.urandom(16).hex()
        if candidate not in taken:
            return candidate


def _suffixed(input_id: str, taken: dict[str, StoredInput], seen: set[str]) -> str | None:
    """SUFFIX conflict resolution: `-1` ... `-9`, then a random suffix."""
    for n in range(1, 10):
        candidate = f"{input_id}-{n}"
        if candidate not in taken and candidate not in seen:
            return candidate
    for _ in range(100):
        candidate = f"{input_id}-{os.urandom(4).hex()}"
        if candidate not in taken and candidate not in seen:
            return candidate
    return None
