"""The inputs API client: pure classification, a scripted loopback server, and the emulator."""

from __future__ import annotations

import base64
import json
import logging
import random
import struct
import threading
import time
import traceback
import urllib.parse
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st

from syncd.api import RATE_HEADROOM, ApiStats, ClarifaiApi, ItemResult, RemoteRecord, chunk_ids
from syncd.envelope import (
    THROTTLED_BACKOFF_FLOOR,
    Envelope,
    Verdict,
    backoff_delay,
    classify,
    parse_code,
    parse_envelope,
    parse_retry_after,
    quote_id,
)
from syncd.errors import (
    AuthError,
    ConfigError,
    RejectedError,
    ThrottledError,
    TransientError,
    WaitRequested,
)

SECRET = "s3cr3t-k3y-0123456789abcdef"


def _png() -> bytes:
    """A valid 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


PNG_B64 = base64.b64encode(_png()).decode()


def image_item(input_id: str, concepts: tuple[str, ...] = ("cat",), **metadata: Any) -> dict:
    return {
        "id": input_id,
        "data": {
            "image": {"base64": PNG_B64},
            "concepts": [{"id": c, "value": 1} for c in concepts],
            "metadata": metadata or {"name": input_id},
        },
    }


class FakeTime:
    """Injected clock/sleep: sleeping records the wait and moves the clock (unless frozen)."""

    def __init__(self, *, frozen: bool = False, on_sleep: Callable[[int], None] | None = None):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.frozen = frozen
        self.on_sleep = on_sleep
        self._lock = threading.Lock()

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            if not self.frozen:
                self.now += seconds
            count = len(self.sleeps)
        if self.on_sleep is not None:
            self.on_sleep(count)


# --- pure pieces ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (10000, 10000),
        (10010.0, 10010),
        ("10020", 10020),
        ("SUCCESS", 10000),
        ("CONN_THROTTLED", 11005),
        ("INPUT_DOWNLOAD_PENDING", 30001),
        ("input_success", 30000),
        ("NO_SUCH_CODE", None),
        (True, None),
        (None, None),
        ({"x": 1}, None),
    ],
)
def test_parse_code_accepts_numbers_and_enum_names(value: Any, expected: int | None) -> None:
    """Status codes are read from numbers, numeric strings and enum names alike."""
    assert parse_code(value) == expected


def _env(http: int, code: Any = None, items: list | None = None, text: str | None = None):
    if text is not None:
        return parse_envelope(http, text.encode())
    body: dict[str, Any] = {} if code is None else {"status": {"code": code}}
    if items is not None:
        body["inputs"] = items
    return parse_envelope(http, json.dumps(body).encode())


ITEM = [{"id": "a", "status": {"code": 30104, "details": "Input has a duplicate ID."}}]


@pytest.mark.parametrize(
    "env, verdict",
    [
        (_env(200, 10000), Verdict.OK),
        (_env(500, 10000), Verdict.OK),  # the code decides, HTTP is a hint
        (_env(200, "SUCCESS"), Verdict.OK),
        (_env(207, 10010, ITEM), Verdict.ITEMS),
        (_env(400, 10020, ITEM), Verdict.ITEMS),
        (_env(400, 10020), Verdict.REJECTED),
        (_env(400, 10020, [{"id": "a"}]), Verdict.REJECTED),  # items but no per-item status
        (_env(502, 10020), Verdict.TRANSIENT),  # "Bad gateway" bodies carry FAILURE
        (_env(401, 11009), Verdict.AUTH),
        (_env(401), Verdict.AUTH),
        (_env(200, 11008), Verdict.AUTH),
        (_env(400, 11102), Verdict.AUTH),
        (_env(403, "CONN_INSUFFICIENT_SCOPES"), Verdict.AUTH),
        (_env(429, 11005), Verdict.THROTTLED),
        (_env(429), Verdict.THROTTLED),
        (_env(200, "CONN_THROTTLED"), Verdict.THROTTLED),
        (_env(200, 10030), Verdict.TRANSIENT),
        (_env(503, 39997), Verdict.TRANSIENT),
        (_env(200, 40031), Verdict.TRANSIENT),
        (_env(500, 98004), Verdict.TRANSIENT),
        (_env(503), Verdict.TRANSIENT),
        (_env(504, text="<html>Gateway Timeout</html>"), Verdict.TRANSIENT),
        (_env(408), Verdict.TRANSIENT),
        (_env(404, 11101), Verdict.NOT_FOUND),
        (_env(200, 30102), Verdict.NOT_FOUND),
        (_env(404), Verdict.NOT_FOUND),
        (_env(404, text="<html>no such page</html>"), Verdict.REJECTED),
        (_env(200, text="<html>captive portal</html>"), Verdict.REJECTED),
        (_env(200, text=""), Verdict.TRANSIENT),  # the answer lost on the way
        (_env(200, text='{"status": {"code": 10000}, "inpu'), Verdict.TRANSIENT),  # cut off
        (_env(200), Verdict.OK),  # JSON without a status on a 2xx
        (_env(400, 11100), Verdict.REJECTED),
        (_env(400, 40033), Verdict.REJECTED),
    ],
)
def test_classify_table(env: Envelope, verdict: Verdict) -> None:
    """Each answer is sorted into ok, items, not found, auth, throttled, transient or rejected."""
    assert classify(env) is verdict


def test_parse_envelope_keeps_an_excerpt_of_a_non_json_body() -> None:
    """An HTML error page becomes a codeless envelope with a short one-line excerpt."""
    env = parse_envelope(502, b"<html>\n  <h1>502 Bad Gateway</h1>\n" + b"x" * 500 + b"</html>")
    assert env.code is None and env.body is None
    assert env.excerpt.startswith("<html> <h1>502 Bad Gateway</h1>")
    assert len(env.excerpt) == 200


def test_backoff_schedule_doubles_to_the_cap_with_full_jitter() -> None:
    """The upper bound doubles from backoff_base per attempt up to backoff_cap; draws stay in it."""

    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    tops = [backoff_delay(n, 0.5, 30.0, Top()) for n in range(1, 10)]
    assert tops == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    rng = random.Random(7)
    for n in range(1, 10):
        draws = [backoff_delay(n, 0.5, 30.0, rng) for _ in range(50)]
        assert all(0.0 <= d <= tops[n - 1] for d in draws)
        assert max(draws) - min(draws) > 0.1 * tops[n - 1]  # jittered, not constant


def test_throttled_backoff_waits_at_least_half_of_each_step() -> None:
    """With the throttling floor, every draw is in [d/2, d], so the waits of N attempts add
    up to at least half the schedule: a retry budget cannot run out inside one rate window."""
    rng = random.Random(3)
    for n in range(1, 10):
        top = min(30.0, 0.5 * 2.0 ** (n - 1))
        draws = [backoff_delay(n, 0.5, 30.0, rng, floor=THROTTLED_BACKOFF_FLOOR) for _ in range(50)]
        assert all(top / 2 <= d <= top for d in draws)


def test_parse_retry_after_seconds_and_http_dates() -> None:
    """Retry-After is read as delta-seconds or an HTTP date, clamped to [0, 600]."""
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2024, 5, 1, 12, 0, 7, tzinfo=UTC), usegmt=True)
    earlier = format_datetime(datetime(2024, 5, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 1.5 ", now) == 1.5
    assert parse_retry_after(later, now) == pytest.approx(7.0)
    assert parse_retry_after(earlier, now) == 0.0
    assert parse_retry_after("-4", now) == 0.0
    assert parse_retry_after("86400", now) == 600.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("nan", now) is None
    assert parse_retry_after(None, now) is None


@pytest.mark.parametrize(
    "result, ok, duplicate",
    [
        (ItemResult("a", 30001, "Download pending", ""), True, False),
        (ItemResult("a", 30000, "Download complete", ""), True, False),
        (ItemResult("a", 30200, "Input modify success", ""), True, False),
        (ItemResult("a", 10000, "Ok", ""), True, False),
        (ItemResult("a", 30104, "Invalid", "Input has a duplicate ID."), False, True),
        (ItemResult("a", 40010, "Duplicate key", ""), False, True),
        (ItemResult("a", 30104, "Input has a duplicate id", ""), False, True),
        (ItemResult("a", 30104, "Invalid", "duplicate input id"), False, True),
        (ItemResult("a", 30104, "Invalid", "Input id already exists"), False, True),
        (ItemResult("a", 10020, "Failure", "Not added: another has a duplicate ID"), False, False),
        (ItemResult("a", 30100, "Duplicate URL in your application", ""), False, False),
        (ItemResult("a", 30002, "Download failed", ""), False, False),
        (ItemResult("a", 10020, "Failure", "no per-input status in the response"), False, False),
    ],
)
def test_item_result_ok_and_duplicate(result: ItemResult, ok: bool, duplicate: bool) -> None:
    """Success codes read as ok; a duplicate id (not a duplicate URL) reads as duplicate."""
    assert (result.ok, result.duplicate) == (ok, duplicate)


def test_chunk_ids_bounds_count_and_url_length_and_drops_repeats() -> None:
    """Id chunks respect the size limit and the URL budget, keep order and drop repeats."""
    ids = [f"id-{i:04d}" for i in range(300)] + ["id-0000"]
    chunks = list(chunk_ids(ids, 128))
    assert [len(c) for c in chunks] == [128, 128, 44]
    assert [i for c in chunks for i in c] == ids[:300]
    long_ids = [f"{i:03d}" + "x" * 297 for i in range(60)]
    long_chunks = list(chunk_ids(long_ids, 128))
    assert len(long_chunks) > 1
    assert all(sum(len(i) + 5 for i in c) <= 6000 for c in long_chunks)


def test_remote_record_from_json_reads_enum_names_and_tolerates_gaps() -> None:
    """A listed input becomes a RemoteRecord; a missing status or data reads as None / {}."""
    rec = RemoteRecord.from_json(
        {"id": "a", "data": {"metadata": {}}, "status": {"code": "INPUT_SUCCESS"}}
    )
    assert (rec.input_id, rec.status_code, rec.created_at) == ("a", 30000, None)
    bare = RemoteRecord.from_json({"id": "b"})
    assert (bare.data, bare.status_code, bare.status_description) == ({}, None, "")


def test_api_stats_counts_from_many_threads() -> None:
    """ApiStats updates from concurrent threads are not lost."""
    stats = ApiStats()

    def work() -> None:
        for _ in range(500):
            stats.record_request("add", 3)
            stats.record_retry(throttled=True)
            stats.record_wait(0.5)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stats.as_dict() == {
        "requests": {"add": 4000},
        "retries": 4000,
        "throttled": 4000,
        "bytes_sent": 12000,
        "seconds_waiting": 2000.0,
    }


@pytest.mark.parametrize("key", ["", "two words", " padded", "line\nbreak"])
def test_unusable_key_is_a_config_error_naming_the_source(key: str) -> None:
    """An empty or whitespace-containing key is refused up front, naming only its source."""
    with pytest.raises(ConfigError, match="environment variable CLARIFAI_PAT") as info:
        ClarifaiApi("http://127.0.0.1:9", key, key_source="environment variable CLARIFAI_PAT")
    if key.strip():
        assert key.strip() not in str(info.value)


def test_batch_limits_are_checked_before_sending() -> None:
    """Over 128 inputs or ids, a bad action or a bad per_page is a ValueError, not a request."""
    api = ClarifaiApi("http://127.0.0.1:9", SECRET, max_attempts=1)
    with pytest.raises(ValueError, match="128"):
        api.add_inputs([image_item(f"i{n}") for n in range(129)])
    with pytest.raises(ValueError, match="128"):
        api.patch_inputs([image_item(f"i{n}") for n in range(129)], "merge")
    with pytest.raises(ValueError, match="128"):
        api.delete_inputs([f"i{n}" for n in range(129)])
    with pytest.raises(ValueError, match="action"):
        api.patch_inputs([image_item("i")], "replace")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_page"):
        list(api.list_inputs(per_page=1001))
    assert api.add_inputs([]) == [] and api.patch_inputs([], "merge") == []
    api.delete_inputs([])
    assert sum(api.stats.requests.values()) == 0
    assert SECRET not in repr(api)
    api.close()


# --- a scripted loopback server: real HTTP for answers the emulator never gives ---------------


class Scripted:
    """A loopback HTTP server answering from a script and recording every request."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], bytes]] = []
        self.seen: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.seen.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": dict(self.headers),
                        "body": body,
                    }
                )
                status, headers, payload = (
                    owner.script.pop(0) if owner.script else (500, {}, b"script exhausted")
                )
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.script.append((status, headers or {}, raw))


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(timeout=5)


