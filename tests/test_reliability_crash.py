"""Crashes: `syncd reconcile` and `syncd run` killed with SIGKILL mid-sync, and a damaged ledger.

A harness starts the real command as a child process against an emulator in this process,
kills it at random moments (a seeded RNG chooses: after a random delay, or exactly when the
emulator receives or answers the k-th POST, which is the window between a request being
applied remotely and its outcome reaching the ledger), restarts it, repeats, then lets it
finish. Each test ends on the invariant of `tests/invariants.py` and on "no input was created
twice" (stored sequence numbers exactly 1..N, see `check_created_once`).

Sizes come from `invariants.SOAK`: 2,000 images and 3 kills in `make test`, more under
`make soak`. The seed is printed in every assertion message: rerun with SYNCD_SOAK_SEED=<seed>.
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import KEY_ENV, run_cli, site_config
from invariants import (
    SOAK,
    KillSwitch,
    SyncdChild,
    check_created_once,
    check_invariant,
    wait_for,
)
from proto import ProtoRecorder

from syncd.emulator import Emulator
from syncd.ledger import Ledger
from syncd.model import InputState
from syncd.sample import png_bytes

SOURCE = "pets"
BATCH = 32
WORKERS = 2
RUN_TIMEOUT = 120.0


@pytest.fixture
def switch(proto_recorder: ProtoRecorder) -> KillSwitch:
    return KillSwitch(proto_recorder)


@pytest.fixture
def emu(make_emulator: Callable[..., Emulator], switch: KillSwitch) -> Emulator:
    return make_emulator(processing_delay=0.05, delete_delay=0.05, validator=switch)


@dataclass
class Crash:
    """One dataset root mirrored into the emulator by a child `syncd` killed again and again."""

    root: Path
    config: Path
    ledger: Path
    emu: Emulator
    switch: KillSwitch
    workdir: Path
    rng: random.Random
    seed: int
    log: list[str] = field(default_factory=list)
    kills: int = 0

    @property
    def env(self) -> dict[str, str]:
        return {KEY_ENV: self.emu.api_key}

    def child(self, *args: str) -> SyncdChild:
        return SyncdChild([*args, "--config", str(self.config)], env=self.env, workdir=self.workdir)

    def context(self) -> str:
        return f"seed {self.seed}; SYNCD_SOAK_SEED={self.seed} reproduces it; " + "; ".join(
            self.log
        )

    def kill_at_random(self, child: SyncdChild, *, remaining: int) -> None:
        """Start `child` and SIGKILL it at a moment the RNG picks while it syncs."""
        child.start()
        batches = -(-remaining // BATCH)
        mode = self.rng.choice(["delay", "post-request", "post-response"]) if batches else "delay"
        if mode == "delay":
            delay = round(self.rng.uniform(0.05, 1.0), 3)
            child.wait(timeout=delay)
            what = f"after {delay}s"
            landed = child.kill()
        else:
            after = self.rng.randint(1, batches)
            direction = mode.split("-")[1]
            self.switch.arm(child.pid, direction=direction, after=after)
            wait_for(
                lambda: self.switch.fired.is_set() or not child.alive(),
                timeout=RUN_TIMEOUT,
                what=f"POST {direction} #{after} ({self.context()})",
            )
            self.switch.disarm()
            landed = self.switch.fired.is_set()
            child.kill()
            what = f"at POST {direction} #{after}"
        self.kills += int(landed)
        self.log.append(f"kill {len(self.log) + 1} {what}: {'landed' if landed else 'finished'}")

    def remaining(self, total: int) -> int:
        return total - len(self.emu.store_snapshot())


def write_tree(root: Path, n: int, *, dirs: int = 20) -> None:
    """`n` distinct tiny real PNGs spread over `dirs` folders."""
    for i in range(n):
        folder = root / f"d{i % dirs:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{i:06d}.png").write_bytes(png_bytes(4, 4, seed=i))


@pytest.fixture
def crash(tmp_path: Path, emu: Emulator, switch: KillSwitch) -> Iterator[Crash]:
    root = tmp_path / SOURCE
    write_tree(root, SOAK.images)
    config = site_config(
        tmp_path,
        root,
        emu.url,
        source=SOURCE,
        sync={
            "batch_size": BATCH,
            "workers": WORKERS,
            "settle_seconds": 0.2,
            "rescan_interval": 0,
            "poll_timeout": 60.0,
        },
    )
    work = tmp_path / "children"
    work.mkdir()
    yield Crash(
        root=root,
        config=config,
        ledger=tmp_path / "state" / "ledger.db",
        emu=emu,
        switch=switch,
        workdir=work,
        rng=random.Random(SOAK.seed),
        seed=SOAK.seed,
    )
    switch.disarm()


def assert_converged(crash: Crash) -> dict[str, int]:
    """The invariant, and no creation beyond one per input; returns the counters."""
    context = crash.context()
    checked = check_invariant(
        crash.emu.url, root=crash.root, source=SOURCE, ledger=crash.ledger, context=context
    )
    created = check_created_once(crash.emu.url, context=context)
    assert created["inputs"] == SOAK.images, context
    # attempts are bounded: the first POST, plus at most one re-send per kill (an add applied
    # but unrecorded is sent again once, answered "duplicate ID" and adopted)
    assert created["max_posts_per_id"] <= 1 + crash.kills, (created, context)
    return {"inputs_checked": checked.images, **created}


# --- reconcile ------------------------------------------------------------------------------


def test_reconcile_killed_at_random_moments_converges(crash: Crash) -> None:
    """`syncd reconcile` SIGKILLed N times at random moments of a sync of thousands of images
    (random delays, and exactly at the k-th POST's arrival or answer), then run to the end:
    exit 0, the invariant holds, and no input was created twice."""
    for _ in range(SOAK.kills):
        remaining = crash.remaining(SOAK.images)
        crash.kill_at_random(crash.child("reconcile"), remaining=remaining)

    final = crash.child("reconcile", "--json").start()
    code = final.wait(timeout=RUN_TIMEOUT)

    out, err = final.output()
    assert code == 0, f"{crash.context()}\n{err[-3000:]}"
    report = json.loads(out)
    assert report["errors"] == [] and report["failed"] == [], crash.context()
    counts = assert_converged(crash)
    SOAK.record("reconcile_sigkill", kills=crash.kills, **counts)


def kill_after_applied_posts(crash: Crash, answers: int) -> set[str]:
    """Run reconcile, SIGKILL it as the emulator is about to answer its `answers`-th POST;
    returns the ids applied remotely whose outcome never reached the ledger."""
    child = crash.child("reconcile")
    child.start()
    crash.switch.arm(child.pid, direction="response", after=answers)
    child.wait(timeout=RUN_TIMEOUT)
    assert crash.switch.fired.is_set(), f"the POST answer #{answers} never came"
    crash.kills = 1
    crash.log.append(f"killed at POST answer #{answers}")
    with Ledger.open(crash.ledger, lock=False) as ledger:
        adding = {i for i, r in ledger.inputs().items() if r.state is InputState.ADDING}
    applied = adding & {e["id"] for e in crash.emu.store_snapshot()}
    assert applied, "no add was applied remotely and left unrecorded"
    return applied


def test_kill_after_apply_then_local_pass_adopts_duplicates(crash: Crash) -> None:
    """A reconcile killed right after the emulator applied a POST (the answer never reached
    it) leaves `adding` intents; `reconcile --local` re-sends those adds, gets "duplicate ID"
    answers and adopts them as its own: no error, no failure, nothing created twice."""
    applied = kill_after_applied_posts(crash, answers=3)

    local = crash.child("reconcile", "--local", "--json").start()
    code = local.wait(timeout=RUN_TIMEOUT)

    out, err = local.output()
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["adopted"] == len(applied)
    assert report["errors"] == [] and report["failed"] == []
    assert_converged(crash)


def test_fully_applied_batch_is_adopted_without_resending(crash: Crash) -> None:
    """An add applied remotely but unrecorded (the process was killed) is re-sent once by the
    next `--local` pass, whose "duplicate ID" answer is adopted: two POSTs per such id."""
    applied = kill_after_applied_posts(crash, answers=3)

    local = crash.child("reconcile", "--local").start()
    assert local.wait(timeout=RUN_TIMEOUT) == 0

    posts = crash.emu.stats()["posts_per_input_id"]
    assert {i for i, n in posts.items() if n > 1} == applied
    assert max(posts.values()) == 2


def test_reconcile_after_kill_recognises_unrecorded_adds_without_posting(crash: Crash) -> None:
    """After a kill between a POST being applied and its answer being recorded, a full
    `reconcile` finds those inputs in the remote listing by their markers and does not post
    them again."""
    child = crash.child("reconcile")
    child.start()
    crash.switch.arm(child.pid, direction="response", after=2)
    child.wait(timeout=RUN_TIMEOUT)
    assert crash.switch.fired.is_set()
    child.kill()
    crash.kills = 1
    stored = {e["id"] for e in crash.emu.store_snapshot()}

    final = crash.child("reconcile").start()
    assert final.wait(timeout=RUN_TIMEOUT) == 0, final.output()[1][-3000:]

    posts = crash.emu.stats()["posts_per_input_id"]
    assert all(posts[i] == 1 for i in stored)
    assert_converged(crash)


# --- the daemon -----------------------------------------------------------------------------


def test_daemon_killed_at_random_moments_converges(crash: Crash) -> None:
    """`syncd run` SIGKILLed N times at random moments of its catch-up over thousands of
    images and restarted: it converges to the invariant, stops cleanly on SIGTERM, and no
    input was created twice."""
    for _ in range(SOAK.kills):
        remaining = crash.remaining(SOAK.images)
        crash.kill_at_random(crash.child("run"), remaining=remaining)

    daemon = crash.child("run").start()
    try:

        def converged() -> bool:
            try:
                check_invariant(crash.emu.url, root=crash.root, source=SOURCE, ledger=crash.ledger)
            except AssertionError:
                return not daemon.alive()  # stop waiting if it died: the asserts below say why
            return True

        wait_for(converged, timeout=RUN_TIMEOUT, what=f"the daemon to converge ({crash.context()})")
        assert daemon.alive(), f"{crash.context()}\n{daemon.output()[1][-3000:]}"
        daemon.signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
    finally:
        daemon.close()

    assert code == 0, f"{crash.context()}\n{daemon.output()[1][-3000:]}"
    counts = assert_converged(crash)
    SOAK.record("daemon_sigkill", kills=crash.kills, **counts)


# --- a damaged ledger -----------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _scribble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for page in range(1, len(data) // 4096):  # every page but the header page
        data[page * 4096 : page * 4096 + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(b"definitely not SQLite " * 500)


@pytest.mark.parametrize(
    "damage", [_truncate, _scribble, _garbage], ids=["truncated", "scribbled", "garbage"]
)
def test_damaged_ledger_gives_a_clear_error_and_the_documented_rebuild_works(
    tmp_path: Path, emu: Emulator, damage: Callable[[Path], None]
) -> None:
    """A truncated or corrupted ledger stops reconcile with exit 2 and one line naming the file,
    the problem and the recovery, before any request is sent; the documented recovery
    (`reconcile --rebuild-ledger`) rebuilds it from the remote markers with zero uploads."""
    root = tmp_path / SOURCE
    write_tree(root, 300)
    config = site_config(tmp_path, root, emu.url, source=SOURCE, sync={"batch_size": BATCH})
    ledger = tmp_path / "state" / "ledger.db"
    env = {KEY_ENV: emu.api_key}
    assert run_cli(["reconcile", "--config", str(config)], env=env).exit_code == 0
    requests_before = emu.stats()["requests_total"]
    for suffix in ("-wal", "-shm"):
        assert not Path(f"{ledger}{suffix}").exists()  # a clean close folds the WAL in
    damage(ledger)

    broken = run_cli(["reconcile", "--config", str(config)], env=env)

    assert broken.exit_code == 2, broken.output
    lines = [line for line in broken.stderr.splitlines() if line.startswith("syncd: ")]
    assert len(lines) == 1, broken.stderr  # one message; the rest are JSON log lines
    assert str(ledger) in lines[0] and "corrupt or truncated" in lines[0]
    assert "--rebuild-ledger" in lines[0]
    assert emu.stats()["requests_total"] == requests_before

    rebuilt = run_cli(["reconcile", "--config", str(config), "--rebuild-ledger", "--json"], env=env)

    assert rebuilt.exit_code == 0, rebuilt.output
    assert json.loads(rebuilt.stdout)["planned"] == []
    stats = emu.stats()["requests"]
    assert stats.get("POST /v2/inputs", 0) == -(-300 // BATCH)  # the first pass's adds only
    assert list(ledger.parent.glob("ledger.db.corrupt-*"))
    check_invariant(emu.url, root=root, source=SOURCE, ledger=ledger)
    check_created_once(emu.url)
