"""The ledger on real SQLite files: schema, locking, crash safety, corruption, round-trips."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import syncd
import syncd.ledger
from syncd.errors import LedgerError, LedgerLocked
from syncd.ledger import RECOVERY, SCHEMA_VERSION, Ledger
from syncd.model import (
    MARKER_KEY,
    FileStat,
    InputRecord,
    InputState,
    Labels,
    Marker,
    canonical_json,
)
from syncd.scanner import FileRecord, KnownFile

REPO = Path(__file__).resolve().parent.parent
SHA_A = "a" * 64
SHA_B = "b" * 64
#: A relative path whose bytes are not UTF-8, as os.fsdecode gives it to syncd.
ODD_PATH = b"caf\xe9/\xff\xfe image.jpg".decode("utf-8", "surrogateescape")


class Clock:
    """A settable clock, so timestamps in the ledger are predictable."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="db_path")
def _db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.db"


@pytest.fixture(name="clock")
def _clock() -> Clock:
    return Clock()


@pytest.fixture(name="ledger")
def _ledger(db_path: Path, clock: Clock) -> Iterator[Ledger]:
    with Ledger.open(db_path, clock=clock) as ledger:
        yield ledger


def file_record(path: str, n: int = 1, *, sha: str | None = SHA_A, error: str | None = None):
    st_ = None if error else FileStat(size=n, mtime_ns=n * 10, ctime_ns=n * 11, inode=n)
    return FileRecord(path=path, stat=st_, sha256=None if error else sha, trusted=True, error=error)


def input_record(input_id: str, path: str, state: InputState = InputState.PROCESSED, **kw):
    marker = Marker("src", path, SHA_A).as_dict()
    labels = Labels.build({"cat": True, "dog": False}, {"camera": "x", "n": 3, MARKER_KEY: marker})
    fields = {"sha256": SHA_A, "labels": labels} | kw
    return InputRecord(input_id=input_id, path=path, state=state, **fields)


# --- real subprocesses -----------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from syncd.ledger import Ledger
    from syncd.model import InputRecord, InputState

    def rec(i, state):
        return InputRecord(input_id=i, path=i + ".jpg", state=state, sha256=None, labels=None)

    ledger = Ledger.open(Path(sys.argv[1]))
    mode = sys.argv[2]
    if mode == "hold":
        print("ready", flush=True)
    elif mode == "inside":
        ledger.put_inputs([rec("first", InputState.PROCESSED)])
        with ledger.transaction():
            ledger.put_inputs([rec("second", InputState.ADDING)])
            print("ready", flush=True)
            sys.stdin.readline()
            ledger.drop_inputs(["first"])
    elif mode == "after":
        ledger.put_inputs([rec("first", InputState.PROCESSED)])
        with ledger.transaction():
            ledger.put_inputs([rec("second", InputState.ADDING)])
            ledger.drop_inputs(["first"])
        print("ready", flush=True)
    sys.stdin.readline()
    """
)


def spawn(db_path: Path, mode: str) -> subprocess.Popen[bytes]:
    """Start a child process that opens the ledger and says "ready" at the given point."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    deadline = time.monotonic() + 20
    while b"ready\n" not in seen and time.monotonic() < deadline:  # log lines may come first
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if readable else b""
        if readable and not chunk:
            break  # the child exited
        seen += chunk
    if b"ready\n" not in seen:
        proc.kill()
        proc.communicate(timeout=10)
        pytest.fail(f"child did not get ready: {seen.decode(errors='replace')}")
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL


# --- opening, schema, migrations ------------------------------------------------------------