OK = {"status": {"code": 10000, "description": "Ok"}}


def test_requests_carry_key_header_json_and_the_scoped_route(scripted: Scripted) -> None:
    """Scoped routes quote user/app ids; the body is compact JSON sent with the Key header."""
    scripted.reply(200, {**OK, "inputs": [{"id": "a", "status": {"code": 30001}}]})
    ft = FakeTime()
    with ClarifaiApi(
        scripted.url + "/v2/",
        SECRET,
        user_id="me",
        app_id="my app",
        dataset_id="train",
        max_requests_per_second=None,
        sleep=ft.sleep,
        clock=ft.clock,
    ) as api:
        [result] = api.add_inputs([image_item("a")])
    assert result.ok and result.code == 30001
    [req] = scripted.seen
    assert (req["method"], req["path"]) == ("POST", "/v2/users/me/apps/my%20app/inputs")
    assert req["headers"]["Authorization"] == f"Key {SECRET}"
    assert req["headers"]["Content-Type"] == "application/json"
    sent = json.loads(req["body"])
    assert sent["inputs"][0]["dataset_ids"] == ["train"]
    assert b": " not in req["body"] and b", " not in req["body"]
    assert api.stats.bytes_sent == len(req["body"])
    assert api.stats.requests == {"add": 1}


