"""Faults: the emulator throttles, fails, stalls, drops connections, fails processing, dies and
comes back, or revokes the key, and syncd still converges to the invariant of
`tests/invariants.py`, with bounded, backed-off retries and permanent failures recorded once.

Most tests drive `Engine.sync_once` in this process with a `ClarifaiApi` built like
`open_engine` builds it, except for a short backoff (so a storm costs a second, not a minute)
and a sleep that records every wait; the retries themselves are read from the client's
`api_retry` / `api_gave_up` log events. The emulator's random faults are seeded from
`invariants.SOAK` (the seed is in every assertion message).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from helpers import (
    KEY_ENV,
    Site,
    api_call,
    b64,
    make_site,
    run_cli,
    site_config,
    write_sidecar,
)
from invariants import (
    SOAK,
    Control,
    EmulatorChild,
    SyncdChild,
    Want,
    check_created_once,
    check_invariant,
    foreign_inputs,
    wait_for,
)
from proto import ProtoRecorder
from structlog.testing import capture_logs

from syncd.api import ClarifaiApi
from syncd.config import load_config
from syncd.emulator import Emulator
from syncd.engine import Engine, PassOptions, SyncReport
from syncd.errors import TransientError
from syncd.ledger import Ledger
from syncd.model import InputState
from syncd.sample import png_bytes

SOURCE = "pets"
BATCH = 8
WORKERS = 2
MAX_ATTEMPTS = 6
IMAGES = max(48, SOAK.images // 40)
CONTEXT = f"seed {SOAK.seed}; SYNCD_SOAK_SEED={SOAK.seed} reproduces it"


class Hook:
    """A validator hook: checks bodies against the protobufs, then runs `on(kind, direction)`
    callbacks (on the emulator's connection thread, before the request is applied or before
    the answer is sent)."""

    def __init__(self, check: ProtoRecorder) -> None:
        self.check = check
        self.callbacks: list[Callable[[str, str], None]] = []

    def __call__(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        self.check(kind, direction, body)
        for callback in list(self.callbacks):
            callback(kind, direction)

    def once(self, kind: str, direction: str, action: Callable[[], None]) -> threading.Event:
        """Run `action` the first time a `kind` request/response passes; returns a done flag."""
        done = threading.Event()
        lock = threading.Lock()
        claimed: list[bool] = []

        def callback(k: str, d: str) -> None:
            with lock:  # claim it; run it unlocked (the action may send requests itself)
                if claimed or (k, d) != (kind, direction):
                    return
                claimed.append(True)
            action()
            done.set()

        self.callbacks.append(callback)
        return done


@pytest.fixture
def hook(proto_recorder: ProtoRecorder) -> Hook:
    return Hook(proto_recorder)


@pytest.fixture
def emu(
    make_emulator: Callable[..., Emulator], hook: Hook, request: pytest.FixtureRequest
) -> Iterator[Emulator]:
    """A fast emulator with seeded random faults; its fault counters go to the soak report."""
    emulator = make_emulator(
        processing_delay=0.05, delete_delay=0.05, validator=hook, seed=SOAK.seed
    )
    yield emulator
    stats = emulator.stats()
    SOAK.record(
        request.node.name,
        faults_injected=sum(stats["faults_injected"].values()) + stats["throttled"],
        requests=stats["requests_total"],
    )


@dataclass
class Runner:
    """Passes over one site with a fast-backoff client whose waits and retries are recorded."""

    site: Site
    sleeps: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    timeout: float = 30.0
    backoff: tuple[float, float] = (0.05, 1.0)

    def engine(self) -> Engine:
        config = load_config(self.site.config)
        ledger = Ledger.open(config.ledger.path)

        def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            time.sleep(seconds)

        api = ClarifaiApi(
            config.remote.api_base,
            self.site.emu.api_key,
            key_source=f"environment variable {KEY_ENV}",
            workers=config.sync.workers,
            max_requests_per_second=config.sync.max_requests_per_second,
            timeout=self.timeout,
            max_attempts=MAX_ATTEMPTS,
            backoff_base=self.backoff[0],
            backoff_cap=self.backoff[1],
            sleep=sleep,
        )
        return Engine(config, ledger, api)

    def sync(self, **options: Any) -> SyncReport:
        engine = self.engine()
        try:
            with capture_logs() as logs:
                return engine.sync_once(PassOptions(**options))
        finally:
            self.events.extend(logs)
            engine.close()

    def converge(self, max_passes: int = 4, **options: Any) -> list[SyncReport]:
        """Passes until one ends in step (exit 0, nothing pending); fails after `max_passes`."""
        reports: list[SyncReport] = []
        outcomes: list[Any] = []
        for _ in range(max_passes):
            try:
                report = self.sync(**options)
            except TransientError as exc:  # a request outlived its retries: exit 3, try again
                outcomes.append(str(exc))
                continue
            reports.append(report)
            outcomes.append((report.exit_code, report.errors[:2], report.failed[:2]))
            if report.exit_code == 0 and report.pending == 0:
                return reports
        summary = outcomes
        raise AssertionError(f"no convergence in {max_passes} passes ({CONTEXT}): {summary}")

    def retries(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "api_retry"]

    def gave_up(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "api_gave_up"]


def dataset(site: Site, n: int = IMAGES) -> dict[str, Want]:
    """`n` images, every third with a JSON sidecar; returns the labels the invariant expects."""
    want = {}
    for i in range(n):
        rel = f"d{i % 4}/img_{i:04d}.png"
        if i % 3 == 0:
            site.image(rel, i, concepts=["cat"], metadata={"i": i})
            want[rel] = Want(concepts={"cat": 1.0}, metadata={"i": i})
        else:
            site.image(rel, i)
    return want


def make(tmp_path: Path, emu: Emulator, **sync: Any) -> Site:
    return make_site(tmp_path, emu, sync={"batch_size": BATCH, "workers": WORKERS, **sync})


def invariant(site: Site, want: dict[str, Want], **kwargs: Any) -> None:
    checked = check_invariant(
        site.emu.url,
        root=site.root,
        source=site.source,
        ledger=site.ledger,
        want=want,
        context=CONTEXT,
        **kwargs,
    )
    SOAK.record("invariant", inputs_checked=checked.images + checked.failed)


def assert_bounded(runner: Runner, *, cap: float) -> None:
    """No request was tried more than MAX_ATTEMPTS times, and every wait stayed under `cap`."""
    assert all(e["attempt"] < MAX_ATTEMPTS for e in runner.retries())
    assert all(0 <= e["delay"] <= cap for e in runner.retries()), runner.retries()


# --- throttling -----------------------------------------------------------------------------


def test_throttle_storm_without_retry_after_converges(tmp_path: Path, emu: Emulator) -> None:
    """A 429 storm with no Retry-After (what the real service sends): every throttled request
    is retried with jittered exponential backoff within the attempt limit, and the pass
    converges to the invariant without creating anything twice."""
    site = make(tmp_path, emu)
    want = dataset(site)
    emu.set_faults(throttle_rps=4)
    runner = Runner(site, backoff=(0.1, 2.0))

    runner.converge()

    assert emu.stats()["throttled"] > 0
    assert runner.retries() and all("429" in e["reason"] for e in runner.retries())
    assert_bounded(runner, cap=2.0)
    assert sum(runner.sleeps) > 0  # it did back off
    invariant(site, want)
    check_created_once(emu.url, context=CONTEXT)


def test_throttle_storm_with_retry_after_waits_as_told(tmp_path: Path, emu: Emulator) -> None:
    """With `Retry-After: 1` on every 429, each throttled retry waits exactly that second (not
    its own backoff), every worker pauses with it, and the pass converges."""
    site = make(tmp_path, emu)
    want = dataset(site, 24)
    emu.set_faults(throttle_rps=3, retry_after=1)
    runner = Runner(site, backoff=(0.01, 0.05))

    runner.converge()

    throttled = [e for e in runner.retries() if "429" in e["reason"]]
    assert throttled and all(e["delay"] == 1.0 and e["retry_after"] == 1.0 for e in throttled)
    assert max(runner.sleeps) > 0.5  # the 0.05 s backoff cap alone never waits this long
    assert_bounded(runner, cap=1.0)
    invariant(site, want)
    check_created_once(emu.url, context=CONTEXT)


# --- server errors --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503])
def test_fraction_of_5xx_converges_through_adds_patches_and_deletes(
    tmp_path: Path, emu: Emulator, status: int
) -> None:
    """With 30% of requests failing with a 5xx before being applied, adds, then relabels and
    deletes, converge to the invariant; each failed request is retried within the limit."""
    site = make(tmp_path, emu)
    want = dataset(site)
    emu.set_faults(error_rate=0.3, error_status=status)
    runner = Runner(site, backoff=(0.01, 0.2))

    runner.converge()
    check_created_once(emu.url, context=CONTEXT)
    for i in range(0, IMAGES, 5):  # relabel some, delete others
        rel = f"d{i % 4}/img_{i:04d}.png"
        if i % 2:
            (site.root / rel).unlink()
            (site.root / rel).with_suffix(".json").unlink(missing_ok=True)
            want.pop(rel, None)
        else:
            write_sidecar(site.root, rel, {"concepts": ["dog"], "metadata": {"n": i}})
            want[rel] = Want(concepts={"dog": 1.0}, metadata={"n": i})
    runner.converge(allow_mass_delete=True)

    assert emu.stats()["faults_injected"].get("error", 0) > 0, (emu.stats(), CONTEXT)
    assert any(f"HTTP {status}" in e["reason"] for e in runner.retries())
    assert_bounded(runner, cap=0.2)
    invariant(site, want)


def test_persistent_5xx_gives_up_after_bounded_backed_off_retries(
    tmp_path: Path, emu: Emulator
) -> None:
    """When every request fails with 503, each is tried exactly MAX_ATTEMPTS times with
    growing backoff, the pass gives up with exit 3 and marks no input failed (a transient
    error is not a verdict on the file); once the service recovers, a pass converges."""
    site = make(tmp_path, emu)
    want = dataset(site, BATCH)  # one add request
    emu.set_faults(error_rate=1.0, error_status=503)
    runner = Runner(site, backoff=(0.02, 10.0))

    report = runner.sync(local_only=True)

    assert report.exit_code == 3
    assert emu.stats()["requests"] == {"POST /v2/inputs": MAX_ATTEMPTS}
    assert [e["attempt"] for e in runner.retries()] == list(range(1, MAX_ATTEMPTS))
    assert len(runner.gave_up()) == 1
    for e in runner.retries():  # full jitter under a cap that doubles: 0.02, 0.04, 0.08, ...
        assert 0 <= e["delay"] <= 0.02 * 2 ** (e["attempt"] - 1)
    with Ledger.open(site.ledger, lock=False) as ledger:
        assert ledger.counts_by_state()[InputState.FAILED.value] == 0
        assert ledger.input_errors() == []

    emu.set_faults()
    runner.converge()
    invariant(site, want)
    check_created_once(emu.url, context=CONTEXT)


# --- latency and dropped connections --------------------------------------------------------


def test_latency_beyond_the_client_timeout_then_recovery(
    tmp_path: Path, emu: Emulator, hook: Hook
) -> None:
    """Answers slower than the client's timeout make it retry; the stalled POSTs are applied
    after the client gave up on them, so its later retry is answered "duplicate ID" and
    adopted: the pass ends in step, with no error and nothing created twice."""
    site = make(tmp_path, emu, workers=1)
    want = dataset(site, BATCH)
    emu.set_faults(latency=1.0)
    hook.once("PostInputs", "request", emu.set_faults)  # the stall ends with the first POST
    runner = Runner(site, timeout=0.3, backoff=(0.01, 0.05))

    report = runner.sync(local_only=True)

    assert report.errors == [] and report.failed == []
    assert report.added + report.adopted == BATCH
    assert report.adopted > 0
    assert any("Timeout" in e["reason"] for e in runner.retries())
    assert emu.stats()["faults_injected"]["latency"] >= 2
    runner.converge()
    invariant(site, want)
    check_created_once(emu.url, context=CONTEXT)


def test_dropped_answer_to_an_applied_post_is_adopted(
    tmp_path: Path, emu: Emulator, hook: Hook
) -> None:
    """A POST the server applied but whose connection it then dropped is retried; the retry's
    "duplicate ID" answers are adopted, not errors: every input is recorded as syncd's own."""
    site = make(tmp_path, emu, workers=1)
    want = dataset(site, 3 * BATCH)
    emu.set_faults(drop_rate=1.0)
    hook.once("PostInputs", "request", emu.set_faults)  # only the first POST is dropped

    report = Runner(site).sync(local_only=True)

    assert emu.stats()["faults_injected"]["drop"] == 1
    assert report.errors == [] and report.failed == []
    assert (report.added, report.adopted) == (2 * BATCH, BATCH)
    invariant(site, want)
    check_created_once(emu.url, context=CONTEXT)