def test_open_creates_schema_in_wal_mode(db_path: Path) -> None:
    """Opening a missing ledger creates its private directory, the file and the schema in WAL."""
    with Ledger.open(db_path) as ledger:
        assert ledger.get_meta("schema_version") == str(SCHEMA_VERSION)
        with ledger._reading() as live:  # a pass's WAL is checkpointed every 32 MB
            assert live.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 8192
    assert stat.S_IMODE(db_path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(db_path.stat().st_mode) & 0o077 == 0
    conn = sqlite3.connect(db_path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"files", "inputs", "passes", "meta", "_sqlite_migrations"} <= tables
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        migrations = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        assert migrations == [
            ("syncd-ledger", "0001_initial"),
            ("syncd-ledger", "0002_inputs_by_state"),
        ]
        index_cols = [r[2] for r in conn.execute("PRAGMA index_info('idx_inputs_path')")]
        assert index_cols == ["path"]
    finally:
        conn.close()


def test_reopen_keeps_data_and_applies_nothing_twice(db_path: Path) -> None:
    """A reopened ledger has every committed row and runs no migration again."""
    with Ledger.open(db_path) as ledger:
        ledger.record_files([file_record("a.jpg")], scope=None)
        ledger.put_inputs([input_record("i1", "a.jpg")])
        ledger.set_meta("k", "v")
    with Ledger.open(db_path) as ledger:
        assert set(ledger.known_files()) == {"a.jpg"}
        assert ledger.input("i1") == input_record("i1", "a.jpg")
        assert ledger.get_meta("k") == "v"
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT count(*) FROM _sqlite_migrations").fetchone()[0] == 2
    finally:
        conn.close()


@pytest.mark.parametrize(
    "tamper",
    [
        "INSERT INTO _sqlite_migrations(migration_set, name, applied_at) "
        "VALUES ('syncd-ledger', '0099_future', 'x')",
        "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
    ],
)
def test_newer_schema_is_refused(db_path: Path, tamper: str) -> None:
    """A ledger written by a newer syncd is refused with advice to upgrade, and stays unlocked."""
    Ledger.open(db_path).close()
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute(tamper)
    conn.close()
    with pytest.raises(LedgerError, match="upgrade syncd") as info:
        Ledger.open(db_path)
    assert not isinstance(info.value, LedgerLocked)
    assert str(db_path) in str(info.value)
    with pytest.raises(LedgerError, match="upgrade syncd"):
        Ledger.open(db_path)  # the failed open released the lock: same error, not LedgerLocked


# --- sqlite-utils only to create or migrate the schema ----------------------------------------

OPEN_AND_REPORT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    import syncd.ledger
    from syncd.ledger import Ledger

    with Ledger.open(Path(sys.argv[1]), lock=sys.argv[2] == "lock") as ledger:
        version = ledger.get_meta("schema_version")
    report = [syncd.ledger.__file__, version, "sqlite_utils" in sys.modules]
    print("report:", json.dumps(report))
    """
)


def open_in_fresh_interpreter(db_path: Path, *, lock: bool = True) -> tuple[str, bool]:
    """Open the ledger in a new interpreter: (schema version, whether sqlite_utils got imported)."""
    argv = [sys.executable, "-c", OPEN_AND_REPORT, str(db_path), "lock" if lock else "no-lock"]
    out = subprocess.run(
        argv, cwd=REPO, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("report: ")]  # logs beside
    module, version, imported = json.loads(line.removeprefix("report: "))
    assert module == syncd.ledger.__file__  # the child ran the code under test
    return version, imported


def schema_of(db_path: Path) -> list[tuple[str, str, str | None]]:
    """Every table and index of the file, with the SQL that made it."""
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()


def test_up_to_date_ledger_opens_without_importing_sqlite_utils(
    db_path: Path, tmp_path: Path
) -> None:
    """A new ledger gets the full schema (from its SQL snapshot); an up-to-date one opens,
    locked or read-only, without importing sqlite-utils (~30 ms and ~3 MB every pass)."""
    assert open_in_fresh_interpreter(db_path) == (str(SCHEMA_VERSION), False)
    with Ledger.open(tmp_path / "in-process.db") as ledger:
        ledger.put_inputs([input_record("i1", "a.jpg")])
    assert schema_of(db_path) == schema_of(tmp_path / "in-process.db")
    conn = sqlite3.connect(db_path)
    try:
        applied = conn.execute("SELECT migration_set, name FROM _sqlite_migrations").fetchall()
        assert applied == [
            ("syncd-ledger", "0001_initial"),
            ("syncd-ledger", "0002_inputs_by_state"),
        ]
    finally:
        conn.close()
    assert open_in_fresh_interpreter(db_path) == (str(SCHEMA_VERSION), False)
    assert open_in_fresh_interpreter(db_path, lock=False) == (str(SCHEMA_VERSION), False)


def test_a_new_ledger_has_the_schema_its_migrations_build(tmp_path: Path) -> None:
    """A new ledger is made from one SQL snapshot; sqlite-utils applying every step to an
    empty database gives the same tables, indexes and SQL, the same record of the steps
    (so later steps migrate it like any other) and the same schema version."""
    Ledger.open(tmp_path / "new.db").close()
    from sqlite_utils import Database

    stepped = sqlite3.connect(tmp_path / "stepped.db", isolation_level=None)
    try:
        syncd.ledger._migrations().apply(Database(stepped, execute_plugins=False))
    finally:
        stepped.close()

    def shape(path: Path) -> tuple[list[Any], ...]:
        conn = sqlite3.connect(path)
        try:
            return (
                sorted(conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")),
                conn.execute(
                    "SELECT id, migration_set, name FROM _sqlite_migrations ORDER BY id"
                ).fetchall(),
                conn.execute("SELECT key, value FROM meta").fetchall(),
                [row[:3] for row in conn.execute("PRAGMA table_info('inputs')")],
            )
        finally:
            conn.close()

    assert shape(tmp_path / "new.db") == shape(tmp_path / "stepped.db")


def downgrade_to_first_migration(db_path: Path) -> None:
    """Make the ledger what syncd left before 0002: only 0001_initial applied."""
    conn = sqlite3.connect(db_path)
    with conn:
        conn.execute("DROP INDEX idx_inputs_state")
        conn.execute("DELETE FROM _sqlite_migrations WHERE name = '0002_inputs_by_state'")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()


def test_old_schema_ledger_is_migrated_and_keeps_its_rows(db_path: Path, tmp_path: Path) -> None:
    """A ledger with only the first migration applied is refused read-only, and migrated (rows
    kept) by a locked open in a fresh interpreter; from then on it opens without sqlite-utils."""
    Ledger.open(tmp_path / "fresh.db").close()
    with Ledger.open(db_path) as ledger:
        ledger.put_inputs([input_record("i1", "a.jpg")])
        ledger.set_meta("k", "v")
    downgrade_to_first_migration(db_path)
    assert schema_of(db_path) != schema_of(tmp_path / "fresh.db")
    with pytest.raises(LedgerError, match="older schema"):
        Ledger.open(db_path, lock=False)
    assert open_in_fresh_interpreter(db_path) == (str(SCHEMA_VERSION), True)
    assert schema_of(db_path) == schema_of(tmp_path / "fresh.db")
    with Ledger.open(db_path) as ledger:
        assert ledger.input("i1") == input_record("i1", "a.jpg")
        assert ledger.get_meta("k") == "v"
    assert open_in_fresh_interpreter(db_path) == (str(SCHEMA_VERSION), False)


# --- the process lock -----------------------------------------------------------------------


def test_second_process_fails_fast_with_holder_pid(db_path: Path) -> None:
    """While another process holds the ledger, opening it fails at once naming that pid."""
    proc = spawn(db_path, "hold")
    try:
        started = time.monotonic()
        with pytest.raises(LedgerLocked) as info:
            Ledger.open(db_path)
        assert time.monotonic() - started < 1.0
        message = str(info.value)
        assert f"pid {proc.pid}" in message
        assert str(db_path) in message
        assert "stop it first, or use a different [ledger] path" in message
    finally:
        kill(proc)


def test_lock_is_freed_when_holder_is_killed(db_path: Path) -> None:
    """A SIGKILLed holder leaves no stale lock: the ledger opens right after."""
    kill(spawn(db_path, "hold"))
    Ledger.open(db_path).close()


def test_lock_is_per_open_ledger_and_released_on_close(db_path: Path) -> None:
    """A second open in the same process is refused too; close() releases the lock."""
    first = Ledger.open(db_path)
    with pytest.raises(LedgerLocked, match=f"pid {os.getpid()}"):
        Ledger.open(db_path)
    first.close()
    first.close()  # idempotent
    Ledger.open(db_path).close()


# --- crash safety ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kill_point", "expected"),
    [("inside", {"first": InputState.PROCESSED}), ("after", {"second": InputState.ADDING})],
)
def test_sigkill_leaves_each_transaction_all_or_nothing(
    db_path: Path, kill_point: str, expected: dict[str, InputState]
) -> None:
    """A process killed inside a transaction loses all of it; one killed after keeps all of it."""
    kill(spawn(db_path, kill_point))
    with Ledger.open(db_path) as ledger:
        assert {i: r.state for i, r in ledger.inputs().items()} == expected


# --- corruption and recovery ----------------------------------------------------------------


def test_garbage_file_is_a_clear_error_with_recovery(db_path: Path) -> None:
    """A file that is not SQLite is reported with its path and the recovery steps."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"this is not a database\n" * 500)
    with pytest.raises(LedgerError) as info:
        Ledger.open(db_path)
    message = str(info.value)
    assert not isinstance(info.value, LedgerLocked)
    assert str(db_path) in message
    assert RECOVERY in message
    assert "syncd reconcile --rebuild-ledger" in message


@pytest.mark.parametrize("keep", [50, 4096, 0.5])
def test_truncated_ledger_is_a_clear_error(db_path: Path, keep: float) -> None:
    """A real ledger cut short (header only, first page, half) is reported as corrupt."""
    with Ledger.open(db_path) as ledger:
        ledger.record_files((file_record(f"d/{i:05}.jpg", i) for i in range(5000)), scope=None)
    data = db_path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    db_path.write_bytes(data[:cut])
    with pytest.raises(LedgerError, match="corrupt or truncated") as info:
        Ledger.open(db_path)
    assert RECOVERY in str(info.value)


def test_move_aside_renames_ledger_and_side_files(db_path: Path) -> None:
    """move_aside renames the file and its -wal/-shm; a fresh ledger then opens in its place."""
    db_path.parent.mkdir(parents=True)
    db_path.write_bytes(b"garbage" * 100)
    Path(f"{db_path}-wal").write_bytes(b"wal")
    moved = Ledger.move_aside(db_path)
    assert moved is not None
    assert moved.name.startswith("ledger.db.corrupt-")
    assert moved.read_bytes() == b"garbage" * 100
    assert Path(f"{moved}-wal").read_bytes() == b"wal"
    assert not db_path.exists()
    assert not Path(f"{db_path}-wal").exists()
    again = Ledger.move_aside(db_path)
    assert again is None
    with Ledger.open(db_path) as ledger:
        assert ledger.inputs() == {}
    db_path.write_bytes(b"more garbage")
    assert Ledger.move_aside(db_path) not in (None, moved)  # a second one never overwrites


def test_move_aside_refuses_a_ledger_in_use(ledger: Ledger, db_path: Path) -> None:
    """A ledger held open is never moved aside."""
    with pytest.raises(LedgerLocked):
        Ledger.move_aside(db_path)
    assert db_path.exists()


# --- identity -------------------------------------------------------------------------------


def test_identity_is_recorded_then_enforced(db_path: Path) -> None:
    """The first source/remote is recorded; a later different one is refused, across reopen."""
    with Ledger.open(db_path) as ledger:
        ledger.check_identity(source_name="cats", remote="https://api.example/v2 me/app1")
        ledger.check_identity(source_name="cats", remote="https://api.example/v2 me/app1")
    with Ledger.open(db_path) as ledger:
        with pytest.raises(LedgerError, match="'dogs'") as info:
            ledger.check_identity(source_name="dogs", remote="https://api.example/v2 me/app1")
        assert "'cats'" in str(info.value)
        assert "different [ledger] path" in str(info.value)
        with pytest.raises(LedgerError, match="app2"):
            ledger.check_identity(source_name="cats", remote="https://api.example/v2 me/app2")
        assert ledger.get_meta("source_name") == "cats"


# --- the file cache -------------------------------------------------------------------------


def test_files_round_trip_including_non_utf8_paths(ledger: Ledger) -> None:
    """Stats, hashes, trust and errors come back exactly, whatever bytes the path holds."""
    bad_error = f"cannot read {ODD_PATH}: permission denied"
    untrusted = FileRecord("new.png", FileStat(5, 6, 7, 8), SHA_B, trusted=False, error=None)
    ledger.record_files(
        [file_record(ODD_PATH, 3), untrusted, file_record("locked.jpg", error=bad_error)],
        scope=None,
    )
    assert ledger.known_files() == {
        ODD_PATH: KnownFile(FileStat(3, 30, 33, 3), SHA_A, True),
        "new.png": KnownFile(FileStat(5, 6, 7, 8), SHA_B, False),
    }
    [(path, error)] = ledger.file_errors()
    assert path == "locked.jpg"
    assert error.startswith("cannot read caf\\udce9/")  # lone surrogates kept as escapes


def test_record_files_updates_in_place(ledger: Ledger) -> None:
    """A re-recorded path replaces its row; an error clears the trusted stat from known_files."""
    ledger.record_files([file_record("a.jpg", 1)], scope=None)
    ledger.record_files([file_record("a.jpg", 2, sha=SHA_B)], scope=None)
    assert ledger.known_files()["a.jpg"] == KnownFile(FileStat(2, 20, 22, 2), SHA_B, True)
    ledger.record_files([file_record("a.jpg", error="gone")], scope=None)
    assert ledger.known_files() == {}
    assert ledger.file_errors() == [("a.jpg", "gone")]


TREE = ["a", "a/1.jpg", "a/x/2.jpg", "ab/3.jpg", "a.jpg", "b/4.jpg", f"{ODD_PATH[:4]}/5.jpg"]


@pytest.mark.parametrize(
    ("scope", "gone"),
    [
        (None, {"a", "a/x/2.jpg", "ab/3.jpg", "a.jpg", "b/4.jpg", f"{ODD_PATH[:4]}/5.jpg"}),
        (["a"], {"a", "a/x/2.jpg"}),
        (["a/"], {"a/x/2.jpg"}),
        (["a/x"], {"a/x/2.jpg"}),
        (["b", "ab"], {"b/4.jpg", "ab/3.jpg"}),
        ([ODD_PATH[:4]], {f"{ODD_PATH[:4]}/5.jpg"}),
        (["."], {"a", "a/x/2.jpg", "ab/3.jpg", "a.jpg", "b/4.jpg", f"{ODD_PATH[:4]}/5.jpg"}),
        ([""], {"a", "a/x/2.jpg", "ab/3.jpg", "a.jpg", "b/4.jpg", f"{ODD_PATH[:4]}/5.jpg"}),
        ([], set()),
        (["c"], set()),
    ],
)
def test_record_files_forgets_only_inside_scope(
    ledger: Ledger, scope: list[str] | None, gone: set[str]
) -> None:
    """Unseen paths are forgotten only under the scanned prefixes, as LocalSnapshot.covers says."""
    ledger.record_files([file_record(p, i + 1) for i, p in enumerate(TREE)], scope=None)
    ledger.record_files([file_record("a/1.jpg", 9)], scope=scope)
    assert set(ledger.known_files()) == set(TREE) - gone
    assert ledger.known_files()["a/1.jpg"].stat.size == 9


@pytest.mark.parametrize(
    "scope",
    [
        ["a"],
        ["a/"],
        ["a/x"],
        ["b", "ab"],
        [ODD_PATH[:4]],
        ["a", "a/x", "a"],  # nested and repeated prefixes
        ["a.jpg", "a/1.jpg", "b/4.jpg"],
        [],
        ["c"],
        ["."],
        [""],
    ],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_scoped_reads_take_the_rows_under_the_scope(
    db_path: Path, scope: list[str], read_only: bool
) -> None:
    """known_files and inputs_in with a scope read exactly the rows under its prefixes, as
    LocalSnapshot.covers judges them (one query joined with a temporary table of the
    prefixes, refilled on each call), on a read-only ledger too."""
    with Ledger.open(db_path) as ledger:
        ledger.record_files([file_record(p, i + 1) for i, p in enumerate(TREE)], scope=None)
        ledger.put_inputs(input_record(f"id{i}", p) for i, p in enumerate(TREE))
    under = {
        p
        for p in TREE
        if any(s in ("", ".") or p == s or p.startswith(s.rstrip("/") + "/") for s in scope)
    }
    with Ledger.open(db_path, lock=not read_only) as ledger:
        everything, beliefs = ledger.known_files(), ledger.inputs()
        for _ in range(2):
            assert ledger.known_files(scope) == {p: everything[p] for p in under}
            extra = "id5"  # b/4.jpg: taken by id whether or not under the scope
            wanted = {i for i, b in beliefs.items() if b.path in under} | {extra}
            assert ledger.inputs_in(scope, [extra, "no-such-id"]) == {i: beliefs[i] for i in wanted}


def test_record_files_accepts_a_generator_of_many(ledger: Ledger) -> None:
    """A large full scan given as a generator lands whole, replacing the previous one."""
    ledger.record_files((file_record(f"old/{i}.jpg", i) for i in range(3000)), scope=None)
    ledger.record_files((file_record(f"new/{i}.jpg", i) for i in range(20_000)), scope=None)
    known = ledger.known_files()
    assert len(known) == 20_000
    assert all(p.startswith("new/") for p in known)


@settings(max_examples=60, deadline=None)
@given(names=st.lists(st.binary(min_size=1, max_size=30), min_size=1, max_size=5, unique=True))
def test_any_path_bytes_round_trip(tmp_path_factory: pytest.TempPathFactory, names) -> None:
    """Any byte string as a path comes back as the same surrogate-escaped str."""
    paths = [n.decode("utf-8", "surrogateescape") for n in names]
    with Ledger.open(tmp_path_factory.mktemp("p") / "l.db") as ledger:
        ledger.record_files([file_record(p) for p in paths], scope=None)
        ledger.put_inputs(input_record(f"id{i}", p) for i, p in enumerate(paths))
        assert set(ledger.known_files()) == set(paths)
        assert [r.path for r in ledger.inputs().values()] == paths


# --- inputs ---------------------------------------------------------------------------------


def test_inputs_round_trip_exactly(ledger: Ledger) -> None:
    """Every InputRecord field, labels included, comes back equal; unknown labels stay None."""
    records = [
        input_record("p1", ODD_PATH),
        input_record("p2", "b.jpg", InputState.PENDING, code=30001, description="Pending"),
        InputRecord("p3", "c.jpg", InputState.ADDING, sha256=None, labels=None),
        input_record("p4", "d.jpg", InputState.FAILED, code=30002, error="bad bytes ü"),
        input_record(
            "p5",
            "e.jpg",
            labels=Labels(
                (("\u00e9t\u00e9", 1.0), ("x", 0.0), ("y", 0.3)),
                canonical_json({"k": [1.5, None, "\ud83d\ude00"], "s": "\udcff"}),
            ),
        ),
    ]
    ledger.put_inputs(records)
    assert ledger.inputs() == {r.input_id: r for r in records}
    assert ledger.input("p1") == records[0]
    assert ledger.input("nope") is None


def test_put_inputs_upserts_and_drop_inputs_forgets(ledger: Ledger) -> None:
    """put_inputs replaces a known id's fields; drop_inputs removes ids and ignores unknown ones."""
    ledger.put_inputs([input_record("i1", "a.jpg", InputState.ADDING)])
    done = input_record("i1", "a2.jpg", InputState.PROCESSED, sha256=SHA_B, labels=None)
    ledger.put_inputs([done, input_record("i2", "b.jpg")])
    assert ledger.input("i1") == done
    ledger.drop_inputs(["i1", "unknown"])
    assert set(ledger.inputs()) == {"i2"}


def test_counts_and_errors_for_status(ledger: Ledger) -> None:
    """counts_by_state lists every state; input_errors gives (id, path, error) sorted by path."""
    ledger.put_inputs(
        [
            input_record("a", "z.jpg", InputState.FAILED, error="too big"),
            input_record("b", "y.jpg", InputState.FAILED, error="not an image"),
            input_record("c", "x.jpg", InputState.PENDING),
            input_record("d", "w.jpg"),
        ]
    )
    assert ledger.counts_by_state() == {
        "adding": 0,
        "pending": 1,
        "processed": 1,
        "failed": 2,
        "deleting": 0,
    }
    assert ledger.input_errors() == [("b", "y.jpg", "not an image"), ("a", "z.jpg", "too big")]


def test_attempts_are_kept_counted_and_reset(ledger: Ledger) -> None:
    """Attempts survive plain updates, grow with attempt=True, reset on success or new bytes."""
    adding = input_record("i", "a.jpg", InputState.ADDING)
    ledger.put_inputs([adding], attempt=True)
    ledger.put_inputs([adding], attempt=True)
    ledger.put_inputs([input_record("i", "a.jpg", InputState.FAILED, error="x")])
    assert ledger.attempts() == {"i": 2}
    ledger.put_inputs([input_record("i", "a.jpg", InputState.ADDING, sha256=SHA_B)], attempt=True)
    assert ledger.attempts() == {"i": 1}
    ledger.put_inputs([input_record("i", "a.jpg", InputState.PROCESSED, sha256=SHA_B)])
    assert ledger.attempts() == {}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([f"i{k}" for k in range(8)] + ["unknown"]),
            st.sampled_from([InputState.PENDING, InputState.PROCESSED, InputState.FAILED]),
            st.sampled_from([None, 30000, 30001, 30002]),
            st.sampled_from([None, "ok", "Download failed", "bad \udcff text"]),
            st.sampled_from([None, "30002 Download failed"]),
        ),
        max_size=30,
    )
)
def test_set_input_states_equals_one_update_per_row(
    tmp_path_factory: pytest.TempPathFactory, updates: list
) -> None:
    """Outcomes shared by many inputs are written with one UPDATE each: the rows end exactly
    as one UPDATE per row, in order, leaves them (last update of an id wins, unknown ids
    ignored, attempts reset once processed), also past the ids bound per statement."""
    folder = tmp_path_factory.mktemp("states")
    ids = [f"i{k}" for k in range(8)]
    rows = {}
    for name in ("grouped", "one-by-one"):
        with Ledger.open(folder / f"{name}.db", clock=lambda: 5.0) as ledger:
            ledger.put_inputs(
                [input_record(i, f"{i}.jpg", InputState.ADDING) for i in ids], attempt=True
            )
            if name == "grouped":
                ledger.set_input_states(updates)
            else:
                for update in updates:
                    ledger.set_input_states([update])
            with ledger._reading() as conn:
                rows[name] = conn.execute(
                    "SELECT input_id, state, code, description, error, attempts, updated_at "
                    "FROM inputs ORDER BY input_id"
                ).fetchall()
    assert rows["grouped"] == rows["one-by-one"]


