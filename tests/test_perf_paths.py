"""Pins the shortcuts taken on the no-op pass to the slow, obvious spelling they replace."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Any

from conftest import png_bytes
from hypothesis import given
from hypothesis import strategies as st

from syncd.api import ClarifaiApi
from syncd.executor import Executor
from syncd.ledger import Ledger
from syncd.model import (
    MARKER_KEY,
    FileStat,
    InputState,
    Labels,
    Marker,
    MarkerLabels,
    Operation,
    OpKind,
    canonical_json,
    marker_only_metadata,
    marker_path,
)
from syncd.scanner import FileRecord, read_up_to

# Path-ish text: quotes, backslashes, control characters, non-BMP characters and surrogate
# escapes (how os.fsdecode keeps bytes that are not UTF-8).
ODD_CHARS = st.one_of(
    st.sampled_from(['"', "\\", "/", "\n", "\x00", "\x7f", "é", "\u2028", "😀", " "]),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),  # surrogate escapes
    st.characters(blacklist_categories=("Cs",)),
)
ODD_TEXT = st.text(ODD_CHARS, min_size=1, max_size=30)


@given(path=ODD_TEXT, source=ODD_TEXT, sha=st.text(min_size=1, max_size=70))
def test_marker_metadata_matches_canonical_json(path: str, source: str, sha: str) -> None:
    """The hand-built marker metadata equals canonical_json of the marker dict for any text."""
    slow = canonical_json({MARKER_KEY: Marker(source, marker_path(path), sha).as_dict()})
    assert marker_only_metadata(source, path, sha) == slow


def test_marker_metadata_examples() -> None:
    """Quotes, backslashes and an undecodable byte are escaped exactly as json.dumps does."""
    path = os.fsdecode(b'd/"q"\\b\xff.png')
    assert marker_only_metadata("src", path, "ab") == (
        '{"syncd":{"path":"d/\\"q\\"\\\\b\\\\xff.png","sha256":"ab","source":"src"}}'
    )


def test_unchanged_records_are_not_rewritten(tmp_path: Path) -> None:
    """A record marked unchanged keeps its row as it was; vanished paths are still forgotten."""
    times = iter([100.0, 200.0, 300.0])
    with Ledger.open(tmp_path / "l.db", clock=lambda: next(times)) as ledger:
        stat = FileStat(1, 2, 3, 4)
        first = [FileRecord(p, stat, "a" * 64, True, None) for p in ("a.png", "b.png")]
        ledger.record_files(first, scope=None)
        again = [FileRecord("a.png", stat, "a" * 64, True, None, unchanged=True)]
        ledger.record_files(again, scope=None)
        with ledger._reading() as conn:
            rows = conn.execute("SELECT path, seen_at FROM files").fetchall()
        assert rows == [(b"a.png", 100.0)]


# --- the executor proves bytes by stat when the scan's stat was settled ----------------------


def _stat_of(path: Path) -> FileStat:
    st = os.stat(path)
    return FileStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _send(tmp_path: Path, url: str, key: str, op_sha: str, settled: dict[str, FileStat]) -> Any:
    """Add one input for `a.png` through a real client and ledger; returns the outcome."""
    labels = Labels((), marker_only_metadata("src", "a.png", op_sha))
    op = Operation(OpKind.ADD, "id-a", "a.png", "new file", sha256=op_sha, labels=labels)
    with (
        Ledger.open(tmp_path / "ledger.db") as ledger,
        ClarifaiApi(url, key, max_requests_per_second=None) as api,
    ):
        executor = Executor(api=api, ledger=ledger, root=tmp_path, source_name="src", workers=1)
        executor.add([op], {"a.png": (tmp_path / "a.png").stat().st_size}, settled)
        return executor.outcome


def test_a_throttled_add_reports_the_wait_the_remote_asked_for(
    tmp_path: Path, manual_emulator: Any, api_key: str
) -> None:
    """An add that gave up on 429s carrying Retry-After leaves that wait in the outcome (the
    report, and the daemon's next try, take it from there). The emulator's clock stands
    still: its one-second window stays full."""
    emulator = manual_emulator
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    sha = hashlib.sha256(png_bytes(1)).hexdigest()
    labels = Labels((), marker_only_metadata("src", "a.png", sha))
    op = Operation(OpKind.ADD, "id-a", "a.png", "new file", sha256=sha, labels=labels)
    emulator.set_faults(throttle_rps=1, retry_after=7)
    with (
        Ledger.open(tmp_path / "ledger.db") as ledger,
        ClarifaiApi(emulator.url, api_key, max_requests_per_second=None, max_attempts=1) as api,
    ):
        api.check_auth()  # takes the one request the throttle lets through this second
        executor = Executor(api=api, ledger=ledger, root=tmp_path, source_name="src", workers=1)
        executor.add([op], {"a.png": (tmp_path / "a.png").stat().st_size})
    assert executor.outcome.retry_after == 7.0
    assert executor.outcome.unreachable and executor.outcome.added == []


def test_settled_file_is_sent_without_hashing(
    tmp_path: Path, emulator_url: str, api_key: str
) -> None:
    """A file whose stat still equals the settled scanned stat is sent without a second hash."""
    (tmp_path / "a.png").write_bytes(png_bytes(1))
    stale_sha = "0" * 64  # a hash check would refuse the file: only the stat can let it through
    outcome = _send(
        tmp_path, emulator_url, api_key, stale_sha, {"a.png": _stat_of(tmp_path / "a.png")}
    )
    assert outcome.added == ["id-a"] and outcome.skipped == []


def test_unsettled_or_changed_file_is_hashed(
    tmp_path: Path, emulator_url: str, api_key: str
) -> None:
    """Without a settled stat, or when the stat moved since the scan, the hash decides."""
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(1))
    scanned = _stat_of(image)
    assert _send(tmp_path, emulator_url, api_key, "0" * 64, {}).added == []
    image.write_bytes(png_bytes(2))  # rewritten: new ctime (and size) since the "scan"
    moved = _stat_of(image)
    assert moved != scanned
    outcome = _send(tmp_path, emulator_url, api_key, "0" * 64, {"a.png": scanned})
    assert outcome.added == [] and outcome.skipped[0][0] == "a.png"
    good_sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert _send(tmp_path, emulator_url, api_key, good_sha, {"a.png": scanned}).added == ["id-a"]


@given(
    st.integers(0, 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1),
)
def test_packed_file_stat_keeps_every_field(size: int, mtime: int, ctime: int, inode: int) -> None:
    """FileStat packs its four fields into 32 bytes (memory per file): nothing is lost, equal
    stats are equal (and hash equal), and any one field differing makes them differ."""
    packed = FileStat(size, mtime, ctime, inode)
    assert packed.fields() == (size, mtime, ctime, inode)
    assert (packed.size, packed.mtime_ns, packed.ctime_ns, packed.inode) == packed.fields()
    twin = FileStat(size=size, mtime_ns=mtime, ctime_ns=ctime, inode=inode)
    assert packed == twin and hash(packed) == hash(twin)
    assert pickle.loads(pickle.dumps(packed)) == packed
    assert FileStat(size, mtime, ctime, inode ^ 1) != packed
    assert FileStat(size, mtime ^ 1, ctime, inode) != packed
    assert repr(packed) == (
        f"FileStat(size={size}, mtime_ns={mtime}, ctime_ns={ctime}, inode={inode})"
    )


def test_file_stat_key_equals_the_stat_it_packs(tmp_path: Path) -> None:
    """The scanner compares a known FileStat with FileStat.key(os.stat(...)), plain bytes."""
    (tmp_path / "f").write_bytes(b"x" * 10)
    st_ = os.stat(tmp_path / "f")
    assert FileStat.key(st_) == FileStat.of(st_) == _stat_of(tmp_path / "f")
    assert FileStat.of(st_).size == 10


CONCEPTS = st.lists(
    st.tuples(st.text(min_size=1, max_size=5), st.sampled_from([0.0, 1.0])), max_size=3
).map(lambda pairs: tuple(sorted(dict(pairs).items())))


@given(
    concepts=CONCEPTS,
    path=ODD_TEXT,
    other_path=ODD_TEXT,
    source=ODD_TEXT,
    sha=st.sampled_from(["ab" * 32, "cd" * 32]),
)
def test_marker_labels_equal_the_labels_they_spell(
    concepts: tuple[tuple[str, float], ...], path: str, other_path: str, source: str, sha: str
) -> None:
    """MarkerLabels (held by the beliefs and an initial sync's adds instead of the metadata
    text) is interchangeable with the Labels spelling that text: equal both ways, equal
    hashes, the same metadata, and equal to another MarkerLabels exactly when the texts are."""
    lazy = MarkerLabels(concepts, source, path, sha)
    spelled = Labels(concepts, marker_only_metadata(source, path, sha))
    assert lazy.metadata == spelled.metadata
    assert lazy == spelled and spelled == lazy and hash(lazy) == hash(spelled)
    assert lazy.metadata_dict() == {
        MARKER_KEY: {"source": source, "path": marker_path(path), "sha256": sha}
    }
    assert lazy.metadata_dict() == json.loads(lazy.metadata) == spelled.metadata_dict()
    assert pickle.loads(pickle.dumps(lazy)) == lazy
    other = MarkerLabels(concepts, source, other_path, sha)
    same_text = marker_path(path) == marker_path(other_path)
    assert (lazy == other) is same_text and (other == spelled) is same_text
    assert lazy != MarkerLabels((*concepts, ("zz-extra", 1.0)), source, path, sha)
    assert lazy != Labels(concepts, "{}")


def test_ledger_reads_marker_only_metadata_as_marker_labels(tmp_path: Path) -> None:
    """The ledger hands back marker-only metadata as MarkerLabels (equal to what it stored)
    and any other metadata as plain Labels."""
    from syncd.model import InputRecord

    sha = "ab" * 32
    plain = Labels((("cat", 1.0),), marker_only_metadata("src", "a.png", sha))
    extra = Labels((), canonical_json({MARKER_KEY: {"source": "src"}, "k": "v"}))
    foreign = Labels((), marker_only_metadata("other-source", "b.png", sha))
    with Ledger.open(tmp_path / "l.db") as ledger:
        ledger.check_identity(source_name="src", remote="r")
        ledger.put_inputs(
            [
                InputRecord("a", "a.png", InputState.PROCESSED, sha, plain),
                InputRecord("b", "b.png", InputState.PROCESSED, sha, foreign),
                InputRecord("c", "c.png", InputState.PROCESSED, sha, extra),
            ]
        )
        got = ledger.inputs()
        assert isinstance(got["a"].labels, MarkerLabels) and got["a"].labels == plain
        assert type(got["b"].labels) is Labels and got["b"].labels == foreign
        assert type(got["c"].labels) is Labels and got["c"].labels == extra
        assert ledger.input("a") == got["a"]


def test_add_outcome_updates_the_intent_row_in_place(
    tmp_path: Path, emulator_url: str, api_key: str
) -> None:
    """The outcome of an add changes only the state columns of its intent row: the path,
    hash and labels written with the intent stay, and the row reads back as the whole
    record an upsert of the outcome would have written."""
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(1))
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    _send(tmp_path, emulator_url, api_key, sha, {})
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        row = ledger.input("id-a")
        assert ledger.attempts() == {}
    assert row is not None
    assert (row.path, row.sha256, row.error) == ("a.png", sha, None)
    assert row.labels == Labels((), marker_only_metadata("src", "a.png", sha))
    assert row.state is InputState.PENDING and row.code == 30001
    assert row.description


def test_read_up_to_goes_on_after_a_short_read() -> None:
    """After a first answer shorter than asked for, reading goes on to the size asked for or
    the end of the file, whichever comes first."""
    read_fd, write_fd = os.pipe()
    data = bytes(range(256)) * 40  # fits the pipe's buffer: written at once, then closed
    os.write(write_fd, data)
    os.close(write_fd)
    try:
        first = os.read(read_fd, 1000)
        assert read_up_to(read_fd, 5000, first) == data[:5000]  # the size asked for came first
        assert read_up_to(read_fd, len(data), data[:5000]) == data  # then the end
    finally:
        os.close(read_fd)


def test_an_add_of_a_file_read_in_pieces_is_sent_whole(
    tmp_path: Path, emulator_url: str, api_key: str, monkeypatch: Any
) -> None:
    """When every read answers at most 1,000 bytes (some FUSE file systems do), the add still
    reads the whole file and sends it: a short read is not taken for a changed file."""
    data = png_bytes(5, side=64)  # ~4 KB: five reads
    (tmp_path / "a.png").write_bytes(data)
    real_read = os.read
    monkeypatch.setattr("syncd.executor.os.read", lambda fd, n: real_read(fd, min(n, 1000)))
    # not settled: the bytes read are hashed, so a prefix would be refused as changed
    outcome = _send(tmp_path, emulator_url, api_key, hashlib.sha256(data).hexdigest(), {})
    assert outcome.added == ["id-a"] and outcome.skipped == []
