"""The quick check (syncd/quickcheck.py): a stat-only walk that lets an unchanged tree skip the
scan, and an unchanged remote listing skip the fold.

Its whole value rests on one promise: it answers "in step" only when a full pass would plan
nothing. So besides the walk itself (on real folders, in one process and forked in two), the
tests here change the tree, the sidecars, the config, the ledger and the remote one way at a
time and check that each change sends the next pass down the full path, with the operations
a full pass plans, against the emulator over HTTP.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    KEY_ENV,
    REPO,
    Site,
    Traffic,
    api_call,
    concepts_of,
    make_site,
    open_site_engine,
    remote_inputs,
    run_syncd,
    site_config,
    wait_out_racy_window,
    wait_until,
)
from hypothesis import given
from hypothesis import strategies as st

from syncd import quickcheck
from syncd.config import load_config
from syncd.emulator import Emulator
from syncd.engine import Engine, _LinePrefetch
from syncd.errors import LedgerError
from syncd.ledger import IN_STEP_KEY, Ledger
from syncd.model import FileStat, InputRecord, InputState, Labels
from syncd.report import PassOptions, SyncReport
from syncd.sample import png_bytes
from syncd.scanner import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FileRecord, Patterns
from syncd.sidecar import is_sidecar_name

# --- the walk -----------------------------------------------------------------------------------


@given(st.text(alphabet="abJjPpGgNnOoSsTtXx.~-_ ", min_size=1, max_size=12))
def test_classifier_agrees_with_the_scanner(name: str) -> None:
    """One regex answers what the scanner's three checks answer, for any name."""
    include, exclude = Patterns(DEFAULT_INCLUDE), Patterns(DEFAULT_EXCLUDE)
    if exclude.match_name(name):
        want: str | None = "excluded"
    elif is_sidecar_name(name):
        want = "sidecar"
    elif include.match_name(name):
        want = "image"
    else:
        want = None
    match = quickcheck._classifier(DEFAULT_INCLUDE, DEFAULT_EXCLUDE)(name)
    assert (None if match is None else match.lastgroup) == want


@given(
    st.dictionaries(st.text("ab/é\udce9", min_size=1, max_size=4), st.integers(0, 3), max_size=8),
    st.sets(st.text("ab/é\udce9", min_size=1, max_size=4), max_size=3),
    st.integers(0, 3),
    st.booleans(),
)
def test_changed_lines_compare_by_position_only_when_aligned(
    rows: dict[str, int], added: set[str], touched: int, shuffle: bool
) -> None:
    """The walk's sorted lines and the ledger's rows: the per-position comparison answers
    exactly what the sets answer, or steps aside (None) when the two do not line up."""
    ledger = [quickcheck.stat_line(p, n, 1, 1, 1) for p, n in sorted(rows.items())]
    if shuffle:
        ledger.reverse()  # rows written out of path order
    now = dict(rows)
    for p in sorted(rows)[:touched]:
        now[p] += 10
    for p in added - rows.keys():
        now[p] = 0
    seen = sorted(quickcheck.stat_line(p, n, 1, 1, 1) for p, n in now.items())
    want = {line.partition("\0")[0] for line in set(ledger) ^ set(seen)}
    got = quickcheck._aligned_changes(seen, ledger)
    assert got is None or got == want
    if not shuffle and not (added - rows.keys()):
        assert got == want  # same paths, same order: answered by position


def _tree(root: Path) -> None:
    """Images, sidecars and everything the scanner skips, over nested folders."""
    for d in range(6):
        for i in range(5):
            (root / f"d{d}" / f"sub{i % 2}").mkdir(parents=True, exist_ok=True)
            (root / f"d{d}" / f"sub{i % 2}" / f"img{i}.png").write_bytes(b"x" * (i + d))
    (root / "top.JPG").write_bytes(b"top")
    (root / "top.json").write_text("{}")
    (root / "d0" / "notes.txt").write_text("a sidecar by name")
    (root / "d0" / "readme.md").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.png").write_bytes(b"excluded folder")
    (root / "d1" / "draft.png~").write_bytes(b"excluded name")
    (root / "folder.png").mkdir()  # a folder with an image's name is walked as a folder
    (root / "folder.png" / "inner.webp").write_bytes(b"inner")
    (root / "d2" / "link.png").symlink_to(root / "top.JPG")  # symlinks are not followed
    os.mkdir(os.fsencode(root / "d3") + b"/caf\xe9")  # a name that is not UTF-8
    (Path(os.fsdecode(os.fsencode(root / "d3") + b"/caf\xe9")) / "x.png").write_bytes(b"bytes")


