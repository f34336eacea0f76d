"""Optional persistence of the emulator's inputs in a SQLite file (`--state`).

Write-through: every batch the store changes is saved in one transaction, so a demo killed at
any moment restarts with what it had acknowledged. Stats and faults are not persisted.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from syncd.emulator.store import StoredInput

_SCHEMA = """
CREATE TABLE IF NOT EXISTS inputs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    created_at REAL NOT NULL,
    modified_at REAL NOT NULL,
    deleted_at REAL,
    data TEXT NOT NULL,
    image BLOB,
    image_url TEXT,
    allow_duplicate_url INTEGER NOT NULL,
    dataset_ids TEXT NOT NULL,
    fail_reason TEXT
)
"""
_COLUMNS = (
    "id, seq, created_at, modified_at, deleted_at, data, image, image_url,"
    " allow_duplicate_url, dataset_ids, fail_reason"
)


class StateFile:
    """The inputs table of one SQLite file; callers serialise access (the store's lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def load(self) -> list[StoredInput]:
        """Every stored input, in creation order."""
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM inputs ORDER BY seq").fetchall()
        return [
            StoredInput(
                id=row[0],
                seq=row[1],
                created_at=row[2],
                modified_at=row[3],
                deleted_at=row[4],
                data=json.loads(row[5]),
                image_bytes=row[6],
                image_url=row[7],
                allow_duplicate_url=bool(row[8]),
                dataset_ids=json.loads(row[9]),
                fail_reason=row[10],
            )
            for row in rows
        ]

    def save(self, records: Iterable[StoredInput]) -> None:
        rows = [
            (
                r.id,
                r.seq,
                r.created_at,
                r.modified_at,
                r.deleted_at,
                json.dumps(r.data),
                r.image_bytes,
                r.image_url,
                int(r.allow_duplicate_url),
                json.dumps(r.dataset_ids),
                r.fail_reason,
            )
            for r in records
        ]
        with self._lock, self._transaction():
            self._db.executemany(
                f"INSERT OR REPLACE INTO inputs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows
            )

    def delete(self, ids: Iterable[str]) -> None:
        with self._lock, self._transaction():
            self._db.executemany("DELETE FROM inputs WHERE id = ?", [(i,) for i in ids])

    def clear(self) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM inputs")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
