"""The pure planner: its rule table, PATCH diffs against a model of the remote, and properties.

The "remote model" below is a small reference implementation of the PATCH semantics in
/work/shared/clarifai-api.md section 1.3; every patch the planner emits is run through it and
must leave the input carrying exactly the local labels.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.model import (
    MARKER_KEY,
    FileStat,
    InputRecord,
    InputState,
    Labels,
    LocalImage,
    LocalSnapshot,
    Marker,
    Operation,
    OpKind,
    RemoteInput,
    canonical_json,
    derive_input_id,
)
from syncd.planner import diff_labels, fold_remote, plan

SOURCE = "ds"
STAT = FileStat(size=10, mtime_ns=1, ctime_ns=1, inode=1)
KIND_ORDER = {OpKind.ADD: 0, OpKind.PATCH: 1, OpKind.DELETE: 2}

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- a model of the remote's PATCH semantics (API facts, section 1.3) -----------------------


class UndefinedPatch(AssertionError):
    """The patch relies on behaviour the API facts do not define."""


_MISSING: Any = object()


def _merge_value(old: Any, new: Any) -> Any:
    """merge: objects recurse, `{}`/`[]` replace, id-less list items append, scalars replace."""
    if isinstance(new, dict):
        if not new:
            return {}
        out = copy.deepcopy(old) if isinstance(old, dict) else {}
        for key, value in new.items():
            if value is not None:
                out[key] = _merge_value(out.get(key, _MISSING), value)
        return out
    if isinstance(new, list):
        if not new or not isinstance(old, list):
            return copy.deepcopy(new)
        out_list = copy.deepcopy(old)
        for element in new:
            if isinstance(element, dict) and "id" in element:
                for i, existing in enumerate(out_list):
                    if isinstance(existing, dict) and existing.get("id") == element["id"]:
                        out_list[i] = _merge_value(existing, element)
                        break
                else:
                    out_list.append(copy.deepcopy(element))
            else:
                out_list.append(copy.deepcopy(element))
        return out_list
    return new


def apply_merge(metadata: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a `merge` PATCH leaves behind."""
    return _merge_value(dict(metadata), dict(patch)) if patch else dict(metadata)


