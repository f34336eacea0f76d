"""A thread-safe token bucket: the global request-rate limit shared by every worker thread.

`acquire()` reserves the next free slot under a lock and sleeps outside it, so threads queue up
in arrival order and the number of tokens handed out by time T never exceeds `burst + rate * T`
(measured from construction), whatever the number of threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Hand out at most `rate` tokens per second on average, at most `burst` at once.

    `burst` defaults to 1 (requests evenly spaced, never two in the same 1/rate slot), which is
    the safe reading of a "N requests per second" server limit. The bucket starts full.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        burst = 1.0 if burst is None else float(burst)
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = burst
        self._stamp = clock()

    def reserve(self) -> float:
        """Take one token now (possibly on credit) and return how long to wait before using it."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._stamp)
            self._stamp = max(self._stamp, now)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._tokens -= 1.0
            # A negative balance is a queue of reservations: the caller waits its turn.
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def acquire(self) -> float:
        """Block until a token is available; return the seconds spent waiting."""
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)
        return wait
