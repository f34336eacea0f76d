"""The pure core: from what is on disk and what the remote holds, the operations to send.

`plan()` reads no file, clock or network. It joins the local snapshot and the ledger's beliefs
on the input id and, for each id, decides one operation at most:

    local only                         -> add
    both, bytes differ                 -> delete (replace); the add follows once the delete is seen
    both, labels or metadata differ    -> patch (remove what is gone, then merge what is new)
    remote only, file gone             -> delete
    held (problem) or unjudgeable      -> nothing

`fold_remote()` brings a full remote listing into those beliefs first, so that drift made in
the web UI, inputs lost remotely and a lost ledger are all planned by the same rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.model import (
    MARKER_KEY,
    InputRecord,
    InputState,
    Labels,
    LocalImage,
    LocalSnapshot,
    Marker,
    MarkerLabels,
    Operation,
    OpKind,
    RemoteInput,
    canonical_json,
    marker_path,
)

# Per-input status codes, from the API facts (section 3.1).
INPUT_SUCCESS = 30000
INPUT_PENDING = 30001
INPUT_FAILED = 30002
INPUT_IN_PROGRESS = 30003


def state_for_code(code: int | None) -> InputState:
    """Map a remote per-input status code to the ledger's state."""
    if code == INPUT_SUCCESS:
        return InputState.PROCESSED
    if code in (INPUT_PENDING, INPUT_IN_PROGRESS, None):
        return InputState.PENDING
    return InputState.FAILED


def desired_labels(image: LocalImage, source_name: str) -> Labels:
    """The labels an input should carry: the sidecar's, plus syncd's ownership marker."""
    assert image.labels is not None and image.sha256 is not None
    return marked_labels(image.labels, source_name, image.path, image.sha256)


def marked_labels(labels: Labels, source_name: str, path: str, sha256: str) -> Labels:
    """`labels` (a sidecar's) plus syncd's ownership marker for the file at `path`."""
    if labels.metadata == "{}":
        # the common case, without a parse: the marker is the only key
        return MarkerLabels(labels.concepts, source_name, path, sha256)
    marker = Marker(source_name, marker_path(path), sha256).as_dict()
    metadata = labels.metadata_dict()
    metadata[MARKER_KEY] = marker
    return Labels(labels.concepts, canonical_json(metadata))


def plan(
    local: LocalSnapshot, beliefs: Mapping[str, InputRecord], *, source_name: str
) -> list[Operation]:
    """Operations that bring the remote in step with `local`, sorted by (kind, input id)."""
    wanted: dict[str, LocalImage] = {}
    protected: set[str] = set()
    for image in local.images.values():
        readable = image.sha256 is not None or image.deferred
        if image.problem is None and readable and image.labels is not None:
            wanted[image.input_id] = image
        else:
            protected.add(image.input_id)
    held_paths = {img.path for img in local.images.values() if img.problem is not None}

    ops: list[Operation] = []
    # each id yields at most one operation and the list is sorted below, so the ids need no
    # sorting here (at 100,000 files, sorting the union of both key sets costs ~0.1 s)
    for input_id, image in wanted.items():
        op = _plan_present(image, beliefs.get(input_id), source_name)
        if op is not None:
            ops.append(op)
    for input_id, belief in beliefs.items():
        if input_id in wanted or input_id in protected:
            continue
        op = _plan_absent(belief, local, held_paths)
        if op is not None:
            ops.append(op)
    order = {OpKind.ADD: 0, OpKind.PATCH: 1, OpKind.DELETE: 2}
    ops.sort(key=lambda o: (order[o.kind], o.input_id))
    return ops


def _plan_present(
    image: LocalImage, belief: InputRecord | None, source_name: str
) -> Operation | None:
    if image.sha256 is None:
        # deferred (not read yet): an add carries the sidecar's labels, and the executor adds
        # the marker once it has read and hashed the file. With a belief there are bytes to
        # compare, which it has not got: nothing is planned (the engine reads such images
        # before planning, so this is only a guard).
        if belief is not None or image.labels is None:
            return None
        return Operation(OpKind.ADD, image.input_id, image.path, "new file", labels=image.labels)
    want = desired_labels(image, source_name)
    if belief is None:
        return Operation(
            OpKind.ADD, image.input_id, image.path, "new file", sha256=image.sha256, labels=want
        )
    if belief.state is InputState.DELETING:
        return None  # the add follows once the remote confirms the delete
    if belief.state is InputState.ADDING:
        return Operation(
            OpKind.ADD,
            image.input_id,
            image.path,
            "an earlier add was interrupted before its answer was recorded",
            sha256=image.sha256,
            labels=want,
        )
    if belief.sha256 != image.sha256:
        return Operation(
            OpKind.DELETE,
            image.input_id,
            image.path,
            f"content changed (sha256 {_short(belief.sha256)} -> {_short(image.sha256)}); "
            "delete, then add again",
            replace=True,
        )
    if belief.state is InputState.FAILED:
        return None  # permanent for these bytes; a new version of the file retries
    if belief.labels == want:
        return None  # the no-op case, decided without building the diff
    remove, merge = diff_labels(belief.labels or Labels(), want)
    if remove is None and merge is None:
        return None
    return Operation(
        OpKind.PATCH,
        image.input_id,
        image.path,
        _describe_patch(remove, merge),
        labels=want,
        remove=remove,
        merge=merge,
    )


def _plan_absent(
    belief: InputRecord, local: LocalSnapshot, held_paths: set[str]
) -> Operation | None:
    if belief.state is InputState.DELETING:
        return None
    if belief.path in held_paths:
        return None  # the file is there but cannot be read or labelled now: leave it alone
    if belief.path in local.images:
        reason = f"{belief.path} now maps to input {local.images[belief.path].input_id}"
    elif local.covers(belief.path):
        reason = "file removed"
    else:
        return None  # outside what this scan could see: absence proves nothing
    return Operation(OpKind.DELETE, belief.input_id, belief.path, reason)


