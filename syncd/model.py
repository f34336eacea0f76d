"""Plain data shared by every module: what is on disk, what the ledger believes, what to do.

Everything here is frozen and hashable so the planner can stay a pure function.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

#: Reserved metadata key under which syncd records ownership of an input.
MARKER_KEY = "syncd"


_STAT = struct.Struct("<qqqQ")


class FileStat(bytes):
    """The stat fields that decide whether a file must be hashed again.

    Packed into 32 bytes: a pass holds one per file (the ledger's cache, then the snapshot),
    and four int objects plus a dataclass cost ~240 bytes where this costs ~80. Equal stats
    are equal bytes, so comparing two is one memcmp.
    """

    __slots__ = ()
    NAMES = ("size", "mtime_ns", "ctime_ns", "inode")

    def __new__(cls, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> FileStat:
        return super().__new__(cls, _STAT.pack(size, mtime_ns, ctime_ns, inode))

    @classmethod
    def of(cls, st: os.stat_result) -> FileStat:
        return cls(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    @staticmethod
    def key(st: os.stat_result) -> bytes:
        """The packed form of `st` as plain bytes: equal to FileStat.of(st), cheaper to build
        when it is only compared with a known FileStat."""
        return _STAT.pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)

    size = property(lambda self: _STAT.unpack(self)[0])
    mtime_ns = property(lambda self: _STAT.unpack(self)[1])
    ctime_ns = property(lambda self: _STAT.unpack(self)[2])
    inode = property(lambda self: _STAT.unpack(self)[3])

    def fields(self) -> tuple[int, int, int, int]:
        """(size, mtime_ns, ctime_ns, inode)."""
        return _STAT.unpack(self)

    def __getnewargs__(self) -> tuple[int, int, int, int]:  # type: ignore[override]
        return self.fields()

    def __repr__(self) -> str:
        size, mtime_ns, ctime_ns, inode = self.fields()
        return f"FileStat(size={size}, mtime_ns={mtime_ns}, ctime_ns={ctime_ns}, inode={inode})"

    __str__ = __repr__


def normalize_metadata(value: Any) -> Any:
    """Bring a metadata value into the form the remote stores (a protobuf Struct).

    Numbers become floats (Struct has only doubles), nulls are dropped (PATCH `merge` ignores
    null, so a null can never be set and would look like drift forever), keys are kept as is.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        try:
            f = float(value)
        except OverflowError:
            raise ValueError("metadata numbers must fit in a double") from None
        if math.isnan(f) or math.isinf(f):
            raise ValueError("metadata numbers must be finite")
        return f
    if isinstance(value, Mapping):
        return {str(k): normalize_metadata(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [normalize_metadata(v) for v in value if v is not None]
    raise ValueError(f"unsupported metadata value of type {type(value).__name__}")


def canonical_json(value: Any) -> str:
    """One spelling per value, so equal metadata compares equal as text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


Concepts = tuple[tuple[str, float], ...]
"""Concept ids with their value, sorted by id: 1.0 present, 0.0 absent."""


def make_concepts(values: Mapping[str, bool | float]) -> Concepts:
    return tuple(sorted((cid, 1.0 if float(v) > 0.5 else 0.0) for cid, v in values.items()))


@dataclass(frozen=True, slots=True, eq=False)
class Labels:
    """What an input carries besides its bytes: concepts and metadata (canonical JSON).

    Two Labels are equal when their concepts and metadata text are, whatever their class
    (see MarkerLabels).
    """

    concepts: Concepts = ()
    metadata: str = "{}"

    @classmethod
    def build(cls, concepts: Mapping[str, bool | float], metadata: Mapping[str, Any]) -> Labels:
        meta = canonical_json(normalize_metadata(metadata)) if metadata else "{}"
        return cls(make_concepts(concepts) if concepts else (), meta)

    def metadata_dict(self) -> dict[str, Any]:
        return json.loads(self.metadata)

    def concepts_dict(self) -> dict[str, float]:
        return dict(self.concepts)

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if not isinstance(other, Labels):
            return NotImplemented
        return self.concepts == other.concepts and self.metadata == other.metadata

    def __hash__(self) -> int:
        return hash((self.concepts, self.metadata))


class MarkerLabels(Labels):
    """Labels whose metadata is syncd's ownership marker and nothing else: the common case.

    The metadata text (`marker_only_metadata(source, path, sha256)`) is spelled when asked
    for, not held: a pass holds labels for every input (the beliefs, and an initial sync's
    planned adds), and the path and hash strings are already held by the snapshot and the
    ledger rows, where that text would cost ~180 bytes more per input.
    """

    __slots__ = ("path", "sha256", "source")
    source: str
    path: str
    sha256: str

    def __init__(self, concepts: Concepts, source: str, path: str, sha256: str) -> None:
        object.__setattr__(self, "concepts", concepts)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "sha256", sha256)

    @property  # type: ignore[override]
    def metadata(self) -> str:
        return marker_only_metadata(self.source, self.path, self.sha256)

    def metadata_dict(self) -> dict[str, Any]:
        # what json.loads(self.metadata) gives, without spelling and parsing it (every add)
        marker = {"path": marker_path(self.path), "sha256": self.sha256, "source": self.source}
        return {MARKER_KEY: marker}

    def __eq__(self, other: object) -> bool:
        if (
            isinstance(other, MarkerLabels)
            and self.path == other.path
            and self.sha256 == other.sha256
            and self.source == other.source
        ):
            return self.concepts == other.concepts
        return Labels.__eq__(self, other)

    def __hash__(self) -> int:
        return Labels.__hash__(self)

    def __repr__(self) -> str:
        return f"MarkerLabels(concepts={self.concepts!r}, metadata={self.metadata!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (MarkerLabels, (self.concepts, self.source, self.path, self.sha256))


def marker_only_metadata(source_name: str, path: str, sha256: str) -> str:
    """`canonical_json({MARKER_KEY: Marker(source_name, marker_path(path), sha256).as_dict()})`,
    byte for byte, spelled out directly.

    It is built for every image of every pass and json.dumps(sort_keys=True) of the nested
    dict costs several microseconds; this is the same text: keys in sorted order ("path" <
    "sha256" < "source"), compact separators, and each string encoded by the very function
    json.dumps uses with ensure_ascii=False. tests/test_perf_paths.py checks it against
    canonical_json over odd paths.
    """
    return (
        f'{{{_MARKER_KEY_JSON}:{{"path":{encode_basestring(marker_path(path))},'
        f'"sha256":{encode_basestring(sha256)},"source":{encode_basestring(source_name)}}}}}'
    )


_MARKER_KEY_JSON = encode_basestring(MARKER_KEY)


@dataclass(frozen=True, slots=True)
class Marker:
    """Ownership marker stored at metadata[MARKER_KEY] on every input syncd creates."""

    source: str
    path: str
    sha256: str

    def as_dict(self) -> dict[str, str]:
        return {"source": self.source, "path": self.path, "sha256": self.sha256}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Marker | None:
        raw = metadata.get(MARKER_KEY)
        if not isinstance(raw, Mapping):
            return None
        source, path, sha = raw.get("source"), raw.get("path"), raw.get("sha256")
        if not all(isinstance(x, str) and x for x in (source, path, sha)):
            return None
        return cls(source, path, sha)  # type: ignore[arg-type]


def marker_path(rel_path: str) -> str:
    """The relative path as stored in the marker: valid UTF-8 whatever the file name's bytes.

    Bytes that are not UTF-8 (kept in `rel_path` as surrogate escapes) become `\\xNN`.
    """
    return rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def derive_input_id(source_name: str, rel_path: str) -> str:
    """The stable id of an image without an explicit id: 32 lowercase hex characters.

    sha256 over the source name and the relative path's bytes; never random, so a re-run or a
    crash can only ever meet the same id again.
    """
    raw = source_name.encode() + b"\0" + rel_path.encode("utf-8", "surrogateescape")
    return hashlib.sha256(raw).hexdigest()[:32]


# --- the local side -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalImage:
    """One image found under the root, with the labels its sidecar gives it.

    `problem` set means the image must be left alone this pass: not added if new, not relabelled
    or replaced if known, and never deleted (an invalid sidecar, an unreadable or oversized
    file, bytes that are not an image, a file that changed while being read, an id conflict).
    """

    path: str
    stat: FileStat
    input_id: str
    sha256: str | None
    labels: Labels | None
    sidecar: str | None = None
    problem: str | None = None
    hashed: bool = False
    #: new to the ledger, not read by the scan: `sha256` is None until the add reads it
    deferred: bool = False


@dataclass(frozen=True, slots=True)
class LocalSnapshot:
    """The result of scanning the root (or a part of it).

    `scope` is None for a full scan; otherwise only ledger paths under one of these relative
    prefixes may be judged missing. `unscanned` lists relative directories that could not be
    read: nothing under them is judged missing either.
    """

    images: Mapping[str, LocalImage]
    orphan_sidecars: Mapping[str, str] = field(default_factory=dict)
    root_problem: str | None = None
    scope: tuple[str, ...] | None = None
    unscanned: tuple[str, ...] = ()
    # the scope as a set of prefixes (None: everything), for `covers`: a planner asks once per
    # belief, and a scope can hold thousands of paths
    _prefixes: tuple[frozenset[str], frozenset[str]] | None = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        scope = self.scope
        whole = scope is None or any(s in ("", ".") for s in scope)
        prefixes = None
        if not whole and scope is not None:
            prefixes = (frozenset(scope), frozenset(s.rstrip("/") for s in scope))
        object.__setattr__(self, "_prefixes", prefixes)

    def covers(self, path: str) -> bool:
        """Whether absence of `path` from this snapshot means the file is really gone."""
        if self.root_problem is not None:
            return False
        if any(_under(path, d) for d in self.unscanned):
            return False
        return self._prefixes is None or _under_any(path, *self._prefixes)


def _under(path: str, prefix: str) -> bool:
    return prefix in ("", ".") or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _under_any(path: str, exact: frozenset[str], stripped: frozenset[str]) -> bool:
    """`any(_under(path, p) for p in scope)` with one set lookup per ancestor of `path`
    (`exact`: the scope's entries; `stripped`: the same without a trailing "/")."""
    if path in exact:
        return True
    cut = path.rfind("/")
    while cut >= 0:
        path = path[:cut]
        if path in stripped:
            return True
        cut = path.rfind("/")
    return False


# --- what the ledger believes the remote holds ----------------------------------------------


class InputState(StrEnum):
    ADDING = "adding"  # add intent written: the POST may or may not have reached the remote
    PENDING = "pending"  # accepted, processing remotely (30001 / 30003)
    PROCESSED = "processed"  # 30000
    FAILED = "failed"  # processing or the add failed permanently for these bytes
    DELETING = "deleting"  # delete sent (or about to be): waiting for the remote to drop it


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One input syncd owns (or is creating), keyed by input id."""

    input_id: str
    path: str
    state: InputState
    sha256: str | None
    labels: Labels | None
    code: int | None = None
    description: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RemoteInput:
    """An input as listed by the remote, reduced to what reconcile compares."""

    input_id: str
    labels: Labels
    marker: Marker | None
    status_code: int | None


# --- what to do ---------------------------------------------------------------------------


class OpKind(StrEnum):
    ADD = "add"
    PATCH = "patch"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Operation:
    """One change to the remote, for one input.

    add:    `labels` is the full labels to create with (metadata includes the marker); with
            `sha256` None (a deferred image, not read yet) the sidecar's labels, which the
            executor completes with the marker once it has read the file.
    patch:  `remove` (concept ids / metadata keys to drop) is applied before `merge`; `labels`
            is what the input carries once both are applied.
    delete: `replace` is True when the input is deleted only to be added again with new bytes.
    """

    kind: OpKind
    input_id: str
    path: str
    reason: str
    sha256: str | None = None
    labels: Labels | None = None
    remove: Labels | None = None
    merge: Labels | None = None
    replace: bool = False
