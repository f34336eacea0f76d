"""The HTTP client for the Clarifai v2 inputs API: the only module that imports requests.

Every answer is judged on its body's `status.code` (a number or an enum name), with the HTTP
status only as a hint (see /work/shared/clarifai-api.md, 3.2). Retryable failures (429, 5xx,
TRY_AGAIN, maintenance, RPC busy, internal errors, connection errors, read timeouts) are
retried with full-jitter exponential backoff, honouring Retry-After, up to `max_attempts`;
a 429 also pauses every other thread of this client. The API key never leaves the session
headers: it is redacted from every message this module builds and never logged.
"""

from __future__ import annotations

import json
import random
import re
import secrets
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import requests
import structlog
from requests.adapters import HTTPAdapter

from syncd.batcher import MAX_BATCH
from syncd.envelope import (
    COUNT_FIELDS,
    MAX_IDS_PER_LIST,
    MAX_PER_PAGE,
    THROTTLED_BACKOFF_FLOOR,
    Envelope,
    ItemResult,
    RemoteRecord,
    Verdict,
    backoff_delay,
    check_api_key,
    chunk_ids,
    classify,
    parse_code,
    parse_envelope,
    parse_retry_after,
    quote_id,
)
from syncd.errors import (
    ApiError,
    AuthError,
    RejectedError,
    ThrottledError,
    TransientError,
    WaitRequested,
)
from syncd.ratelimit import TokenBucket

if TYPE_CHECKING:
    from syncd.config import ApiKey, Config

log = structlog.get_logger(__name__)

_TRANSIENT_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass
class ApiStats:
    """Counters of one client, updated from every worker thread under a lock."""

    requests: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    throttled: int = 0
    bytes_sent: int = 0
    seconds_waiting: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record_request(self, kind: str, nbytes: int) -> None:
        with self._lock:
            self.requests[kind] += 1
            self.bytes_sent += nbytes

    def record_retry(self, *, throttled: bool) -> None:
        with self._lock:
            self.retries += 1
            self.throttled += int(throttled)

    def record_wait(self, seconds: float) -> None:
        with self._lock:
            self.seconds_waiting += seconds

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(self.requests),
                "retries": self.retries,
                "throttled": self.throttled,
                "bytes_sent": self.bytes_sent,
                "seconds_waiting": round(self.seconds_waiting, 3),
            }


# --- the client -----------------------------------------------------------------------------


#: Requests go out at this fraction of `max_requests_per_second`: a server counting in a sliding
#: one-second window sees network jitter bunch evenly spaced requests, and a limit of exactly
#: 15/s then earns the odd 429 (measured: 16 answers of 429 in a 20,000-input sync).
RATE_HEADROOM = 0.95