def _short(sha: str | None) -> str:
    return (sha or "none")[:12]


def _describe_patch(remove: Labels | None, merge: Labels | None) -> str:
    parts = []
    if merge is not None and merge.concepts:
        parts.append("set concepts " + ", ".join(f"{c}={v:g}" for c, v in merge.concepts))
    if remove is not None and remove.concepts:
        parts.append("drop concepts " + ", ".join(c for c, _ in remove.concepts))
    keys = sorted(
        set(json.loads(remove.metadata) if remove else {})
        | set(json.loads(merge.metadata) if merge else {})
    )
    if keys:
        parts.append("metadata keys " + ", ".join(keys))
    return "labels changed: " + "; ".join(parts)


# --- label diffs ------------------------------------------------------------------------------


def diff_labels(remote: Labels, want: Labels) -> tuple[Labels | None, Labels | None]:
    """The PATCH `remove` then `merge` bodies that turn `remote` into exactly `want`.

    Concepts: dropped ids are removed, new or flipped ones merged. Metadata follows the API's
    deep-merge rules: a dropped key is removed (`true` marks it), nested objects recurse, a
    scalar is simply merged over, and a changed list or a change of type is removed first and
    merged again (merge would append to a list instead of replacing it).
    """
    have = dict(remote.concepts)
    target = dict(want.concepts)
    remove_concepts = tuple((cid, have[cid]) for cid in sorted(have.keys() - target.keys()))
    merge_concepts = tuple((cid, value) for cid, value in want.concepts if have.get(cid) != value)
    if remote.metadata == want.metadata:
        remove_meta: dict[str, Any] = {}
        merge_meta: dict[str, Any] = {}
    else:
        remove_meta, merge_meta = diff_metadata(remote.metadata_dict(), want.metadata_dict())
    remove = (
        Labels(remove_concepts, canonical_json(remove_meta))
        if remove_concepts or remove_meta
        else None
    )
    merge = (
        Labels(merge_concepts, canonical_json(merge_meta)) if merge_concepts or merge_meta else None
    )
    return remove, merge


def diff_metadata(
    remote: Mapping[str, Any], want: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(remove patch, merge patch) for one metadata object; see `diff_labels`."""
    remove: dict[str, Any] = {key: True for key in remote if key not in want}
    merge: dict[str, Any] = {}
    for key, value in want.items():
        if key not in remote:
            merge[key] = value
            continue
        old = remote[key]
        if canonical_json(old) == canonical_json(value):
            continue
        if isinstance(old, dict) and isinstance(value, dict):
            sub_remove, sub_merge = diff_metadata(old, value)
            if sub_remove:
                remove[key] = sub_remove
            if sub_merge:
                merge[key] = sub_merge
        elif _is_scalar(old) and _is_scalar(value):
            merge[key] = value
        else:
            remove[key] = True
            merge[key] = value
    return remove, merge


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


# --- folding a remote listing into the beliefs ------------------------------------------------


@dataclass
class RemoteReport:
    """What a remote listing taught: for the summary and `--explain`."""

    owned: int = 0
    foreign: int = 0
    adopted: list[str] = field(default_factory=list)  # owned remotely, unknown to the ledger
    missing: list[str] = field(default_factory=list)  # believed present, gone remotely
    drifted: list[str] = field(default_factory=list)  # labels differ from what we last pushed
    deleted: list[str] = field(default_factory=list)  # deletes the remote has completed


def fold_remote(
    beliefs: Mapping[str, InputRecord], remote: Iterable[RemoteInput], *, source_name: str
) -> tuple[dict[str, InputRecord], RemoteReport]:
    """Beliefs corrected by a complete listing of the remote: the remote is the truth.

    Inputs without this source's marker are foreign: counted, never believed, never touched.
    """
    report = RemoteReport()
    # every owned input listed ends up in `folded`: its keys are the ids seen (no second set
    # of 100,000 ids next to it)
    folded: dict[str, InputRecord] = {}
    for item in remote:
        marker = item.marker
        if marker is None or marker.source != source_name:
            report.foreign += 1
            continue
        report.owned += 1
        old = beliefs.get(item.input_id)
        if old is not None and old.state is InputState.DELETING:
            folded[item.input_id] = old  # asynchronous delete still in progress
            continue
        if old is None:
            report.adopted.append(item.input_id)
        elif old.labels is not None and old.labels != item.labels:
            report.drifted.append(item.input_id)
        state = state_for_code(item.status_code)
        keep_error = old is not None and old.state is state and old.sha256 == marker.sha256
        record = InputRecord(
            input_id=item.input_id,
            # the ledger's spelling keeps non-UTF-8 bytes that the marker had to escape
            path=old.path
            if old is not None and marker_path(old.path) == marker.path
            else marker.path,
            state=state,
            sha256=marker.sha256,
            labels=item.labels,
            code=item.status_code,
            description=old.description if keep_error and old else None,
            error=old.error if keep_error and old else None,
        )
        # an unchanged belief is kept as the very same object, keyed by its own id str: the
        # listing's copies are dropped, so a pass does not hold two equal records per input
        kept = old if old is not None and record == old else record
        folded[kept.input_id] = kept
    for input_id, old in beliefs.items():
        if input_id in folded:
            continue
        if old.state is InputState.DELETING:
            report.deleted.append(input_id)
        elif old.state is InputState.FAILED:
            folded[input_id] = old  # a rejected add never existed remotely: do not retry it
        elif old.state is not InputState.ADDING:
            report.missing.append(input_id)
        # an interrupted add that never landed is simply not believed any more
    return folded, report