def test_random_dropped_connections_converge(tmp_path: Path, emu: Emulator) -> None:
    """With 30% of requests applied and then dropped unanswered (adds, lists, patches,
    deletes), adds, relabels, replacements and deletes all converge to the invariant."""
    site = make(tmp_path, emu)
    want = dataset(site)
    emu.set_faults(drop_rate=0.3)
    runner = Runner(site, backoff=(0.01, 0.2))

    reports = runner.converge()
    check_created_once(emu.url, context=CONTEXT)
    for i in range(1, IMAGES, 4):
        rel = f"d{i % 4}/img_{i:04d}.png"
        if i % 3 == 1:
            (site.root / rel).write_bytes(png_bytes(8, 8, seed=10_000 + i))  # replaced
        elif i % 3 == 2:
            (site.root / rel).unlink()
        else:
            write_sidecar(site.root, rel, {"concepts": ["bird"]})
            want[rel] = Want(concepts={"bird": 1.0})
    reports += runner.converge(max_passes=6, allow_mass_delete=True)

    drops = emu.stats()["faults_injected"].get("drop", 0)
    assert drops > 0
    assert_bounded(runner, cap=0.2)
    invariant(site, want)
    SOAK.record(
        "random_drops",
        faults_injected=drops,
        adopted=sum(r.adopted for r in reports),
        inputs_checked=len(want),
    )


