"""The v2 API's wire rules, as pure functions: status codes (numbers or enum names), the
response envelope, how an answer is classified (ok, per-item, not found, auth, throttled,
transient, rejected), backoff and Retry-After. `syncd.api` does the HTTP around them."""

from __future__ import annotations

import enum
import functools
import json
import math
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

from syncd.batcher import batches
from syncd.errors import ConfigError

MAX_RETRY_AFTER = 600.0  # a Retry-After beyond ten minutes is clamped
COUNT_FIELDS = (
    "processed",
    "to_process",
    "errors",
    "processing",
    "reindexed",
    "to_reindex",
    "reindex_errors",
    "reindexing",
)

# Enum names a server may send instead of numbers (clarifai-grpc status_code.proto).
CODE_NAMES: dict[str, int] = {
    "SUCCESS": 10000,
    "MIXED_STATUS": 10010,
    "FAILURE": 10020,
    "TRY_AGAIN": 10030,
    "CONN_ACCOUNT_ISSUES": 11000,
    "CONN_TOKEN_INVALID": 11001,
    "CONN_CREDENTIALS_INVALID": 11002,
    "CONN_EXCEED_HOURLY_LIMIT": 11003,
    "CONN_EXCEED_MONTHLY_LIMIT": 11004,
    "CONN_THROTTLED": 11005,
    "CONN_EXCEEDS_LIMITS": 11006,
    "CONN_INSUFFICIENT_SCOPES": 11007,
    "CONN_KEY_INVALID": 11008,
    "CONN_KEY_NOT_FOUND": 11009,
    "CONN_BAD_REQUEST_FORMAT": 11100,
    "CONN_DOES_NOT_EXIST": 11101,
    "CONN_INVALID_REQUEST": 11102,
    "CONN_METHOD_NOT_ALLOWED": 11103,
    "INPUT_SUCCESS": 30000,
    "INPUT_DOWNLOAD_SUCCESS": 30000,
    "INPUT_PENDING": 30001,
    "INPUT_DOWNLOAD_PENDING": 30001,
    "INPUT_FAILED": 30002,
    "INPUT_DOWNLOAD_FAILED": 30002,
    "INPUT_IN_PROGRESS": 30003,
    "INPUT_DOWNLOAD_IN_PROGRESS": 30003,
    "INPUT_DUPLICATE": 30100,
    "INPUT_UNSUPPORTED_FORMAT": 30101,
    "INPUT_DOES_NOT_EXIST": 30102,
    "INPUT_INVALID_ARGUMENT": 30104,
    "INPUT_MODIFY_SUCCESS": 30200,
    "INPUT_MODIFY_PENDING": 30201,
    "INPUT_MODIFY_FAILED": 30203,
    "REQUEST_DISABLED_FOR_MAINTENANCE": 39997,
    "INPUT_WRITES_DISABLED_FOR_MAINTENANCE": 39998,
    "INPUT_INVALID_REQUEST": 39999,
    "DATABASE_DUPLICATE_KEY": 40010,
    "RPC_REQUEST_QUEUE_FULL": 40030,
    "RPC_SERVER_UNAVAILABLE": 40031,
    "RPC_REQUEST_TIMEOUT": 40032,
    "RPC_MAX_MESSAGE_SIZE_EXCEEDED": 40033,
    "DATASET_INPUT_SUCCESS": 64100,
    "DATASET_INPUT_DUPLICATE": 64101,
    "INTERNAL_SERVER_ISSUE": 98004,
}
AUTH_CODES = frozenset({11001, 11002, 11007, 11008, 11009, 11102})
THROTTLE_CODES = frozenset({11005, 11003})  # the SDK retries the hourly limit like a throttle
TRANSIENT_CODES = frozenset({10030, 39997, 39998, 40030, 40031, 40032})
NOT_FOUND_CODES = frozenset({11101, 30102})
ITEM_OK_CODES = frozenset({10000, 30000, 30001, 30003, 30200, 30201, 64100})
DUPLICATE_ID_DETAILS = "Input has a duplicate ID."
# Text that says *this* input's id is taken: anchored, so "another input in this batch has a
# duplicate ID" (an innocent bystander of a failed batch) does not read as a duplicate.
DUPLICATE_ID_PATTERN = re.compile(
    r"^\s*(input\s+)?(has\s+a\s+)?duplicate[ _-]*(input[ _-]*)?id\b"
    r"|^\s*(input\s+)?id\s+(already\s+exists|is\s+already\s+taken)",
    re.IGNORECASE,
)

# --- pure pieces ----------------------------------------------------------------------------


def parse_code(value: Any) -> int | None:
    """A status code given as a number, a numeric string or an enum name; None if unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            return int(text)
        return CODE_NAMES.get(text.upper())
    return None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One HTTP answer reduced to what the client decides on."""

    http_status: int
    code: int | None
    description: str = ""
    details: str = ""
    body: dict[str, Any] | None = None  # None when the body is not a JSON object
    excerpt: str = ""  # start of a non-JSON body, for messages
    raw: bytes = b""  # the body as received (a listing's digest is taken of it)

    @property
    def items(self) -> list[dict[str, Any]]:
        raw = (self.body or {}).get("inputs")
        return [x for x in raw if isinstance(x, dict)] if isinstance(raw, list) else []

    @property
    def has_item_status(self) -> bool:
        return any(isinstance(x.get("status"), dict) for x in self.items)