class ClarifaiApi:
    """Inputs API calls over one keep-alive session, safe to share between `workers` threads.

    Idempotency: PATCH merge/remove and DELETE may simply be repeated. A POST retried after a
    dropped connection or a timeout may already have been applied by the server; its inputs
    then come back as per-item "duplicate ID" answers (`ItemResult.duplicate`), which are
    returned as they are: the caller adopts those ids instead of treating them as failures.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        user_id: str | None = None,
        app_id: str | None = None,
        key_source: str = "api key",
        dataset_id: str | None = None,
        workers: int = 4,
        max_requests_per_second: float | None = 10.0,
        timeout: float = 30.0,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_wait: float | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        check_api_key(api_key, key_source)
        if max_attempts < 1 or workers < 1:
            raise ValueError("max_attempts and workers must be at least 1")
        self._key = api_key
        self.key_source = key_source
        self._dataset_id = dataset_id
        self._base = re.sub(r"(/v2)?/*$", "", base_url.strip())
        if user_id and app_id:
            self._prefix = f"/v2/users/{quote(user_id, safe='')}/apps/{quote(app_id, safe='')}"
            self._template = "/v2/users/{user_id}/apps/{app_id}"
        else:
            self._prefix = self._template = "/v2"
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._backoff = (backoff_base, backoff_cap)
        self._max_wait = max_wait
        self._sleep, self._clock = sleep, clock
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._paused_until = float("-inf")
        self._bucket = (
            TokenBucket(max_requests_per_second * RATE_HEADROOM, clock=clock, sleep=sleep)
            if max_requests_per_second
            else None
        )
        self._owns_session = session is None
        self._session = session or requests.Session()
        if self._owns_session:
            adapter = HTTPAdapter(pool_connections=1, pool_maxsize=workers, max_retries=0)
            self._session.mount("http://", adapter)
            self._session.mount("https://", adapter)
            # the environment's proxies (NO_PROXY judged for our one host) and CA bundle, read
            # once: requests would read the whole environment again on every request. It also
            # keeps a ~/.netrc entry for the host from replacing the Authorization header.
            found = self._session.merge_environment_settings(self._base, {}, None, None, None)
            self._session.proxies.update(found["proxies"])
            self._session.verify = found["verify"]
            self._session.trust_env = False
        self._session.headers.update(
            {"Content-Type": "application/json", "Authorization": f"Key {api_key}"}
        )
        self.stats = ApiStats()

    def __repr__(self) -> str:
        return f"ClarifaiApi({self._base + self._prefix!r}, key from {self.key_source})"

    def __enter__(self) -> ClarifaiApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (an injected session is left open)."""
        if self._owns_session:
            self._session.close()

    # -- public calls ------------------------------------------------------------------------

    def add_inputs(self, inputs: Sequence[dict[str, Any]]) -> list[ItemResult]:
        """POST up to 128 proto-JSON inputs; one ItemResult per input, in request order.

        `data.image.base64` may be given as ASCII bytes (as `base64.b64encode` returns them):
        they are spliced into the body as they are, never decoded, copied into a str or
        scanned by the JSON encoder (see `encode_inputs`).

        A 10010 (mixed) or an all-failed 10020 answer with per-input statuses is returned, not
        raised. After a retried POST, inputs the server applied on an earlier attempt come back
        with duplicate=True; they are returned as they are for the caller to adopt.
        """
        batch = _checked_batch(inputs, "add_inputs")
        if not batch:
            return []
        if self._dataset_id:
            batch = [_with_dataset(x, self._dataset_id) for x in batch]
        env = self._call(
            "add", "POST", "/inputs", body=encode_inputs(batch), accept={Verdict.ITEMS}
        )
        return _map_items(batch, env)

    def patch_inputs(
        self, inputs: Sequence[dict[str, Any]], action: Literal["merge", "remove", "overwrite"]
    ) -> list[ItemResult]:
        """PATCH up to 128 inputs' `data` with `action`; per-item results as for add_inputs."""
        if action not in ("merge", "remove", "overwrite"):
            raise ValueError(f"unknown patch action {action!r}")
        batch = _checked_batch(inputs, "patch_inputs")
        if not batch:
            return []
        body = {"inputs": batch, "action": action}
        env = self._call("patch", "PATCH", "/inputs", body=body, accept={Verdict.ITEMS})
        return _map_items(batch, env)

    def delete_inputs(self, ids: Sequence[str]) -> None:
        """DELETE up to 128 ids (asynchronous remotely); ids already gone count as deleted."""
        id_list = list(ids)
        if len(id_list) > MAX_BATCH:
            raise ValueError(f"delete_inputs takes at most {MAX_BATCH} ids, got {len(id_list)}")
        if id_list:
            self._call(
                "delete", "DELETE", "/inputs", body={"ids": id_list}, accept={Verdict.NOT_FOUND}
            )

    def get_input(self, input_id: str) -> RemoteRecord | None:
        """The input with this id, or None when the remote says it does not exist."""
        env = self._call(
            "get",
            "GET",
            f"/inputs/{quote(input_id, safe='')}",
            route="/inputs/{input_id}",
            accept={Verdict.NOT_FOUND},
        )
        raw = (env.body or {}).get("input")
        if classify(env) is Verdict.NOT_FOUND or not isinstance(raw, dict):
            return None
        return RemoteRecord.from_json(raw)

    def list_inputs(
        self, *, ids: Sequence[str] | None = None, per_page: int = 1000
    ) -> Iterator[RemoteRecord]:
        """Every input (pages 1, 2, ... until a short page), or only those among `ids`.

        With `ids`, one request per chunk of at most min(per_page, 128) ids (fewer when long ids
        would make the URL too long); ids the remote does not know are simply absent.
        """
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be within 1..{MAX_PER_PAGE}, got {per_page}")
        if ids is not None:
            for chunk in chunk_ids(ids, min(per_page, MAX_IDS_PER_LIST)):
                wanted = set(chunk)
                for raw in self._list_ids(chunk):
                    if str(raw.get("id")) in wanted:
                        yield RemoteRecord.from_json(raw)
            return
        for items in self.list_pages(per_page=per_page):
            for raw in items:
                yield RemoteRecord.from_json(raw)

    def input_statuses(self, chunk: Sequence[str]) -> dict[str, tuple[int | None, str]]:
        """(status code, description) of each of `chunk` the remote lists, in one request.

        `chunk` is one of `chunk_ids(ids, MAX_IDS_PER_LIST)`: a status poll asks for every
        pending input, and chunking again here, or a whole record per input, cost more than
        the request. Ids the remote does not know are absent.
        """
        wanted = set(chunk)
        # one tuple per distinct status, shared: a page is mostly the same (code, description)
        shared: dict[tuple[int | None, str], tuple[int | None, str]] = {}
        statuses: dict[str, tuple[int | None, str]] = {}
        for raw in self._list_ids(chunk):
            input_id = str(raw.get("id") or "")
            if input_id in wanted:
                status = raw.get("status")
                if isinstance(status, dict):
                    key = (parse_code(status.get("code")), str(status.get("description") or ""))
                else:
                    key = (None, "")
                statuses[input_id] = shared.setdefault(key, key)
        return statuses

    def _list_ids(self, chunk: Sequence[str]) -> list[dict[str, Any]]:
        """The listed inputs of one GET by ids (at most MAX_IDS_PER_LIST, query short)."""
        if len(chunk) > MAX_IDS_PER_LIST:
            raise ValueError(f"at most {MAX_IDS_PER_LIST} ids a request, got {len(chunk)}")
        query = "&".join(["ids=" + quote_id(i) for i in chunk])
        query += f"&page=1&per_page={len(chunk)}"
        return self._call("list", "GET", "/inputs", params=query, accept={Verdict.ITEMS}).items

    def list_pages(self, *, per_page: int = 1000) -> Iterator[list[dict[str, Any]]]:
        """Every input as the remote lists it (raw JSON objects), one list per page."""
        for items, _ in self.list_page_bodies(per_page=per_page):
            yield items

    def list_page_bodies(
        self, *, per_page: int = 1000
    ) -> Iterator[tuple[list[dict[str, Any]], bytes]]:
        """`list_pages`, each page with the response body it came in."""
        if not 1 <= per_page <= MAX_PER_PAGE:
            raise ValueError(f"per_page must be within 1..{MAX_PER_PAGE}, got {per_page}")
        page = 1
        while True:
            params = [("page", str(page)), ("per_page", str(per_page))]
            env = self._call("list", "GET", "/inputs", params=params, accept={Verdict.ITEMS})
            items = env.items
            yield items, env.raw
            if len(items) < per_page:
                return
            page += 1

    def input_counts(self) -> dict[str, int]:
        """GET inputs/status: the eight counters (missing ones read as 0)."""
        env = self._call("count", "GET", "/inputs/status")
        counts = (env.body or {}).get("counts")
        counts = counts if isinstance(counts, dict) else {}
        return {name: _as_int(counts.get(name)) for name in COUNT_FIELDS}

    def check_auth(self) -> None:
        """The cheapest authenticated call; raises AuthError, TransientError or RejectedError."""
        self._call("count", "GET", "/inputs/status")

    # -- the request loop --------------------------------------------------------------------

    def _call(
        self,
        kind: str,
        method: str,
        path: str,
        *,
        route: str | None = None,
        body: dict[str, Any] | bytes | None = None,
        params: list[tuple[str, str]] | str | None = None,
        accept: frozenset[Verdict] | set[Verdict] = frozenset(),
    ) -> Envelope:
        """Send one request with retries; return an OK (or accepted) answer or raise.

        `body` is JSON-encoded once (bytes are sent as they are) and the same bytes are sent
        on every attempt. `params` given as a str is a query already encoded."""
        url = self._base + self._prefix + path
        route = self._template + (route or path)
        data = body if body is None or isinstance(body, bytes) else _dumps(body)
        own_not_before = float("-inf")
        for attempt in range(1, self._max_attempts + 1):
            self._wait_turn(own_not_before)
            self.stats.record_request(kind, len(data or b""))
            started = self._clock()
            retry_after: float | None = None
            try:
                resp = self._session.request(
                    method, url, data=data, params=params, timeout=self._timeout
                )
            except _TRANSIENT_EXCEPTIONS as exc:
                env, verdict = None, Verdict.TRANSIENT
                reason = self._redact(f"{type(exc).__name__}: {exc}")
                status: int | None = None
            else:
                env = parse_envelope(resp.status_code, resp.content)
                verdict = classify(env)
                reason = self._describe(env)
                status = resp.status_code
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            log.debug(
                "api_request",
                method=method,
                route=route,
                status=status,
                code=env.code if env else None,
                seconds=round(self._clock() - started, 4),
                attempt=attempt,
            )
            if verdict is Verdict.OK or verdict in accept:
                assert env is not None
                return env
            if verdict not in (Verdict.TRANSIENT, Verdict.THROTTLED):
                raise self._error(verdict, env, method, route, reason)
            if attempt == self._max_attempts:
                cls = ThrottledError if verdict is Verdict.THROTTLED else TransientError
                log.warning("api_gave_up", method=method, route=route, attempts=attempt)
                gave_up = cls(f"{method} {route} failed after {attempt} attempts: {reason}")
                gave_up.retry_after = retry_after
                raise self._fill(gave_up, env)
            throttled = verdict is Verdict.THROTTLED
            delay = retry_after
            if delay is None:
                floor = THROTTLED_BACKOFF_FLOOR if throttled else 0.0
                with self._lock:
                    delay = backoff_delay(attempt, *self._backoff, self._rng, floor=floor)
            own_not_before = self._clock() + delay
            if throttled:
                with self._lock:  # pause every worker: do not hammer a throttling server
                    self._paused_until = max(self._paused_until, own_not_before)
            if self._max_wait is not None and retry_after is not None and delay > self._max_wait:
                # a wait this long is the caller's to make (the daemon's loop, which stays
                # responsive and keeps its watchdog fed), not a sleep inside a request; the
                # other workers' requests meanwhile fail at once, unsent
                with self._lock:
                    self._paused_until = max(self._paused_until, own_not_before)
                log.warning("api_wait_deferred", method=method, route=route, wait=round(delay, 1))
                asked = f"the remote asked to wait {delay:.0f} s"
                deferred = WaitRequested(f"{method} {route}: {asked}: {reason}")
                deferred.retry_after = delay
                raise self._fill(deferred, env)
            self.stats.record_retry(throttled=throttled)
            log.info(
                "api_retry",
                method=method,
                route=route,
                attempt=attempt,
                delay=round(delay, 3),
                retry_after=retry_after,
                reason=reason,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_turn(self, own_not_before: float) -> None:
        """Sleep out this request's backoff and any global throttle pause, then take a token.

        A pause longer than `max_wait` (another worker's answer asked for it) raises
        WaitRequested at once, as that answer did, and the request is not sent."""
        with self._lock:
            target = max(own_not_before, self._paused_until)
        wait = target - self._clock()
        if self._max_wait is not None and wait > self._max_wait:
            paused = WaitRequested(f"the remote asked to wait {wait:.0f} s more")
            paused.retry_after = wait
            raise paused
        if wait > 0:
            self._sleep(wait)
            self.stats.record_wait(wait)
        if self._bucket is not None:
            self.stats.record_wait(self._bucket.acquire())

    def _describe(self, env: Envelope, *, http: bool = True) -> str:
        parts = [f"HTTP {env.http_status}"] if http or env.code is None else []
        if env.code is not None:
            parts.append(str(env.code))
        if env.description:
            parts.append(env.description)
        text = " ".join(parts)
        if env.details:
            text += f": {env.details}"
        if env.body is None and env.excerpt:
            text += f" (non-JSON body: {env.excerpt})"
        return self._redact(text)

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "[redacted]") if self._key else text

    def _error(
        self, verdict: Verdict, env: Envelope | None, method: str, route: str, reason: str
    ) -> ApiError:
        if verdict is Verdict.AUTH:
            what = self._describe(env, http=False) if env is not None else reason
            message = f"the remote refused the API key from {self.key_source} ({what})"
            return self._fill(AuthError(message), env)
        return self._fill(RejectedError(f"{method} {route} was rejected: {reason}"), env)

    def _fill(self, err: ApiError, env: Envelope | None) -> ApiError:
        if env is not None:
            err.http_status = env.http_status
            err.code = env.code
            err.description = self._redact(env.description)
            err.details = self._redact(env.details)
        return err


