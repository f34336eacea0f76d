"""What one sync pass is asked to do (PassOptions) and what it did (SyncReport).

The report is plain data: the CLI prints it, `--json` dumps it, the ledger keeps its summary
and the exit code comes from it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncd.model import Operation

#: planned rows joined into one write of the JSON report
WRITE_CHUNK_ROWS = 1_000


@dataclass(frozen=True)
class PassOptions:
    local_only: bool = False  # compare with the ledger only; do not list the remote
    dry_run: bool = False  # send no write request, leave the ledger as it is
    allow_mass_delete: bool = False
    wait: bool = True  # wait (up to sync.poll_timeout) for processing and deletes to finish
    scope: tuple[str, ...] | None = None  # relative paths to rescan; None: the whole root
    kind: str = "reconcile"


@dataclass
class SyncReport:
    """Everything one pass did, for the summary line, `--json` and exit codes.

    `planned` keeps each operation's kind, id, path, reason and hash, not its labels.
    """

    dry_run: bool = False
    local_only: bool = False
    quick_check: bool = False  # the quick check found the tree in step: nothing was scanned
    files_seen: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    planned: list[Operation] = field(default_factory=list)
    added: int = 0
    adopted: int = 0
    relabeled: int = 0
    deleted: int = 0
    replaced: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    held: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    orphan_sidecars: list[tuple[str, str]] = field(default_factory=list)
    foreign: int | None = None
    missing_readded: int = 0
    drifted: list[str] = field(default_factory=list)
    pending: int = 0
    # whether the pass polled until its inputs were processed (not with --no-wait, nor in the
    # daemon's passes): only then are inputs still pending at the end a reason for exit 1
    waited: bool = True
    guard: str | None = None
    errors: list[str] = field(default_factory=list)
    unreachable: bool = False  # an error was the remote being down: exit 3, not 1
    retry_after: float | None = None  # the longest wait the remote asked for (Retry-After)
    vanished: list[str] = field(default_factory=list)  # paths whose input was deleted remotely
    explain: list[dict[str, str]] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.unreachable:
            return 3
        if self.guard:
            return 4
        if self.errors or self.failed or self.held or self.skipped:
            return 1
        if self.pending and self.waited:
            return 1  # the poll timed out with inputs still processing
        return 0

    def as_dict(self) -> dict[str, Any]:
        out = self.head()
        out["planned"] = [planned_entry(op) for op in self.planned]
        out["explain"] = self.explain
        out["exit_code"] = self.exit_code
        return out

    def head(self) -> dict[str, Any]:
        """Every field but the per-operation lists (`planned`, `explain`), plus the exit code."""
        # field by field: dataclasses.asdict would deep-copy every planned operation
        out = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("planned", "explain")
        }
        out["exit_code"] = self.exit_code
        return out

    def write_json(self, write: Callable[[str], Any]) -> None:
        """`as_dict()` as indented JSON, written piece by piece: at 100,000 planned operations
        `json.dumps(indent=2)` (a pure-Python encoder) holds millions of small strings at
        once, the largest allocation of an initial sync."""
        text = json.dumps(self.head(), indent=2, default=str)
        write(text[:-2])  # without the closing "\n}"
        for key, rows in (("planned", map(planned_entry, self.planned)), ("explain", self.explain)):
            # rows go out in chunks: with PYTHONUNBUFFERED (containers, some service managers)
            # every write is a system call, one per row of a 100,000-add plan
            chunk = [f',\n  "{key}": [']
            for n, row in enumerate(rows):
                chunk.append(("," if n else "") + "\n    " + _encode_row(row))
                if len(chunk) >= WRITE_CHUNK_ROWS:
                    write("".join(chunk))
                    chunk = []
            chunk.append("\n  ]")
            write("".join(chunk))
        write("\n}\n")


#: json.dumps(row, default=str), with the encoder built once: json.dumps builds one per call
#: when given `default` (a third of writing a 10,000-add report)
_encode_row = json.JSONEncoder(default=str).encode


def planned_entry(op: Operation) -> dict[str, str]:
    return {"op": op.kind.value, "input_id": op.input_id, "path": op.path, "reason": op.reason}


def summary_of(report: SyncReport) -> dict[str, Any]:
    return {
        "added": report.added,
        "adopted": report.adopted,
        "relabeled": report.relabeled,
        "deleted": report.deleted,
        "replaced": report.replaced,
        "failed": len(report.failed),
        "held": len(report.held),
        "pending": report.pending,
        "foreign": report.foreign,
        "files_seen": report.files_seen,
        "files_hashed": report.files_hashed,
        "bytes_sent": report.bytes_sent,
        "requests": sum(report.requests.values()),
        "seconds": report.seconds,
        "guard": report.guard,
        "errors": len(report.errors),
        "dry_run": report.dry_run,
    }