def apply_remove(metadata: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata a `remove` PATCH leaves behind: `true` deletes, objects recurse."""
    out = copy.deepcopy(dict(metadata))
    for key, value in patch.items():
        if key not in out or value is None:
            continue
        if value is True:
            del out[key]
        elif isinstance(value, dict):
            if not value:
                continue  # `{}` does nothing
            if not isinstance(out[key], dict):
                raise UndefinedPatch(f"remove recurses into non-object {key!r}")
            out[key] = apply_remove(out[key], value)
        elif isinstance(value, list):
            raise UndefinedPatch(f"remove with a list under {key!r}")
        else:
            out[key] = value  # any other scalar (false included) overwrites
    return out


def apply_patch(labels: Labels, remove: Labels | None, merge: Labels | None) -> Labels:
    """What an input carries after PATCH `remove` and then PATCH `merge`."""
    concepts = dict(labels.concepts)
    metadata = labels.metadata_dict()
    if remove is not None:
        for cid, _ in remove.concepts:  # the value is irrelevant to remove
            concepts.pop(cid, None)
        metadata = apply_remove(metadata, remove.metadata_dict())
    if merge is not None:
        concepts.update(merge.concepts)  # new ids added, existing ids get the new value
        metadata = apply_merge(metadata, merge.metadata_dict())
    return Labels(tuple(sorted(concepts.items())), canonical_json(metadata))


def test_model_merge_matches_documented_rules() -> None:
    """The remote model's merge keeps absent keys, appends id-less lists, merges id lists."""
    before = {"keep": 1.0, "obj": {"a": 1.0, "b": 2.0}, "tags": ["x"], "s": "old", "o": {"q": 1}}
    body = {"obj": {"b": 3.0}, "tags": ["y"], "s": {"n": 1.0}, "o": {}, "null": None}
    assert apply_merge(before, body) == {
        "keep": 1.0,
        "obj": {"a": 1.0, "b": 3.0},
        "tags": ["x", "y"],
        "s": {"n": 1.0},
        "o": {},
    }
    assert apply_merge({"l": [1.0]}, {"l": []}) == {"l": []}
    ided = {"l": [{"id": "a", "v": 1.0}]}
    assert apply_merge(ided, {"l": [{"id": "a", "w": 2.0}, {"id": "b"}]}) == {
        "l": [{"id": "a", "v": 1.0, "w": 2.0}, {"id": "b"}]
    }


def test_model_remove_matches_documented_rules() -> None:
    """The remote model's remove deletes `true` keys, overwrites other scalars, keeps `{}`."""
    before = {"a": 1.0, "b": 2.0, "n": {"x": 1.0, "y": 2.0}, "m": {"z": 1.0}, "e": {"k": 1.0}}
    body = {"a": True, "b": False, "n": {"x": True}, "m": {"z": True}, "e": {}, "gone": True}
    assert apply_remove(before, body) == {
        "b": False,
        "n": {"y": 2.0},
        "m": {},
        "e": {"k": 1.0},
    }
    flipped = apply_patch(
        Labels((("cat", 1.0), ("dog", 1.0))),
        Labels((("dog", 0.0),)),
        Labels((("cat", 0.0), ("owl", 1.0))),
    )
    assert flipped.concepts == (("cat", 0.0), ("owl", 1.0))


# --- builders ---------------------------------------------------------------------------------


def did(path: str) -> str:
    return derive_input_id(SOURCE, path)


def expected_labels(image: LocalImage) -> Labels:
    """Sidecar concepts and metadata plus the ownership marker, computed independently."""
    assert image.labels is not None and image.sha256 is not None
    metadata = image.labels.metadata_dict()
    metadata[MARKER_KEY] = {"source": SOURCE, "path": image.path, "sha256": image.sha256}
    return Labels(image.labels.concepts, canonical_json(metadata))


CAT: dict[str, float] = {"cat": 1.0}


def image(
    path: str,
    sha: str | None = "s1",
    concepts: Mapping[str, float] = CAT,
    meta: Mapping[str, Any] | None = None,
    *,
    input_id: str | None = None,
    problem: str | None = None,
) -> LocalImage:
    labels = Labels.build(concepts, meta or {}) if sha is not None else None
    return LocalImage(
        path=path,
        stat=STAT,
        input_id=input_id or did(path),
        sha256=sha,
        labels=labels,
        problem=problem,
    )


def belief(
    path: str,
    sha: str = "s1",
    concepts: Mapping[str, float] = CAT,
    meta: Mapping[str, Any] | None = None,
    *,
    input_id: str | None = None,
    state: InputState = InputState.PROCESSED,
) -> InputRecord:
    """A belief as a completed sync leaves it: labels include the marker for (path, sha)."""
    labels = Labels.build(
        concepts, {**(meta or {}), MARKER_KEY: Marker(SOURCE, path, sha).as_dict()}
    )
    return InputRecord(
        input_id=input_id or did(path), path=path, state=state, sha256=sha, labels=labels
    )


def snapshot(
    *images: LocalImage,
    root_problem: str | None = None,
    scope: tuple[str, ...] | None = None,
    unscanned: tuple[str, ...] = (),
) -> LocalSnapshot:
    return LocalSnapshot(
        images={img.path: img for img in images},
        root_problem=root_problem,
        scope=scope,
        unscanned=unscanned,
    )


def by_id(*records: InputRecord) -> dict[str, InputRecord]:
    return {r.input_id: r for r in records}


# --- the rule table -----------------------------------------------------------------------------

ANY: Any = "any"


@dataclass(frozen=True)
class Want:
    """One expected operation; `remove`/`merge` are None, ANY, or (concepts, metadata)."""

    kind: OpKind
    input_id: str
    replace: bool = False
    remove: Any = ANY
    merge: Any = ANY


def add(input_id: str) -> Want:
    return Want(OpKind.ADD, input_id)


def patch(input_id: str, *, remove: Any = ANY, merge: Any = ANY) -> Want:
    return Want(OpKind.PATCH, input_id, remove=remove, merge=merge)


def delete(input_id: str) -> Want:
    return Want(OpKind.DELETE, input_id)


def replace(input_id: str) -> Want:
    return Want(OpKind.DELETE, input_id, replace=True)


@dataclass(frozen=True)
class Case:
    name: str
    local: LocalSnapshot
    beliefs: dict[str, InputRecord]
    want: tuple[Want, ...]


def case(name: str, local: LocalSnapshot, beliefs: list[InputRecord], *want: Want) -> Any:
    return pytest.param(Case(name, local, by_id(*beliefs), want), id=name)


X = "explicit-x"
Y = "explicit-y"
NESTED = {"cam": {"iso": 100, "f": 2.8}}

CASES = [
    case("new image is added", snapshot(image("a/1.jpg")), [], add(did("a/1.jpg"))),
    case("unchanged image needs nothing", snapshot(image("a/1.jpg")), [belief("a/1.jpg")]),
    case(
        "concept added is merged",
        snapshot(image("a/1.jpg", concepts={"cat": 1, "dog": 1})),
        [belief("a/1.jpg")],
        patch(did("a/1.jpg"), remove=None, merge=({"dog": 1.0}, {})),
    ),
    case(
        "concept flip 1 to 0 is merged",
        snapshot(image("a/1.jpg", concepts={"cat": 0})),
        [belief("a/1.jpg")],
        patch(did("a/1.jpg"), remove=None, merge=({"cat": 0.0}, {})),
    ),
    case(
        "concept flip 0 to 1 is merged",
        snapshot(image("a/1.jpg", concepts={"cat": 1})),
        [belief("a/1.jpg", concepts={"cat": 0})],
        patch(did("a/1.jpg"), remove=None, merge=({"cat": 1.0}, {})),
    ),
    case(
        "dropped concept is removed",
        snapshot(image("a/1.jpg")),
        [belief("a/1.jpg", concepts={"cat": 1, "dog": 0})],
        patch(did("a/1.jpg"), remove=(("dog",), {}), merge=None),
    ),
    case(
        "metadata scalar change is merged",
        snapshot(image("a/1.jpg", meta={"k": "new"})),
        [belief("a/1.jpg", meta={"k": "old"})],
        patch(did("a/1.jpg"), remove=None, merge=({}, {"k": "new"})),
    ),
    case(
        "metadata key added is merged",
        snapshot(image("a/1.jpg", meta={"k": "v", "n": 2})),
        [belief("a/1.jpg", meta={"k": "v"})],
        patch(did("a/1.jpg"), remove=None, merge=({}, {"n": 2.0})),
    ),
    case(
        "metadata key dropped is removed",
        snapshot(image("a/1.jpg", meta={"k": "v"})),
        [belief("a/1.jpg", meta={"k": "v", "j": True})],
        patch(did("a/1.jpg"), remove=((), {"j": True}), merge=None),
    ),
    case(
        "metadata list change is removed then merged",
        snapshot(image("a/1.jpg", meta={"tags": ["a"]})),
        [belief("a/1.jpg", meta={"tags": ["a", "b"]})],
        patch(did("a/1.jpg"), remove=((), {"tags": True}), merge=({}, {"tags": ["a"]})),
    ),
    case(
        "metadata list grown is removed then merged (merge alone would append)",
        snapshot(image("a/1.jpg", meta={"tags": ["a", "b"]})),
        [belief("a/1.jpg", meta={"tags": ["a"]})],
        patch(did("a/1.jpg"), remove=((), {"tags": True}), merge=({}, {"tags": ["a", "b"]})),
    ),
    case(
        "nested key removal recurses",
        snapshot(image("a/1.jpg", meta={"cam": {"iso": 100}})),
        [belief("a/1.jpg", meta=NESTED)],
        patch(did("a/1.jpg"), remove=((), {"cam": {"f": True}}), merge=None),
    ),
    case(
        "nested value change merges only that key",
        snapshot(image("a/1.jpg", meta={"cam": {"iso": 200, "f": 2.8}})),
        [belief("a/1.jpg", meta=NESTED)],
        patch(did("a/1.jpg"), remove=None, merge=({}, {"cam": {"iso": 200.0}})),
    ),
    case(
        "metadata value set to {} removes its keys",
        snapshot(image("a/1.jpg", meta={"cam": {}})),
        [belief("a/1.jpg", meta=NESTED)],
        patch(did("a/1.jpg"), remove=((), {"cam": {"f": True, "iso": True}}), merge=None),
    ),
    case(
        "metadata {} added as a new key is merged",
        snapshot(image("a/1.jpg", meta={"cam": {}})),
        [belief("a/1.jpg")],
        patch(did("a/1.jpg"), remove=None, merge=({}, {"cam": {}})),
    ),
    case(
        "sidecar metadata emptied to {} removes every user key",
        snapshot(image("a/1.jpg", meta={})),
        [belief("a/1.jpg", meta={"k": "v", "cam": {"iso": 1}})],
        patch(did("a/1.jpg"), remove=((), {"k": True, "cam": True}), merge=None),
    ),
    case(
        "object replaced by a scalar is removed then merged",
        snapshot(image("a/1.jpg", meta={"cam": "none"})),
        [belief("a/1.jpg", meta=NESTED)],
        patch(did("a/1.jpg"), remove=((), {"cam": True}), merge=({}, {"cam": "none"})),
    ),
    case(
        "scalar replaced by an object is removed then merged",
        snapshot(image("a/1.jpg", meta={"cam": {"iso": 1}})),
        [belief("a/1.jpg", meta={"cam": "none"})],
        patch(did("a/1.jpg"), remove=((), {"cam": True}), merge=({}, {"cam": {"iso": 1.0}})),
    ),
    case(
        "bytes changed at the same path are replaced",
        snapshot(image("a/1.jpg", sha="s2")),
        [belief("a/1.jpg", sha="s1")],
        replace(did("a/1.jpg")),
    ),
    case(
        "replacement waits while the old input is deleting",
        snapshot(image("a/1.jpg", sha="s2")),
        [belief("a/1.jpg", sha="s1", state=InputState.DELETING)],
    ),
    case(
        "deleting belief with its file present gets nothing",
        snapshot(image("a/1.jpg")),
        [belief("a/1.jpg", state=InputState.DELETING)],
    ),
    case(
        "deleting belief with its file gone gets nothing",
        snapshot(),
        [belief("a/1.jpg", state=InputState.DELETING)],
    ),
    case(
        "interrupted add with its file present is added again",
        snapshot(image("a/1.jpg")),
        [belief("a/1.jpg", state=InputState.ADDING)],
        add(did("a/1.jpg")),
    ),
    case(
        "interrupted add whose file is gone is deleted (it may have landed)",
        snapshot(),
        [belief("a/1.jpg", state=InputState.ADDING)],
        delete(did("a/1.jpg")),
    ),
    case(
        "failed input with the same bytes gets nothing, even with new labels",
        snapshot(image("a/1.jpg", concepts={"dog": 1}, meta={"k": "v"})),
        [belief("a/1.jpg", state=InputState.FAILED)],
    ),
    case(
        "failed input with new bytes is replaced",
        snapshot(image("a/1.jpg", sha="s2")),
        [belief("a/1.jpg", state=InputState.FAILED)],
        replace(did("a/1.jpg")),
    ),
    case(
        "failed input whose file is gone is deleted",
        snapshot(),
        [belief("a/1.jpg", state=InputState.FAILED)],
        delete(did("a/1.jpg")),
    ),
    case(
        "pending input whose file is gone is deleted",
        snapshot(image("a/2.jpg")),
        [belief("a/1.jpg", state=InputState.PENDING), belief("a/2.jpg")],
        delete(did("a/1.jpg")),
    ),
    case(
        "renamed file: old derived id deleted, new one added",
        snapshot(image("b/1.jpg")),
        [belief("a/1.jpg")],
        add(did("b/1.jpg")),
        delete(did("a/1.jpg")),
    ),
    case(
        "explicit id rename only patches the marker path",
        snapshot(image("b/moved.jpg", input_id=X)),
        [belief("a/1.jpg", input_id=X)],
        patch(X, remove=None, merge=({}, {MARKER_KEY: {"path": "b/moved.jpg"}})),
    ),
    case(
        "explicit id moved and a new file took its old path",
        snapshot(image("b/moved.jpg", input_id=X), image("a/1.jpg", sha="s2")),
        [belief("a/1.jpg", input_id=X)],
        add(did("a/1.jpg")),
        patch(X, remove=None, merge=({}, {MARKER_KEY: {"path": "b/moved.jpg"}})),
    ),
    case(
        "explicit id moved with new bytes is replaced",
        snapshot(image("b/moved.jpg", sha="s2", input_id=X)),
        [belief("a/1.jpg", input_id=X)],
        replace(X),
    ),
    case(
        "sidecar changed the explicit id: old id deleted, new id added",
        snapshot(image("a/1.jpg", input_id=Y)),
        [belief("a/1.jpg", input_id=X)],
        add(Y),
        delete(X),
    ),
    case(
        "sidecar dropped the explicit id: derived id added, explicit id deleted",
        snapshot(image("a/1.jpg")),
        [belief("a/1.jpg", input_id=X)],
        add(did("a/1.jpg")),
        delete(X),
    ),
    case(
        "held new image is not added",
        snapshot(image("a/1.jpg", problem="invalid sidecar")),
        [],
    ),
    case(
        "held image with an existing belief gets nothing, even with new bytes and labels",
        snapshot(image("a/1.jpg", sha="s2", concepts={"dog": 1}, problem="changed while read")),
        [belief("a/1.jpg")],
    ),
    case(
        "held unreadable image (no hash, no labels) keeps its belief",
        snapshot(image("a/1.jpg", sha=None, problem="permission denied")),
        [belief("a/1.jpg")],
    ),
    case(
        "belief at a held path is kept even though the held image has another id",
        snapshot(image("a/1.jpg", problem="invalid sidecar")),
        [belief("a/1.jpg", input_id=X)],
    ),
    case(
        "both images of an id conflict held: the shared id is untouched",
        snapshot(
            image("a/1.jpg", input_id=X, problem="id conflict"),
            image("b/1.jpg", input_id=X, problem="id conflict"),
        ),
        [belief("c/old.jpg", input_id=X)],
    ),
    case(
        "unscanned directory: nothing under it is deleted",
        snapshot(image("open/1.jpg"), unscanned=("locked",)),
        [belief("open/1.jpg"), belief("locked/2.jpg"), belief("locked/deep/3.jpg")],
    ),
    case(
        "unscanned directory does not shield its siblings",
        snapshot(unscanned=("locked",)),
        [belief("locked/2.jpg"), belief("open/gone.jpg"), belief("lockedx/4.jpg")],
        delete(did("open/gone.jpg")),
        delete(did("lockedx/4.jpg")),
    ),
    case(
        "root problem: no deletes at all",
        snapshot(root_problem="root is not mounted"),
        [belief("a/1.jpg"), belief("b/2.jpg"), belief("3.jpg", state=InputState.FAILED)],
    ),
    case(
        "scoped snapshot: only in-scope beliefs can be deleted",
        snapshot(image("a/keep.jpg"), scope=("a",)),
        [
            belief("a/keep.jpg"),
            belief("a/gone.jpg"),
            belief("b/elsewhere.jpg"),
            belief("ab/prefix-only.jpg"),
            belief("top.jpg"),
        ],
        delete(did("a/gone.jpg")),
    ),
    case(
        "scope of several directories",
        snapshot(scope=("a", "b/c")),
        [belief("a/1.jpg"), belief("b/c/2.jpg"), belief("b/3.jpg")],
        delete(did("a/1.jpg")),
        delete(did("b/c/2.jpg")),
    ),
    case(
        "belief without labels is patched to the full labels",
        snapshot(image("a/1.jpg", meta={"k": "v"})),
        [dataclasses.replace(belief("a/1.jpg"), labels=None)],
        patch(did("a/1.jpg"), remove=None),
    ),
]


def _check_want(op: Operation, want: Want) -> None:
    assert (op.kind, op.input_id, op.replace) == (want.kind, want.input_id, want.replace)
    if want.remove is not ANY:
        if want.remove is None:
            assert op.remove is None
        else:
            assert op.remove is not None
            assert tuple(c for c, _ in op.remove.concepts) == want.remove[0]
            assert op.remove.metadata_dict() == want.remove[1]
    if want.merge is not ANY:
        if want.merge is None:
            assert op.merge is None
        else:
            assert op.merge is not None
            assert dict(op.merge.concepts) == want.merge[0]
            assert op.merge.metadata_dict() == want.merge[1]


@pytest.mark.parametrize("c", CASES)
def test_plan_table(c: Case) -> None:
    """Each named (snapshot, beliefs) case plans exactly the expected operations."""
    ops = plan(c.local, c.beliefs, source_name=SOURCE)
    want = sorted(c.want, key=lambda w: (KIND_ORDER[w.kind], w.input_id))
    assert [(op.kind, op.input_id, op.replace) for op in ops] == [
        (w.kind, w.input_id, w.replace) for w in want
    ]
    for op, w in zip(ops, want, strict=True):
        _check_want(op, w)
    _check_op_contents(c.local, c.beliefs, ops)


def test_add_carries_full_labels_and_marker() -> None:
    """An add carries the sidecar's concepts and metadata plus the marker {source, path, sha256}."""
    img = image("a/1.jpg", sha="f00d", concepts={"cat": 1, "dog": 0}, meta={"k": "v", "n": 2})
    [op] = plan(snapshot(img), {}, source_name=SOURCE)
    assert (op.kind, op.input_id, op.path, op.sha256) == (
        OpKind.ADD,
        did("a/1.jpg"),
        "a/1.jpg",
        "f00d",
    )
    assert op.labels is not None
    assert op.labels.concepts == (("cat", 1.0), ("dog", 0.0))
    assert op.labels.metadata_dict() == {
        "k": "v",
        "n": 2.0,
        MARKER_KEY: {"source": SOURCE, "path": "a/1.jpg", "sha256": "f00d"},
    }


def test_plan_orders_adds_then_patches_then_deletes_each_by_id() -> None:
    """Adds come first, then patches, then deletes; within each kind the input ids ascend."""
    local = snapshot(
        image("z.jpg", input_id="z-new"),
        image("y.jpg", input_id="a-new"),
        image("p.jpg", input_id="a-old", concepts={"dog": 1}),
        image("q.jpg", input_id="0-changed", sha="s2"),
    )
    beliefs = by_id(
        belief("p.jpg", input_id="a-old"),
        belief("q.jpg", input_id="0-changed"),
        belief("m.jpg", input_id="m-gone"),
        belief("b.jpg", input_id="b-gone"),
    )
    ops = plan(local, beliefs, source_name=SOURCE)
    assert [(op.kind.value, op.input_id) for op in ops] == [
        ("add", "a-new"),
        ("add", "z-new"),
        ("patch", "a-old"),
        ("delete", "0-changed"),
        ("delete", "b-gone"),
        ("delete", "m-gone"),
    ]


def test_plan_does_not_mutate_its_inputs() -> None:
    """Planning reads its arguments only: the snapshot and the beliefs are unchanged after it."""
    local = snapshot(image("a/1.jpg", sha="s2"), image("b/1.jpg"))
    beliefs = by_id(belief("a/1.jpg"), belief("c/1.jpg"))
    before = (dict(local.images), dict(beliefs))
    plan(local, beliefs, source_name=SOURCE)
    assert (dict(local.images), dict(beliefs)) == before


# --- properties over generated snapshots and beliefs ------------------------------------------

PATHS = ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/c/3.jpg", "ab/5.jpg", "4.jpg"]
DIRS = ["a", "b", "b/c", "ab"]
EXPLICIT = ["x-1", "x-2"]
IDS = [did(p) for p in PATHS] + EXPLICIT
SHAS = ["s1", "s2"]
SMALL_META: list[dict[str, Any]] = [
    {},
    {"k": "v"},
    {"k": "w"},
    {"k": ["v"]},
    {"k": ["v", "w"]},
    {"k": {"n": 1}},
    {"k": {"n": 2, "m": True}},
    {"j": 1.5, "k": "v"},
]

small_labels = st.builds(
    Labels.build,
    st.dictionaries(st.sampled_from(["cat", "dog"]), st.sampled_from([1.0, 0.0]), max_size=2),
    st.sampled_from(SMALL_META),
)


def _mark_id_conflicts(images: dict[str, LocalImage]) -> dict[str, LocalImage]:
    """As the scanner does: every image sharing its input id with another is held."""
    count: dict[str, int] = {}
    for img in images.values():
        count[img.input_id] = count.get(img.input_id, 0) + 1
    return {
        p: dataclasses.replace(img, problem=img.problem or "id conflict")
        if count[img.input_id] > 1
        else img
        for p, img in images.items()
    }


@st.composite
def snapshots(draw: st.DrawFn) -> LocalSnapshot:
    """Consistent snapshots: images only at covered paths, clean images with unique ids."""
    images: dict[str, LocalImage] = {}
    for path in draw(st.lists(st.sampled_from(PATHS), unique=True)):
        input_id = draw(st.sampled_from([None, None, None, *EXPLICIT])) or did(path)
        sha: str | None = draw(st.sampled_from(SHAS))
        labels: Labels | None = draw(small_labels)
        problem = draw(st.sampled_from([None] * 5 + ["invalid sidecar"]))
        if problem and draw(st.booleans()):
            sha, labels = None, None
        images[path] = LocalImage(path, STAT, input_id, sha, labels, problem=problem)
    root_problem = draw(st.sampled_from([None] * 9 + ["root missing"]))
    scope = draw(st.sampled_from([None, None, None, None, ("a",), ("b",), ("",), ("a", "b/c")]))
    unscanned = draw(st.sampled_from([(), (), (), (), ("a",), ("b/c",), ("ab", "b")]))
    empty = LocalSnapshot(images={}, root_problem=root_problem, scope=scope, unscanned=unscanned)
    covered = {p: img for p, img in images.items() if empty.covers(p)}
    return dataclasses.replace(empty, images=_mark_id_conflicts(covered))


STATES = st.sampled_from(
    [InputState.PROCESSED, InputState.PROCESSED, InputState.PENDING, *InputState]
)


def _synced_labels(labels: Labels, path: str, sha: str) -> Labels:
    meta = labels.metadata_dict()
    meta[MARKER_KEY] = Marker(SOURCE, path, sha).as_dict()
    return Labels(labels.concepts, canonical_json(meta))


@st.composite
def belief_sets(draw: st.DrawFn, local: LocalSnapshot | None = None) -> dict[str, InputRecord]:
    """Beliefs over the same id and path pools, in every state, mostly with synced labels.

    With `local`, about half the ids the snapshot holds start from what a finished sync of
    that image would believe, then maybe drift in bytes, labels or path.
    """
    by_image = {img.input_id: img for img in (local.images.values() if local else ())}
    out: dict[str, InputRecord] = {}
    for input_id in draw(st.lists(st.sampled_from(IDS), unique=True)):
        img = by_image.get(input_id)
        if img is not None and img.sha256 and img.labels and draw(st.booleans()):
            path, sha, labels = img.path, img.sha256, img.labels
            if draw(st.booleans()):
                labels = draw(small_labels)
            if draw(st.integers(0, 3)) == 0:
                sha = draw(st.sampled_from(SHAS))
            if input_id in EXPLICIT and draw(st.integers(0, 3)) == 0:
                path = draw(st.sampled_from(PATHS))
        else:
            derived = PATHS[IDS.index(input_id)] if input_id not in EXPLICIT else None
            path = derived or draw(st.sampled_from([*PATHS, "gone/9.jpg"]))
            sha, labels = draw(st.sampled_from(SHAS)), draw(small_labels)
        synced = None if draw(st.integers(0, 9)) == 0 else _synced_labels(labels, path, sha)
        out[input_id] = InputRecord(input_id, path, draw(STATES), sha, synced)
    return out


@st.composite
def worlds(draw: st.DrawFn) -> tuple[LocalSnapshot, dict[str, InputRecord]]:
    """A snapshot and beliefs that overlap in ids and paths."""
    local = draw(snapshots())
    return local, draw(belief_sets(local))


def _clean(local: LocalSnapshot) -> dict[str, LocalImage]:
    """The images the planner may act on, by input id."""
    return {img.input_id: img for img in local.images.values() if img.problem is None}


def _check_op_contents(
    local: LocalSnapshot, beliefs: Mapping[str, InputRecord], ops: list[Operation]
) -> None:
    """Adds and patches carry the expected labels; patches reach them under PATCH semantics."""
    clean = _clean(local)
    for op in ops:
        if op.kind is OpKind.ADD:
            img = clean[op.input_id]
            assert (op.path, op.sha256, op.labels) == (img.path, img.sha256, expected_labels(img))
        elif op.kind is OpKind.PATCH:
            img, old = clean[op.input_id], beliefs[op.input_id]
            assert op.remove is not None or op.merge is not None
            assert op.labels == expected_labels(img)
            assert apply_patch(old.labels or Labels(), op.remove, op.merge) == op.labels


def _apply(
    ops: list[Operation], beliefs: dict[str, InputRecord], remote: dict[str, Labels]
) -> None:
    """Apply a plan to the belief model and the remote model, as a successful executor would."""
    for op in ops:
        if op.kind is OpKind.ADD:
            assert op.input_id not in remote, "add of an id the remote still holds"
            assert op.labels is not None
            remote[op.input_id] = op.labels
            beliefs[op.input_id] = InputRecord(
                op.input_id, op.path, InputState.PENDING, op.sha256, op.labels
            )
        elif op.kind is OpKind.PATCH:
            assert op.input_id in remote, "patch of an id the remote does not hold"
            remote[op.input_id] = apply_patch(remote[op.input_id], op.remove, op.merge)
            assert remote[op.input_id] == op.labels
            old = beliefs[op.input_id]
            beliefs[op.input_id] = dataclasses.replace(old, path=op.path, labels=op.labels)
        else:
            old = beliefs[op.input_id]
            beliefs[op.input_id] = dataclasses.replace(old, state=InputState.DELETING)


def _confirm_deletes(beliefs: dict[str, InputRecord], remote: dict[str, Labels]) -> bool:
    """The remote finishes every pending delete; True when there was one."""
    gone = [k for k, b in beliefs.items() if b.state is InputState.DELETING]
    for input_id in gone:
        del beliefs[input_id]
        remote.pop(input_id, None)
    return bool(gone)


@PROPERTY
@given(world=worlds())
def test_plan_applied_then_replanned_converges(
    world: tuple[LocalSnapshot, dict[str, InputRecord]],
) -> None:
    """Applied plans converge in three rounds (only adds after the first) to a mirrored remote."""
    local, beliefs = world
    initial = dict(beliefs)
    state = dict(beliefs)
    # an interrupted add is assumed not to have landed; everything else is as believed
    remote = {k: b.labels or Labels() for k, b in state.items() if b.state is not InputState.ADDING}
    rounds: list[list[Operation]] = []
    for _ in range(4):
        ops = plan(local, state, source_name=SOURCE)
        rounds.append(ops)
        _apply(ops, state, remote)
        if not _confirm_deletes(state, remote) and not ops:
            break
    assert rounds[-1] == [] and len(rounds) <= 3, rounds
    replaced = {op.input_id for op in rounds[0] if op.replace}
    waiting = {k for k, b in initial.items() if b.state is InputState.DELETING}
    for later in rounds[1:]:
        assert all(op.kind is OpKind.ADD for op in later)
        assert {op.input_id for op in later} <= replaced | waiting

    clean = _clean(local)
    held_ids = {img.input_id for img in local.images.values() if img.problem is not None}
    held_paths = {img.path for img in local.images.values() if img.problem is not None}
    for input_id, img in clean.items():
        old = initial.get(input_id)
        if old is not None and old.state is InputState.FAILED and old.sha256 == img.sha256:
            assert state[input_id] == old  # permanent for these bytes
            continue
        assert state[input_id].sha256 == img.sha256
        assert state[input_id].path == img.path
        assert remote[input_id] == expected_labels(img)
    for input_id, b in state.items():
        if input_id not in clean:
            assert input_id in held_ids or b.path in held_paths or not local.covers(b.path)
            assert b == initial[input_id]  # left exactly alone


@PROPERTY
@given(world=worlds())
def test_plan_rules_hold_for_every_operation(
    world: tuple[LocalSnapshot, dict[str, InputRecord]],
) -> None:
    """Every op obeys the rules: one per id, sorted, held/uncovered untouched, deletes justified."""
    local, beliefs = world
    ops = plan(local, beliefs, source_name=SOURCE)
    ids = [op.input_id for op in ops]
    assert len(ids) == len(set(ids))
    assert ops == sorted(ops, key=lambda o: (KIND_ORDER[o.kind], o.input_id))
    _check_op_contents(local, beliefs, ops)

    clean = _clean(local)
    held_ids = {img.input_id for img in local.images.values() if img.problem is not None}
    held_paths = {img.path for img in local.images.values() if img.problem is not None}
    for op in ops:
        assert op.input_id not in held_ids
        old = beliefs.get(op.input_id)
        if op.kind is OpKind.ADD:
            assert old is None or old.state is InputState.ADDING
            continue
        assert old is not None
        assert old.state is not InputState.DELETING
        if op.kind is OpKind.PATCH:
            assert old.state in (InputState.PENDING, InputState.PROCESSED)
            assert old.sha256 == clean[op.input_id].sha256
        elif op.replace:
            assert old.state is not InputState.ADDING
            assert old.sha256 != clean[op.input_id].sha256
        else:
            assert op.input_id not in clean
            assert op.path == old.path
            assert old.path not in held_paths
            assert local.covers(old.path)
    if local.root_problem is not None:
        assert not any(op.kind is OpKind.DELETE for op in ops)


@PROPERTY
@given(world=worlds(), data=st.data())
def test_plan_ignores_input_order(
    world: tuple[LocalSnapshot, dict[str, InputRecord]], data: st.DataObject
) -> None:
    """Shuffling the order of the images and of the beliefs does not change the plan."""
    local, beliefs = world
    images = data.draw(st.permutations(list(local.images.items())))
    records = data.draw(st.permutations(list(beliefs.items())))
    shuffled = dataclasses.replace(local, images=dict(images))
    assert plan(shuffled, dict(records), source_name=SOURCE) == plan(
        local, beliefs, source_name=SOURCE
    )


# --- diff_labels against the remote model -------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "id"])
SCALARS = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-3, max_value=3),
    st.sampled_from(["", "x", "y"]),
    st.text(max_size=3),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)),
    max_leaves=10,
)
METADATA = st.dictionaries(KEYS, JSON, max_size=4)
CONCEPTS = st.dictionaries(st.sampled_from(["cat", "dog", "owl"]), st.sampled_from([1.0, 0.0]))