# --- helpers --------------------------------------------------------------------------------


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_inputs(batch: Sequence[dict[str, Any]]) -> bytes:
    """`{"inputs": batch}` as compact JSON bytes, with `data.image.base64` bytes spliced in.

    A 128-image batch of base64 is megabytes of text; handing it to `json.dumps` as str costs a
    decode, a scan of every character for escapes and two copies, all while holding the GIL
    that the other sender threads wait for. Base64 (bytes from `b64encode`) is ASCII without
    quotes or backslashes, so it goes between two quotes as it is: the batch is dumped once
    with a random placeholder in each base64's place, and the placeholders are swapped for the
    bytes. (One `json.dumps` per batch: three per input cost 15 us each, on the GIL the
    preparing thread needs.) Inputs whose base64 is a str (or absent) are dumped as they are;
    the parsed result is the same either way.
    """
    raws: list[bytes | bytearray] = []
    placeholder = _placeholder()

    def swapped(item: dict[str, Any]) -> dict[str, Any]:
        data = item.get("data")
        image = data.get("image") if isinstance(data, dict) else None
        raw = image.get("base64") if isinstance(image, dict) else None
        if not isinstance(raw, bytes | bytearray):
            return item
        raws.append(raw)
        return {**item, "data": {**data, "image": {**image, "base64": placeholder}}}

    text = _dumps({"inputs": [swapped(x) for x in batch]})
    parts = text.split(_dumps(placeholder))
    if len(parts) != len(raws) + 1:
        # the placeholder's text was in the batch already (it cannot be guessed, but a body
        # must never be wrong): splice input by input instead
        return b'{"inputs":[' + b",".join(_encode_input(x) for x in batch) + b"]}"
    pieces = [parts[0]]
    for raw, after in zip(raws, parts[1:], strict=True):
        pieces += (b'"', raw, b'"', after)
    return b"".join(pieces)