def test_set_input_states_past_the_ids_bound_per_statement(ledger: Ledger) -> None:
    """More inputs with one outcome than one statement binds: every one is updated."""
    ids = [f"id{k:05d}" for k in range(syncd.ledger._IDS_PER_UPDATE * 2 + 7)]
    ledger.put_inputs(input_record(i, f"{i}.jpg", InputState.ADDING) for i in ids)
    ledger.set_input_states((i, InputState.PENDING, 30001, "pending", None) for i in ids)
    assert ledger.counts_by_state()["pending"] == len(ids)


# --- transactions and threads ---------------------------------------------------------------


def test_transaction_is_atomic_and_nests(ledger: Ledger) -> None:
    """A failing block undoes all its writes; a failing nested block undoes only its own."""
    with pytest.raises(RuntimeError), ledger.transaction():
        ledger.put_inputs([input_record("a", "a.jpg")])
        ledger.set_meta("k", "v")
        raise RuntimeError
    assert ledger.inputs() == {}
    assert ledger.get_meta("k") is None
    with ledger.transaction():
        ledger.put_inputs([input_record("b", "b.jpg")])
        with pytest.raises(RuntimeError), ledger.transaction():
            ledger.put_inputs([input_record("c", "c.jpg")])
            raise RuntimeError
    assert set(ledger.inputs()) == {"b"}