def test_enum_name_codes_are_understood(scripted: Scripted) -> None:
    """A body using enum names for top-level and per-input codes maps like numbers."""
    scripted.reply(
        207,
        {
            "status": {"code": "MIXED_STATUS"},
            "inputs": [
                {"id": "b", "status": {"code": "INPUT_DOWNLOAD_PENDING"}},
                {"id": "a", "status": {"code": "INPUT_INVALID_ARGUMENT", "details": "bad"}},
            ],
        },
    )
    api = ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None)
    results = api.add_inputs([image_item("a"), image_item("b"), image_item("c")])
    assert [(r.input_id, r.code, r.ok) for r in results] == [
        ("a", 30104, False),
        ("b", 30001, True),
        ("c", 10010, False),  # absent from the answer: the top-level code speaks for it
    ]
    api.close()


def test_html_502_is_retried_and_html_400_is_rejected_with_an_excerpt(scripted: Scripted) -> None:
    """A non-JSON 5xx page is transient (retried); a non-JSON 4xx page is rejected at once."""
    scripted.reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
    scripted.reply(200, {**OK, "counts": {"processed": "12", "errors": 1}})
    ft = FakeTime()
    api = ClarifaiApi(
        scripted.url, SECRET, max_requests_per_second=None, sleep=ft.sleep, clock=ft.clock
    )
    counts = api.input_counts()
    assert counts["processed"] == 12 and counts["errors"] == 1 and counts["reindexing"] == 0
    assert len(counts) == 8 and len(ft.sleeps) == 1
    scripted.reply(400, b"<html><body>Bad Request</body></html>")
    with pytest.raises(RejectedError, match="Bad Request") as info:
        api.check_auth()
    assert info.value.http_status == 400
    assert len(scripted.seen) == 3
    api.close()


