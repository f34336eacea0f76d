"""The ledger: one SQLite file holding the local stat cache and what syncd believes the remote has.

The only module that talks to SQLite. sqlite-utils owns the schema (`Migrations`, each step in a
transaction with its bookkeeping row), and is imported only when a ledger is migrated: an
up-to-date ledger is recognised with plain queries, and a new one is made from a snapshot of the
SQL those steps leave (tested equal to them), so no pass pays the import (~30 ms, ~3 MB).
Everything else is plain SQL on the raw `sqlite3` connection, because per-row overhead matters
at a million files.

On disk: `<path>` (WAL mode, with `<path>-wal` / `<path>-shm` beside it while open) and
`<path>.lock`, which holds the pid of the process using the ledger. Tables:

- `files`  the stat cache, keyed by relative path: size, mtime_ns, ctime_ns, inode, sha256,
           trusted, error, seen_at.
- `inputs` the inputs syncd owns or is creating, keyed by input id: path, state, sha256,
           concepts, metadata (both NULL when the labels are unknown), code, description, error,
           attempts, updated_at.
- `passes` one row per sync pass; `meta` key/value (schema version, source name, remote).

Paths are stored as BLOBs of their UTF-8 bytes with `surrogateescape`, so a file name that is not
valid UTF-8 survives unchanged; metadata is stored as a BLOB with `surrogatepass` for the same
reason (the ownership marker carries the path).

Recovery from a corrupt or truncated ledger: move it aside (`Ledger.move_aside`, which is what
`syncd reconcile --rebuild-ledger` does) and run `syncd reconcile`; the inputs table is rebuilt
from the ownership markers the remote holds, and nothing is uploaded again.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from sys import intern
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import structlog

from syncd.errors import LedgerError, LedgerLocked, os_error_reason
from syncd.model import (
    FileStat,
    InputRecord,
    InputState,
    Labels,
    MarkerLabels,
    marker_only_metadata,
)
from syncd.quickcheck import lines_digest
from syncd.scanner import FileRecord, KnownFile

if TYPE_CHECKING:
    from sqlite_utils import Database
    from sqlite_utils.migrations import Migrations

log = structlog.get_logger(__name__)

RECOVERY = (
    "move it aside (syncd reconcile --rebuild-ledger does this) and run `syncd reconcile`: "
    "the ledger is rebuilt from the remote's ownership markers without re-uploading"
)
BUSY_TIMEOUT_MS = 5000
_SIDE_FILES = ("-wal", "-shm")
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26

# --- schema ---------------------------------------------------------------------------------

#: sqlite-utils' `Migrations` set name, and the table where it records each step applied
#: (`Migrations.migrations_table`: migration_set, name, applied_at), read by `_applied_names`.
_MIGRATION_SET = "syncd-ledger"
_MIGRATIONS_TABLE = "_sqlite_migrations"
#: The schema steps by name, in order (plain functions: defining them imports no sqlite-utils).
_STEPS: dict[str, Callable[[Database], None]] = {}


def _migration(name: str) -> Callable[[Callable[[Database], None]], Callable[[Database], None]]:
    """Register a schema step; its position in the order is the schema version it produces."""

    def register(fn: Callable[[Database], None]) -> Callable[[Database], None]:
        _STEPS[name] = fn
        return fn

    return register


@functools.cache
def _migrations() -> Migrations:
    """sqlite-utils' registry of the steps, built on first need (see `_migrate`): each step
    also records the schema version it produces in `meta`."""
    from sqlite_utils.migrations import Migrations  # noqa: PLC0415 - only to create or migrate

    migrations = Migrations(_MIGRATION_SET)
    for version, (name, fn) in enumerate(_STEPS.items(), start=1):
        migrations(name=name)(_versioned_step(name, fn, version))
    return migrations


def _versioned_step(
    name: str, fn: Callable[[Database], None], version: int
) -> Callable[[Database], None]:
    def step(db: Database) -> None:
        fn(db)
        db.execute(
            "INSERT INTO meta(key, value) VALUES ('schema_version', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            [str(version)],
        )

    step.__name__ = name
    return step


@_migration("0001_initial")
def _initial(db: Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key", not_null=["value"], strict=True)
    db["files"].create(
        {
            "path": bytes,
            "size": int,
            "mtime_ns": int,
            "ctime_ns": int,
            "inode": int,
            "sha256": str,
            "trusted": int,
            "error": str,
            "seen_at": float,
        },
        pk="path",
        not_null=["trusted", "seen_at"],
        strict=True,
    )
    db["inputs"].create(
        {
            "input_id": str,
            "path": bytes,
            "state": str,
            "sha256": str,
            "concepts": str,
            "metadata": bytes,
            "code": int,
            "description": str,
            "error": str,
            "attempts": int,
            "updated_at": float,
        },
        pk="input_id",
        not_null=["path", "state", "attempts", "updated_at"],
        defaults={"attempts": 0},
        strict=True,
    )
    db["inputs"].create_index(["path"])
    db["passes"].create(
        {
            "id": int,
            "kind": str,
            "started_at": float,
            "finished_at": float,
            "summary": str,
            "exit_code": int,
        },
        pk="id",
        not_null=["kind", "started_at"],
        strict=True,
    )


#: Meta key of the in-step marker (see syncd/quickcheck.py). Every method below that writes
#: the files, inputs or (other) meta rows deletes it in the same transaction
#: (`_clear_in_step`), so the marker can only describe the ledger as it is. (Triggers did the
#: same, but made a 100,000-row update inside one transaction ~100x slower.)
IN_STEP_KEY = "in_step"
_CLEAR_IN_STEP = f"DELETE FROM meta WHERE key = '{IN_STEP_KEY}'"


@_migration("0002_inputs_by_state")
def _inputs_by_state(db: Database) -> None:
    # the in-step check counts inputs by state; so does every status poll
    db["inputs"].create_index(["state"])


_MIGRATION_NAMES = list(_STEPS)
SCHEMA_VERSION = len(_MIGRATION_NAMES)

#: The schema every step above builds, as the SQL SQLite keeps for it, and sqlite-utils' record
#: of the steps: a new ledger is created from this in one transaction, without importing
#: sqlite-utils (~30 ms of an initial sync); an existing one is migrated step by step.
#: tests/test_ledger.py checks that both give the same database.
_NEW_LEDGER_SQL = (
    """CREATE TABLE "_sqlite_migrations" (
   "id" INTEGER PRIMARY KEY,
   "migration_set" TEXT,
   "name" TEXT,
   "applied_at" TEXT
)""",
    """CREATE UNIQUE INDEX "idx__sqlite_migrations_migration_set_name"
    ON "_sqlite_migrations" ("migration_set", "name")""",
    """CREATE TABLE "meta" (
   "key" TEXT PRIMARY KEY,
   "value" TEXT NOT NULL
) STRICT""",
    """CREATE TABLE "files" (
   "path" BLOB PRIMARY KEY,
   "size" INTEGER,
   "mtime_ns" INTEGER,
   "ctime_ns" INTEGER,
   "inode" INTEGER,
   "sha256" TEXT,
   "trusted" INTEGER NOT NULL,
   "error" TEXT,
   "seen_at" REAL NOT NULL
) STRICT""",
    """CREATE TABLE "inputs" (
   "input_id" TEXT PRIMARY KEY,
   "path" BLOB NOT NULL,
   "state" TEXT NOT NULL,
   "sha256" TEXT,
   "concepts" TEXT,
   "metadata" BLOB,
   "code" INTEGER,
   "description" TEXT,
   "error" TEXT,
   "attempts" INTEGER NOT NULL DEFAULT 0,
   "updated_at" REAL NOT NULL
) STRICT""",
    """CREATE INDEX "idx_inputs_path"
    ON "inputs" ("path")""",
    """CREATE TABLE "passes" (
   "id" INTEGER PRIMARY KEY,
   "kind" TEXT NOT NULL,
   "started_at" REAL NOT NULL,
   "finished_at" REAL,
   "summary" TEXT,
   "exit_code" INTEGER
) STRICT""",
    """CREATE INDEX "idx_inputs_state"
    ON "inputs" ("state")""",
)

# --- SQL for the hot paths ------------------------------------------------------------------

_UPSERT_FILE = """
INSERT INTO files(path, size, mtime_ns, ctime_ns, inode, sha256, trusted, error, seen_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(path) DO UPDATE SET
  size = excluded.size, mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,
  inode = excluded.inode, sha256 = excluded.sha256, trusted = excluded.trusted,
  error = excluded.error, seen_at = excluded.seen_at
"""
_NOT_SEEN = "path NOT IN (SELECT path FROM temp.seen_paths)"
#: The file rows a scan may reuse the hash of (given the same stat): columns, condition.
_KNOWN_COLUMNS = "SELECT path, size, mtime_ns, ctime_ns, inode, sha256, trusted, error IS NULL"
_KNOWN_WHERE = (
    "size IS NOT NULL AND mtime_ns IS NOT NULL AND ctime_ns IS NOT NULL "
    "AND inode IS NOT NULL AND sha256 IS NOT NULL"
)
#: A row joined with `temp.scope_bounds` is under that prefix (see `_scope_bounds`).
_IN_SCOPE = "(path = exact OR (path >= low AND path < high))"
#: The file rows a quick check may trust: a complete stat, a trusted hash, no error.
_CLEAN_FILES = (
    "FROM files WHERE trusted = 1 AND error IS NULL AND sha256 IS NOT NULL "
    "AND size IS NOT NULL AND mtime_ns IS NOT NULL AND ctime_ns IS NOT NULL "
    "AND inode IS NOT NULL"
)

# attempts: a new row starts at 0 (1 with attempt=True); it is kept, plus the new attempt, while
# the bytes stay the same; it starts over when the input is processed or its bytes change.
_UPSERT_INPUT = """
INSERT INTO inputs(input_id, path, state, sha256, concepts, metadata, code, description, error,
                   attempts, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(input_id) DO UPDATE SET
  path = excluded.path, state = excluded.state, sha256 = excluded.sha256,
  concepts = excluded.concepts, metadata = excluded.metadata, code = excluded.code,
  description = excluded.description, error = excluded.error,
  attempts = CASE
    WHEN excluded.state = 'processed' OR inputs.sha256 IS NOT excluded.sha256
      THEN excluded.attempts
    ELSE inputs.attempts + excluded.attempts
  END,
  updated_at = excluded.updated_at
"""
# plain `?` placeholders, the state given twice: numbered ones (`?` and a digit) bound to a
# sequence are deprecated since Python 3.12 and an error from 3.14
_SET_INPUT_STATE = """
UPDATE inputs SET state = ?, code = ?, description = ?, error = ?,
  attempts = CASE WHEN ? = 'processed' THEN 0 ELSE attempts END, updated_at = ?
WHERE input_id IN """
#: Ids bound in one UPDATE: well under SQLite's limit on bound parameters (999 before 3.32).
_IDS_PER_UPDATE = 500


def _placeholders(n: int) -> str:
    return "(" + ",".join("?" * n) + ")"


def _state_fields(
    state: InputState | str,
    code: int | None,
    description: str | None,
    error: str | None,
    now: float,
) -> tuple[Any, ...]:
    """The values `_SET_INPUT_STATE` binds before the ids."""
    value = InputState(state).value
    return (value, code, _text_in(description), _text_in(error), value, now)


_INPUT_COLUMNS = "input_id, path, state, sha256, concepts, metadata, code, description, error"


class Ledger:
    """One open ledger file, held exclusively by this process.

    Safe to call from several threads: all calls share one connection behind a re-entrant lock,
    and `transaction()` holds that lock for its whole block, so another thread's writes wait
    instead of joining (or being rolled back with) someone else's transaction.
    """

    def __init__(
        self, path: Path, conn: sqlite3.Connection, lock_fd: int | None, clock: Callable[[], float]
    ) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock_fd = lock_fd
        self._clock = clock
        self._mutex = threading.RLock()

    # --- lifecycle ------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: Path, *, clock: Callable[[], float] = time.time, lock: bool = True
    ) -> Ledger:
        """Open (creating if needed) and migrate the ledger at `path`, taking its process lock.

        Raises LedgerLocked when another process holds it, LedgerError when the file is corrupt,
        truncated or written by a newer syncd. `lock=False` opens an existing ledger read-only
        without the lock (for `syncd status` while a daemon runs): nothing is migrated, and any
        write raises LedgerError.
        """
        path = Path(path)
        if lock:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                # e.g. a [ledger] path this user cannot write: said plainly, not a traceback
                raise LedgerError(
                    f"cannot create the ledger's folder {path.parent}: {os_error_reason(exc)}"
                ) from None
        lock_fd = _acquire_lock(path) if lock else None
        try:
            conn = _connect(path, read_only=not lock)
            try:
                applied = _migrate(path, conn, read_only=not lock)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            _release_lock(lock_fd)
            raise
        log.info("ledger_opened", path=str(path), read_only=not lock, migrated=applied)
        return cls(path, conn, lock_fd, clock)

    def close(self) -> None:
        """Close the database (checkpointing the WAL) and release the process lock; idempotent."""
        with self._mutex:
            if self._conn is None:
                return
            conn, self._conn = self._conn, None
            try:
                conn.close()
            finally:
                _release_lock(self._lock_fd)
            log.debug("ledger_closed", path=str(self.path))

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def move_aside(path: Path) -> Path | None:
        """Rename the ledger (and its -wal/-shm) to `<path>.corrupt-<UTC timestamp>`.

        Returns the new path of the main file, or None if there was nothing to move. Takes the
        process lock while renaming, so a ledger in use elsewhere is never moved (LedgerLocked).
        """
        path = Path(path)
        present = [s for s in ("", *_SIDE_FILES) if Path(f"{path}{s}").exists()]
        if not present:
            return None
        lock_fd = _acquire_lock(path)
        try:
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            target = Path(f"{path}.corrupt-{stamp}")
            n = 1
            while any(Path(f"{target}{s}").exists() for s in ("", *_SIDE_FILES)):
                n += 1
                target = Path(f"{path}.corrupt-{stamp}-{n}")
            for suffix in present:
                os.replace(f"{path}{suffix}", f"{target}{suffix}")
        finally:
            _release_lock(lock_fd)
        log.warning("ledger_moved_aside", path=str(path), moved_to=str(target))
        return target

    # --- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group writes atomically: all of them land, or none. Nests (savepoints)."""
        with self._mutex, self._guard(), _atomic(self._live()):
            yield

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._mutex, self._guard():
            yield self._live()

    def _live(self) -> sqlite3.Connection:
        if self._conn is None:
            raise LedgerError(f"ledger {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            error = _ledger_error(self.path, exc)
            if error is None:
                raise
            raise error from exc

    # --- file cache -----------------------------------------------------------------------

    def known_files(self, scope: Sequence[str] | None = None) -> dict[str, KnownFile]:
        """Every cached path with a complete stat and a hash (what the scanner may trust);
        with `scope`, only those under its prefixes (a scoped pass reads no more)."""
        with self._reading() as conn:
            return _known(_rows_in_scope(conn, _KNOWN_COLUMNS, "files", _KNOWN_WHERE, scope))

    def known_files_by_folder(self) -> FolderCache:
        """`known_files()` read one folder at a time, as a full scan asks for them (it reads
        a folder's files one after the other): only one folder's rows are held at once,
        where the whole table would be ~20 MB at 100,000 files next to the beliefs."""
        return FolderCache(self)

    def known_files_in(self, folder: str) -> dict[str, KnownFile]:
        """`known_files()` of the files directly in `folder` ("" for the root)."""
        query = (
            f"{_KNOWN_COLUMNS} FROM files WHERE {_KNOWN_WHERE} AND instr(substr(path, ?), '/') = 0"
        )
        if folder:
            below = _path_in(folder) + b"/"
            params: tuple[Any, ...] = (len(below) + 1, below, below[:-1] + b"0")
            query += " AND path >= ? AND path < ?"
        else:
            params = (1,)
        with self._reading() as conn:
            return _known(conn.execute(query, params))

    def record_files(
        self,
        records: Iterable[FileRecord],
        *,
        scope: Sequence[str] | None,
        seen: Collection[str] | None = None,
    ) -> None:
        """Upsert `records`; then forget cached paths under `scope` that are not among them.

        `scope` None means the records are a full scan and replace the table. A scope prefix
        covers itself and everything below it ("" or "." covers everything), as in
        `LocalSnapshot.covers`. Records marked `unchanged` (the row already says exactly that)
        are not written again, so a pass over an unchanged tree writes nothing; `seen_at` is
        the time a row was last written. `seen`, when given, is every path the scan saw (the
        records' paths and those of unchanged files that have no record): no other row under
        `scope` is forgotten.
        """
        now = self._clock()
        if not isinstance(records, Sequence):
            records = list(records)  # read twice below
        if seen is None:
            seen = {r.path for r in records}
        full = scope is None or any(s in ("", ".") for s in scope)
        written = sum(1 for r in records if not r.unchanged)
        with self.transaction():
            conn = self._live()
            if written:
                conn.execute(_CLEAR_IN_STEP)
            # rows made one at a time as SQLite asks for them: a list of 100,000 rows (new int
            # objects for every stat field) was the initial sync's peak for a moment (~30 MB)
            conn.executemany(_UPSERT_FILE, (_file_row(r, now) for r in records if not r.unchanged))
            if full:
                # Every seen path now has a row (unchanged ones had one already), so when the
                # table holds exactly as many rows as paths were seen, none has vanished.
                total = conn.execute("SELECT count(*) FROM files").fetchone()[0]
                if total == len(seen):
                    log.debug("ledger_files_recorded", upserted=written, deleted=0)
                    return
            deleted = self._forget_unseen(conn, seen, None if full else scope)
        log.debug("ledger_files_recorded", upserted=written, deleted=deleted)

    def put_files(self, records: Iterable[FileRecord]) -> None:
        """Upsert file rows, in one transaction, forgetting none (the add writes the rows of
        the images it read first, with their intents)."""
        now = self._clock()
        rows = [_file_row(r, now) for r in records]
        with self.transaction():
            conn = self._live()
            if rows:
                conn.execute(_CLEAR_IN_STEP)
            conn.executemany(_UPSERT_FILE, rows)

    def _forget_unseen(
        self, conn: sqlite3.Connection, seen: Iterable[str], scope: Sequence[str] | None
    ) -> int:
        """Delete the cached paths (under `scope`; None: all) that are not in `seen`."""
        conn.execute("DELETE FROM temp.seen_paths")
        conn.executemany(
            "INSERT OR IGNORE INTO temp.seen_paths(path) VALUES (?)",
            ((_path_in(path),) for path in seen),
        )
        if scope is None:
            deleted = conn.execute(f"DELETE FROM files WHERE {_NOT_SEEN}").rowcount
        else:
            _fill_scope_bounds(conn, scope)
            deleted = conn.execute(
                "DELETE FROM files WHERE path IN "
                f"(SELECT path FROM temp.scope_bounds CROSS JOIN files WHERE {_IN_SCOPE}) "
                f"AND {_NOT_SEEN}"
            ).rowcount
        conn.execute("DELETE FROM temp.seen_paths")
        if deleted:
            conn.execute(_CLEAR_IN_STEP)
        return deleted

    def clean_file_lines(self) -> list[str] | None:
        """Every cached file as a sorted `quickcheck.stat_line`, when every row is clean (a
        complete stat, a trusted hash, no error); None when any is not."""
        with self._reading() as conn:
            total = conn.execute("SELECT count(*) FROM files").fetchone()[0]
            # quickcheck.stat_line, inlined: one line per file of the tree, made as the rows
            # come (fetching them all first held ~25 MB of row tuples at 100,000 files: the
            # peak of a full pass, which ends here)
            lines = [
                f"{p.decode('utf-8', 'surrogateescape')}\0{s} {m} {c} {i}"
                for p, s, m, c, i in conn.execute(
                    f"SELECT path, size, mtime_ns, ctime_ns, inode {_CLEAN_FILES}"
                )
            ]
        if len(lines) != total:
            return None
        lines.sort()
        return lines

    def clean_file_line_list(self) -> list[str] | None:
        """`clean_file_lines()` in the table's order (the order rows were first written, which
        is path order for rows a full scan wrote), built by SQLite: what the quick check
        compares with its walk to find the changed files. SQLite joins every line into one
        blob (a line holds one NUL, between a non-empty path and the stat, so two NULs part
        lines), which is decoded and split once: at 100,000 rows ~2x faster than a Python
        object per row."""
        with self._reading() as conn:
            total = conn.execute("SELECT count(*) FROM files").fetchone()[0]
            factory = conn.text_factory
            conn.text_factory = bytes  # the path blob's bytes, as stored
            try:
                clean, blob = conn.execute(
                    "SELECT count(*), group_concat(path || x'00' || size || ' ' || mtime_ns "
                    f"|| ' ' || ctime_ns || ' ' || inode, x'0000') {_CLEAN_FILES}"
                ).fetchone()
            finally:
                conn.text_factory = factory
        if clean != total:
            return None
        if not clean:
            return []
        lines = _path_out(blob).split("\0\0")
        # a path holding a NUL (only a damaged ledger can have one) would split its line
        return lines if len(lines) == clean else None

    def interrupt(self) -> None:
        """Stop the query another thread is running on this ledger (it raises LedgerError);
        a no-op when none is running. Any thread may call it, without the ledger's lock.
        SQLite interrupts every statement open on the connection, and any started while one
        is: call it only while no other statement is open (no unfinished cursor)."""
        conn = self._conn
        if conn is not None:
            conn.interrupt()

    def clean_files_digest(self) -> str | None:
        """`quickcheck.lines_digest` of `clean_file_lines()`, or None."""
        lines = self.clean_file_lines()
        return None if lines is None else lines_digest(lines)

    def has_files(self) -> bool:
        """Whether the file cache holds any row (False for a new ledger)."""
        with self._reading() as conn:
            return conn.execute("SELECT EXISTS (SELECT 1 FROM files)").fetchone()[0] == 1

    def in_step_marker(self) -> dict[str, Any] | None:
        """The marker the last clean pass left, if no write has happened since."""
        raw = self.get_meta(IN_STEP_KEY)
        if raw is None:
            return None
        try:
            marker = json.loads(raw)
        except ValueError:
            return None
        return marker if isinstance(marker, dict) else None

    def set_in_step_marker(self, marker: Mapping[str, Any]) -> None:
        self.set_meta(IN_STEP_KEY, json.dumps(dict(marker), sort_keys=True))

    def file_errors(self) -> list[tuple[str, str]]:
        """(path, error) of every cached file that could not be read, sorted by path."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT path, error FROM files WHERE error IS NOT NULL ORDER BY path"
            ).fetchall()
        return [(_path_out(p), e) for p, e in rows]

    # --- inputs ---------------------------------------------------------------------------

    def inputs(self, states: Iterable[InputState] | None = None) -> dict[str, InputRecord]:
        """Every input the ledger knows (or those in `states`), by input id."""
        query = f"SELECT {_INPUT_COLUMNS} FROM inputs"
        params: list[str] = []
        if states is not None:
            params = [InputState(state).value for state in states]
            query += f" WHERE state IN ({', '.join('?' * len(params))})"
        source = self.get_meta("source_name")
        with self._reading() as conn:
            out: dict[str, InputRecord] = {}
            for row in conn.execute(query, params):
                record = _input_out(row, source)
                out[record.input_id] = record  # keyed by the record's (interned) id: one str
            return out

    def inputs_in(self, scope: Sequence[str], ids: Iterable[str]) -> dict[str, InputRecord]:
        """The inputs whose path is under one of `scope`'s prefixes, and those with these
        ids: all a scoped pass plans with (at 100,000 inputs, loading all of them is ~0.5 s)."""
        query = f"SELECT {_INPUT_COLUMNS} FROM inputs"
        source = self.get_meta("source_name")
        with self._reading() as conn:
            out: dict[str, InputRecord] = {}
            for row in _rows_in_scope(conn, f"SELECT {_INPUT_COLUMNS}", "inputs", None, scope):
                record = _input_out(row, source)
                out[record.input_id] = record
            missing = [i for i in dict.fromkeys(ids) if i not in out]
            for start in range(0, len(missing), 500):
                chunk = missing[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                for row in conn.execute(f"{query} WHERE input_id IN ({marks})", chunk):
                    record = _input_out(row, source)
                    out[record.input_id] = record
            return out

    def owned_count(self) -> int:
        """How many inputs the ledger holds that are not being deleted."""
        with self._reading() as conn:
            return conn.execute(
                "SELECT count(*) FROM inputs WHERE state <> ?", (InputState.DELETING.value,)
            ).fetchone()[0]

    def input_states(self, states: Iterable[InputState]) -> dict[str, InputState]:
        """Input id -> state of the inputs in `states`, in ledger (insertion) order.

        What a status poll needs, without each input's path, labels and hash (at 100,000
        pending inputs whole records are ~70 MB)."""
        params = [InputState(state).value for state in states]
        query = (
            f"SELECT input_id, state FROM inputs WHERE state IN ({', '.join('?' * len(params))})"
        )
        with self._reading() as conn:
            return {i: _STATES.get(s) or InputState(s) for i, s in conn.execute(query, params)}

    def set_input_states(
        self, updates: Iterable[tuple[str, InputState, int | None, str | None, str | None]]
    ) -> None:
        """Set (input id, state, code, description, error) of existing inputs, in one
        transaction; unknown ids are ignored. The rest of each row (path, hash, labels) is
        left as it is; attempts start over when an input is processed, as in `put_inputs`."""
        now = self._clock()
        rows = list(updates)
        with self.transaction():
            conn = self._live()
            if rows:
                conn.execute(_CLEAR_IN_STEP)
            if len({row[0] for row in rows}) < len(rows):
                # an id given twice (never, by the executor or the poll): one UPDATE per row,
                # in order, since its history decides its attempts
                for input_id, *outcome in rows:
                    fields = _state_fields(*outcome, now)
                    conn.execute(_SET_INPUT_STATE + "(?)", (*fields, input_id))
                return
            # one UPDATE per outcome shared by many inputs (a batch's adds, a poll page:
            # nearly all alike), not one per input
            groups: dict[tuple[Any, ...], list[str]] = {}
            for input_id, *outcome in rows:
                groups.setdefault(tuple(outcome), []).append(input_id)
            for outcome, ids in groups.items():
                fields = _state_fields(*outcome, now)
                for at in range(0, len(ids), _IDS_PER_UPDATE):
                    part = ids[at : at + _IDS_PER_UPDATE]
                    conn.execute(_SET_INPUT_STATE + _placeholders(len(part)), (*fields, *part))

    def input(self, input_id: str) -> InputRecord | None:
        """The input with this id, or None."""
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_INPUT_COLUMNS} FROM inputs WHERE input_id = ?", (input_id,)
            ).fetchone()
        return None if row is None else _input_out(row, self.get_meta("source_name"))

    def put_inputs(self, records: Iterable[InputRecord], *, attempt: bool = False) -> None:
        """Upsert `records` in one transaction.

        The attempts counter is kept across updates; `attempt=True` (use it with the intent
        written before a request) adds one. It starts over when an input is processed or its
        bytes (sha256) change.
        """
        now = self._clock()
        rows = [_input_row(r, now, attempt) for r in records]
        with self.transaction():
            conn = self._live()
            if rows:
                conn.execute(_CLEAR_IN_STEP)
            conn.executemany(_UPSERT_INPUT, rows)

    def drop_inputs(self, ids: Iterable[str]) -> None:
        """Forget these inputs (unknown ids are ignored), in one transaction."""
        rows = [(i,) for i in ids]
        with self.transaction():
            conn = self._live()
            if rows:
                conn.execute(_CLEAR_IN_STEP)
            conn.executemany("DELETE FROM inputs WHERE input_id = ?", rows)

    def attempts(self) -> dict[str, int]:
        """Input id -> attempts, for the inputs with at least one attempt counted."""
        with self._reading() as conn:
            rows = conn.execute("SELECT input_id, attempts FROM inputs WHERE attempts > 0")
            return dict(rows.fetchall())

    def counts_by_state(self) -> dict[str, int]:
        """Number of inputs in each state, every state present (0 when none)."""
        with self._reading() as conn:
            rows = conn.execute("SELECT state, count(*) FROM inputs GROUP BY state").fetchall()
        counts = {state.value: 0 for state in InputState}
        counts.update(dict(rows))
        return counts

    def input_errors(self) -> list[tuple[str, str, str]]:
        """(input id, path, error) of every input carrying an error, sorted by path."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT input_id, path, error FROM inputs WHERE error IS NOT NULL "
                "ORDER BY path, input_id"
            ).fetchall()
        return [(i, _path_out(p), e) for i, p, e in rows]

    # --- passes and meta --------------------------------------------------------------------

    def start_pass(self, kind: str) -> int:
        """Record the start of a sync pass; returns its id."""
        with self.transaction():
            cur = self._live().execute(
                "INSERT INTO passes(kind, started_at) VALUES (?, ?)", (kind, self._clock())
            )
            return int(cur.lastrowid or 0)

    def finish_pass(self, pass_id: int, *, summary: Mapping[str, Any], exit_code: int) -> None:
        """Record the end of a pass with its summary (JSON) and exit code."""
        text = json.dumps(dict(summary), sort_keys=True, default=str)
        with self.transaction():
            self._live().execute(
                "UPDATE passes SET finished_at = ?, summary = ?, exit_code = ? WHERE id = ?",
                (self._clock(), text, exit_code, pass_id),
            )

    def last_pass(self) -> dict[str, Any] | None:
        """The most recently started pass (finished or not) as a dict, or None."""
        with self._reading() as conn:
            row = conn.execute(
                "SELECT id, kind, started_at, finished_at, summary, exit_code FROM passes "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        if row is None:
            return None
        keys = ("id", "kind", "started_at", "finished_at", "summary", "exit_code")
        result = dict(zip(keys, row, strict=True))
        result["summary"] = None if row[4] is None else json.loads(row[4])
        return result

    def get_meta(self, key: str) -> str | None:
        with self._reading() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            if key != IN_STEP_KEY:
                self._live().execute(_CLEAR_IN_STEP)
            self._live().execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def check_identity(self, *, source_name: str, remote: str) -> None:
        """Bind the ledger to one source and one remote app on first use; refuse any other.

        `remote` names the API base and the app (never the key), e.g. "<api base> <user>/<app>".
        """
        with self.transaction():
            stored = {k: self.get_meta(k) for k in ("source_name", "remote")}
            wanted = {"source_name": source_name, "remote": remote}
            mismatched = [k for k, v in stored.items() if v is not None and v != wanted[k]]
            if mismatched:
                raise LedgerError(
                    f"ledger {self.path} belongs to source {stored['source_name']!r} on "
                    f"{stored['remote']!r}, not to source {source_name!r} on {remote!r}; use a "
                    "different [ledger] path, or move this one aside "
                    "(syncd reconcile --rebuild-ledger) to rebuild it from the remote"
                )
            for key, value in wanted.items():
                if stored[key] is None:
                    self.set_meta(key, value)
                    log.info("ledger_identity_recorded", path=str(self.path), **{key: value})

    def size_bytes(self) -> int:
        """Bytes the ledger takes on disk (the file plus its -wal and -shm)."""
        total = 0
        for suffix in ("", *_SIDE_FILES):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total


# --- helpers --------------------------------------------------------------------------------


def _lock_path(path: Path) -> Path:
    return Path(f"{path}.lock")


def _acquire_lock(path: Path) -> int:
    """Take the exclusive process lock of the ledger at `path` without waiting; returns its fd."""
    lock_path = _lock_path(path)
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LedgerError(f"cannot open the ledger lock {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        log.warning("ledger_locked", path=str(path), holder_pid=holder)
        raise LedgerLocked(
            f"ledger {path} is in use by another syncd process (pid {holder}); stop it first, "
            "or use a different [ledger] path"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise LedgerError(f"cannot lock the ledger {path}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _release_lock(fd: int | None) -> None:
    # Closing the only descriptor drops the flock; the file stays (unlinking a lock file races).
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


#: Savepoint names: unique, so a nested block can never release or roll back to another's.
_SAVEPOINT_IDS = itertools.count(1)


@contextlib.contextmanager
def _atomic(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction around the block, or a savepoint inside an open one: sqlite-utils'
    `Database.atomic()`, on a connection in autocommit mode (`isolation_level=None`)."""
    if conn.in_transaction:
        savepoint = f"syncd_{next(_SAVEPOINT_IDS)}"
        conn.execute(f"SAVEPOINT {savepoint}")
        try:
            yield
        except BaseException:
            # an error (e.g. SQLITE_FULL, an interrupt) may have ended the whole transaction,
            # savepoint included: cleaning up then would hide it behind "no such savepoint"
            if conn.in_transaction:
                conn.execute(f"ROLLBACK TO SAVEPOINT {savepoint}")
                conn.execute(f"RELEASE SAVEPOINT {savepoint}")
            raise
        conn.execute(f"RELEASE SAVEPOINT {savepoint}")
        return
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        if conn.in_transaction:  # see above: the error may have rolled it back already
            conn.execute("ROLLBACK")
        raise
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # e.g. SQLITE_BUSY: the transaction is still open
            conn.execute("ROLLBACK")
        raise


def _connect(path: Path, *, read_only: bool) -> sqlite3.Connection:
    """Open the SQLite file (WAL mode unless read-only) and check that it is a healthy database."""
    try:
        if read_only and not path.is_file():
            raise LedgerError(f"ledger {path} does not exist")
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:  # a folder on the way this user may not enter, a name too long
        raise LedgerError(f"cannot open the ledger {path}: {os_error_reason(exc)}") from None
    target = f"file:{quote(os.fsencode(path))}?mode=ro" if read_only else str(path)
    try:
        conn = sqlite3.connect(
            target,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
            uri=read_only,
        )
    except sqlite3.Error as exc:
        _raise_ledger_error(path, exc)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA recursive_triggers = ON")  # as sqlite-utils' Database set it
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            # checkpoint every 32 MB of WAL, not every 4 MB: a pass rewrites the same pages
            # (an input's intent, its outcome, its status), copied once instead of several times
            conn.execute("PRAGMA wal_autocheckpoint = 8192")
        conn.execute("PRAGMA temp_store = MEMORY")
        problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise _corrupt(path, "; ".join(problems[:3]))
        conn.execute("CREATE TEMP TABLE seen_paths (path BLOB PRIMARY KEY) WITHOUT ROWID")
        conn.execute(
            "CREATE TEMP TABLE scope_bounds "
            "(n INTEGER PRIMARY KEY, exact BLOB NOT NULL, low BLOB NOT NULL, high BLOB NOT NULL)"
        )
    except sqlite3.Error as exc:
        conn.close()
        _raise_ledger_error(path, exc)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(path: Path, conn: sqlite3.Connection, *, read_only: bool) -> list[str]:
    """Apply pending migrations; refuse a ledger written by a newer syncd."""
    try:
        # the usual case, an up-to-date ledger, in plain SQL: no sqlite-utils import
        up_to_date = (
            _applied_names(conn) == set(_MIGRATION_NAMES)
            and _stored_version(conn) <= SCHEMA_VERSION
        )
    except sqlite3.Error as exc:
        _raise_ledger_error(path, exc)
    if up_to_date:
        return []
    if not read_only and _is_empty(conn):
        _create_schema(path, conn)
        return list(_MIGRATION_NAMES)
    from sqlite_utils import Database  # noqa: PLC0415 - only to migrate the schema

    migrations = _migrations()
    try:
        db = Database(conn, execute_plugins=False)
        applied = [m.name for m in migrations.applied(db)]
        unknown = [name for name in applied if name not in _MIGRATION_NAMES]
        version = _stored_version(conn)
        if unknown or version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {path} has schema version {max(version, len(applied))}, newer than this "
                f"syncd understands ({SCHEMA_VERSION}): upgrade syncd, or use a different "
                "[ledger] path"
            )
        pending = [m.name for m in migrations.pending(db)]
        if read_only:
            if pending:
                raise LedgerError(
                    f"ledger {path} has an older schema; run syncd once (run or reconcile) to "
                    "upgrade it"
                )
            return []
        migrations.apply(db)
    except sqlite3.Error as exc:
        _raise_ledger_error(path, exc)
    for name in pending:
        log.info("ledger_migration_applied", path=str(path), migration=name)
    return pending


def _is_empty(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def _create_schema(path: Path, conn: sqlite3.Connection) -> None:
    """Give an empty database the whole schema (`_NEW_LEDGER_SQL`), recorded as every step
    applied, in one transaction."""
    applied_at = str(datetime.now(UTC))
    try:
        with _atomic(conn):
            for statement in _NEW_LEDGER_SQL:
                conn.execute(statement)
            conn.executemany(
                f"INSERT INTO {_MIGRATIONS_TABLE}(migration_set, name, applied_at) "
                "VALUES (?, ?, ?)",
                [(_MIGRATION_SET, name, applied_at) for name in _MIGRATION_NAMES],
            )
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
    except sqlite3.Error as exc:
        _raise_ledger_error(path, exc)
    for name in _MIGRATION_NAMES:
        log.info("ledger_migration_applied", path=str(path), migration=name)


def _applied_names(conn: sqlite3.Connection) -> set[str]:
    """The steps sqlite-utils recorded as applied (none when its table does not exist yet)."""
    if not _table_exists(conn, _MIGRATIONS_TABLE):
        return set()
    query = f"SELECT name FROM {_MIGRATIONS_TABLE} WHERE migration_set = ?"
    return {name for (name,) in conn.execute(query, (_MIGRATION_SET,))}


def _stored_version(conn: sqlite3.Connection) -> int:
    if not _table_exists(conn, "meta"):
        return 0
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    try:
        return int(row[0]) if row else 0
    except ValueError:
        return 0


def _table_exists(conn: sqlite3.Connection, name: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(query, (name,)).fetchone() is not None


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text or "corrupt" in text


def _corrupt(path: Path, detail: str) -> LedgerError:
    log.error("ledger_corrupt", path=str(path), detail=detail)
    return LedgerError(f"ledger {path} is corrupt or truncated ({detail}); {RECOVERY}")


def _ledger_error(path: Path, exc: sqlite3.Error) -> LedgerError | None:
    """The LedgerError an SQLite error means; None for a programming error (let it propagate)."""
    if _is_corruption(exc):
        return _corrupt(path, str(exc))
    if isinstance(exc, sqlite3.OperationalError):
        return LedgerError(f"ledger {path}: {exc}")
    return None


def _raise_ledger_error(path: Path, exc: sqlite3.Error) -> NoReturn:
    error = _ledger_error(path, exc)
    if error is None:
        raise exc
    raise error from exc


def _known(rows: Iterable[tuple[Any, ...]]) -> dict[str, KnownFile]:
    """Rows of `_KNOWN_COLUMNS` by path, built row by row (not fetchall first: at a million
    files the raw rows would double the peak memory for a moment). Paths and hashes are
    interned: the scanner, the snapshot and the beliefs then share one str per path and per
    hash instead of holding a copy each (~20 MB at 100,000 files)."""
    return {
        intern(_path_out(p)): KnownFile(FileStat(s, m, c, i), intern(h), t == 1, n == 1)
        for p, s, m, c, i, h, t, n in rows
    }


class FolderCache(Mapping[str, KnownFile]):
    """The ledger's known files, read one folder at a time (`Ledger.known_files_by_folder`):
    a lookup in another folder than the last one reads that folder's rows and lets the
    previous ones go. Iterating or sizing it reads the whole table."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._folder: str | None = None
        self._rows: dict[str, KnownFile] = {}

    def _rows_for(self, path: str) -> dict[str, KnownFile]:
        folder = path.rpartition("/")[0]
        if folder != self._folder:
            self._rows = {}  # let the last folder's rows go before reading the next
            self._rows = self._ledger.known_files_in(folder)
            self._folder = folder
        return self._rows

    def __getitem__(self, path: str) -> KnownFile:
        return self._rows_for(path)[path]

    def get(self, path: str, default: Any = None) -> Any:
        return self._rows_for(path).get(path, default)

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and path in self._rows_for(path)

    def __iter__(self) -> Iterator[str]:
        return iter(self._ledger.known_files())

    def __len__(self) -> int:
        return len(self._ledger.known_files())


def _path_in(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _path_out(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _text_in(text: str | None) -> str | None:
    """Free text (errors, descriptions) made storable: lone surrogates become escapes."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _rows_in_scope(
    conn: sqlite3.Connection,
    select: str,
    table: str,
    where: str | None,
    scope: Sequence[str] | None,
) -> Iterator[tuple[Any, ...]]:
    """The rows `select` takes from `table` (those meeting `where`, if given) whose `path` is
    under one of `scope`'s prefixes, or all of them when `scope` is None or covers everything.
    The prefixes go into a temporary table joined with `table` in one query (one query per
    prefix cost ~10 ms per 1,000). A row under two nested prefixes comes twice: the callers
    key their results by path or id."""
    if scope is None or any(p in ("", ".") for p in scope):
        yield from conn.execute(
            f"{select} FROM {table}{'' if where is None else f' WHERE {where}'}"
        )
        return
    _fill_scope_bounds(conn, scope)
    # CROSS JOIN: the prefixes are the outer loop, each one an index search of `table`
    yield from conn.execute(
        f"{select} FROM temp.scope_bounds CROSS JOIN {table} "
        f"WHERE {'' if where is None else f'{where} AND '}{_IN_SCOPE}"
    )


def _fill_scope_bounds(conn: sqlite3.Connection, scope: Sequence[str]) -> None:
    """Put `scope`'s prefixes, in order, in the temporary table `_IN_SCOPE` reads."""
    conn.execute("DELETE FROM temp.scope_bounds")
    conn.executemany(
        "INSERT INTO temp.scope_bounds(exact, low, high) VALUES (?, ?, ?)",
        (_scope_bounds(prefix) for prefix in dict.fromkeys(scope)),
    )


def _scope_bounds(prefix: str) -> tuple[bytes, bytes, bytes]:
    """(the prefix itself, low, high): paths below it are the blobs in [low, high)."""
    below = _path_in(prefix.rstrip("/")) + b"/"
    return _path_in(prefix), below, below[:-1] + b"0"  # "0" is the byte after "/"


def _file_row(r: FileRecord, now: float) -> tuple[Any, ...]:
    size, mtime_ns, ctime_ns, inode = (None,) * 4 if r.stat is None else r.stat.fields()
    return (
        _path_in(r.path),
        size,
        mtime_ns,
        ctime_ns,
        inode,
        r.sha256,
        int(r.trusted),
        _text_in(r.error),
        now,
    )


def _input_row(r: InputRecord, now: float, attempt: bool) -> tuple[Any, ...]:
    labels = r.labels
    state = r.state
    return (
        r.input_id,
        _path_in(r.path),
        # (every intent of an initial sync comes here: the enum call and an empty list's
        # json.dumps cost more than the rest of the row)
        state.value if isinstance(state, InputState) else InputState(state).value,
        r.sha256,
        None
        if labels is None
        else (json.dumps([[c, v] for c, v in labels.concepts]) if labels.concepts else "[]"),
        None if labels is None else labels.metadata.encode("utf-8", "surrogatepass"),
        r.code,
        _text_in(r.description),
        _text_in(r.error),
        int(attempt and r.state != InputState.PROCESSED),
        now,
    )


#: state text -> InputState; a dict lookup, because calling the enum costs ~5 us per row
_STATES = {state.value: state for state in InputState}


#: Values repeated across many rows (status codes and descriptions), shared rather than
#: held once per input: one object per distinct value read in this process.
_SHARED: dict[Any, Any] = {}


def _shared(value: Any) -> Any:
    if value is None:
        return None
    if len(_SHARED) > 10_000:
        _SHARED.clear()  # free text after all: never let the table grow without bound
    return _SHARED.setdefault(value, value)


def _input_out(row: tuple[Any, ...], source: str | None) -> InputRecord:
    """An inputs row as an InputRecord; `source` is the ledger's source name (None: unknown)."""
    input_id, path, state, sha, concepts, metadata, code, description, error = row
    # ids, paths and hashes interned: shared with the scan's snapshot and the file cache
    path = intern(path.decode("utf-8", "surrogateescape"))
    sha = None if sha is None else intern(sha)
    labels: Labels | None = None
    if concepts is not None and metadata is not None:
        concept_values = (
            () if concepts == "[]" else tuple((str(c), float(v)) for c, v in json.loads(concepts))
        )
        text = metadata.decode("utf-8", "surrogatepass")
        if (
            source is not None
            and sha is not None
            and text == marker_only_metadata(source, path, sha)
        ):
            # the usual metadata, spelled again when needed rather than held (MarkerLabels)
            labels = MarkerLabels(concept_values, source, path, sha)
        else:
            labels = Labels(concept_values, text)
    return InputRecord(
        intern(input_id),
        path,
        _STATES.get(state) or InputState(state),
        sha,
        labels,
        _shared(code),
        _shared(description),
        error,
    )