def _config(tmp_path: Path, root: Path, **source: Any) -> Any:
    return load_config(
        site_config(tmp_path, root, "http://127.0.0.1:9", source_opts=source or None)
    )


def _expected_lines(root: Path) -> tuple[list[str], list[str]]:
    """What the walk should find, computed independently with os.walk and the scanner's
    rules."""
    include, exclude = Patterns(DEFAULT_INCLUDE), Patterns(DEFAULT_EXCLUDE)
    images, sidecars = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not exclude.match_name(d)]
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if exclude.match_name(name) or os.path.islink(path):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            s = os.lstat(path)
            line = quickcheck.stat_line(rel, s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino)
            if is_sidecar_name(name):
                sidecars.append(line)
            elif include.match_name(name):
                images.append(line)
    return sorted(images), sorted(sidecars)


def test_walk_sees_what_the_scanner_sees(tmp_path: Path) -> None:
    """Images and sidecars by relative path and stat; excluded names and folders, symlinks
    and other files left out; names that are not UTF-8 kept (surrogate-escaped)."""
    root = tmp_path / "root"
    root.mkdir()
    _tree(root)
    walk = quickcheck.walk(_config(tmp_path, root), fork=False)
    assert walk is not None
    images, sidecars = _expected_lines(root)
    assert len(images) == 6 * 5 + 1 + 1 + 1  # d*/sub*, top.JPG, folder.png/inner, café
    assert any("\udce9" in line for line in images)
    assert len(sidecars) == 2  # top.json, d0/notes.txt
    assert walk.images == len(images)
    assert walk.images_digest == quickcheck.lines_digest(images)
    assert walk.sidecars_digest == quickcheck.lines_digest(sidecars)


