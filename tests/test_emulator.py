"""The Emulator object, the `syncd emulator` command, and the emulator under concurrent load."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import requests

from syncd.emulator import DEFAULT_API_KEY, Emulator, ManualClock


class TestEmulatorObject:
    def test_context_manager_serves_then_joins_its_threads(self):
        """`with Emulator()` serves on a free port and leaves no emulator thread behind."""
        with Emulator() as emu:
            assert emu.url == f"http://127.0.0.1:{emu.port}"
            assert emu.api_key == DEFAULT_API_KEY
            session = requests.Session()
            session.headers["Authorization"] = f"Key {emu.api_key}"
            assert session.get(emu.url + "/v2/inputs", timeout=5).status_code == 200
            # the session keeps its connection open: stop() must still finish promptly
        session.close()
        names = [t.name for t in threading.enumerate()]
        assert not [n for n in names if n.startswith("emulator-")]

    def test_stop_is_idempotent_and_start_returns_self(self):
        """start() returns the emulator; stop() twice, or before start, is harmless."""
        emu = Emulator()
        emu.stop()
        emu = Emulator()
        assert emu.start() is emu
        emu.stop()
        emu.stop()

    def test_a_raising_validator_never_breaks_a_request(self):
        """A validator hook that raises is recorded in hook_errors; the answer is unaffected."""

        def broken(kind: str, direction: str, body: dict) -> None:
            raise RuntimeError("boom")

        with Emulator(validator=broken) as emu:
            r = requests.get(
                emu.url + "/v2/inputs", headers={"Authorization": f"Key {emu.api_key}"}, timeout=5
            )
            assert r.status_code == 200
            assert emu.hook_errors == [
                "ListInputs request: RuntimeError('boom')",
                "ListInputs response: RuntimeError('boom')",
            ]

    def test_validator_sees_accepted_requests_and_every_response(
        self, make_emulator, client_for, make_input, make_png
    ):
        """The hook gets each accepted request body (GET: its typed query) and each response."""
        seen: list[tuple[str, str, dict]] = []
        emu = make_emulator(validator=lambda *call: seen.append(call))
        client = client_for(emu)
        client.post_inputs(make_input("a", make_png()))
        client.request("GET", "/inputs", params=[("ids", "a"), ("per_page", "5")])
        client.request("POST", "/inputs", data=b"{broken")
        assert [(k, d) for k, d, _ in seen] == [
            ("PostInputs", "request"),
            ("PostInputs", "response"),
            ("ListInputs", "request"),
            ("ListInputs", "response"),
            ("PostInputs", "response"),
        ]
        assert seen[2][2] == {"ids": ["a"], "per_page": 5}

    def test_manual_clock_is_shared_and_monotonic(self):
        """A ManualClock moves only forward, by advance() or set()."""
        clock = ManualClock(start=100.0)
        assert clock.advance(1.5) == 101.5
        clock.set(200.0)
        assert clock.now() == 200.0
        with pytest.raises(ValueError):
            clock.advance(-1)
        with pytest.raises(ValueError):
            clock.set(199.0)


def test_command_serves_until_sigterm(tmp_path):
    """`python -m syncd.emulator --port 0` prints its URL and key, serves, exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd.emulator", "--port", "0", "--processing-delay", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        second = proc.stdout.readline().strip()
        assert first.startswith("listening on http://127.0.0.1:")
        assert second == f"api key: {DEFAULT_API_KEY}"
        url = first.removeprefix("listening on ")
        r = requests.get(
            url + "/v2/inputs/status",
            headers={"Authorization": f"Key {DEFAULT_API_KEY}"},
            timeout=5,
        )
        assert r.status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()


def test_command_with_keys_and_state_file(tmp_path):
    """With --api-key and --state the command prints only its URL and persists what it gets."""
    state = tmp_path / "state.db"
    args = [sys.executable, "-m", "syncd.emulator", "--port", "0", "--api-key", "secret-1"]
    args += ["--state", str(state), "--user-id", "u", "--app-id", "a"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip().removeprefix("listening on ")
        headers = {"Authorization": "Key secret-1"}
        body = {"inputs": [{"id": "x", "data": {"image": {"url": "https://example.com/x.jpg"}}}]}
        r = requests.post(url + "/v2/users/me/apps/a/inputs", json=body, headers=headers, timeout=5)
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "secret-1" not in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    with Emulator(state_path=state) as emu:
        assert [s["id"] for s in emu.store_snapshot()] == ["x"]


def test_concurrent_batched_posts_all_land(
    make_emulator: Callable[..., Emulator], client_for, make_input, make_png
):
    """20 batches of 128 ~2 KB PNGs from 2 threads all land, each exactly once."""
    emu = make_emulator(validator=None, processing_delay=0.05)
    png = make_png(1, side=44)
    assert 1900 < len(png) < 2200
    errors: list[str] = []

    def worker(thread: int) -> None:
        client = client_for(emu)
        for batch in range(10):
            items = [make_input(f"t{thread}-b{batch}-{n}", png) for n in range(128)]
            r = client.post_inputs(*items)
            if r.status_code != 200:
                errors.append(r.text[:200])

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(2)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    assert errors == []
    snapshot = emu.store_snapshot()
    assert len(snapshot) == 2560
    assert len({s["id"] for s in snapshot}) == 2560
    assert [s["seq"] for s in snapshot] == list(range(1, 2561))
    stats = emu.stats()
    assert stats["inputs_posted"] == 2560
    assert stats["requests"] == {"POST /v2/inputs": 20}
    # Reported, never asserted: the rate depends on the machine.
    print(f"\nemulator ingest: {2560 / elapsed:.0f} inputs/s ({elapsed:.2f} s)")