def test_nested_transactions_on_disk(db_path: Path, clock: Clock) -> None:
    """An inner block that raises undoes only its own writes when the outer block goes on; an
    outer raise undoes everything, committed inner blocks included; nothing is visible to
    another connection before the outermost block commits; what committed survives a reopen,
    and no failed block leaves the write lock held."""
    with Ledger.open(db_path, clock=clock) as ledger:
        other = sqlite3.connect(db_path, timeout=0, isolation_level=None)
        try:
            with ledger.transaction():
                ledger.put_inputs([input_record("outer", "o.jpg")])
                with pytest.raises(RuntimeError), ledger.transaction():
                    ledger.put_inputs([input_record("inner", "i.jpg")])
                    with ledger.transaction():  # committed, then undone with its parent
                        ledger.set_meta("innermost", "x")
                    raise RuntimeError
                with ledger.transaction():
                    ledger.set_meta("kept", "1")
                assert set(ledger.inputs()) == {"outer"}
                assert ledger.get_meta("innermost") is None
                assert other.execute("SELECT count(*) FROM inputs").fetchone()[0] == 0
            assert other.execute("SELECT count(*) FROM inputs").fetchone()[0] == 1

            with pytest.raises(RuntimeError), ledger.transaction():
                ledger.put_inputs([input_record("lost", "l.jpg")])
                with ledger.transaction():
                    ledger.set_meta("lost", "1")
                raise RuntimeError
            other.execute("BEGIN IMMEDIATE")  # the ledger holds no write lock any more
            other.execute("ROLLBACK")
        finally:
            other.close()
    with Ledger.open(db_path) as ledger:
        assert set(ledger.inputs()) == {"outer"}
        assert ledger.get_meta("kept") == "1"
        assert [ledger.get_meta(k) for k in ("innermost", "lost")] == [None, None]