def test_forked_walk_equals_the_single_process_walk(tmp_path: Path) -> None:
    """`syncd reconcile` runs single-threaded, so its walk forks a child for half of the
    folders: in a real child process, the merged result is the same walk."""
    root = tmp_path / "root"
    root.mkdir()
    _tree(root)
    config = _config(tmp_path, root)
    assert config.config_path is not None
    script = (
        "import json, sys, threading\n"
        "from pathlib import Path\n"
        "from syncd import quickcheck\n"
        "from syncd.config import load_config\n"
        "assert threading.active_count() == 1\n"
        "assert quickcheck._can_fork()\n"
        "w = quickcheck.walk(load_config(Path(sys.argv[1])), fork=True)\n"
        "print(json.dumps([w.images_digest, w.sidecars_digest, w.images, w.settled]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(config.config_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    single = quickcheck.walk(config, fork=False)
    assert single is not None
    assert json.loads(out.stdout) == [
        single.images_digest,
        single.sidecars_digest,
        single.images,
        single.settled,
    ]


def test_walk_gives_up_on_what_it_does_not_model(tmp_path: Path) -> None:
    """Followed symlinks, a missing root, and a special file with an image name: None (the
    full scan then runs and reports them)."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").write_bytes(b"a")
    assert quickcheck.walk(_config(tmp_path, root), fork=False) is not None
    assert quickcheck.walk(_config(tmp_path, root, follow_symlinks=True), fork=False) is None
    assert quickcheck.walk(_config(tmp_path, tmp_path / "missing"), fork=False) is None
    os.mkfifo(root / "pipe.png")
    assert quickcheck.walk(_config(tmp_path, root), fork=False) is None


def test_a_fresh_sidecar_makes_the_walk_unsettled(tmp_path: Path) -> None:
    """A sidecar changed within the racy window proves nothing by its stat: no marker may be
    built from that walk."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "a.png").write_bytes(b"a")
    (root / "a.json").write_text("{}")
    config = _config(tmp_path, root)
    now = time.time_ns()
    fresh = quickcheck.walk(config, now_ns=now, fork=False)
    later = quickcheck.walk(config, now_ns=now + 3 * 10**9, fork=False)
    assert fresh is not None and later is not None
    assert not fresh.settled and later.settled
    assert quickcheck.marker_for(fresh, "fp", fresh.images_digest) is None
    assert quickcheck.marker_for(later, "fp", later.images_digest) is not None
    assert quickcheck.marker_for(later, "fp", None) is None  # a ledger row is not clean
    assert quickcheck.marker_for(later, "fp", quickcheck.lines_digest([])) is None  # differ


# --- the ledger's marker ------------------------------------------------------------------------


def test_any_write_to_files_inputs_or_meta_deletes_the_marker(tmp_path: Path) -> None:
    """Every writing method removes the marker: it can only describe the ledger as it is."""
    record = InputRecord("i1", "a.png", InputState.PROCESSED, "ab" * 32, Labels(), 30000, "", None)
    writes = [
        lambda ledger: ledger.record_files(
            [FileRecord("a.png", None, None, False, "x")], scope=None
        ),
        lambda ledger: ledger.put_inputs([record]),
        lambda ledger: ledger.set_input_states([("i1", InputState.FAILED, 1, "d", "e")]),
        lambda ledger: ledger.drop_inputs(["i1"]),
        lambda ledger: ledger.set_meta("blocked_ids", "{}"),
    ]
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.put_inputs([record])
        for write in writes:
            ledger.set_in_step_marker({"format": 1})
            assert ledger.in_step_marker() == {"format": 1}
            write(ledger)
            assert ledger.in_step_marker() is None
            assert ledger.get_meta(IN_STEP_KEY) is None
        # writing nothing, and the pass log, leave it alone
        ledger.set_in_step_marker({"format": 1})
        ledger.set_input_states([])
        ledger.put_inputs([])
        ledger.drop_inputs([])
        assert ledger.in_step_marker() == {"format": 1}
        ledger.finish_pass(ledger.start_pass("reconcile"), summary={}, exit_code=0)
        assert ledger.in_step_marker() == {"format": 1}


def test_ledger_builds_the_same_stat_lines_in_sql(tmp_path: Path) -> None:
    """The changed-file comparison reads the ledger's stat lines as one blob built by SQLite;
    they are the walk's lines, for names that are not UTF-8 or hold a newline."""
    names = ["a.png", "d/é.png", "d/caf\udce9.png", "new\nline.png", "z/" + "x" * 200 + ".png"]
    stats = [(7, 1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 2**40 + i) for i in range(5)]
    records = [
        FileRecord(n, FileStat(*st), "ab" * 32, True, None)
        for n, st in zip(names, stats, strict=True)
    ]
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.record_files(records, scope=None)
        lines = ledger.clean_file_lines()
        assert lines == sorted(
            quickcheck.stat_line(n, *st) for n, st in zip(names, stats, strict=True)
        )
        assert sorted(ledger.clean_file_line_list()) == lines
        ledger.record_files([*records, FileRecord("bad.png", None, None, False, "x")], scope=None)
        assert ledger.clean_file_lines() is None and ledger.clean_file_line_list() is None


def test_ledger_stat_line_set_edges(tmp_path: Path) -> None:
    """No rows, one row; and a damaged ledger whose path holds NULs (no file name can) is
    not trusted to split into lines: the quick check then takes the full path."""
    path = tmp_path / "ledger.db"
    stat = (7, 1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 42)
    with Ledger.open(path) as ledger:
        assert ledger.clean_file_line_list() == []
        ledger.record_files(
            [FileRecord("a.png", FileStat(*stat), "ab" * 32, True, None)], scope=None
        )
        assert ledger.clean_file_line_list() == [quickcheck.stat_line("a.png", *stat)]
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE files SET path = ? WHERE path = ?", (b"a\0\0b.png", b"a.png"))
    with Ledger.open(path) as ledger:
        assert ledger.clean_file_line_list() is None


# --- passes against the emulator ----------------------------------------------------------------


def _site(tmp_path: Path, emu: Emulator, **source: Any) -> Site:
    site = make_site(tmp_path, emu, source_opts=source or None)
    for i in range(12):
        site.image(f"c{i % 3}/img{i}.png", seed=i, concepts={"cat": i % 2 == 0}, metadata={"n": i})
    site.image("plain/solo.png", seed=99)
    return site


def _pass(site: Site, *, quick: bool = True, **options: Any) -> SyncReport:
    engine = open_site_engine(site)
    engine.quick_check = quick
    try:
        return engine.sync_once(PassOptions(**options))
    finally:
        engine.close()


def _in_step_site(tmp_path: Path, emu: Emulator, **source: Any) -> Site:
    """A site synced, at rest, and passed over once more so that it carries a marker with
    the remote's listing."""
    site = _site(tmp_path, emu, **source)
    assert _pass(site).exit_code == 0
    wait_out_racy_window(site.root)
    second = _pass(site)  # trusts the hashes now, ends in step: leaves the marker
    assert second.exit_code == 0 and not second.planned
    with site.open_ledger() as ledger:
        marker = ledger.in_step_marker()
    assert marker is not None and "remote" in marker
    return site


def _ops(report: SyncReport) -> list[tuple[str, str]]:
    return sorted((op.kind.value, op.path) for op in report.planned)


def test_an_unchanged_tree_and_remote_take_the_quick_path(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """In step: a local pass sends nothing and hashes nothing; a full pass only lists the
    remote (one page here) and reports what the full path would."""
    site = _in_step_site(tmp_path, emu)
    slow = _pass(site, quick=False, dry_run=True)
    traffic.clear()
    local = _pass(site, local_only=True)
    assert local.quick_check and local.exit_code == 0
    assert (local.files_seen, local.files_hashed, local.planned) == (13, 0, [])
    assert traffic.kinds() == []
    full = _pass(site)
    assert full.quick_check and full.exit_code == 0
    assert traffic.kinds() == ["ListInputs"]
    same = ("files_seen", "foreign", "pending", "failed", "held", "planned", "drifted")
    assert {k: getattr(full, k) for k in same} == {k: getattr(slow, k) for k in same}


def _touch_content(site: Site) -> None:
    path = site.root / "c0" / "img0.png"
    data = bytearray(path.read_bytes())
    data[-13] ^= 1  # a byte inside the IEND chunk's CRC: same size, other bytes
    path.write_bytes(bytes(data))


CHANGES = {
    "image bytes": (_touch_content, [("delete", "c0/img0.png")]),
    "new image": (lambda s: s.image("c1/new.png", seed=50), [("add", "c1/new.png")]),
    "image removed": (
        lambda s: (s.root / "plain/solo.png").unlink(),
        [("delete", "plain/solo.png")],
    ),
    "image renamed": (
        lambda s: (s.root / "plain/solo.png").rename(s.root / "plain/moved.png"),
        [("add", "plain/moved.png"), ("delete", "plain/solo.png")],
    ),
    "new image in a folder without sidecars": (
        lambda s: s.image("plain/new.png", seed=51),
        [("add", "plain/new.png")],
    ),
    "sidecar edited": (
        lambda s: (s.root / "c1/img1.json").write_text(json.dumps({"concepts": {"dog": True}})),
        [("patch", "c1/img1.png")],
    ),
    "sidecar added": (
        lambda s: (s.root / "plain/solo.json").write_text(json.dumps({"metadata": {"k": 1}})),
        [("patch", "plain/solo.png")],
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_local_change_leaves_the_quick_path(
    tmp_path: Path, emu: Emulator, change: str
) -> None:
    """After any change to images or sidecars (even one keeping sizes and names), neither a
    local nor a full pass ends by the quick check, and the pass plans what a full pass plans
    (changes to images in a folder without sidecars take the pass scoped to them)."""
    site = _in_step_site(tmp_path, emu)
    apply, want = CHANGES[change]
    apply(site)
    slow = _pass(site, quick=False, dry_run=True, local_only=True)
    local = _pass(site, dry_run=True, local_only=True)
    assert not local.quick_check
    assert _ops(local) == _ops(slow) == want
    full = _pass(site)
    assert not full.quick_check and full.exit_code == 0
    assert _ops(full) == want


def test_a_new_ledger_skips_the_walk_and_the_next_pass_leaves_the_marker(
    tmp_path: Path, emu: Emulator
) -> None:
    """A ledger that knows no file has no marker to compare with, and its pass nearly always
    sends something: it does not walk the tree first. Rebuilt from the remote (nothing to
    send), that pass leaves no marker; the next one, on the full path, leaves it, and the
    one after takes the quick path."""
    site = _in_step_site(tmp_path, emu)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)

    rebuilt = _pass(site)
    assert rebuilt.exit_code == 0 and not rebuilt.planned and rebuilt.adopted == 13
    with site.open_ledger() as ledger:
        assert ledger.has_files() and ledger.in_step_marker() is None
    full = _pass(site)
    assert not full.quick_check and not full.planned and full.files_hashed == 0
    with site.open_ledger() as ledger:
        assert ledger.in_step_marker() is not None
    assert _pass(site).quick_check


def test_a_config_change_takes_the_full_path(tmp_path: Path, emu: Emulator) -> None:
    """Settings that shape the plan are part of the marker: turning on folder labels
    relabels every image although no file changed."""
    site = _in_step_site(tmp_path, emu)
    text = site.config.read_text()
    site.config.write_text(text.replace("[source]\n", "[source]\nlabels_from_dirs = true\n", 1))
    report = _pass(site)
    assert not report.quick_check
    assert {op.kind.value for op in report.planned} == {"patch"}
    assert len(report.planned) == 13


def test_a_remote_change_by_someone_else_takes_the_full_path(tmp_path: Path, emu: Emulator) -> None:
    """The listing's digest changes when another client relabels one of our inputs or adds
    its own: the full pass then folds the listing, sees the drift and the foreign input."""
    site = _in_step_site(tmp_path, emu)
    victim = site.input_id("c2/img2.png")
    api_call(
        emu,
        "PATCH",
        {"action": "merge", "inputs": [{"id": victim, "data": {"concepts": [{"id": "owl"}]}}]},
    )
    local = _pass(site, local_only=True)
    assert local.quick_check  # a local pass does not look at the remote
    full = _pass(site)
    assert not full.quick_check
    assert full.drifted == [victim]
    assert _ops(full) == [("patch", "c2/img2.png")]
    assert "owl" not in concepts_of(remote_inputs(emu)[victim])

    api_call(
        emu,
        "POST",
        {"inputs": [{"id": "someone-elses", "data": {"image": {"base64": _png_b64()}}}]},
    )
    wait_until(
        lambda: remote_inputs(emu)["someone-elses"]["status"]["code"] == 30000,
        timeout=10,
        what="the foreign input processed",
    )
    before = _pass(site)
    assert not before.quick_check and before.foreign == 1
    after = _pass(site)
    assert after.quick_check and after.foreign == 1 and "someone-elses" in remote_inputs(emu)


def test_listing_digest_ignores_only_the_request_id() -> None:
    """Two answers that differ only in their request id digest alike, wherever the id is and
    however it is spaced; any other difference (a label, a status, a page's order) does not."""

    def body(req_id: str, concept: str = "cat", code: int = 30000, spaced: str = "") -> bytes:
        status = f'"status":{{"code":{spaced}10000,"description":"Ok","req_id":"{req_id}"}}'
        item = (
            f'{{"id":"a","data":{{"concepts":[{{"id":"{concept}","value":1}}],'
            f'"metadata":{{"req_id":"kept"}}}},"status":{{"code":{code}}}}}'
        )
        return f'{{{status},"inputs":[{item}]}}'.encode()

    def digest(*bodies: bytes) -> str:
        d = quickcheck.ListingDigest()
        for b in bodies:
            d.update(b)
        return d.hexdigest()

    same = digest(body("r1"), body("r2"))
    assert digest(body("9f" * 16), body('e\\"scaped')) == same
    spaced_id = body("r5").replace(b'"req_id":"r5"', b'"req_id" :  "r5"')
    assert digest(spaced_id, body("r6")) == same
    assert digest(body("r3", spaced=" "), body("r4")) != same  # other spacing: not equal
    assert digest(body("r1", concept="dog"), body("r2")) != same
    assert digest(body("r1", code=30002), body("r2")) != same
    assert digest(body("r1")) != same  # one page less
    assert b'"req_id":"kept"' in body("x")  # an input's own req_id key is not the envelope's


def test_a_remote_listed_in_other_spelling_costs_one_full_pass(
    tmp_path: Path, emu: Emulator
) -> None:
    """The listing's digest is taken of the answers' bytes: a remote that spells the same
    inputs otherwise (say a new server build) sends one pass down the full path, which
    plans nothing and leaves a marker for the new spelling."""
    site = _in_step_site(tmp_path, emu)
    with Ledger.open(site.ledger) as ledger:
        marker = ledger.in_step_marker()
        assert marker is not None
        ledger.set_in_step_marker({**marker, "remote": "0" * 64})
    other = _pass(site)
    assert not other.quick_check and other.exit_code == 0 and not other.planned
    assert _pass(site).quick_check


def _png_b64() -> str:
    return base64.b64encode(png_bytes(8, 8, seed=7)).decode()


def test_a_held_file_keeps_every_pass_on_the_full_path(tmp_path: Path, emu: Emulator) -> None:
    """A broken sidecar holds its image: the pass does not end in step, so no marker is left
    and every pass reports the held file."""
    site = _site(tmp_path, emu)
    (site.root / "c0" / "img3.json").write_text("{not json")
    assert _pass(site).added == 12
    wait_out_racy_window(site.root)
    for _ in range(2):
        report = _pass(site)
        assert not report.quick_check
        assert [p for p, _ in report.held] == ["c0/img3.png"]
    with site.open_ledger() as ledger:
        assert ledger.in_step_marker() is None


def test_the_marker_survives_a_local_pass_and_dies_with_any_write(
    tmp_path: Path, emu: Emulator
) -> None:
    """A local pass that changes nothing keeps what the marker knows of the remote; a pass
    that writes anything removes it until a pass ends in step again."""
    site = _in_step_site(tmp_path, emu)
    with site.open_ledger() as ledger:
        before = ledger.in_step_marker()
    assert _pass(site, local_only=True).quick_check
    with site.open_ledger() as ledger:
        assert ledger.in_step_marker() == before
    site.image("c0/extra.png", seed=77)
    assert _pass(site).added == 1
    with site.open_ledger() as ledger:
        assert ledger.in_step_marker() is None  # the new file's hash is not trusted yet
    wait_out_racy_window(site.root)
    report = _pass(site)
    assert not report.quick_check and not report.planned
    assert _pass(site).quick_check


def test_dry_runs_and_scoped_passes_leave_no_marker(tmp_path: Path, emu: Emulator) -> None:
    site = _site(tmp_path, emu)
    assert _pass(site).exit_code == 0
    wait_out_racy_window(site.root)
    assert not _pass(site, dry_run=True).planned
    assert not _pass(site, scope=("c0",)).planned
    with site.open_ledger() as ledger:
        assert ledger.in_step_marker() is None
    assert not _pass(site).quick_check
    assert _pass(site).quick_check


def test_reconcile_cli_takes_the_quick_path_in_its_own_process(
    tmp_path: Path, emu: Emulator
) -> None:
    """The whole process (forking its walk): `--json` says quick_check, and nothing else
    changes in the report."""
    site = _in_step_site(tmp_path, emu)
    outs = []
    for flags in (["--local"], []):
        done = run_syncd(
            ["reconcile", "--json", "--config", str(site.config), *flags],
            env={KEY_ENV: emu.api_key},
        )
        assert done.returncode == 0, done.stderr
        outs.append(json.loads(done.stdout))
    for out in outs:
        assert out["quick_check"] is True
        assert (out["files_seen"], out["files_hashed"], out["planned"]) == (13, 0, [])
    assert outs[1]["requests"] == {"list": 1}
    human = run_syncd(["reconcile", "--config", str(site.config)], env={KEY_ENV: emu.api_key})
    assert human.returncode == 0, human.stderr
    assert "in step: the folder and the remote listing are as the last pass left them" in (
        human.stdout
    )
    # one image touched (same bytes): the forked walk, the ledger's lines read in a thread
    # meanwhile, and a pass scoped to that image, which hashes it and plans nothing
    solo = site.root / "plain" / "solo.png"
    st_ = solo.stat()
    os.utime(solo, ns=(st_.st_atime_ns, st_.st_mtime_ns - 10**9))
    done = run_syncd(
        ["reconcile", "--json", "--local", "--dry-run", "--config", str(site.config)],
        env={KEY_ENV: emu.api_key},
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["files_seen"], out["files_hashed"], out["planned"]) == (13, 1, [])


def test_line_prefetch_reads_or_stops(tmp_path: Path) -> None:
    """The quick check's read of the ledger's lines in a thread: the same lines as read in
    the caller; stopped when not wanted, leaving the ledger usable; its error re-raised."""
    stat = (7, 1_700_000_000_123_456_789, 1_700_000_001_000_000_001, 42)
    records = [
        FileRecord(f"d{i % 7}/{i}.png", FileStat(*stat), "ab" * 32, True, None) for i in range(5000)
    ]
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        ledger.record_files(records, scope=None)
        want = ledger.clean_file_line_list()
        assert want is not None and len(want) == 5000
        assert _LinePrefetch(ledger).result() == want  # never started: read by the caller
        lines = _LinePrefetch(ledger)
        lines.start()
        assert lines.result() == want
        lines.cancel()  # asked for: nothing to stop
        for _ in range(20):
            lines = _LinePrefetch(ledger)
            lines.start()
            lines.cancel()
            assert ledger.clean_file_line_list() == want
        _LinePrefetch(ledger).cancel()  # never started
    lines = _LinePrefetch(ledger)
    lines.start()
    with pytest.raises(LedgerError, match="closed"):
        lines.result()


def test_quick_report_fields_match_a_full_pass(tmp_path: Path, emu: Emulator) -> None:
    """Field by field (timings and the flag aside), the quick report is the full one."""
    site = _in_step_site(tmp_path, emu)
    quick = _pass(site, local_only=True).as_dict()
    slow = _pass(site, quick=False, local_only=True).as_dict()
    for report in (quick, slow):
        for volatile in ("seconds", "quick_check"):
            report.pop(volatile)
    assert quick == slow


def test_dry_runs_report_alike_with_a_failed_input(tmp_path: Path, emu: Emulator) -> None:
    """An input whose processing failed does not keep the tree out of step (nothing is
    planned for it until its bytes change); quick and full dry runs then report alike."""
    site = _site(tmp_path, emu)
    bad = site.input_id("c0/img0.png")
    emu.set_faults(fail_processing_ids=[bad])
    assert [i for i, _, _ in _pass(site).failed] == [bad]
    wait_out_racy_window(site.root)
    assert not _pass(site).planned  # ends in step: leaves the marker
    for local in (True, False):
        quick = _pass(site, dry_run=True, local_only=local)
        slow = _pass(site, dry_run=True, local_only=local, quick=False)
        assert quick.quick_check and not slow.quick_check
        assert (quick.failed, quick.pending, quick.exit_code) == (
            slow.failed,
            slow.pending,
            slow.exit_code,
        )
    written = _pass(site, local_only=True)
    assert written.quick_check and [i for i, _, _ in written.failed] == [bad]
    assert written.exit_code == _pass(site, local_only=True, quick=False).exit_code


def test_reconcile_survives_an_ignored_sigchld(tmp_path: Path, emu: Emulator) -> None:
    """Started with SIGCHLD ignored (inherited from a supervisor), the command does not fork
    its walk (the kernel would reap the child) and still takes the quick path."""
    site = _in_step_site(tmp_path, emu)
    argv = [sys.executable, "-m", "syncd", "reconcile", "--local", "--json"]
    done = subprocess.run(
        [*argv, "--config", str(site.config)],
        env={**os.environ, KEY_ENV: emu.api_key},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),  # kept across exec
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["quick_check"] is True
    assert quickcheck._can_fork() is (threading.active_count() == 1)  # here: SIGCHLD default


# --- a pass scoped to the images that changed ----------------------------------------------------


def _flat_site(tmp_path: Path, emu: Emulator, **sync: Any) -> Site:
    """Twenty images in one folder without sidecars, synced and at rest, with a marker."""
    site = make_site(tmp_path, emu, sync=sync or None)
    for i in range(20):
        site.image(f"flat/img{i}.png", seed=i)
    assert _pass(site).added == 20
    wait_out_racy_window(site.root)
    assert not _pass(site).planned
    with site.open_ledger() as ledger:
        assert ledger.in_step_marker() is not None
    return site


@pytest.fixture
def scopes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...] | None]:
    """The scope of every `Engine._pass` (the real method runs; this only records)."""
    seen: list[tuple[str, ...] | None] = []
    real = Engine._pass

    def spy(self: Engine, options: PassOptions, *args: Any) -> None:
        seen.append(options.scope)
        real(self, options, *args)

    monkeypatch.setattr(Engine, "_pass", spy)
    return seen


def test_touched_images_are_rescanned_alone(
    tmp_path: Path, emu: Emulator, traffic: Traffic, scopes: list[tuple[str, ...] | None]
) -> None:
    """Three images touched (same bytes, new timestamps): a full dry run lists the remote once
    and, the remote unchanged, hashes those three only, plans nothing and reports the whole
    tree as seen; so does a local pass, which records their new stats. Those rows are not
    trusted until the touch is outside the racy window: the next pass takes the full path,
    ends in step, and the one after is quick again."""
    site = _flat_site(tmp_path, emu)
    touched = ("flat/img2.png", "flat/img5.png", "flat/img7.png")
    stamp = time.time_ns()
    for rel in touched:
        os.utime(site.root / rel, ns=(stamp, stamp))
    scopes.clear()
    traffic.clear()
    full = _pass(site, dry_run=True)
    assert scopes == [touched]
    assert (full.files_seen, full.files_hashed, full.planned, full.foreign) == (20, 3, [], 0)
    assert not full.quick_check
    assert traffic.kinds() == ["ListInputs"]
    traffic.clear()
    local = _pass(site, local_only=True)
    assert scopes == [touched, touched]
    assert (local.files_seen, local.files_hashed, local.planned) == (20, 3, [])
    assert traffic.kinds() == []
    wait_out_racy_window(site.root)
    scopes.clear()
    assert not _pass(site).planned
    assert scopes == [None]
    assert _pass(site).quick_check


def test_changed_images_plan_what_the_full_path_plans(
    tmp_path: Path, emu: Emulator, scopes: list[tuple[str, ...] | None]
) -> None:
    """New, removed, renamed and rewritten images in a folder without sidecars: the scoped
    pass plans exactly the full path's operations, sends them, and the remote ends in step."""
    site = _flat_site(tmp_path, emu)
    site.image("flat/new.png", seed=40)
    (site.root / "flat/img1.png").unlink()
    (site.root / "flat/img2.png").rename(site.root / "flat/moved.png")
    want = sorted(
        (op.kind.value, op.path)
        for op in _pass(site, quick=False, dry_run=True, local_only=True).planned
    )
    assert want == [
        ("add", "flat/moved.png"),
        ("add", "flat/new.png"),
        ("delete", "flat/img1.png"),
        ("delete", "flat/img2.png"),
    ]
    scopes.clear()
    report = _pass(site)
    assert scopes == [("flat/img1.png", "flat/img2.png", "flat/moved.png", "flat/new.png")]
    assert _ops(report) == want and report.exit_code == 0
    owned = {e["data"]["metadata"]["syncd"]["path"] for e in remote_inputs(emu).values()}
    assert owned == {f"flat/img{i}.png" for i in range(20) if i not in (1, 2)} | {
        "flat/moved.png",
        "flat/new.png",
    }


def test_the_delete_guard_counts_the_whole_ledger_in_a_scoped_pass(
    tmp_path: Path, emu: Emulator, scopes: list[tuple[str, ...] | None]
) -> None:
    """Two removals with `max_delete = 1`: the scoped pass stops before deleting, exactly as
    the full path does (its count of owned inputs is the ledger's, not the scope's)."""
    site = _flat_site(tmp_path, emu, max_delete=1)
    for rel in ("flat/img3.png", "flat/img4.png"):
        (site.root / rel).unlink()
    slow = _pass(site, quick=False, dry_run=True, local_only=True)
    scopes.clear()
    report = _pass(site, local_only=True)
    assert scopes == [("flat/img3.png", "flat/img4.png")]
    assert report.guard == slow.guard and report.guard is not None
    assert "2 of 20 inputs" in report.guard
    assert report.exit_code == slow.exit_code == 4
    assert len(remote_inputs(emu)) == 20