def test_failure_without_item_statuses_is_rejected_not_retried(scripted: Scripted) -> None:
    """A 10020 without per-input statuses is a RejectedError after exactly one request."""
    scripted.reply(400, {"status": {"code": 10020, "description": "Failure"}, "inputs": []})
    api = ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None)
    with pytest.raises(RejectedError, match="10020 Failure") as info:
        api.patch_inputs([{"id": "a", "data": {"metadata": {"k": 1}}}], "merge")
    assert info.value.code == 10020
    assert len(scripted.seen) == 1
    assert json.loads(scripted.seen[0]["body"])["action"] == "merge"
    api.close()


def test_retry_after_http_date_is_honoured(scripted: Scripted) -> None:
    """A Retry-After given as an HTTP date is waited out before the next attempt."""
    when = format_datetime(datetime.fromtimestamp(time.time() + 5, UTC), usegmt=True)
    scripted.reply(503, {"status": {"code": 39997}}, {"Retry-After": when})
    scripted.reply(200, OK)
    ft = FakeTime()
    api = ClarifaiApi(
        scripted.url, SECRET, max_requests_per_second=None, sleep=ft.sleep, clock=ft.clock
    )
    api.check_auth()
    [wait] = ft.sleeps
    assert 3.0 <= wait <= 5.0  # HTTP dates have whole-second resolution
    api.close()


def test_a_throttle_pauses_later_requests_from_other_callers(scripted: Scripted) -> None:
    """After a 429 every request of the client waits out the pause, not only the one retried."""
    scripted.reply(429, {"status": {"code": 11005}}, {"Retry-After": "3"})
    scripted.reply(200, OK)
    scripted.reply(200, OK)
    ft = FakeTime(frozen=True)  # the clock stands still, so the pause is still in force
    api = ClarifaiApi(
        scripted.url, SECRET, max_requests_per_second=None, sleep=ft.sleep, clock=ft.clock
    )
    api.check_auth()
    api.check_auth()
    assert ft.sleeps == [3.0, 3.0]
    assert api.stats.throttled == 1 and api.stats.retries == 1
    api.close()


def test_an_answer_lost_on_the_way_is_retried_not_bisected(scripted: Scripted) -> None:
    """A 200 whose body is empty or cut off (a proxy, a dropped connection) is retried as
    the same request; the retried add's "duplicate ID" is the caller's to adopt. Before,
    it was a refusal, and a batch was split down to single inputs."""
    scripted.reply(200, b"")
    scripted.reply(200, b'{"status": {"code": 10000}, "inpu')
    scripted.reply(200, {**OK, "inputs": [{"id": "a", "status": {"code": 30000}}]})
    ft = FakeTime()
    api = ClarifaiApi(
        scripted.url, SECRET, max_requests_per_second=None, sleep=ft.sleep, clock=ft.clock
    )
    [result] = api.add_inputs([{"id": "a", "data": {"image": {"base64": "AA=="}}}])
    assert result.ok and result.input_id == "a"
    assert len(scripted.seen) == 3 and len({r["body"] for r in scripted.seen}) == 1
    assert api.stats.retries == 2
    api.close()


def _daemons_client(scripted: Scripted, ft: FakeTime) -> ClarifaiApi:
    """A client as the daemon makes it: a wait over 30 s is left to the caller."""
    return ClarifaiApi(
        scripted.url,
        SECRET,
        max_requests_per_second=None,
        max_wait=30.0,
        sleep=ft.sleep,
        clock=ft.clock,
    )


def test_a_wait_longer_than_max_wait_is_left_to_the_caller(scripted: Scripted) -> None:
    """With `max_wait` (the daemon's client), a Retry-After longer than it is not slept out
    inside the request: the request fails at once (WaitRequested, the wait in `retry_after`),
    and so does any later request while the wait lasts, without being sent; after a 503 too,
    which otherwise pauses only its own request. A shorter wait is slept out as before."""
    for status, code in ((429, 11005), (503, 10020)):
        scripted.reply(status, {"status": {"code": code}}, {"Retry-After": "300"})
        ft = FakeTime(frozen=True)
        api = _daemons_client(scripted, ft)
        seen = len(scripted.seen)
        with pytest.raises(WaitRequested, match="asked to wait 300 s") as info:
            api.check_auth()
        assert info.value.retry_after == 300.0 and info.value.http_status == status
        with pytest.raises(WaitRequested) as later:
            api.check_auth()
        assert later.value.retry_after == 300.0
        assert ft.sleeps == [] and len(scripted.seen) == seen + 1
        api.close()

    scripted.reply(429, {"status": {"code": 11005}}, {"Retry-After": "3"})
    scripted.reply(200, OK)
    ft = FakeTime()
    api = _daemons_client(scripted, ft)
    api.check_auth()
    assert ft.sleeps == [3.0]
    api.close()


def test_a_5xx_retry_does_not_pause_other_callers(scripted: Scripted) -> None:
    """A server error delays only the request that met it."""
    scripted.reply(503, {"status": {"code": 10020}}, {"Retry-After": "3"})
    scripted.reply(200, OK)
    scripted.reply(200, OK)
    ft = FakeTime(frozen=True)
    api = ClarifaiApi(
        scripted.url, SECRET, max_requests_per_second=None, sleep=ft.sleep, clock=ft.clock
    )
    api.check_auth()
    api.check_auth()
    assert ft.sleeps == [3.0]
    api.close()