def test_other_threads_wait_for_an_open_transaction(ledger: Ledger) -> None:
    """A write from another thread neither joins nor is rolled back with a running transaction."""
    inside, release, other_done = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        try:
            with ledger.transaction():
                ledger.put_inputs([input_record("mine", "m.jpg")])
                inside.set()
                release.wait(10)
                raise RuntimeError("roll back")
        except RuntimeError:
            pass

    def other() -> None:
        try:
            ledger.put_inputs([input_record("theirs", "t.jpg")])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        other_done.set()

    t1 = threading.Thread(target=holder)
    t1.start()
    assert inside.wait(10)
    t2 = threading.Thread(target=other)
    t2.start()
    assert not other_done.wait(0.1)  # blocked behind the open transaction
    release.set()
    t1.join(10)
    t2.join(10)
    assert not errors
    assert set(ledger.inputs()) == {"theirs"}


def test_many_threads_write_and_read_concurrently(ledger: Ledger) -> None:
    """Eight threads upserting and reading at once lose no write and raise nothing."""
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(50):
                ledger.put_inputs([input_record(f"t{n}-{k}", f"{n}/{k}.jpg")], attempt=True)
                ledger.counts_by_state()
                ledger.input(f"t{n}-{k}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert ledger.counts_by_state()["processed"] == 400


# --- passes, meta, misc ---------------------------------------------------------------------


def test_passes_are_recorded(ledger: Ledger, clock: Clock) -> None:
    """start_pass/finish_pass record kind, times, summary and exit code; last_pass reads it."""
    assert ledger.last_pass() is None
    first = ledger.start_pass("reconcile")
    ledger.finish_pass(first, summary={"added": 3}, exit_code=0)
    clock.now = 2_000.0
    second = ledger.start_pass("daemon")
    assert second > first
    assert ledger.last_pass() == {
        "id": second,
        "kind": "daemon",
        "started_at": 2_000.0,
        "finished_at": None,
        "summary": None,
        "exit_code": None,
    }
    clock.now = 2_005.0
    ledger.finish_pass(second, summary={"added": 1, "errors": ["x"]}, exit_code=3)
    last = ledger.last_pass()
    assert last is not None
    assert (last["finished_at"], last["summary"], last["exit_code"]) == (
        2_005.0,
        {"added": 1, "errors": ["x"]},
        3,
    )


def test_meta_and_size(ledger: Ledger) -> None:
    """Meta values are stored and overwritten; size_bytes counts the file and its WAL."""
    ledger.set_meta("k", "1")
    ledger.set_meta("k", "2")
    assert ledger.get_meta("k") == "2"
    assert ledger.size_bytes() >= ledger.path.stat().st_size > 0


def test_closed_ledger_refuses_calls(db_path: Path) -> None:
    """Using a closed ledger raises LedgerError instead of touching a closed connection."""
    ledger = Ledger.open(db_path)
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.inputs()
    with pytest.raises(LedgerError, match="closed"):
        ledger.put_inputs([input_record("a", "a.jpg")])


# --- read-only access for status ------------------------------------------------------------


def test_read_only_open_reads_beside_a_running_holder(db_path: Path) -> None:
    """lock=False reads committed rows while another process holds the ledger, and never writes."""
    proc = spawn(db_path, "after")
    try:
        with Ledger.open(db_path, lock=False) as ledger:
            assert {i: r.state for i, r in ledger.inputs().items()} == {"second": InputState.ADDING}
            with pytest.raises(LedgerError, match="readonly"):
                ledger.put_inputs([input_record("x", "x.jpg")])
    finally:
        kill(proc)


def test_read_only_open_of_a_closed_or_missing_ledger(db_path: Path) -> None:
    """lock=False opens a cleanly closed ledger, and refuses a missing one without creating it."""
    with pytest.raises(LedgerError, match="does not exist"):
        Ledger.open(db_path, lock=False)
    assert not db_path.exists()
    with Ledger.open(db_path) as ledger:
        ledger.set_meta("k", "v")
    with Ledger.open(db_path, lock=False) as ledger, Ledger.open(db_path) as writer:
        writer.set_meta("k", "w")
        assert ledger.get_meta("k") == "w"


def test_known_files_read_folder_by_folder_answer_like_the_whole_table(ledger: Ledger) -> None:
    """The folder-at-a-time cache a full scan reads gives, for every path asked (in any
    order, folders revisited, names sorting around "/" and "0"), what known_files() gives."""
    paths = [
        "top.jpg",
        "a/1.jpg",
        "a/b/2.jpg",
        "a/b/c/3.jpg",
        "a b/4.jpg",
        "a0/5.jpg",
        "a-/6.jpg",
        ODD_PATH,
        "a/b/error.jpg",
    ]
    records = [file_record(p, n) for n, p in enumerate(paths[:-1], start=1)]
    ledger.record_files([*records, file_record(paths[-1], error="unreadable")], scope=None)
    whole = ledger.known_files()
    cache = ledger.known_files_by_folder()
    asked = [*paths, "a/missing.jpg", "nowhere/x.jpg", "a/1.jpg", "top.jpg", "a/b/2.jpg"]
    for path in asked:
        assert cache.get(path) == whole.get(path), path
        assert (path in cache) is (path in whole)
    assert dict(cache.items()) == whole and len(cache) == len(whole) == len(paths) - 1
    assert ledger.known_files_in("a") == {"a/1.jpg": whole["a/1.jpg"]}
    assert set(ledger.known_files_in("")) == {"top.jpg"}


def test_sql_placeholders_are_never_numbered() -> None:
    """Numbered placeholders (`?` and a digit) bound to a sequence are deprecated since
    Python 3.12 and an error from 3.14 (sqlite3.ProgrammingError); CI's Python may not warn."""
    numbered = re.compile(r"\?\d")
    offenders = [
        f"{path.name}:{n}"
        for path in sorted((Path(syncd.__file__).parent).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if numbered.search(line)
    ]
    assert offenders == []


@pytest.mark.parametrize("lock", [True, False])
def test_a_ledger_path_that_cannot_be_reached_is_a_ledger_error(tmp_path: Path, lock: bool) -> None:
    """A folder on the way that cannot be created or entered (here a name over the file
    system's 255 bytes: ENAMETOOLONG, which pathlib does not read as "absent") is said as a
    LedgerError with the reason, for a pass (lock) and for `syncd status` (no lock)."""
    path = tmp_path / ("x" * 300) / "ledger.db"
    with pytest.raises(LedgerError, match="File name too long"):
        Ledger.open(path, lock=lock)