# --- per-input failures ---------------------------------------------------------------------


@pytest.mark.parametrize("fails_batch", [False, True], ids=["per-input", "whole-batch"])
def test_mixed_post_batch_lands_the_rest_and_never_retries_the_failure(
    tmp_path: Path, emu: Emulator, fails_batch: bool
) -> None:
    """A POST batch in which one input fails (its explicit id belongs to a foreign input) lands
    every other input, holds that file with a reason naming it, leaves the foreign input
    untouched, and never sends that input again on later passes."""
    site = make(tmp_path, emu)
    foreign = {"id": "taken", "data": {"image": {"base64": b64(png_bytes(8, 8, seed=999))}}}
    api_call(emu, "POST", {"inputs": [foreign]})
    before = foreign_inputs(emu.store_snapshot(), site.source)
    want = dataset(site, 2 * BATCH)
    site.image("mine.png", 5000, id="taken")
    emu.set_faults(duplicate_fails_batch=fails_batch)
    runner = Runner(site)

    first = runner.sync()
    posts_after_first = emu.stats()["posts_per_input_id"]["taken"]
    later = [runner.sync(), runner.sync()]

    assert first.exit_code == 1
    assert [h for h in first.held if "mine.png" in h[1]], first.held
    assert emu.stats()["posts_per_input_id"]["taken"] == posts_after_first  # never again
    assert all(r.planned == [] and r.exit_code == 1 for r in later)
    invariant(site, want, held=["mine.png"], foreign_before=before)
    status = run_cli(["status", "--config", str(site.config)], env=site.env)
    assert "taken" in status.stdout and "mine.png" in status.stdout


