"""Non-timing regression guards for what `make bench` measures: request counts per scenario,
files hashed on a no-op pass, batch sizes never over the API's limits.

Small sizes (300 images), a real emulator on loopback, real files and a real ledger; the
timings themselves live in bench/ and never in `make test`.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import Site, Traffic, make_site, run_cli, sync_pass, wait_out_racy_window

from syncd.emulator import Emulator
from syncd.sample import make_flat_tree

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from harness import count, percentile

IMAGES = 300
BATCH = 128


@pytest.fixture
def site(tmp_path: Path, emu: Emulator) -> Site:
    site = make_site(tmp_path, emu, source="bench")
    make_flat_tree(site.root, files=IMAGES, dirs=3, size_range=(700, 1_500))
    past = time.time_ns() - 3_600 * 10**9
    for path in site.root.rglob("*.png"):
        os.utime(path, ns=(past, past))  # mtimes in the past, as on a tree at rest
    return site


def poll_rounds(traffic: Traffic) -> list[list[list[str]]]:
    """The status polls (ListInputs with ids) grouped into rounds: a round ends where an id
    is asked for again."""
    rounds: list[list[list[str]]] = []
    seen: set[str] = set()
    for body in traffic.bodies("ListInputs"):
        ids = list(body.get("ids", []))
        if not ids:
            continue
        if not rounds or seen & set(ids):
            rounds.append([])
            seen = set()
        rounds[-1].append(ids)
        seen |= set(ids)
    return rounds


def local_pass_json(site: Site) -> dict:
    import json

    result = run_cli(["reconcile", "--local", "--json", "--config", str(site.config)], env=site.env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_initial_sync_posts_full_batches_and_polls_one_request_per_page(
    site: Site, emu: Emulator, traffic: Traffic
) -> None:
    """An initial sync of 300 images sends exactly ceil(300/128) POSTs, each image once, and
    every poll round asks for each pending id once, in ceil(pending/128) requests."""
    report = sync_pass(site)
    assert report.added == IMAGES
    posts = traffic.bodies("PostInputs")
    assert sorted(len(b["inputs"]) for b in posts) == [IMAGES - 2 * BATCH, BATCH, BATCH]
    assert count(emu.stats(), "POST /inputs") == math.ceil(IMAGES / BATCH)
    assert set(emu.stats()["posts_per_input_id"].values()) == {1}
    listings = [b for b in traffic.bodies("ListInputs") if not b.get("ids")]
    assert len(listings) == 1  # the remote listing of an empty app: one page
    rounds = poll_rounds(traffic)
    assert rounds, "the pass waited for processing without polling"
    all_ids = {item["id"] for b in posts for item in b["inputs"]}
    assert {i for req in rounds[0] for i in req} == all_ids
    previous = all_ids
    for polled in rounds:
        ids = [i for req in polled for i in req]
        assert len(ids) == len(set(ids)), "an id was asked for twice in one round"
        assert set(ids) <= previous
        assert len(polled) == math.ceil(len(ids) / BATCH)
        assert all(len(req) <= BATCH for req in polled)
        previous = set(ids)
    traffic.assert_within_limits()


def test_initial_sync_reads_each_image_once(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan of an initial sync reads no image (the ledger knows none): each is opened
    once, by the add that hashes, judges and sends it, and the ledger then trusts every
    hash, so the next pass over the untouched tree reads nothing."""
    opened: Counter[str] = Counter()
    real_open = os.open

    def counting_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.fspath(path).endswith(".png"):
            opened[os.fspath(path)] += 1
        return real_open(path, flags, *args, **kwargs)

    wait_out_racy_window(site.root)  # else the hashes of files changed just now are not
    monkeypatch.setattr(os, "open", counting_open)  # trusted, and read again next pass
    report = sync_pass(site)
    assert report.added == IMAGES and report.files_hashed == IMAGES
    assert len(opened) == IMAGES and set(opened.values()) == {1}

    opened.clear()
    again = local_pass_json(site)
    assert again["files_hashed"] == 0 and again["requests"] == {}
    assert not opened


def test_noop_local_pass_hashes_nothing_and_sends_nothing(
    site: Site, emu: Emulator, traffic: Traffic
) -> None:
    """On an untouched tree older than the racy window, `reconcile --local` hashes zero files
    and sends zero requests; touching 10 files makes it hash exactly those 10."""
    sync_pass(site)
    wait_out_racy_window(site.root)
    sync_pass(site, local_only=True)  # re-reads files that were racy during the first pass
    before = emu.stats()["requests_total"]
    traffic.clear()

    report = local_pass_json(site)
    assert report["files_seen"] == IMAGES
    assert report["files_hashed"] == 0
    assert report["requests"] == {}
    assert emu.stats()["requests_total"] == before
    assert traffic.kinds() == []

    touched = sorted(site.root.rglob("*.png"))[::30]
    past = time.time_ns() - 60 * 10**9
    for path in touched:
        os.utime(path, ns=(past, past))  # new mtime, same bytes
    report = local_pass_json(site)
    assert report["files_hashed"] == len(touched) == 10
    assert report["requests"] == {}
    assert emu.stats()["requests_total"] == before


def test_full_noop_pass_only_lists(site: Site, emu: Emulator, traffic: Traffic) -> None:
    """A full no-op reconcile sends one list request per 1,000 inputs and no write, and
    hashes no file."""
    sync_pass(site)
    wait_out_racy_window(site.root)
    sync_pass(site, local_only=True)
    traffic.clear()

    report = sync_pass(site)
    assert report.files_hashed == 0
    assert traffic.writes() == []
    listings = traffic.bodies("ListInputs")
    assert len(listings) == math.ceil((IMAGES + 1) / 1000)
    assert all(not b.get("ids") and int(b.get("per_page", 0)) == 1000 for b in listings)
    assert traffic.kinds() == ["ListInputs"] * len(listings)


def test_small_batch_size_is_never_exceeded(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """With sync.batch_size = 50 no POST carries more than 50 inputs, and 300 images take
    exactly ceil(300/50) POSTs."""
    site = make_site(tmp_path, emu, source="bench", sync={"batch_size": 50})
    make_flat_tree(site.root, files=IMAGES, dirs=3, size_range=(700, 1_500))
    sync_pass(site)
    sizes = [len(b["inputs"]) for b in traffic.bodies("PostInputs")]
    assert sizes == [50] * 6
    traffic.assert_within_limits(batch_size=50)


def test_bench_route_count_sums_both_spellings() -> None:
    """The bench's request counter adds the short and the scoped spelling of a route and
    keeps `/inputs` apart from `/inputs/{input_id}`."""
    stats = {
        "requests": {
            "POST /v2/inputs": 3,
            "POST /v2/users/{user_id}/apps/{app_id}/inputs": 2,
            "GET /v2/inputs": 5,
            "GET /v2/inputs/{input_id}": 7,
        }
    }
    assert count(stats, "POST /inputs") == 5
    assert count(stats, "GET /inputs") == 5
    assert count(stats, "GET /inputs/{input_id}") == 7


def test_bench_percentile_is_nearest_rank() -> None:
    """p50 and p95 of 1..100 are 50 and 95 (nearest rank), as the watch-latency row uses."""
    values = list(range(100, 0, -1))
    assert percentile(values, 50) == 50
    assert percentile(values, 95) == 95