def test_listing_by_ids_spells_each_id_safely_in_the_query(scripted: Scripted) -> None:
    """Ids go in the query as they are when unreserved, percent-encoded otherwise; the
    server reads back exactly the ids asked for."""
    odd = ["plain-id_1.x~", "a/b", "with space", "é&=?#+"]
    scripted.reply(200, {**OK, "inputs": [{"id": i} for i in odd]})
    api = ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None)
    assert [r.input_id for r in api.list_inputs(ids=odd)] == odd
    [req] = scripted.seen
    path, _, query = req["path"].partition("?")
    assert path == "/v2/inputs"
    assert query.startswith("ids=plain-id_1.x~&ids=a%2Fb&ids=with%20space&")
    assert urllib.parse.parse_qs(query)["ids"] == odd
    assert urllib.parse.parse_qs(query)["per_page"] == ["4"]
    api.close()


@given(st.text(max_size=40))
def test_quote_id_is_percent_encoding(input_id: str) -> None:
    """quote_id's shortcut never changes what full percent-encoding gives."""
    assert quote_id(input_id) == urllib.parse.quote(input_id, safe="")


def test_proxy_settings_come_from_the_environment(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY carries the requests (the proxy sees the absolute URL); NO_PROXY for the
    API's host sends them direct."""
    monkeypatch.setenv("HTTP_PROXY", scripted.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    scripted.reply(200, {**OK, "counts": {}})
    with ClarifaiApi("http://api.example.invalid", SECRET, max_requests_per_second=None) as api:
        api.check_auth()
    assert scripted.seen[-1]["path"] == "http://api.example.invalid/v2/inputs/status"

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    scripted.reply(200, {**OK, "counts": {}})
    with ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None, max_attempts=1) as api:
        api.check_auth()
    assert scripted.seen[-1]["path"] == "/v2/inputs/status"


def test_ca_bundle_and_other_proxies_are_taken_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """The environment is read once, and all of it that requests would honour still applies:
    REQUESTS_CA_BUNDLE (a company's CA), HTTPS_PROXY and ALL_PROXY."""
    ca = tmp_path / "company-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example.invalid:3128")
    monkeypatch.setenv("ALL_PROXY", "http://fallback.example.invalid:3128")
    with ClarifaiApi("https://api.clarifai.com", SECRET) as api:
        session = api._session
        assert session.verify == str(ca)
        assert session.proxies["https"] == "http://proxy.example.invalid:3128"
        assert session.proxies["all"] == "http://fallback.example.invalid:3128"
        assert session.trust_env is False  # nothing is read again per request


def test_a_netrc_entry_never_replaces_the_key_header(
    scripted: Scripted, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """requests would apply ~/.netrc credentials for the host over our Authorization header;
    the key is what is sent."""
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    scripted.reply(200, {**OK, "counts": {}})
    with ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None) as api:
        api.check_auth()
    assert scripted.seen[-1]["headers"]["Authorization"] == f"Key {SECRET}"


def test_not_found_answers_mean_none_for_get_and_done_for_delete(scripted: Scripted) -> None:
    """GET of a missing id is None (404/11101 or 30102); DELETE of gone ids is a success."""
    gone = {"status": {"code": 11101, "description": "Resource does not exist"}}
    scripted.reply(404, gone)
    scripted.reply(200, {"status": {"code": "INPUT_DOES_NOT_EXIST"}})
    scripted.reply(404, gone)
    api = ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None)
    assert api.get_input("a/b") is None
    assert api.get_input("b") is None
    api.delete_inputs(["a", "b"])
    assert [(r["method"], r["path"]) for r in scripted.seen] == [
        ("GET", "/v2/inputs/a%2Fb"),
        ("GET", "/v2/inputs/b"),
        ("DELETE", "/v2/inputs"),
    ]
    assert json.loads(scripted.seen[2]["body"]) == {"ids": ["a", "b"]}
    assert api.stats.requests == {"get": 2, "delete": 1}
    api.close()


def test_auth_code_on_a_200_still_stops_and_names_the_source(scripted: Scripted) -> None:
    """An auth status code decides even under HTTP 200, and is never retried."""
    scripted.reply(
        200, {"status": {"code": "CONN_KEY_NOT_FOUND", "description": "API key not found"}}
    )
    api = ClarifaiApi(scripted.url, SECRET, key_source="environment variable CLARIFAI_PAT")
    with pytest.raises(AuthError) as info:
        api.input_counts()
    assert str(info.value) == (
        "the remote refused the API key from environment variable CLARIFAI_PAT"
        " (11009 API key not found)"
    )
    assert len(scripted.seen) == 1
    api.close()


def test_an_echoed_key_is_redacted_from_errors(scripted: Scripted) -> None:
    """Even when the server echoes the key in its answer, no exception text contains it."""
    echo = {"status": {"code": 11008, "description": "Invalid API key", "details": SECRET}}
    scripted.reply(401, echo)
    scripted.reply(400, f"<html>bad header Key {SECRET}</html>".encode())
    api = ClarifaiApi(scripted.url, SECRET, key_source="file /etc/syncd/key")
    with pytest.raises(AuthError) as auth:
        api.check_auth()
    with pytest.raises(RejectedError) as rejected:
        api.check_auth()
    for err in (auth.value, rejected.value):
        text = f"{err} {err!r} {err.details} {err.description} {err.args}"
        assert SECRET not in text and "[redacted]" in text
    assert "file /etc/syncd/key" in str(auth.value)
    api.close()


# --- against the emulator, over real HTTP -------------------------------------------------------