def relabel_while_someone_deletes(site: Site, hook: Hook, want: dict[str, Want]) -> list[str]:
    """Change every sidecar, and have another client delete three of those inputs right after
    syncd's next listing (so its PATCH batch meets inputs being deleted); returns their ids."""
    for rel in want:
        write_sidecar(site.root, rel, {"concepts": ["relabelled"]})
        want[rel] = Want(concepts={"relabelled": 1.0})
    victims = [site.input_id(rel) for rel in sorted(want)[:3]]

    def delete_victims() -> None:
        requests.delete(
            f"{site.emu.url}/v2/inputs",
            json={"ids": victims},
            headers={"Authorization": f"Key {site.emu.api_key}"},
            timeout=10,
        ).raise_for_status()

    hook.once("ListInputs", "response", delete_victims)
    return victims


def test_mixed_patch_batch_with_inputs_deleted_remotely_converges(
    tmp_path: Path, emu: Emulator, hook: Hook
) -> None:
    """A relabel PATCH batch in which some inputs fail (someone deleted them remotely between
    syncd's listing and its PATCH) relabels the others; once the remote delete is done, the
    next pass adds the lost ones again with their labels."""
    site = make(tmp_path, emu)
    want = dataset(site, 2 * BATCH)
    runner = Runner(site)
    runner.converge()
    victims = relabel_while_someone_deletes(site, hook, want)

    first = runner.sync()

    assert first.relabeled == len(want) - len(victims)
    assert first.errors == []
    wait_for(
        lambda: not any(e["deleting"] for e in emu.store_snapshot() if e["id"] in victims),
        timeout=10,
        what="the remote deletes to complete",
    )
    runner.converge()
    invariant(site, want)


