"""A local emulator of the Clarifai v2 inputs API, used by every test, the demo and the bench.

See docs/emulator.md for its routes, flags, control API and known differences.
"""

from syncd.emulator.clock import ManualClock, WallClock
from syncd.emulator.faults import Faults
from syncd.emulator.server import DEFAULT_API_KEY, Emulator, serve_forever

__all__ = ["DEFAULT_API_KEY", "Emulator", "Faults", "ManualClock", "WallClock", "serve_forever"]
