"""The token bucket: long-run rate, burst, fairness under threads, injected clock and sleep."""

from __future__ import annotations

import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.ratelimit import TokenBucket


class FakeTime:
    """A clock that only moves when someone sleeps (or the test advances it)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


def _max_in_window(times: list[float], window: float) -> int:
    """The largest number of events inside any closed interval of length `window`."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] > window + 1e-9:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_single_caller_is_paced_at_rate() -> None:
    """One caller taking 50 tokens at 10/s waits 0.1 s for every token after the first."""
    ft = FakeTime()
    bucket = TokenBucket(10.0, clock=ft.clock, sleep=ft.sleep)
    for _ in range(50):
        bucket.acquire()
    assert ft.sleeps == pytest.approx([0.1] * 49)
    assert ft.now == pytest.approx(4.9)


def test_burst_is_served_at_once_then_paced() -> None:
    """A full bucket of burst 5 hands out 5 tokens without waiting, then one per 1/rate."""
    ft = FakeTime()
    bucket = TokenBucket(2.0, burst=5, clock=ft.clock, sleep=ft.sleep)
    waits = [bucket.acquire() for _ in range(8)]
    assert waits[:5] == [0.0] * 5
    assert waits[5:] == pytest.approx([0.5, 0.5, 0.5])


def test_idle_time_refills_only_up_to_burst() -> None:
    """A long idle period refills at most `burst` tokens, never more."""
    ft = FakeTime()
    bucket = TokenBucket(1.0, burst=3, clock=ft.clock, sleep=ft.sleep)
    for _ in range(3):
        bucket.acquire()
    ft.now += 1000.0
    waits = [bucket.acquire() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.0])


@pytest.mark.parametrize("rate, burst", [(0.0, None), (-1.0, None), (1.0, 0.5)])
def test_rejects_nonsense_parameters(rate: float, burst: float | None) -> None:
    """A non-positive rate or a burst below one token is a ValueError."""
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.sampled_from([1.0, 7.5, 15.0, 100.0]),
    burst=st.integers(min_value=1, max_value=6),
    callers=st.integers(min_value=1, max_value=12),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_simulated_callers_never_exceed_rate(
    rate: float, burst: int, callers: int, seed: int
) -> None:
    """Any interleaving of many callers gets at most burst + rate*W tokens in any window W."""
    rnd = random.Random(seed)
    ft = FakeTime()
    bucket = TokenBucket(rate, burst=burst, clock=ft.clock, sleep=ft.sleep)
    free_at = [0.0] * callers  # a caller asks again only once its previous token was granted
    grants: list[float] = []
    for _ in range(150):
        ft.now += rnd.choice([0.0, 0.0, rnd.random() / rate])
        ready = [i for i in range(callers) if free_at[i] <= ft.now] or [
            min(range(callers), key=free_at.__getitem__)
        ]
        who = rnd.choice(ready)
        ft.now = max(ft.now, free_at[who])
        granted = ft.now + bucket.reserve()
        free_at[who] = granted
        grants.append(granted)
    for window in (0.0, 1.0 / rate, 1.0, 5.0):
        assert _max_in_window(grants, window) <= burst + rate * window + 1e-6


def test_real_threads_get_distinct_slots() -> None:
    """Twenty threads taking 200 tokens from a frozen clock queue up in exactly 196 wait slots."""
    ft = FakeTime()
    bucket = TokenBucket(50.0, burst=4, clock=lambda: 0.0, sleep=ft.sleep)
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()
        for _ in range(10):
            bucket.acquire()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    # Time never moves, so the first `burst` tokens are free and every other caller got its
    # own 1/rate slot: no two threads were handed the same one.
    assert sorted(ft.sleeps) == pytest.approx([k / 50.0 for k in range(1, 200 - 4 + 1)])