def api_for(emulator: Any, **overrides: Any) -> ClarifaiApi:
    """A client for the emulator with fast backoff and no client-side rate limit by default."""
    options: dict[str, Any] = {
        "max_requests_per_second": None,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "timeout": 5.0,
    }
    options.update(overrides)
    return ClarifaiApi(emulator.url, emulator.api_key, **options)


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll `condition` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.02)


def route_count(emulator: Any, method: str, suffix: str) -> int:
    """Requests the emulator saw for `METHOD <route ending in suffix>`."""
    seen = emulator.stats()["requests"]
    return sum(n for key, n in seen.items() if key.startswith(method) and key.endswith(suffix))


@pytest.mark.parametrize("scoped", [False, True], ids=["short", "scoped"])
def test_round_trip_add_list_get_patch_delete(emulator: Any, scoped: bool) -> None:
    """Adds, listings, gets, merges, removals and deletes work on both route spellings."""
    ids = (emulator.user_id, emulator.app_id) if scoped else (None, None)
    api = api_for(emulator, user_id=ids[0], app_id=ids[1], dataset_id="train")
    results = api.add_inputs([image_item(f"rt-{n}", ("cat",), n=n) for n in range(3)])
    assert [r.input_id for r in results] == ["rt-0", "rt-1", "rt-2"]
    assert all(r.ok and r.code in (30001, 30003, 30000) for r in results)
    listed = {r.input_id: r for r in api.list_inputs()}
    assert set(listed) == {"rt-0", "rt-1", "rt-2"}
    assert listed["rt-1"].data["metadata"] == {"n": 1.0}
    assert listed["rt-1"].created_at

    merged = api.patch_inputs(
        [{"id": "rt-0", "data": {"concepts": [{"id": "dog", "value": 1}], "metadata": {"k": "v"}}}],
        "merge",
    )
    assert merged[0].ok
    got = api.get_input("rt-0")
    assert got is not None
    assert {c["id"] for c in got.data["concepts"]} == {"cat", "dog"}
    assert got.data["metadata"] == {"n": 0.0, "k": "v"}

    removed = api.patch_inputs(
        [{"id": "rt-0", "data": {"concepts": [{"id": "cat"}], "metadata": {"k": True}}}], "remove"
    )
    assert removed[0].ok
    got = api.get_input("rt-0")
    assert got is not None
    assert [c["id"] for c in got.data["concepts"]] == ["dog"]
    assert got.data["metadata"] == {"n": 0.0}

    api.delete_inputs(["rt-0", "rt-1"])
    wait_for(lambda: api.get_input("rt-0") is None and api.get_input("rt-1") is None)
    api.delete_inputs(["rt-0", "never-existed"])  # already gone: still a success
    assert [r.input_id for r in api.list_inputs()] == ["rt-2"]
    assert api.get_input("no-such-input") is None
    counts = api.input_counts()
    assert len(counts) == 8 and sum(counts.values()) == 1
    api.check_auth()
    api.close()


def test_mixed_batch_maps_each_input_back(emulator: Any) -> None:
    """In a 207 batch the duplicate id fails alone and the others are created."""
    api = api_for(emulator)
    assert api.add_inputs([image_item("mx-a")])[0].ok
    results = api.add_inputs([image_item("mx-b"), image_item("mx-a"), image_item("mx-c")])
    assert [(r.input_id, r.ok, r.duplicate) for r in results] == [
        ("mx-b", True, False),
        ("mx-a", False, True),
        ("mx-c", True, False),
    ]
    assert emulator.stats()["responses"].get("207") == 1
    assert {r.input_id for r in api.list_inputs(ids=["mx-a", "mx-b", "mx-c"])} == {
        "mx-a",
        "mx-b",
        "mx-c",
    }
    api.close()


def test_duplicate_fails_batch_returns_all_failed_items(emulator: Any) -> None:
    """When one duplicate fails the whole batch, every item comes back failed, none raised."""
    api = api_for(emulator)
    assert api.add_inputs([image_item("df-a")])[0].ok
    emulator.set_faults(duplicate_fails_batch=True)
    results = api.add_inputs([image_item("df-b"), image_item("df-a")])
    assert [(r.input_id, r.ok, r.duplicate) for r in results] == [
        ("df-b", False, False),
        ("df-a", False, True),
    ]
    assert api.get_input("df-b") is None
    assert route_count(emulator, "POST", "/inputs") == 2  # not retried
    api.close()


def test_revoked_key_raises_auth_error_once(emulator: Any) -> None:
    """A refused key is an AuthError naming its source, after exactly one request."""
    api = ClarifaiApi(
        emulator.url, "not-the-key-0000", key_source="environment variable CLARIFAI_PAT"
    )
    before = emulator.stats()["requests_total"]
    with pytest.raises(AuthError) as info:
        api.add_inputs([image_item("auth-a")])
    message = str(info.value)
    assert message.startswith("the remote refused the API key from environment variable")
    assert "CLARIFAI_PAT" in message and "not-the-key-0000" not in message
    assert info.value.code in (11008, 11009) and info.value.http_status == 401
    assert emulator.stats()["requests_total"] == before + 1
    assert api.stats.retries == 0
    api.close()


