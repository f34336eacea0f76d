"""The control API under /_emulator/ (no auth, plain JSON, never throttled or faulted).

GET  /_emulator/store          every input with its full state (a JSON list)
GET  /_emulator/stats          request counts per route, posts per input id, 429s, faults
GET  /_emulator/faults         the faults in force
POST /_emulator/faults         replace them: {"throttle_rps": 5, "error_rate": 0.1, ...}
POST /_emulator/reset          clear store, stats and faults
POST /_emulator/advance        {"seconds": S}: move a ManualClock forward
GET  /_emulator/blobs/{id}     the bytes of an input's image (its read-back data.image.url)
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import unquote

from syncd.emulator.api import HttpReply
from syncd.emulator.faults import Faults
from syncd.imageformat import sniff_format

PREFIX = "/_emulator/"


class Controlled(Protocol):
    def store_snapshot(self) -> list[dict[str, Any]]: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def faults(self) -> Faults: ...
    def replace_faults(self, faults: Faults) -> Faults: ...
    def reset(self) -> None: ...
    def advance(self, seconds: float) -> float: ...
    def image_bytes(self, input_id: str) -> bytes | None: ...


def handle_control(emu: Controlled, method: str, path: str, body: bytes) -> HttpReply:
    """Answer one control request."""
    name = path[len(PREFIX) :]
    if name.startswith("blobs/") and method == "GET":
        return _blob(emu, unquote(name[len("blobs/") :]))
    routes = {
        ("GET", "store"): emu.store_snapshot,
        ("GET", "stats"): emu.stats,
        ("GET", "faults"): emu.faults.as_dict,
        ("POST", "faults"): lambda: emu.replace_faults(Faults.from_mapping(_json(body))).as_dict(),
        ("POST", "reset"): lambda: _reset(emu),
        ("POST", "advance"): lambda: {"now": emu.advance(_seconds(_json(body)))},
    }
    action = routes.get((method, name))
    if action is None:
        known = {n for _, n in routes}
        if name in known:
            return _reply(405, {"error": f"{method} is not allowed on {path}"})
        return _reply(404, {"error": f"unknown control route {path}"})
    try:
        return _reply(200, action())
    except (ValueError, TypeError) as exc:
        return _reply(400, {"error": str(exc)})


def _reset(emu: Controlled) -> dict[str, Any]:
    emu.reset()
    return {"reset": True}


def _blob(emu: Controlled, input_id: str) -> HttpReply:
    data = emu.image_bytes(input_id)
    if data is None:
        return _reply(404, {"error": f"no stored image bytes for input {input_id!r}"})
    fmt = sniff_format(data[:32])
    content_type = f"image/{fmt.lower()}" if fmt else "application/octet-stream"
    return HttpReply(200, data, content_type=content_type)


def _json(body: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(body or b"{}")
    except ValueError as exc:
        raise ValueError(f"invalid JSON body: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError("the body must be a JSON object")
    return parsed


def _seconds(body: dict[str, Any]) -> float:
    seconds = body.get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
        raise ValueError('advance needs {"seconds": <non-negative number>}')
    return float(seconds)


def _reply(status: int, payload: Any) -> HttpReply:
    return HttpReply(status, json.dumps(payload, separators=(",", ":")).encode())
