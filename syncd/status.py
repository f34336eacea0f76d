"""`syncd status`: what the ledger knows, what is wrong, and what the remote counts.

Reads the ledger without taking its process lock, so it works while a daemon runs.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncd.config import Config, resolve_api_key
from syncd.errors import ApiError, ConfigError, LedgerError, os_error_reason
from syncd.ledger import Ledger
from syncd.sidecar import display_path


def collect_status(config: Config, *, remote: bool = True) -> dict[str, Any]:
    """Everything `syncd status` shows, as plain data (also its `--json` output)."""
    info: dict[str, Any] = {
        "source": config.source.name,
        "root": str(config.source.root),
        "ledger": str(config.ledger.path),
    }
    if not _exists(config.ledger.path):
        info["ledger_exists"] = False
    else:
        info["ledger_exists"] = True
        ledger = Ledger.open(config.ledger.path, lock=False)
        try:
            info["inputs_by_state"] = ledger.counts_by_state()
            info["held_files"] = [
                {"path": path, "reason": reason} for path, reason in ledger.file_errors()
            ]
            info["failed_inputs"] = [
                {"input_id": input_id, "path": path, "reason": reason}
                for input_id, path, reason in ledger.input_errors()
            ]
            blocked = ledger.get_meta("blocked_ids")
            info["blocked_ids"] = json.loads(blocked) if blocked else {}
            info["last_pass"] = ledger.last_pass()
        finally:
            ledger.close()
    if remote:
        info["remote_counts"] = _remote_counts(config)
    return info


def _remote_counts(config: Config) -> dict[str, Any]:
    try:
        key = resolve_api_key(config)
    except ConfigError as exc:
        return {"error": str(exc)}
    from syncd.api import api_for  # noqa: PLC0415 - requests only when the remote is asked

    api = api_for(config, key, workers=1, max_attempts=2)
    try:
        return dict(api.input_counts())
    except ApiError as exc:
        return {"error": str(exc)}
    finally:
        api.close()


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_status(info: dict[str, Any]) -> str:
    """The human-readable form of `collect_status`'s result."""
    lines = [f"source {info['source']}  root {info['root']}", f"ledger {info['ledger']}"]
    if not info.get("ledger_exists"):
        lines.append("  no ledger yet: run `syncd reconcile` first")
    else:
        states = info.get("inputs_by_state") or {}
        summary = ", ".join(f"{k} {v}" for k, v in sorted(states.items())) or "none"
        lines.append(f"inputs: {summary}")
        last = info.get("last_pass")
        if last:
            lines.append(
                f"last pass: {last.get('kind')} started {_when(last.get('started_at'))}, "
                f"finished {_when(last.get('finished_at'))}, exit code {last.get('exit_code')}"
            )
        for row in info.get("held_files") or ():
            lines.append(f"held    {row['path']}: {row['reason']}")
        for row in info.get("failed_inputs") or ():
            lines.append(f"failed  {row['path']} ({row['input_id']}): {row['reason']}")
        for input_id, why in (info.get("blocked_ids") or {}).items():
            lines.append(f"blocked {input_id}: {why}")
    counts = info.get("remote_counts")
    if counts is not None:
        if "error" in counts:
            lines.append(f"remote: unavailable ({counts['error']})")
        else:
            lines.append("remote: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    # file names with newlines or non-UTF-8 bytes are shown escaped, one entry per line
    return "\n".join(display_path(line) for line in lines)


def _exists(path: Path) -> bool:
    """Whether the ledger file exists; LedgerError when this user cannot even tell."""
    try:
        return path.exists()
    except OSError as exc:
        raise LedgerError(f"cannot reach the ledger {path}: {os_error_reason(exc)}") from None