def test_throttle_storm_with_retry_after_is_waited_out(emulator: Any) -> None:
    """A 429 storm carrying Retry-After is retried after exactly that wait until it lifts."""
    emulator.set_faults(throttle_rps=1, retry_after=2)

    def lift(count: int) -> None:
        if count == 3:
            emulator.set_faults()

    ft = FakeTime(on_sleep=lift)
    api = api_for(emulator, sleep=ft.sleep, clock=ft.clock)
    api.check_auth()  # fills the one-request window
    results = api.add_inputs([image_item("storm-a")])
    assert results[0].ok
    assert ft.sleeps == [2.0, 2.0, 2.0]
    assert api.stats.throttled == 3 and api.stats.retries == 3
    assert emulator.stats()["throttled"] == 3
    api.close()


def test_throttled_error_carries_the_servers_retry_after(manual_emulator: Any) -> None:
    """Giving up on a 429 storm that asked for Retry-After, the error says how long the server
    asked to wait (the daemon waits at least that long). The emulator's clock stands still:
    its one-second window stays full."""
    emulator = manual_emulator
    emulator.set_faults(throttle_rps=1, retry_after=9)
    ft = FakeTime()
    api = api_for(emulator, sleep=ft.sleep, clock=ft.clock, max_attempts=2)
    api.check_auth()
    with pytest.raises(ThrottledError) as info:
        api.add_inputs([image_item("storm-c")])
    assert info.value.retry_after == 9.0
    assert ft.sleeps == [9.0]
    api.close()


def test_throttle_storm_without_retry_after_backs_off_and_gives_up(emulator: Any) -> None:
    """Without Retry-After the waits follow the jittered schedule, and the storm is bounded."""
    emulator.set_faults(throttle_rps=1)
    ft = FakeTime()
    api = api_for(
        emulator,
        sleep=ft.sleep,
        clock=ft.clock,
        max_attempts=5,
        backoff_base=0.5,
        backoff_cap=3.0,
        rng=random.Random(3),
    )
    api.check_auth()
    with pytest.raises(ThrottledError, match="after 5 attempts") as info:
        api.add_inputs([image_item("storm-b")])
    assert info.value.http_status == 429 and info.value.code == 11005
    assert len(ft.sleeps) == 4
    assert all(0 <= w <= cap for w, cap in zip(ft.sleeps, [0.5, 1.0, 2.0, 3.0], strict=True))
    assert route_count(emulator, "POST", "/inputs") == 5
    api.close()


def test_real_threads_survive_a_throttling_server(emulator: Any) -> None:
    """Four threads sharing one client finish 24 calls against a 20 req/s server limit: the
    throttled waits (at least half of each backoff step) outlast the server's 1 s window well
    within the retry budget (12 attempts wait >= 1.075 s), whatever the jitter draws."""
    emulator.set_faults(throttle_rps=20)
    api = api_for(emulator, workers=4, backoff_base=0.05, backoff_cap=0.2, max_attempts=12)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for k in range(6):
                assert api.add_inputs([image_item(f"th-{n}-{k}")])[0].ok
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert sum(1 for _ in api.list_inputs()) == 24
    assert api.stats.requests["add"] == 24 + api.stats.retries
    api.close()


def test_client_rate_limit_spaces_requests(emulator: Any) -> None:
    """max_requests_per_second=5 spaces six calls 1/(5 x RATE_HEADROOM) s apart."""
    ft = FakeTime()
    api = api_for(emulator, max_requests_per_second=5, sleep=ft.sleep, clock=ft.clock)
    for _ in range(6):
        api.check_auth()
    gap = 1 / (5 * RATE_HEADROOM)
    assert ft.sleeps == pytest.approx([gap] * 5)
    assert api.stats.seconds_waiting == pytest.approx(5 * gap)
    assert api.stats.requests["count"] == 6
    api.close()


def test_a_fraction_of_5xx_is_absorbed(emulator: Any) -> None:
    """With 30% of requests failing with 503, every call still succeeds through retries."""
    emulator.set_faults(error_rate=0.3, error_status=503)
    api = api_for(emulator, max_attempts=12)
    for n in range(20):
        assert api.add_inputs([image_item(f"5xx-{n}")])[0].ok
    emulator.set_faults()
    assert sum(1 for _ in api.list_inputs()) == 20
    failed = emulator.stats()["responses"].get("503", 0)
    assert api.stats.retries == failed
    api.close()


def test_persistent_5xx_gives_up_after_max_attempts(emulator: Any) -> None:
    """A server failing every request costs exactly max_attempts requests, then TransientError."""
    emulator.set_faults(error_rate=1.0, error_status=502)
    api = api_for(emulator, max_attempts=4)
    with pytest.raises(TransientError, match="after 4 attempts") as info:
        api.add_inputs([image_item("dead-a")])
    assert not isinstance(info.value, ThrottledError)
    assert info.value.http_status == 502
    assert route_count(emulator, "POST", "/inputs") == 4
    api.close()


def test_latency_beyond_the_timeout_is_retried_then_reported(emulator: Any) -> None:
    """Answers slower than the client timeout are retried, then reported as TransientError."""
    emulator.set_faults(latency=0.6)
    api = api_for(emulator, timeout=0.15, max_attempts=2)
    with pytest.raises(TransientError, match="Timeout"):
        api.input_counts()
    assert api.stats.requests["count"] == 2
    api.close()