def test_pass_meeting_a_concurrent_delete_never_claims_to_be_in_step(
    tmp_path: Path, make_emulator: Callable[..., Emulator], hook: Hook
) -> None:
    """A pass whose relabels meet inputs another client is deleting either adds them again
    and ends in step (exit 0, the invariant holds) or names each of them as skipped (exit 1)."""
    emu = make_emulator(processing_delay=0.05, delete_delay=2.0, validator=hook)
    site = make(tmp_path, emu)
    want = dataset(site, 2 * BATCH)
    runner = Runner(site)
    runner.converge()
    victims = relabel_while_someone_deletes(site, hook, want)

    report = runner.sync()

    if report.exit_code == 0:
        invariant(site, want)
    else:
        lost = {rel for rel in want if site.input_id(rel) in victims}
        assert report.exit_code == 1 and {path for path, _ in report.skipped} == lost


def test_local_pass_during_a_remote_delete_does_not_adopt_the_dying_input(
    tmp_path: Path, make_emulator: Callable[..., Emulator], hook: Hook
) -> None:
    """After a pass found relabelled inputs being deleted remotely, a local-only pass run
    before the delete completes does not claim to be in step with the dying inputs adopted."""
    emu = make_emulator(processing_delay=0.05, delete_delay=2.0, validator=hook)
    site = make(tmp_path, emu)
    want = dataset(site, 2 * BATCH)
    runner = Runner(site)
    runner.converge()
    relabel_while_someone_deletes(site, hook, want)
    runner.sync()

    report = runner.sync(local_only=True)

    if report.exit_code == 0:
        invariant(site, want)


def test_processing_failures_are_recorded_once_and_not_retried(
    tmp_path: Path, emu: Emulator
) -> None:
    """Inputs whose processing fails remotely (30002) are recorded as failed with the reason,
    shown by `syncd status`, counted in exit code 1, and not sent again by later passes; a new
    version of the file is sent again."""
    site = make(tmp_path, emu)
    want = dataset(site)
    bad = [f"d{i % 4}/img_{i:04d}.png" for i in (1, 2, 5)]
    emu.set_faults(fail_processing_ids=[site.input_id(rel) for rel in bad])
    runner = Runner(site)

    first = runner.sync()
    posts = sum(emu.stats()["posts_per_input_id"].values())
    second = runner.sync()

    assert first.exit_code == 1 and second.exit_code == 1
    assert sorted(path for _, path, _ in first.failed) == sorted(bad)
    assert all("30002" in why for _, _, why in first.failed)
    assert second.planned == []
    assert sum(emu.stats()["posts_per_input_id"].values()) == posts
    invariant(site, want, failed=bad)
    status = run_cli(["status", "--config", str(site.config)], env=site.env)
    for rel in bad:
        assert f"failed  {rel}" in status.stdout

    emu.set_faults()
    (site.root / bad[0]).write_bytes(png_bytes(8, 8, seed=77_777))  # a fixed file
    fixed = runner.sync()
    assert fixed.replaced == 1 and sorted(p for _, p, _ in fixed.failed) == sorted(bad[1:])
    invariant(site, want, failed=bad[1:])


