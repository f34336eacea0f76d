"""Faults on demand (throttling, 5xx, latency, dropped connections, failed processing) and
the request statistics tests and benchmarks assert on."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

ERROR_STATUSES = (500, 502, 503)


@dataclass(frozen=True, slots=True)
class Faults:
    """The fault settings in force. Defaults mean "behave like a healthy service".

    throttle_rps: admit at most this many requests per API key in any sliding second (429 +
        11005 beyond); retry_after: if set, 429s carry `Retry-After: <n>`; error_rate /
        error_status: this fraction of requests fails with that 5xx before being applied;
        latency: seconds added before answering; drop_rate: this fraction of requests is
        applied, then the connection is closed without an answer; fail_processing_ids: inputs
        posted with these ids end in 30002; duplicate_fails_batch: a POST with any duplicate id
        fails as a whole (10020, nothing inserted).
    """

    throttle_rps: float | None = None
    retry_after: int | None = None
    error_rate: float = 0.0
    error_status: int = 503
    latency: float = 0.0
    drop_rate: float = 0.0
    fail_processing_ids: frozenset[str] = field(default_factory=frozenset)
    duplicate_fails_batch: bool = False

    def __post_init__(self) -> None:
        if self.throttle_rps is not None and not self.throttle_rps > 0:
            raise ValueError("throttle_rps must be a positive number or null")
        if self.retry_after is not None and (
            isinstance(self.retry_after, bool) or not isinstance(self.retry_after, int)
        ):
            raise ValueError("retry_after must be an integer number of seconds or null")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must not be negative")
        for name in ("error_rate", "drop_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.error_status not in ERROR_STATUSES:
            raise ValueError(f"error_status must be one of {ERROR_STATUSES}")
        if self.latency < 0:
            raise ValueError("latency must not be negative")

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Faults:
        """Faults from JSON (POST /_emulator/faults); unknown keys and bad values raise."""
        unknown = set(raw) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        values = dict(raw)
        ids = values.get("fail_processing_ids")
        if ids is not None:
            if isinstance(ids, str) or not isinstance(ids, Iterable):
                raise ValueError("fail_processing_ids must be a list of input ids")
            values["fail_processing_ids"] = frozenset(str(i) for i in ids)
        else:
            values.pop("fail_processing_ids", None)
        for name in ("error_rate", "drop_rate", "latency"):
            if values.get(name) is None:
                values.pop(name, None)
            elif isinstance(values[name], bool) or not isinstance(values[name], int | float):
                raise ValueError(f"{name} must be a number")
        for name in ("error_status", "duplicate_fails_batch"):
            if values.get(name) is None:
                values.pop(name, None)
        if "duplicate_fails_batch" in values and not isinstance(
            values["duplicate_fails_batch"], bool
        ):
            raise ValueError("duplicate_fails_batch must be a boolean")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["fail_processing_ids"] = sorted(self.fail_processing_ids)
        return out


class Throttle:
    """A sliding one-second window of admitted requests per API key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}

    def admit(self, key: str, now: float, rps: float | None) -> bool:
        """Whether a request by `key` at `now` fits under `rps`; admitted ones are counted."""
        if rps is None:
            return True
        with self._lock:
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) >= rps:
                return False
            window.append(now)
            return True

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()


class Stats:
    """Counters of what the emulator saw and did. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._requests: Counter[str] = Counter()
            self._http: Counter[int] = Counter()
            self._posts_per_id: Counter[str] = Counter()
            self._faults: Counter[str] = Counter()
            self._inputs_posted = 0

    def request(self, route: str) -> None:
        with self._lock:
            self._requests[route] += 1

    def response(self, http_status: int) -> None:
        with self._lock:
            self._http[http_status] += 1

    def posted(self, ids: Iterable[str | None]) -> None:
        with self._lock:
            for input_id in ids:
                self._inputs_posted += 1
                if input_id:
                    self._posts_per_id[input_id] += 1

    def fault(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._faults[kind] += n

    def snapshot(self) -> dict[str, Any]:
        """requests (by "METHOD /route/template"), responses (by HTTP status), inputs_posted,
        posts_per_input_id, throttled (429s sent) and faults_injected (by kind)."""
        with self._lock:
            return {
                "requests": dict(self._requests),
                "requests_total": sum(self._requests.values()),
                "responses": {str(k): v for k, v in sorted(self._http.items())},
                "inputs_posted": self._inputs_posted,
                "posts_per_input_id": dict(self._posts_per_id),
                "throttled": self._http.get(429, 0),
                "faults_injected": dict(self._faults),
            }