def test_dropped_connection_retry_surfaces_duplicates(emulator: Any) -> None:
    """A POST applied by the server but never answered is retried; its inputs read duplicate."""
    emulator.set_faults(drop_rate=1.0)
    ft = FakeTime(on_sleep=lambda count: emulator.set_faults())
    api = api_for(emulator, sleep=ft.sleep, clock=ft.clock)
    results = api.add_inputs([image_item("drop-a"), image_item("drop-b")])
    assert [(r.input_id, r.duplicate) for r in results] == [("drop-a", True), ("drop-b", True)]
    assert emulator.stats()["posts_per_input_id"] == {"drop-a": 2, "drop-b": 2}
    assert len(ft.sleeps) == 1
    assert {r.input_id for r in api.list_inputs()} == {"drop-a", "drop-b"}
    api.close()


def test_listing_pages_until_a_short_page(emulator: Any) -> None:
    """1100 inputs list in two pages of per_page=1000; an exact multiple ends on an empty page."""
    api = api_for(emulator)
    for start in range(0, 1100, 128):
        batch = [image_item(f"pg-{n:05d}") for n in range(start, min(start + 128, 1100))]
        assert all(r.ok for r in api.add_inputs(batch))
    before = route_count(emulator, "GET", "/inputs")
    listed = [r.input_id for r in api.list_inputs(per_page=1000)]
    assert listed == [f"pg-{n:05d}" for n in range(1100)]
    assert route_count(emulator, "GET", "/inputs") - before == 2
    assert sum(1 for _ in api.list_inputs(per_page=550)) == 1100
    assert route_count(emulator, "GET", "/inputs") - before == 2 + 3
    api.close()


def test_listing_by_ids_is_one_request_per_chunk(emulator: Any) -> None:
    """300 wanted ids cost three requests of at most 128 ids; unknown ids are just absent."""
    api = api_for(emulator)
    for start in range(0, 256, 128):
        api.add_inputs([image_item(f"id-{n:04d}") for n in range(start, start + 128)])
    wanted = [f"id-{n:04d}" for n in range(300)]
    before = route_count(emulator, "GET", "/inputs")
    found = [r.input_id for r in api.list_inputs(ids=wanted)]
    assert sorted(found) == wanted[:256]
    assert route_count(emulator, "GET", "/inputs") - before == 3
    assert [r.input_id for r in api.list_inputs(ids=["id-0007"], per_page=10)] == ["id-0007"]
    api.close()


def test_input_statuses_are_one_request_for_one_chunk(emulator: Any) -> None:
    """A poll's question: (code, description) of the listed ids of one chunk, unknown ids
    absent, in one request; a chunk over the limit is refused before anything is sent."""
    api = api_for(emulator)
    api.add_inputs([image_item(f"st-{n:03d}") for n in range(3)])
    before = route_count(emulator, "GET", "/inputs")
    statuses = api.input_statuses(["st-000", "st-001", "st-002", "st-404"])
    assert route_count(emulator, "GET", "/inputs") - before == 1
    assert set(statuses) == {"st-000", "st-001", "st-002"}
    assert all(isinstance(code, int) for code, _ in statuses.values())
    with pytest.raises(ValueError, match="at most 128 ids"):
        api.input_statuses([f"x-{n}" for n in range(129)])
    assert route_count(emulator, "GET", "/inputs") - before == 1
    api.close()


def test_input_statuses_read_codes_as_listed(scripted: Scripted) -> None:
    """Codes as numbers or names, a missing status, and ids not asked for (ignored)."""
    scripted.reply(
        200,
        {
            **OK,
            "inputs": [
                {"id": "a", "status": {"code": 30000, "description": "Download complete"}},
                {"id": "b", "status": {"code": "INPUT_DOWNLOAD_FAILED", "description": "bad"}},
                {"id": "c"},
                {"id": "not-asked", "status": {"code": 30000}},
            ],
        },
    )
    api = ClarifaiApi(scripted.url, SECRET, max_requests_per_second=None)
    assert api.input_statuses(["a", "b", "c"]) == {
        "a": (30000, "Download complete"),
        "b": (30002, "bad"),
        "c": (None, ""),
    }
    api.close()


def test_the_key_never_reaches_logs_or_errors(
    emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Across retries, timeouts, drops and refusals, no log line or error text holds the key."""
    texts: list[str] = []
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        api = api_for(emulator, max_attempts=2)
        emulator.set_faults(error_rate=1.0, error_status=500)
        with pytest.raises(TransientError) as e1:
            api.check_auth()
        emulator.set_faults(drop_rate=1.0)
        with pytest.raises(TransientError) as e2:
            api.add_inputs([image_item("log-a")])
        emulator.set_faults(latency=0.3)
        with pytest.raises(TransientError) as e3:
            api_for(emulator, timeout=0.05, max_attempts=1).input_counts()
        emulator.set_faults()
        api.list_inputs(ids=["log-a"]).__next__()
        bad = ClarifaiApi(emulator.url, emulator.api_key + "x", key_source="file key.txt")
        with pytest.raises(AuthError) as e4:
            bad.check_auth()
    for info in (e1, e2, e3, e4):
        texts += [
            str(info.value),
            repr(info.value),
            "".join(traceback.format_exception(info.value)),
        ]
    texts += [repr(e) for e in events]
    texts += [caplog.text]
    assert any(e.get("event") == "api_request" for e in events)
    assert any(e.get("event") == "api_retry" for e in events)
    blob = "\n".join(texts)
    assert emulator.api_key not in blob
    assert "Authorization" not in blob
    api.close()