# --- the emulator dies and comes back -------------------------------------------------------


def test_emulator_killed_and_restarted_with_its_state(tmp_path: Path) -> None:
    """The emulator (with `--state`) SIGKILLed mid-sync and restarted on the same port: the
    running reconcile retries through the outage (or a re-run finishes), the inputs
    acknowledged before the kill survive, and the invariant holds with nothing created twice."""
    server = EmulatorChild(tmp_path / "emulator-state.db", tmp_path)
    try:
        url = server.start()
        root = tmp_path / SOURCE
        for i in range(20 * 32):
            (root / f"d{i % 8}").mkdir(parents=True, exist_ok=True)
            (root / f"d{i % 8}" / f"img_{i:05d}.png").write_bytes(png_bytes(4, 4, seed=i))
        config = site_config(
            tmp_path, root, url, source=SOURCE, sync={"batch_size": 32, "workers": 2}
        )
        env = {KEY_ENV: "syncd-emulator-key-0000000000000000"}
        control = Control(url)
        restarts = mid_sync = 0
        for _ in range(max(1, SOAK.kills // 2)):
            child = SyncdChild(["reconcile", "--config", str(config)], env=env, workdir=tmp_path)
            child.start()
            target = control.posts() + 3
            wait_for(
                lambda c=child, t=target: control.posts() >= t or not c.alive(),
                timeout=60,
                what="three more POSTs",
            )
            before = len(control.store())
            mid_sync += int(child.alive())
            server.kill()
            server.start()
            restarts += 1
            assert len(control.store()) >= before  # what it acknowledged survived
            code = child.wait(timeout=120)
            if code != 0:  # gave up during the outage: a re-run finishes
                child.start()
                assert child.wait(timeout=120) == 0, child.output()[1][-3000:]
        control.close()

        assert mid_sync >= 1, "the emulator was never killed while reconcile was running"
        checked = check_invariant(
            url, root=root, source=SOURCE, ledger=tmp_path / "state" / "ledger.db"
        )
        created = check_created_once(url, context=CONTEXT)
        assert created["inputs"] == 640
        SOAK.record("emulator_restart", restarts=restarts, inputs_checked=checked.images, **created)
    finally:
        server.stop()


# --- a revoked key --------------------------------------------------------------------------


def test_revoked_key_stops_the_pass_at_once_with_exit_3(
    tmp_path: Path, emu: Emulator, hook: Hook
) -> None:
    """A key revoked in the middle of a pass (401 from the next request on) stops it at once:
    exit 3, one line naming where the key came from (never the key), at most one refused
    request per worker, no input marked failed; with a valid key again, a pass converges."""
    site = make(tmp_path, emu)
    want = dataset(site, 10 * BATCH)
    valid = emu.api.api_keys
    posts = {"n": 0}

    def revoke_at_third_post(kind: str, direction: str) -> None:
        if (kind, direction) == ("PostInputs", "request"):
            posts["n"] += 1
            if posts["n"] == 3:
                emu.api.api_keys = frozenset({"rotated-key-0000000000"})

    hook.callbacks.append(revoke_at_third_post)

    result = run_cli(["reconcile", "--config", str(site.config)], env=site.env)

    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("syncd: ")]
    assert len(lines) == 1 and f"environment variable {KEY_ENV}" in lines[0]
    assert emu.api_key not in result.output + result.stderr
    refused = emu.stats()["responses"].get("401", 0)
    assert 1 <= refused <= WORKERS
    assert emu.stats()["requests"]["POST /v2/inputs"] <= 3 + WORKERS
    with Ledger.open(site.ledger, lock=False) as ledger:
        assert ledger.counts_by_state()[InputState.FAILED.value] == 0
        assert ledger.input_errors() == []

    hook.callbacks.clear()
    emu.api.api_keys = valid
    again = run_cli(["reconcile", "--config", str(site.config), "--json"], env=site.env)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["failed"] == []
    invariant(site, want)
    check_created_once(emu.url, context=CONTEXT)
