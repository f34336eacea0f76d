"""Faults on demand and the control API under /_emulator/."""

from __future__ import annotations

import time

import pytest
import requests

from syncd.emulator import ManualClock


class TestThrottle:
    def test_requests_above_the_rate_get_429_11005(self, manual_client):
        """Above throttle_rps in a sliding second: 429 / 11005; the next second admits again."""
        manual_client.emu.set_faults(throttle_rps=3)
        codes = [manual_client.request("GET", "/inputs").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = manual_client.request("GET", "/inputs/status")
        body = r.json()
        assert body["status"]["code"] == 11005
        assert body["status"]["details"] == "exceeded limit of 3 requests per second"
        assert "Retry-After" not in r.headers
        manual_client.emu.advance(1.0)
        assert manual_client.request("GET", "/inputs").status_code == 200
        assert manual_client.emu.stats()["throttled"] == 2

    def test_retry_after_header_when_configured(self, manual_client):
        """With retry_after set, a 429 carries `Retry-After: <seconds>`."""
        manual_client.emu.set_faults(throttle_rps=1, retry_after=2)
        manual_client.request("GET", "/inputs")
        r = manual_client.request("GET", "/inputs")
        assert r.status_code == 429
        assert r.headers["Retry-After"] == "2"

    def test_each_key_has_its_own_window(self, make_emulator, client_for):
        """Throttling counts per API key: one busy key does not throttle another."""
        emu = make_emulator(clock=ManualClock(), api_keys=["k1", "k2"])
        emu.set_faults(throttle_rps=1)
        one, two = client_for(emu, key="k1"), client_for(emu, key="k2")
        assert one.request("GET", "/inputs").status_code == 200
        assert one.request("GET", "/inputs").status_code == 429
        assert two.request("GET", "/inputs").status_code == 200

    def test_throttled_post_is_not_applied(self, manual_client, make_input, make_png):
        """A throttled POST changes nothing."""
        manual_client.emu.set_faults(throttle_rps=1)
        manual_client.request("GET", "/inputs")
        assert manual_client.post_inputs(make_input("a", make_png())).status_code == 429
        assert manual_client.emu.store_snapshot() == []


class TestInjectedFailures:
    @pytest.mark.parametrize(("status", "code"), [(500, 98004), (502, 10020), (503, 40031)])
    def test_error_rate_fails_requests_before_applying_them(
        self, client, make_input, make_png, status, code
    ):
        """With error_rate 1 every request fails with error_status and is not applied."""
        client.emu.set_faults(error_rate=1.0, error_status=status)
        r = client.post_inputs(make_input("a", make_png()))
        assert r.status_code == status
        assert r.json()["status"]["code"] == code
        assert r.json()["inputs"] == []
        assert client.emu.store_snapshot() == []
        assert client.emu.stats()["faults_injected"] == {"error": 1}

    def test_error_rate_is_a_fraction(self, make_emulator, client_for):
        """error_rate 0.5 fails about half of the requests (seeded, so exactly repeatable)."""
        emu = make_emulator(seed=7)
        emu.set_faults(error_rate=0.5)
        client = client_for(emu)
        failed = sum(client.request("GET", "/inputs").status_code == 503 for _ in range(100))
        assert 30 < failed < 70

    def test_latency_delays_the_answer(self, client):
        """latency adds that many seconds before the answer."""
        client.emu.set_faults(latency=0.2)
        started = time.monotonic()
        assert client.request("GET", "/inputs").status_code == 200
        assert time.monotonic() - started >= 0.2

    def test_drop_applies_the_request_then_closes_without_answer(
        self, client, make_input, make_png
    ):
        """With drop_rate 1 the POST is applied but the client gets no answer."""
        client.emu.set_faults(drop_rate=1.0)
        with pytest.raises(requests.ConnectionError):
            client.post_inputs(make_input("a", make_png()))
        assert [s["id"] for s in client.emu.store_snapshot()] == ["a"]
        client.emu.set_faults()
        assert client.get_input("a").status_code == 200

    def test_duplicate_fails_batch_inserts_nothing(self, client, make_input, make_png):
        """Under duplicate_fails_batch one duplicate fails the whole POST (400, 10020)."""
        client.post_inputs(make_input("a", make_png()))
        client.emu.set_faults(duplicate_fails_batch=True)
        r = client.post_inputs(make_input("b", make_png(2)), make_input("a", make_png(3)))
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 10020
        b, a = r.json()["inputs"]
        assert b["status"]["code"] == 10020
        assert a["status"]["details"] == "Input has a duplicate ID."
        assert [s["id"] for s in client.emu.store_snapshot()] == ["a"]

    def test_faults_are_validated(self, emulator):
        """Out-of-range fault settings are refused with ValueError."""
        for bad in (
            {"error_rate": 2.0},
            {"error_status": 404},
            {"throttle_rps": 0},
            {"latency": -1.0},
            {"drop_rate": -0.1},
        ):
            with pytest.raises(ValueError):
                emulator.set_faults(**bad)


class TestControlApi:
    def test_faults_round_trip_over_http(self, emulator):
        """POST /_emulator/faults replaces the faults; GET reads them back."""
        control = emulator.url + "/_emulator/faults"
        r = requests.post(control, json={"throttle_rps": 5, "fail_processing_ids": ["x"]})
        assert r.status_code == 200
        got = requests.get(control, timeout=5).json()
        assert got["throttle_rps"] == 5
        assert got["fail_processing_ids"] == ["x"]
        assert got["error_rate"] == 0.0
        assert emulator.faults.throttle_rps == 5

    @pytest.mark.parametrize(
        "body", [{"nope": 1}, {"error_rate": "high"}, {"fail_processing_ids": "x"}, [1]]
    )
    def test_bad_faults_are_refused(self, emulator, body):
        """Unknown or mistyped fault settings answer 400 with an error text."""
        r = requests.post(emulator.url + "/_emulator/faults", json=body, timeout=5)
        assert r.status_code == 400
        assert r.json()["error"]

    def test_stats_count_routes_posts_and_throttling(
        self, emulator, client_for, make_input, make_png
    ):
        """stats count requests per route template (both spellings), posts per id and 429s."""
        short, scoped = client_for(emulator), client_for(emulator, scoped=True)
        short.post_inputs(make_input("a", make_png()), make_input("b", make_png(2)))
        short.post_inputs(make_input("a", make_png()))
        scoped.get_input("a")
        short.request("GET", "/nowhere")
        requests.get(emulator.url + "/_emulator/store", timeout=5)
        stats = requests.get(emulator.url + "/_emulator/stats", timeout=5).json()
        assert stats["requests"] == {
            "POST /v2/inputs": 2,
            "GET /v2/users/{user_id}/apps/{app_id}/inputs/{input_id}": 1,
            "GET <unknown route>": 1,
        }
        assert stats["requests_total"] == 4
        assert stats["inputs_posted"] == 3
        assert stats["posts_per_input_id"] == {"a": 2, "b": 1}
        assert stats["responses"] == {"200": 2, "400": 1, "404": 1}
        assert stats["throttled"] == 0

    def test_store_over_http_matches_python(self, client, make_input, make_png):
        """GET /_emulator/store answers what store_snapshot() returns."""
        client.post_inputs(make_input("a", make_png(), metadata={"k": "v"}))
        over_http = requests.get(client.emu.url + "/_emulator/store", timeout=5).json()
        python = client.emu.store_snapshot()
        for entry in (*over_http, *python):
            entry.pop("status")  # may move on between the two reads
        assert over_http == python
        assert over_http[0]["data"] == {"metadata": {"k": "v"}}

    def test_reset_clears_store_stats_and_faults(self, client, make_input, make_png):
        """POST /_emulator/reset empties the store and the stats and heals every fault."""
        client.post_inputs(make_input("a", make_png()))
        client.emu.set_faults(latency=0.01)
        assert requests.post(client.emu.url + "/_emulator/reset", timeout=5).status_code == 200
        assert client.emu.store_snapshot() == []
        assert client.emu.stats()["requests_total"] == 0
        assert client.emu.faults.latency == 0.0

    def test_advance_moves_a_manual_clock(self, manual_client, make_input, make_png):
        """POST /_emulator/advance moves a ManualClock; processing follows."""
        manual_client.post_inputs(make_input("a", make_png()))
        url = manual_client.emu.url + "/_emulator/advance"
        assert requests.post(url, json={"seconds": 1}, timeout=5).status_code == 200
        status = manual_client.get_input("a").json()["input"]["status"]["code"]
        assert status == 30000

    def test_advance_on_the_wall_clock_is_refused(self, emulator):
        """advance needs a ManualClock: 400 over HTTP, TypeError in Python."""
        r = requests.post(emulator.url + "/_emulator/advance", json={"seconds": 1}, timeout=5)
        assert r.status_code == 400
        with pytest.raises(TypeError):
            emulator.advance(1)

    def test_unknown_control_routes(self, emulator):
        """Unknown control paths answer 404, a wrong verb 405; blobs of missing ids 404."""
        assert requests.get(emulator.url + "/_emulator/nope", timeout=5).status_code == 404
        assert requests.get(emulator.url + "/_emulator/reset", timeout=5).status_code == 405
        assert requests.get(emulator.url + "/_emulator/blobs/x", timeout=5).status_code == 404

    def test_control_routes_ignore_faults_and_auth(self, emulator):
        """The control API needs no key and is never throttled or failed."""
        emulator.set_faults(throttle_rps=1, error_rate=1.0)
        for _ in range(3):
            assert requests.get(emulator.url + "/_emulator/stats", timeout=5).status_code == 200