def _mutate(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """A value near `value`: keys kept, dropped, changed or added; lists edited; types swapped."""
    choice = draw(st.integers(0, 5))
    if choice == 0:
        return draw(JSON)
    if isinstance(value, dict) and depth < 3:
        out = {}
        for key, inner in value.items():
            action = draw(st.integers(0, 3))
            if action == 0:
                continue  # dropped
            out[key] = _mutate(draw, inner, depth + 1) if action == 1 else inner
        if draw(st.booleans()):
            out[draw(KEYS)] = draw(JSON)
        return out
    if isinstance(value, list) and choice == 1:
        return [*value, draw(JSON)]
    if isinstance(value, list) and choice == 2:
        return value[1:]
    return value


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[Labels, Labels]:
    """(remote, desired) labels, the desired ones often a small edit of the remote ones."""
    remote_meta = draw(METADATA)
    want_meta = draw(METADATA) if draw(st.booleans()) else _mutate(draw, remote_meta)
    if not isinstance(want_meta, dict):
        want_meta = {"v": want_meta}
    remote = Labels.build(draw(CONCEPTS), remote_meta)
    want = Labels.build(draw(CONCEPTS), want_meta)
    return remote, want


@settings(max_examples=400, deadline=None)
@given(pair=label_pairs())
def test_diff_then_remove_then_merge_reaches_desired(pair: tuple[Labels, Labels]) -> None:
    """PATCH remove then merge of diff_labels turns any remote labels into exactly the desired."""
    remote, want = pair
    remove, merge = diff_labels(remote, want)
    assert apply_patch(remote, remove, merge) == want


@settings(max_examples=200, deadline=None)
@given(pair=label_pairs())
def test_diff_sends_no_empty_bodies(pair: tuple[Labels, Labels]) -> None:
    """diff_labels returns None rather than an empty body, and (None, None) exactly when equal."""
    remote, want = pair
    remove, merge = diff_labels(remote, want)
    for body in (remove, merge):
        assert body is None or body.concepts or body.metadata_dict()
    assert (remove is None and merge is None) == (remote == want)
    assert diff_labels(want, want) == (None, None)


def test_diff_labels_from_empty_is_a_pure_merge() -> None:
    """From no labels at all, the diff merges everything and removes nothing."""
    want = Labels.build({"cat": 1, "dog": 0}, {"k": [1, 2], "n": {"m": {}}})
    remove, merge = diff_labels(Labels(), want)
    assert remove is None
    assert merge == want


# --- fold_remote: a full remote listing corrects the beliefs --------------------------------


def remote_of(
    record: InputRecord, code: int | None = 30000, *, source: str = SOURCE
) -> RemoteInput:
    """The listing entry of an input that carries `record`'s labels (and so its marker)."""
    labels = record.labels or Labels()
    return RemoteInput(
        input_id=record.input_id,
        labels=labels,
        marker=Marker.from_metadata(labels.metadata_dict()) if source == SOURCE else None,
        status_code=code,
    )


def foreign(input_id: str, *, source: str | None = "someone-else") -> RemoteInput:
    marker = Marker(source, "x.jpg", "abc") if source else None
    return RemoteInput(input_id, Labels.build(CAT, {}), marker, 30000)


def test_fold_counts_and_ignores_foreign_inputs() -> None:
    """Inputs without a marker or with another source's marker are counted and never believed."""
    beliefs = by_id(belief("a/1.jpg"))
    folded, report = fold_remote(
        beliefs,
        [foreign("f1"), foreign("f2", source=None), remote_of(beliefs[did("a/1.jpg")])],
        source_name=SOURCE,
    )
    assert set(folded) == {did("a/1.jpg")}
    assert (report.foreign, report.owned) == (2, 1)
    ops = plan(snapshot(image("a/1.jpg")), folded, source_name=SOURCE)
    assert ops == []


@pytest.mark.parametrize(
    ("code", "state"),
    [
        (30000, InputState.PROCESSED),
        (30001, InputState.PENDING),
        (30003, InputState.PENDING),
        (None, InputState.PENDING),
        (30002, InputState.FAILED),
        (30101, InputState.FAILED),
    ],
)
def test_fold_adopts_owned_inputs_unknown_to_the_ledger(
    code: int | None, state: InputState
) -> None:
    """An owned remote input the ledger does not know is adopted, its state from its status code."""
    record = belief("a/1.jpg", sha="f00d", meta={"k": "v"})
    folded, report = fold_remote({}, [remote_of(record, code)], source_name=SOURCE)
    assert folded == {
        record.input_id: InputRecord(
            record.input_id, "a/1.jpg", state, "f00d", record.labels, code=code
        )
    }
    assert report.adopted == [record.input_id]
    assert (report.owned, report.foreign) == (1, 0)


def test_fold_keeps_deleting_beliefs_while_still_listed() -> None:
    """A DELETING belief whose input is still listed stays DELETING (the delete is in progress)."""
    old = belief("a/1.jpg", state=InputState.DELETING)
    listed = dataclasses.replace(remote_of(old), labels=Labels.build({"dog": 1}, {}))
    folded, report = fold_remote(by_id(old), [listed], source_name=SOURCE)
    assert folded == by_id(old)
    assert (report.adopted, report.drifted, report.deleted) == ([], [], [])


def test_fold_confirms_deletes_no_longer_listed() -> None:
    """A DELETING belief whose input is gone from the listing is dropped and reported deleted."""
    old = belief("a/1.jpg", state=InputState.DELETING)
    folded, report = fold_remote(by_id(old), [], source_name=SOURCE)
    assert folded == {}
    assert report.deleted == [old.input_id]
    assert report.missing == []


@pytest.mark.parametrize("state", [InputState.PROCESSED, InputState.PENDING])
def test_fold_drops_owned_inputs_missing_remotely_so_they_are_added_again(
    state: InputState,
) -> None:
    """A believed input missing from the listing is dropped, reported missing, and re-added."""
    old = belief("a/1.jpg", state=state)
    folded, report = fold_remote(by_id(old), [], source_name=SOURCE)
    assert folded == {}
    assert report.missing == [old.input_id]
    ops = plan(snapshot(image("a/1.jpg")), folded, source_name=SOURCE)
    assert [(op.kind, op.input_id) for op in ops] == [(OpKind.ADD, old.input_id)]


def test_fold_forgets_interrupted_adds_that_never_landed() -> None:
    """An ADDING belief absent from the listing is dropped without being reported missing."""
    old = belief("a/1.jpg", state=InputState.ADDING)
    folded, report = fold_remote(by_id(old), [], source_name=SOURCE)
    assert folded == {}
    assert (report.missing, report.deleted) == ([], [])


def test_fold_takes_an_interrupted_add_that_landed() -> None:
    """An ADDING belief whose input is listed becomes the listed input, with its status's state."""
    old = belief("a/1.jpg", state=InputState.ADDING)
    folded, _ = fold_remote(by_id(old), [remote_of(old, 30001)], source_name=SOURCE)
    assert folded[old.input_id].state is InputState.PENDING
    assert plan(snapshot(image("a/1.jpg")), folded, source_name=SOURCE) == []


def test_fold_takes_remote_labels_and_plan_patches_the_drift_back() -> None:
    """Labels edited remotely replace the believed ones, count as drift, and are patched back."""
    old = belief("a/1.jpg", meta={"k": "v"})
    edited_meta = {
        "k": "edited",
        "web": True,
        MARKER_KEY: Marker(SOURCE, "a/1.jpg", "s1").as_dict(),
    }
    edited = Labels.build({"cat": 0, "dog": 1}, edited_meta)
    listed = dataclasses.replace(remote_of(old), labels=edited)
    folded, report = fold_remote(by_id(old), [listed], source_name=SOURCE)
    assert folded[old.input_id].labels == edited
    assert report.drifted == [old.input_id]
    local = snapshot(image("a/1.jpg", meta={"k": "v"}))
    [op] = plan(local, folded, source_name=SOURCE)
    assert op.kind is OpKind.PATCH
    assert apply_patch(edited, op.remove, op.merge) == old.labels


def test_fold_takes_path_and_bytes_from_the_remote_marker() -> None:
    """The marker on the remote input, not the ledger, says which path and bytes it holds."""
    old = belief("a/1.jpg", sha="s1", input_id=X)
    actual = belief("b/2.jpg", sha="s2", input_id=X)
    folded, _ = fold_remote(by_id(old), [remote_of(actual)], source_name=SOURCE)
    assert (folded[X].path, folded[X].sha256) == ("b/2.jpg", "s2")


def test_fold_keeps_error_text_only_for_the_same_state_and_bytes() -> None:
    """A recorded error survives a fold while state and bytes are unchanged, else is cleared."""
    failed = dataclasses.replace(
        belief("a/1.jpg", state=InputState.FAILED),
        code=30002,
        description="Download failed",
        error="30002 Download failed",
    )
    folded, _ = fold_remote(by_id(failed), [remote_of(failed, 30002)], source_name=SOURCE)
    assert folded[failed.input_id] == failed
    folded, _ = fold_remote(by_id(failed), [remote_of(failed, 30000)], source_name=SOURCE)
    assert (folded[failed.input_id].error, folded[failed.input_id].description) == (None, None)
    assert folded[failed.input_id].state is InputState.PROCESSED


_CODE_FOR = {
    InputState.PROCESSED: 30000,
    InputState.PENDING: 30001,
    InputState.FAILED: 30002,
    InputState.DELETING: 30000,
}


@PROPERTY
@given(beliefs=belief_sets(), others=st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_fold_of_a_matching_listing_changes_nothing(
    beliefs: dict[str, InputRecord], others: list[str]
) -> None:
    """Folding a listing of exactly the believed inputs (plus foreign ones) changes no belief."""
    settled = {
        k: dataclasses.replace(
            b, code=None if b.state is InputState.DELETING else _CODE_FOR[b.state]
        )
        for k, b in beliefs.items()
        if b.state is not InputState.ADDING and b.labels is not None
    }
    listing = [remote_of(b, _CODE_FOR[b.state]) for b in settled.values()]
    listing += [foreign(f"foreign-{name}") for name in others]
    folded, report = fold_remote(settled, listing, source_name=SOURCE)
    assert folded == settled
    assert (report.owned, report.foreign) == (len(settled), len(others))
    assert (report.adopted, report.missing, report.drifted, report.deleted) == ([], [], [], [])


_SEGMENTS = st.sampled_from(["a", "b", "ab", "a.b", "é"])
_PATHS = st.lists(_SEGMENTS, min_size=1, max_size=4).map("/".join)


@given(
    st.lists(st.one_of(_PATHS, st.sampled_from(["", ".", "a/", "a/b/"])), min_size=1, max_size=6),
    _PATHS,
)
def test_covers_with_a_prefix_set_is_the_prefix_scan(scope: list[str], path: str) -> None:
    """`LocalSnapshot.covers` looks each ancestor up in a set (a scope may hold thousands of
    paths); it answers what checking every scope entry as a prefix answers."""
    snapshot = LocalSnapshot(images={}, scope=tuple(scope))
    naive = any(s in ("", ".") or path == s or path.startswith(s.rstrip("/") + "/") for s in scope)
    assert snapshot.covers(path) == naive
