"""A local emulator of the Clarifai v2 inputs API, used by every test, the demo and the bench.

See docs/emulator.md for its routes, flags, control API and known differences.

The names below are imported on first use (PEP 562): `syncd reconcile` imports
`syncd.emulator.cli` for its command-line entry and must not pay for the server's imports.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DEFAULT_API_KEY": "syncd.emulator.server",
    "Emulator": "syncd.emulator.server",
    "serve_forever": "syncd.emulator.server",
    "Faults": "syncd.emulator.faults",
    "ManualClock": "syncd.emulator.clock",
    "WallClock": "syncd.emulator.clock",
}

__all__ = ["DEFAULT_API_KEY", "Emulator", "Faults", "ManualClock", "WallClock", "serve_forever"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
