"""The emulator over real HTTP: a ThreadingHTTPServer (HTTP/1.1 keep-alive, one thread per
connection) in front of V2Api and the control API, and the `Emulator` object tests use.

The standard library server is enough: a batched POST carries 128 inputs, so 2,000 inputs a
second is ~16 requests a second, far below what it sustains on two cores.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import parse_qs, urlsplit

import structlog

from syncd.emulator import codes
from syncd.emulator.api import HttpReply, HttpRequest, V2Api, Validator
from syncd.emulator.clock import Clock, ManualClock, WallClock
from syncd.emulator.control import PREFIX, handle_control
from syncd.emulator.faults import Faults, Stats
from syncd.emulator.persist import StateFile
from syncd.emulator.store import Store

log = structlog.get_logger(__name__)

#: The key accepted when none is configured, so `make demo` needs no secrets.
DEFAULT_API_KEY = "syncd-emulator-key-0000000000000000"
#: One request body may not exceed 128 MB (checked from Content-Length before reading).
MAX_BODY_BYTES = 128 * 1024 * 1024
#: Idle keep-alive connections are closed after this many seconds.
IDLE_TIMEOUT = 60.0


class Emulator:
    """A local stand-in for the Clarifai v2 inputs API of one user's one app.

    `clock=None` uses wall time; pass a ManualClock to step the asynchronous processing and
    deletes by hand. `validator` is called with every accepted request body and every response
    body (see api.Validator). Use as a context manager or call start() / stop().
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Sequence[str] | None = None,
        user_id: str = "demo-user",
        app_id: str = "demo-app",
        processing_delay: float = 0.5,
        delete_delay: float = 0.5,
        state_path: str | Path | None = None,
        clock: Clock | None = None,
        *,
        validator: Validator | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        seed: int | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.api_keys = tuple(api_keys) if api_keys else (DEFAULT_API_KEY,)
        self.user_id = user_id
        self.app_id = app_id
        self.clock: Clock = clock if clock is not None else WallClock()
        self.max_body_bytes = max_body_bytes
        self._state = StateFile(state_path) if state_path is not None else None
        self.store = Store(
            self.clock,
            processing_delay=processing_delay,
            delete_delay=delete_delay,
            persister=self._state,
            records=self._state.load() if self._state is not None else (),
        )
        self._stats = Stats()
        self._faults = Faults()
        self._stopping = threading.Event()
        self.api = V2Api(
            self.store,
            user_id=user_id,
            app_id=app_id,
            api_keys=self.api_keys,
            stats=self._stats,
            faults=lambda: self._faults,
            base_url=lambda: self.url,
            validator=validator,
            sleep=self._stopping.wait,
            rng=random.Random(seed),
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- serving ----------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="emulator-serve",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections and join every thread the emulator started."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            server.close_connections()
            server.join_connection_threads(timeout=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._state is not None:
            self._state.close()
            self._state = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The first accepted key (DEFAULT_API_KEY when none was given)."""
        return self.api_keys[0]

    # --- control ----------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    def set_faults(
        self,
        *,
        throttle_rps: float | None = None,
        retry_after: int | None = None,
        error_rate: float = 0.0,
        error_status: int = 503,
        latency: float = 0.0,
        drop_rate: float = 0.0,
        fail_processing_ids: Sequence[str] | frozenset[str] = (),
        duplicate_fails_batch: bool = False,
    ) -> Faults:
        """Replace every fault setting at once (omitted ones go back to healthy)."""
        return self.replace_faults(
            Faults(
                throttle_rps=throttle_rps,
                retry_after=retry_after,
                error_rate=error_rate,
                error_status=error_status,
                latency=latency,
                drop_rate=drop_rate,
                fail_processing_ids=frozenset(fail_processing_ids),
                duplicate_fails_batch=duplicate_fails_batch,
            )
        )

    def replace_faults(self, faults: Faults) -> Faults:
        self._faults = faults
        log.info("emulator_faults_set", **faults.as_dict())
        return faults

    def store_snapshot(self) -> list[dict[str, Any]]:
        """Every input with its full state (same as GET /_emulator/store)."""
        return self.store.snapshot()

    def stats(self) -> dict[str, Any]:
        """Request and fault counters (same as GET /_emulator/stats)."""
        return self._stats.snapshot()

    def image_bytes(self, input_id: str) -> bytes | None:
        return self.store.image(input_id)

    @property
    def hook_errors(self) -> list[str]:
        """Exceptions the validator hook raised (it is never allowed to break a request)."""
        return self.api.hook_errors

    def reset(self) -> None:
        """Clear the store (and its state file), the stats, the throttle and the faults."""
        self.store.clear()
        self._stats.reset()
        self.api.throttle.reset()
        self._faults = Faults()

    def advance(self, seconds: float) -> float:
        """Move the ManualClock forward; a TypeError with the wall clock."""
        if not isinstance(self.clock, ManualClock):
            raise TypeError("advance needs an emulator started with a ManualClock")
        return self.clock.advance(seconds)


class _Server(ThreadingHTTPServer):
    """Tracks its connections and their threads so that stop() can close and join them."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (killed, timed out) is normal life, not a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._workers: set[threading.Thread] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        worker = threading.Thread(
            target=self._serve_connection,
            args=(request, client_address),
            name="emulator-conn",
            daemon=True,
        )
        with self._lock:
            self._connections.add(request)
            self._workers.add(worker)
        worker.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.discard(request)
                self._workers.discard(threading.current_thread())

    def close_connections(self) -> None:
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_connection_threads(self, timeout: float) -> None:
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "syncd-emulator"
    sys_version = ""
    timeout = IDLE_TIMEOUT
    server: _Server

    def setup(self) -> None:
        super().setup()
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PATCH = do_DELETE = do_PUT = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Per-request access lines are not logged: they would cost more than the request."""

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("emulator_http_error", message=format % args)

    def _handle(self) -> None:
        emu = self.server.emulator
        split = urlsplit(self.path)
        body, refusal = self._read_body(emu.max_body_bytes)
        if refusal is not None:
            reply = emu.api.refuse(self.command, split.path, refusal)
            self.close_connection = True
        elif split.path.startswith(PREFIX):
            reply = handle_control(emu, self.command, split.path, body)
        else:
            request = HttpRequest(
                method=self.command,
                path=split.path,
                query=parse_query(split.query),
                headers=self.headers,
                body=body,
            )
            reply = emu.api.handle(request)
        self._send(reply)

    def _read_body(self, limit: int) -> tuple[bytes, codes.Refusal | None]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(limit)
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b"", None
        try:
            length = int(raw_length)
        except ValueError:
            return b"", codes.Refusal(codes.CONN_BAD_REQUEST_FORMAT, "invalid Content-Length")
        if length > limit:
            return b"", _too_large(length, limit)
        return self.rfile.read(length), None

    def _read_chunked(self, limit: int) -> tuple[bytes, codes.Refusal | None]:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            except ValueError:
                return b"", codes.Refusal(codes.CONN_BAD_REQUEST_FORMAT, "invalid chunk")
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts), None
            total += size
            if total > limit:
                return b"", _too_large(total, limit)
            parts.append(self.rfile.read(size))
            self.rfile.readline(16)

    def _send(self, reply: HttpReply) -> None:
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        # Headers and body in one write: two small writes meet Nagle + delayed ACK (~40 ms).
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(reply.body)
        self.flush_headers()


def _too_large(size: int, limit: int) -> codes.Refusal:
    return codes.Refusal(
        codes.RPC_MAX_MESSAGE_SIZE_EXCEEDED,
        f"request body of {size} bytes exceeds the limit of {limit} bytes",
    )


def parse_query(query: str) -> dict[str, list[str]]:
    """`parse_qs(query, keep_blank_values=True)`, split by hand when nothing in it is escaped
    (a poll's 128 plain ids: parse_qs unquoting each was a fifth of the emulator's time)."""
    if "%" in query or "+" in query:
        return parse_qs(query, keep_blank_values=True)
    parsed: dict[str, list[str]] = {}
    for field in query.split("&"):
        if field:
            name, _, value = field.partition("=")
            parsed.setdefault(name, []).append(value)
    return parsed


def serve_forever(
    host: str = "127.0.0.1",
    port: int = 8080,
    api_keys: Sequence[str] | None = None,
    user_id: str = "demo-user",
    app_id: str = "demo-app",
    processing_delay: float = 0.5,
    delete_delay: float = 0.5,
    state_path: str | Path | None = None,
    throttle_rps: float | None = None,
    retry_after: int | None = None,
    out: TextIO | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT. The first stdout line is `listening on http://HOST:PORT`;
    with no key given, the next one is `api key: <the default key>`."""
    out = out or sys.stdout
    # A signal handler runs in the main thread between two bytecodes, possibly while that
    # thread holds a lock: it must take none (Event.set() here once deadlocked the emulator
    # when a signal landed inside Event.wait()). It only flips a flag; the loop polls it.
    stopping: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    emu = Emulator(
        host,
        port,
        api_keys,
        user_id,
        app_id,
        processing_delay,
        delete_delay,
        state_path,
    )
    try:
        emu.start()
        if throttle_rps is not None or retry_after is not None:
            emu.set_faults(throttle_rps=throttle_rps, retry_after=retry_after)
        print(f"listening on {emu.url}", file=out, flush=True)
        if not api_keys:
            print(f"api key: {emu.api_key}", file=out, flush=True)
        log.info("emulator_started", url=emu.url, user_id=user_id, app_id=app_id)
        while not stopping:
            time.sleep(0.1)
    finally:
        emu.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("emulator_stopped")
