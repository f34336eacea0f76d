"""Clocks for the emulator: its asynchronous state machines are computed from `now()` lazily.

Both clocks answer seconds since the Unix epoch, so `now()` doubles as the time stamped on
inputs (`created_at`, `modified_at`) and state persisted by one run stays meaningful in the next.
"""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime
from typing import Protocol

#: Where a ManualClock starts unless told otherwise: 2024-01-01T00:00:00Z.
MANUAL_EPOCH = 1_704_067_200.0


class Clock(Protocol):
    """Anything with `now() -> float` (seconds since the epoch)."""

    def now(self) -> float: ...


class WallClock:
    """Wall time anchored once, then advanced by `time.monotonic` so it never steps back."""

    def __init__(self) -> None:
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0)


class ManualClock:
    """A clock that moves only when told to: `advance(seconds)` or `set(t)`. Thread-safe."""

    def __init__(self, start: float = MANUAL_EPOCH) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError("a ManualClock cannot go backwards")
        with self._lock:
            self._now += float(seconds)
            return self._now

    def set(self, t: float) -> None:
        """Jump to `t`, which must not be earlier than the current time."""
        with self._lock:
            if t < self._now:
                raise ValueError("a ManualClock cannot go backwards")
            self._now = float(t)


# cached: a POST stamps all its inputs with one `now`, so a page of inputs repeats a few stamps
# (formatting them was ~12% of the emulator's time answering a poll)
@functools.lru_cache(maxsize=1024)
def rfc3339(t: float) -> str:
    """`t` (epoch seconds) as RFC 3339 in UTC with microseconds: `2024-01-01T00:00:00.500000Z`."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
