"""The executor's upload pipeline against a real emulator over loopback: how many requests it
keeps in flight, and how a refused key stops it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Site, Traffic, make_site, open_site_engine, remote_inputs, sync_pass

from syncd.api import ClarifaiApi
from syncd.emulator import Emulator
from syncd.emulator.clock import ManualClock
from syncd.errors import AuthError
from syncd.model import InputState
from syncd.report import PassOptions

BATCH = 4
WORKERS = 3
IMAGES = 20 * BATCH  # 20 batches: far more than the pipeline may prepare after a refusal


def _posts(emu: Emulator) -> int:
    return emu.stats()["requests"].get("POST /v2/inputs", 0)


def _site(tmp_path: Path, emu: Emulator) -> Site:
    site = make_site(tmp_path, emu, sync={"batch_size": BATCH, "workers": WORKERS})
    for i in range(IMAGES):
        site.image(f"d{i % 3}/{i:03d}.png", i, concepts=["cat"], metadata={"n": i})
    return site


def _ledger_states(site: Site) -> dict[InputState, int]:
    out: dict[InputState, int] = {}
    for record in site.ledger_inputs().values():
        out[record.state] = out.get(record.state, 0) + 1
    return out


def test_no_more_than_workers_posts_in_flight(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """With slow POSTs the pipeline keeps several batches in flight but never more than
    `workers`, and sends every batch exactly once."""
    traffic.hold = {"PostInputs": 0.1}
    site = _site(tmp_path, emu)

    report = sync_pass(site, local_only=True)

    assert report.exit_code == 0, report
    assert report.added == IMAGES
    assert len(traffic.bodies("PostInputs")) == IMAGES // BATCH
    assert 2 <= traffic.max_in_flight["PostInputs"] <= WORKERS
    posted = [item["id"] for body in traffic.bodies("PostInputs") for item in body["inputs"]]
    assert sorted(posted) == sorted(remote_inputs(emu))
    assert len(set(posted)) == IMAGES


def test_wrong_key_stops_preparing_batches(
    tmp_path: Path, make_emulator: Callable[..., Emulator], traffic: Traffic
) -> None:
    """A key the emulator refuses from the start raises AuthError after at most `workers`
    POSTs, with at most `workers` + 1 batches prepared (intent written) and none marked failed."""
    emu = make_emulator(validator=traffic, processing_delay=0.05, delete_delay=0.05)
    site = _site(tmp_path, emu)
    site.env = dict.fromkeys(site.env, "wrong-key-000000000000000000")

    with pytest.raises(AuthError):
        sync_pass(site, local_only=True)

    assert 1 <= _posts(emu) <= WORKERS
    assert emu.stats()["responses"].get("401", 0) == _posts(emu)
    states = _ledger_states(site)
    assert set(states) <= {InputState.ADDING}
    assert states.get(InputState.ADDING, 0) <= (WORKERS + 1) * BATCH
    assert remote_inputs(emu) == {}


def test_key_revoked_mid_run_stops_the_pipeline_after_the_submitted_batches(
    tmp_path: Path, make_emulator: Callable[..., Emulator], traffic: Traffic
) -> None:
    """A key revoked at the first POST (which still lands) raises AuthError once the batches
    already submitted have finished and been recorded: at most 1 + (workers - 1) + workers
    POSTs in all, never more than `workers` in flight, every accepted batch recorded."""
    traffic.hold = {"PostInputs": 0.1}
    revoked = threading.Event()
    emu: Emulator | None = None

    def validator(kind: str, direction: str, body: dict[str, Any]) -> None:
        traffic(kind, direction, body)
        if (kind, direction) == ("PostInputs", "request") and not revoked.is_set():
            assert emu is not None
            emu.api.api_keys = frozenset({"rotated-key-0000000000"})
            revoked.set()

    emu = make_emulator(validator=validator, processing_delay=0.05, delete_delay=0.05)
    site = _site(tmp_path, emu)

    with pytest.raises(AuthError):
        sync_pass(site, local_only=True)

    assert revoked.is_set()
    accepted = len(traffic.bodies("PostInputs"))
    assert 1 <= accepted <= WORKERS
    # after the revocation, each free or freed slot takes one more batch until a 401 is seen
    assert _posts(emu) <= accepted + WORKERS
    assert emu.stats()["responses"].get("401", 0) == _posts(emu) - accepted
    assert traffic.max_in_flight["PostInputs"] <= WORKERS
    # the accepted batches finished and were recorded before the error surfaced
    landed = set(remote_inputs(emu))
    states = {r.input_id: r.state for r in site.ledger_inputs().values()}
    assert len(landed) == accepted * BATCH
    assert all(states[i] in (InputState.PENDING, InputState.PROCESSED) for i in landed)
    adding = [i for i, s in states.items() if s is InputState.ADDING]
    assert len(adding) <= (_posts(emu) - accepted + 1) * BATCH
    assert len(states) < IMAGES


def test_a_throttled_pass_reports_the_wait_the_remote_asked_for(
    tmp_path: Path, make_emulator: Callable[..., Emulator]
) -> None:
    """A pass whose add gave up on 429s carrying Retry-After reports that wait (the daemon's
    next try waits at least that long): from the HTTP header to the report."""
    emu = make_emulator(clock=ManualClock())  # its one-second throttle window stays full
    site = make_site(tmp_path, emu)
    site.image("a.png", 1)
    emu.set_faults(throttle_rps=1, retry_after=7)
    engine = open_site_engine(site)
    engine.api = ClarifaiApi(emu.url, emu.api_keys[0], max_attempts=1, max_requests_per_second=None)
    try:
        engine.api.check_auth()  # takes the one request the window admits
        report = engine.sync_once(PassOptions(local_only=True))
    finally:
        engine.close()
    assert report.retry_after == 7.0
    assert report.unreachable and report.added == 0 and report.errors