def parse_envelope(http_status: int, content: bytes) -> Envelope:
    """Decode a response body; a non-JSON body keeps a short whitespace-collapsed excerpt."""
    try:
        body = json.loads(content) if content else None
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict):
        text = content.decode("utf-8", "replace") if content else ""
        return Envelope(http_status, None, excerpt=" ".join(text.split())[:200])
    status = body.get("status")
    status = status if isinstance(status, dict) else {}
    return Envelope(
        http_status,
        parse_code(status.get("code")),
        str(status.get("description") or ""),
        str(status.get("details") or ""),
        body,
        raw=content,
    )


class Verdict(enum.Enum):
    OK = "ok"
    ITEMS = "items"  # a batch answer whose per-input statuses carry the outcome
    NOT_FOUND = "not_found"
    AUTH = "auth"
    THROTTLED = "throttled"
    TRANSIENT = "transient"
    REJECTED = "rejected"


def classify(env: Envelope) -> Verdict:
    """Decide on `status.code`; fall back to the HTTP status when the body has no code."""
    http, code = env.http_status, env.code
    if http == 401 or code in AUTH_CODES:
        return Verdict.AUTH
    if http == 429 or code in THROTTLE_CODES:
        return Verdict.THROTTLED
    if code in TRANSIENT_CODES or (code is not None and 98000 <= code < 99000):
        return Verdict.TRANSIENT
    if code == 10000:
        return Verdict.OK
    if code == 10010:
        return Verdict.ITEMS
    if code == 10020 and env.has_item_status and http < 500:
        return Verdict.ITEMS
    if code in NOT_FOUND_CODES or (code is None and http == 404 and env.body is not None):
        return Verdict.NOT_FOUND
    if http >= 500 or http == 408:
        return Verdict.TRANSIENT
    if code is None and 200 <= http < 300:
        if env.body is not None:
            return Verdict.OK
        if not env.excerpt or env.excerpt.startswith("{"):
            # empty, or JSON cut off: the answer was lost on the way, not refused (a retried
            # add comes back as "duplicate ID" and is adopted); a page of HTML is refused
            return Verdict.TRANSIENT
    return Verdict.REJECTED


def backoff_delay(
    attempt: int, base: float, cap: float, rng: random.Random, *, floor: float = 0.0
) -> float:
    """Jittered exponential backoff: uniform over [floor * d, d], d = min(cap, base * 2**(n-1))
    for attempt n = 1, 2, ...; floor 0 is "full jitter", 0.5 "equal jitter"."""
    top = min(cap, base * 2.0 ** max(0, attempt - 1))
    return rng.uniform(floor * top, top)


#: Against a rate limit, full jitter can retry too soon again and again: the sum of the waits
#: would have no lower bound, so a retry budget might run out inside one window. Throttled
#: retries wait at least half of each step ("equal jitter"), so `max_attempts` waits add up.
THROTTLED_BACKOFF_FLOOR = 0.5


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), None if absent."""
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)


# --- results --------------------------------------------------------------------------------


# --- limits and records shared by the client and the engine -----------------------------

MAX_IDS_PER_LIST = 128  # ids per filtered list request
MAX_QUERY_CHARS = 6000  # keep filtered list URLs well below common 8 KiB limits
MAX_PER_PAGE = 1000


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome for one input of a POST or PATCH, matched back by id."""

    input_id: str
    code: int
    description: str
    details: str

    @property
    def ok(self) -> bool:
        return self.code in ITEM_OK_CODES

    @property
    def duplicate(self) -> bool:
        """The id already exists remotely (possibly from an earlier attempt of this request)."""
        return _says_duplicate(self.code, self.description, self.details)


@functools.lru_cache(maxsize=256)
def _says_duplicate(code: int, description: str, details: str) -> bool:
    # cached: the inputs of one answer nearly all share one status, and this runs per input
    if details == DUPLICATE_ID_DETAILS or code == 40010:
        return True
    return any(DUPLICATE_ID_PATTERN.search(t) for t in (details, description))


@dataclass(frozen=True, slots=True)
class RemoteRecord:
    """One input as the remote lists it (raw `data`)."""

    input_id: str
    data: dict[str, Any]
    status_code: int | None
    status_description: str
    created_at: str | None

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RemoteRecord:
        status = raw.get("status") if isinstance(raw.get("status"), dict) else {}
        data = raw.get("data")
        created = raw.get("created_at")
        return cls(
            str(raw.get("id") or ""),
            data if isinstance(data, dict) else {},
            parse_code(status.get("code")),
            str(status.get("description") or ""),
            str(created) if created else None,
        )


def chunk_ids(ids: Sequence[str], size: int) -> Iterator[list[str]]:
    """Distinct ids in order, in chunks of at most `size` whose query stays short."""
    return batches(
        list(dict.fromkeys(ids)), size=size, weight=_query_cost, max_weight=MAX_QUERY_CHARS
    )


def _query_cost(input_id: str) -> int:
    return len(quote_id(input_id)) + len("&ids=")


#: characters a URL carries as they are (RFC 3986 "unreserved"); syncd's own ids have no other
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")


def quote_id(input_id: str) -> str:
    """An id as it goes in a URL query: percent-encoded, skipped when there is nothing to
    encode (the poll spells 10,000s of ids; quoting each cost more than parsing its answer)."""
    return input_id if _UNRESERVED.fullmatch(input_id) else quote(input_id, safe="")


def check_api_key(api_key: str, key_source: str) -> None:
    """Refuse an empty key or one with whitespace (a pasted line break, say) before use."""
    if not api_key or len(api_key.split()) != 1 or api_key != api_key.strip():
        raise ConfigError(f"the API key from {key_source} is empty or contains whitespace")
