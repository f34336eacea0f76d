"""Shared fixtures: emulators on loopback ports (every body they see checked against the
official protobufs), clients for them, tiny valid images, and a guard against leaked threads."""

from __future__ import annotations

import base64
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import Site, Traffic, make_site, restored_logging
from proto import ProtoRecorder

from syncd.emulator import DEFAULT_API_KEY, Emulator, ManualClock

THREAD_LEAK_GRACE = 2.0


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running behind it."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + THREAD_LEAK_GRACE
    while True:
        leaked = [
            t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon
        ]
        if not leaked or time.monotonic() > deadline:
            break
        leaked[0].join(0.05)
    if leaked:
        pytest.fail(f"test leaked non-daemon threads: {sorted(t.name for t in leaked)}")


@pytest.fixture
def proto_recorder() -> Iterator[ProtoRecorder]:
    """Records every request/response body that does not fit its official message."""
    recorder = ProtoRecorder()
    yield recorder
    if recorder.violations:
        pytest.fail("protobuf violations:\n" + "\n".join(recorder.violations[:20]))


@pytest.fixture
def make_emulator(proto_recorder: ProtoRecorder) -> Iterator[Callable[..., Emulator]]:
    """Start emulators with any Emulator(...) options; stopped (and hook-checked) afterwards."""
    started: list[Emulator] = []

    def make(**options: Any) -> Emulator:
        options.setdefault("validator", proto_recorder)
        emu = Emulator(**options).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()
    errors = [e for emu in started for e in emu.hook_errors]
    if errors:
        pytest.fail("the validator hook raised:\n" + "\n".join(errors))


@pytest.fixture
def emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    """A started emulator on the real clock with fast processing and deletes (0.05 s)."""
    return make_emulator(processing_delay=0.05, delete_delay=0.05)


@pytest.fixture
def manual_emulator(make_emulator: Callable[..., Emulator]) -> Emulator:
    """A started emulator on a ManualClock (delays 0.5 s): move time with `.advance(s)`."""
    return make_emulator(clock=ManualClock())


@pytest.fixture
def emulator_url(emulator: Emulator) -> str:
    return emulator.url


@pytest.fixture
def api_key() -> str:
    """The key every emulator accepts unless given others."""
    return DEFAULT_API_KEY


class V2Client:
    """A keep-alive session on one emulator's /v2 routes (or the scoped spelling)."""

    def __init__(self, emu: Emulator, *, key: str | None = None, scoped: bool = False) -> None:
        self.emu = emu
        self.base = emu.url + (f"/v2/users/{emu.user_id}/apps/{emu.app_id}" if scoped else "/v2")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Key {key or emu.api_key}"

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=10, **kwargs)

    def post_inputs(self, *inputs: dict[str, Any], **extra: Any) -> requests.Response:
        return self.request("POST", "/inputs", json={"inputs": list(inputs), **extra})

    def get_input(self, input_id: str) -> requests.Response:
        return self.request("GET", f"/inputs/{input_id}")

    def close(self) -> None:
        self.session.close()


@pytest.fixture
def client_for() -> Iterator[Callable[..., V2Client]]:
    """Make V2Clients: client_for(emu, key=None, scoped=False); closed afterwards."""
    clients: list[V2Client] = []

    def make(emu: Emulator, **options: Any) -> V2Client:
        client = V2Client(emu, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(emulator: Emulator, client_for: Callable[..., V2Client]) -> V2Client:
    return client_for(emulator)


@pytest.fixture
def manual_client(manual_emulator: Emulator, client_for: Callable[..., V2Client]) -> V2Client:
    return client_for(manual_emulator)


def png_bytes(seed: int = 0, side: int = 8) -> bytes:
    """A whole greyscale PNG, side x side pixels, whose content depends on `seed`."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    rows = b"".join(
        b"\x00" + bytes((seed * 31 + x * 7 + y * 13) % 256 for x in range(side))
        for y in range(side)
    )
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(rows, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def image_input(input_id: str | None, data: bytes, **fields: Any) -> dict[str, Any]:
    """A POST /v2/inputs item carrying `data` as base64, plus any extra data fields."""
    item: dict[str, Any] = {"data": {"image": {"base64": base64.b64encode(data).decode()}}}
    item["data"].update(fields)
    if input_id is not None:
        item["id"] = input_id
    return item


@pytest.fixture
def make_png() -> Callable[..., bytes]:
    """png_bytes(seed=0, side=8): a small whole PNG."""
    return png_bytes


@pytest.fixture
def make_input() -> Callable[..., dict[str, Any]]:
    """image_input(id, bytes, **data_fields): one POST item with base64 image bytes."""
    return image_input


# --- end-to-end fixtures shared by the engine, CLI, bench-guard and reliability tests ---------


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures logging globally; put it back after each test."""
    with restored_logging():
        yield


@pytest.fixture
def traffic(proto_recorder: ProtoRecorder) -> Traffic:
    """Every request body the emulator accepted, in order (and protobuf-checked)."""
    return Traffic(proto_recorder)


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], traffic: Traffic) -> Iterator[Emulator]:
    """An emulator with fast processing and deletes; afterwards, every request it accepted
    is checked to have stayed within the API's limits."""
    yield make_emulator(validator=traffic, processing_delay=0.05, delete_delay=0.05)
    traffic.assert_within_limits()


@pytest.fixture
def site(tmp_path: Path, emu: Emulator) -> Site:
    """A dataset folder, its config and ledger paths, pointed at `emu`."""
    return make_site(tmp_path, emu)