def _placeholder() -> str:
    """A str no batch holds: a NUL (escaped by the encoder) and 128 random bits."""
    return "\x00syncd-base64-" + secrets.token_hex(16)


def _encode_input(item: dict[str, Any]) -> bytes:
    data = item.get("data")
    image = data.get("image") if isinstance(data, dict) else None
    raw = image.get("base64") if isinstance(image, dict) else None
    if not isinstance(raw, bytes | bytearray):
        return _dumps(item)
    assert isinstance(data, dict) and isinstance(image, dict)
    # {"data":{"image":{"base64":"<raw>",<image rest>},<data rest>},<item rest>}
    return b"".join(
        (
            b'{"data":{"image":{"base64":"',
            raw,
            b'"',
            _members({k: v for k, v in image.items() if k != "base64"}),
            b"}",
            _members({k: v for k, v in data.items() if k != "image"}),
            b"}",
            _members({k: v for k, v in item.items() if k != "data"}),
            b"}",
        )
    )


def _members(obj: dict[str, Any]) -> bytes:
    """`,"k":v,...` for a non-empty dict (its JSON without the braces), b"" for an empty one."""
    return b"," + _dumps(obj)[1:-1] if obj else b""


def _checked_batch(inputs: Sequence[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    batch = list(inputs)
    if len(batch) > MAX_BATCH:
        raise ValueError(f"{what} takes at most {MAX_BATCH} inputs, got {len(batch)}")
    return batch


def _with_dataset(raw: dict[str, Any], dataset_id: str) -> dict[str, Any]:
    if raw.get("dataset_ids"):
        return raw
    return {**raw, "dataset_ids": [dataset_id]}


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _map_items(batch: list[dict[str, Any]], env: Envelope) -> list[ItemResult]:
    """Match the answer's per-input statuses back to the request, by id (position if no id)."""
    items = env.items
    by_id: defaultdict[str, deque[dict[str, Any]]] = defaultdict(deque)
    for item in items:
        by_id[str(item.get("id") or "")].append(item)
    results = []
    for pos, sent in enumerate(batch):
        input_id = str(sent.get("id") or "")
        queue = by_id.get(input_id) if input_id else None
        item = queue.popleft() if queue else None
        if item is None and not input_id and pos < len(items):
            item = items[pos]
        status = item.get("status") if item is not None else None
        code = parse_code(status.get("code")) if isinstance(status, dict) else None
        if code is not None:
            assert isinstance(status, dict)
            results.append(
                ItemResult(
                    input_id or str(item.get("id") or ""),  # type: ignore[union-attr]
                    code,
                    str(status.get("description") or ""),
                    str(status.get("details") or ""),
                )
            )
        else:  # no per-input status: the top-level answer speaks for the input
            results.append(
                ItemResult(
                    input_id,
                    env.code if env.code is not None else 10020,
                    env.description,
                    env.details or "no per-input status in the response",
                )
            )
    return results


def api_for(
    config: Config,
    key: ApiKey,
    *,
    factory: Callable[..., ClarifaiApi] | None = None,
    **overrides: Any,
) -> ClarifaiApi:
    """The client for `config`'s remote with `key`; `overrides` change single options
    (`status` and `doctor` make one quick call: one worker, fewer attempts)."""
    remote = config.remote
    options: dict[str, Any] = {
        "user_id": remote.user_id,
        "app_id": remote.app_id,
        "key_source": key.source,
        "workers": config.sync.workers,
        "max_requests_per_second": config.sync.max_requests_per_second,
        "timeout": remote.timeout,
        **overrides,
    }
    return (factory or ClarifaiApi)(remote.api_base, key.value, **options)
