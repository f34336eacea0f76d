"""End to end: files in a temporary folder -> `Engine.sync_once` -> the emulator over HTTP.

Each test builds a real dataset root, a real config file and ledger, runs one or more sync
passes against an emulator on a loopback port, and asserts on what the remote holds, on the
requests the emulator saw (counted and, through a validator hook, body by body) and on the
ledger. Every body is also checked against the official protobufs by the conftest recorder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    KEY_ENV,
    REPO,
    Site,
    Traffic,
    api_call,
    assert_remote_input,
    b64,
    ceil_div,
    concepts_of,
    make_site,
    metadata_of,
    owned_ids,
    remote_inputs,
    requests_by_method,
    sha256_of,
    sync_pass,
    untouched_view,
    wait_until,
    write_requests,
    write_sidecar,
)
from proto import ProtoRecorder

from syncd.emulator import Emulator
from syncd.model import MARKER_KEY, InputState
from syncd.sample import make_dataset, png_bytes

FAST = {"processing_delay": 0.05, "delete_delay": 0.05}


def labelled(site: Site, rel: str, seed: int, concepts: dict[str, bool], **metadata: Any) -> None:
    site.image(rel, seed, concepts=concepts, metadata=metadata)


# --- plan and execute -----------------------------------------------------------------------


def test_first_pass_mirrors_the_dataset(tmp_path: Path, emu: Emulator, traffic: Traffic) -> None:
    """A first pass creates one processed input per image, with the sidecar's concepts (values
    1/0), its metadata plus the ownership marker, the file's bytes, and a derived 32-hex id."""
    site = make_site(tmp_path, emu)
    info = make_dataset(site.root, classes=("cat", "dog"), per_class=6, seed=3)

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.added == len(info.images)
    remote = remote_inputs(emu)
    assert set(remote) == {site.input_id(p) for p in info.images}
    for rel in info.images:
        assert re.fullmatch(r"[0-9a-f]{32}", site.input_id(rel))
        want = {c: 1.0 if v else 0.0 for c, v in info.expected_concepts[rel].items()}
        entry = assert_remote_input(site, rel, concepts=want, metadata=info.expected_metadata[rel])
        assert entry["status"]["code"] == 30000
    beliefs = site.ledger_inputs()
    assert {b.state for b in beliefs.values()} == {InputState.PROCESSED}
    assert {b.code for b in beliefs.values()} == {30000}
    assert traffic.writes() == ["PostInputs"]


def test_second_pass_sends_no_write_request(site: Site, emu: Emulator) -> None:
    """Planning twice in a row yields nothing: the second pass plans no operation and sends
    zero POST, PATCH or DELETE requests."""
    make_dataset(site.root, classes=("cat", "dog"), per_class=5, seed=1)
    first = sync_pass(site)
    assert first.exit_code == 0
    writes = write_requests(emu)

    second = sync_pass(site)

    assert second.planned == []
    assert (second.added, second.relabeled, second.deleted) == (0, 0, 0)
    assert write_requests(emu) == writes
    assert second.exit_code == 0


def test_label_changes_patch_with_remove_then_merge(site: Site, traffic: Traffic) -> None:
    """A sidecar whose concepts change is sent as PATCH `remove` for dropped concepts and
    PATCH `merge` for new or flipped ones, and the remote ends with exactly the new set."""
    labelled(site, "a.png", 1, {"cat": True, "dog": False, "old": True}, note="x")
    labelled(site, "b.png", 2, {"bird": True})
    assert sync_pass(site).exit_code == 0
    traffic.clear()

    write_sidecar(
        site.root,
        "a.png",
        {"concepts": {"cat": False, "dog": True, "new": True}, "metadata": {"note": "x"}},
    )
    report = sync_pass(site)

    assert report.exit_code == 0
    assert report.relabeled == 1
    assert traffic.writes() == ["PatchInputs", "PatchInputs"]
    assert traffic.patch_actions() == ["remove", "merge"]
    removed = traffic.bodies("PatchInputs")[0]["inputs"]
    assert removed == [{"id": site.input_id("a.png"), "data": {"concepts": [{"id": "old"}]}}]
    assert_remote_input(
        site, "a.png", concepts={"cat": 0.0, "dog": 1.0, "new": 1.0}, metadata={"note": "x"}
    )
    assert_remote_input(site, "b.png", concepts={"bird": 1.0})


def test_metadata_change_leaves_exactly_the_local_metadata(site: Site, traffic: Traffic) -> None:
    """Changed metadata (a dropped key, a changed scalar, a nested change, a shorter list, a
    type change) ends remotely as exactly the sidecar's metadata plus the marker."""
    before = {
        "drop": "me",
        "n": 1,
        "camera": {"iso": 100, "flash": True, "lens": "35mm"},
        "tags": ["a", "b", "c"],
        "shape": {"x": 1},
    }
    site.image("a.png", 1, concepts=["cat"], metadata=before)
    site.image("b.png", 2, concepts=["dog"])
    assert sync_pass(site).exit_code == 0
    traffic.clear()

    after = {
        "n": 2,
        "camera": {"iso": 400, "flash": True},
        "tags": ["b"],
        "shape": "round",
        "added": {"deep": [1, 2]},
    }
    write_sidecar(site.root, "a.png", {"concepts": ["cat"], "metadata": after})
    report = sync_pass(site)

    assert report.exit_code == 0
    assert set(traffic.patch_actions()) <= {"remove", "merge"}
    assert "PostInputs" not in traffic.writes()
    assert_remote_input(site, "a.png", concepts={"cat": 1.0}, metadata=after)
    assert sync_pass(site).planned == []


def test_bytes_changed_replaces_the_input_once_the_delete_is_confirmed(
    tmp_path: Path, make_emulator: Callable[..., Emulator], traffic: Traffic
) -> None:
    """New bytes at the same path delete the old input and add it again only after the remote
    confirms it is gone (deletes take 0.3 s here): exactly one input with the new hash remains,
    and the ledger agrees."""
    emu = make_emulator(processing_delay=0.05, delete_delay=0.3, validator=traffic)
    site = make_site(tmp_path, emu)
    site.image("a.png", 1, concepts=["cat"])
    site.image("b.png", 2, concepts=["dog"])
    assert sync_pass(site).exit_code == 0
    input_id = site.input_id("a.png")
    traffic.clear()

    (site.root / "a.png").write_bytes(png_bytes(8, 8, seed=99))
    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.replaced == 1
    assert traffic.writes() == ["DeleteInputs", "PostInputs"]
    assert emu.stats()["posts_per_input_id"][input_id] == 2  # no add bounced off the old one
    new_sha = sha256_of(site.root / "a.png")
    remote = remote_inputs(emu, include_deleting=True)
    assert len(remote) == 2
    assert remote[input_id]["image"]["sha256"] == new_sha
    assert metadata_of(remote[input_id])[MARKER_KEY]["sha256"] == new_sha
    belief = site.ledger_inputs()[input_id]
    assert (belief.state, belief.sha256) == (InputState.PROCESSED, new_sha)
    assert sync_pass(site).planned == []


def test_rename_deletes_the_old_id_and_adds_the_new(site: Site, emu: Emulator) -> None:
    """A moved image without an explicit id is deleted under its old id and added under the id
    derived from its new path."""
    for i in range(4):
        site.image(f"in/{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    old_id = site.input_id("in/0.png")

    (site.root / "out").mkdir()
    (site.root / "in/0.png").rename(site.root / "out/0.png")
    (site.root / "in/0.json").rename(site.root / "out/0.json")
    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert (report.added, report.deleted) == (1, 1)
    wait_until(lambda: old_id not in remote_inputs(emu, include_deleting=True), what="delete")
    assert_remote_input(site, "out/0.png", concepts={"cat": 1.0})
    assert old_id not in site.ledger_inputs()


def test_explicit_id_moves_with_its_file(site: Site, traffic: Traffic) -> None:
    """An image with an explicit sidecar id keeps its input when moved: no add, no delete,
    only a metadata patch of the marker's path."""
    site.image("a/keep.png", 1, id="keep-me", concepts=["cat"], metadata={"k": "v"})
    site.image("a/other.png", 2, concepts=["dog"])
    assert sync_pass(site).exit_code == 0
    traffic.clear()

    (site.root / "b").mkdir()
    (site.root / "a/keep.png").rename(site.root / "b/keep.png")
    (site.root / "a/keep.json").rename(site.root / "b/keep.json")
    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert (report.added, report.deleted, report.relabeled) == (0, 0, 1)
    assert set(traffic.writes()) == {"PatchInputs"}
    for body in traffic.bodies("PatchInputs"):
        assert all(set(item["data"]) == {"metadata"} for item in body["inputs"])
    assert_remote_input(
        site, "b/keep.png", input_id="keep-me", concepts={"cat": 1.0}, metadata={"k": "v"}
    )


def test_changed_sidecar_id_moves_the_input_to_the_new_id(site: Site, emu: Emulator) -> None:
    """Giving an image an explicit id (or changing it) deletes the input under the old id and
    adds it under the new one."""
    for i in range(3):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    derived = site.input_id("0.png")

    write_sidecar(site.root, "0.png", {"id": "named-0", "concepts": ["cat"]})
    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert (report.added, report.deleted) == (1, 1)
    assert derived not in remote_inputs(emu, include_deleting=True)
    assert_remote_input(site, "0.png", input_id="named-0", concepts={"cat": 1.0})
    assert set(site.ledger_inputs()) == {"named-0", site.input_id("1.png"), site.input_id("2.png")}


def test_removed_file_deletes_its_input(site: Site, emu: Emulator) -> None:
    """A removed image's input is deleted remotely and forgotten by the ledger."""
    for i in range(4):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    gone = site.input_id("3.png")

    (site.root / "3.png").unlink()
    (site.root / "3.json").unlink()
    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.deleted == 1
    assert gone not in remote_inputs(emu, include_deleting=True)
    assert gone not in site.ledger_inputs()
    assert len(owned_ids(emu, site.source)) == 3


def test_adds_then_patches_then_deletes(site: Site, traffic: Traffic) -> None:
    """In a pass with all three kinds of change, every add goes before every patch, and the
    deletes go last."""
    for i in range(4):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    traffic.clear()

    site.image("new.png", 10, concepts=["cat"])
    write_sidecar(site.root, "1.png", {"concepts": ["dog"]})
    (site.root / "2.png").unlink()
    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert traffic.writes() == ["PostInputs", "PatchInputs", "PatchInputs", "DeleteInputs"]


def test_thousand_images_take_eight_add_requests(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """1,000 new images go out in exactly ceil(1000/128) = 8 POSTs, no request carries more
    than 128 inputs or ids, status polling lists pending inputs by ids (one request per 128
    ids, never one GET per input), and a second pass pages the listing by 1000 and writes
    nothing."""
    site = make_site(tmp_path, emu)
    for i in range(1000):
        (site.root / f"img_{i:04d}.png").write_bytes(png_bytes(8, 8, seed=i))

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.added == 1000
    stats = emu.stats()
    assert stats["requests"]["POST /v2/inputs"] == ceil_div(1000, 128) == 8
    assert stats["inputs_posted"] == 1000
    assert "GET /v2/inputs/{input_id}" not in stats["requests"]
    traffic.assert_within_limits()
    polls = [b["ids"] for b in traffic.bodies("ListInputs") if "ids" in b]
    first_round = polls[: ceil_div(1000, 128)]
    # the round's requests go out in parallel: their order is not part of the contract
    assert sorted(len(ids) for ids in first_round) == sorted([128] * 7 + [1000 - 7 * 128])
    assert len({i for ids in first_round for i in ids}) == 1000
    assert len(remote_inputs(emu)) == 1000
    traffic.clear()

    again = sync_pass(site)

    assert again.planned == []
    assert traffic.writes() == []
    listing = [(b.get("page"), b.get("per_page")) for b in traffic.bodies("ListInputs")]
    assert listing == [(1, 1000), (2, 1000)]


def test_batches_respect_batch_size(tmp_path: Path, emu: Emulator, traffic: Traffic) -> None:
    """With sync.batch_size = 10, adds, patches and deletes carry at most 10 inputs or ids."""
    site = make_site(tmp_path, emu, sync={"batch_size": 10, "max_delete_fraction": 1.0})
    for i in range(35):
        site.image(f"{i:02d}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    for i in range(25):
        write_sidecar(site.root, f"{i:02d}.png", {"concepts": ["dog"]})
    for i in range(25, 35):
        (site.root / f"{i:02d}.png").unlink()

    assert sync_pass(site).exit_code == 0

    traffic.assert_within_limits(batch_size=10)
    assert len(traffic.bodies("PostInputs")) == 4
    assert len(traffic.bodies("PatchInputs")) == 2 * 3  # remove + merge, 25 ids in 3 batches
    assert sum(len(b["ids"]) for b in traffic.bodies("DeleteInputs")) == 10


def test_workers_share_one_keep_alive_session(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """Add batches run on up to `workers` parallel connections and never more, and the whole
    pass (lists, adds, polls) uses no more TCP connections than workers."""
    traffic.hold = {"PostInputs": 0.15}
    site = make_site(tmp_path, emu, sync={"batch_size": 4, "workers": 3})
    for i in range(24):
        site.image(f"{i:02d}.png", i, concepts=["cat"])

    assert sync_pass(site).exit_code == 0

    assert len(traffic.bodies("PostInputs")) == 6
    assert 2 <= traffic.max_in_flight["PostInputs"] <= 3
    assert len(traffic.connections) <= 3


def test_request_rate_stays_under_the_limit(tmp_path: Path, emu: Emulator) -> None:
    """With sync.max_requests_per_second = 6 the client never trips a server that throttles
    above 10 requests in any sliding second, even with 4 workers sending 10 add batches."""
    emu.set_faults(throttle_rps=10)
    site = make_site(
        tmp_path, emu, sync={"max_requests_per_second": 6.0, "batch_size": 2, "workers": 4}
    )
    for i in range(20):
        site.image(f"{i:02d}.png", i, concepts=["cat"])

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert emu.stats()["requests_total"] >= 12
    assert emu.stats()["throttled"] == 0


def test_deletes_are_withheld_after_an_error(
    tmp_path: Path, make_emulator: Callable[..., Emulator], traffic: Traffic
) -> None:
    """When a request of the pass fails, the deletes planned in it are not sent; a later clean
    pass sends them."""
    emu = make_emulator(validator=traffic, max_body_bytes=6000, **FAST)
    site = make_site(tmp_path, emu)
    for i in range(4):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    doomed = site.input_id("0.png")
    (site.root / "0.png").unlink()
    (site.root / "big.png").write_bytes(png_bytes(64, 64, seed=5, noise=1.0))  # body > 6000 B

    report = sync_pass(site)

    assert report.errors, report.as_dict()
    assert "DeleteInputs" not in traffic.writes()
    assert doomed in remote_inputs(emu)

    (site.root / "big.png").unlink()
    report = sync_pass(site)
    assert report.exit_code == 0, report.as_dict()
    assert report.deleted == 1
    assert doomed not in remote_inputs(emu, include_deleting=True)


def test_rejected_add_request_exits_1(
    tmp_path: Path, make_emulator: Callable[..., Emulator], traffic: Traffic
) -> None:
    """An add request the remote rejects outright (its body is over the server's size limit)
    fails those inputs: the pass exits 1, not 3 (the remote was reachable and took the key)."""
    emu = make_emulator(validator=traffic, max_body_bytes=6000, **FAST)
    site = make_site(tmp_path, emu)
    site.image("small.png", 1, concepts=["cat"])
    (site.root / "big.png").write_bytes(png_bytes(64, 64, seed=5, noise=1.0))

    report = sync_pass(site)

    assert report.added == 1
    assert report.exit_code == 1, report.as_dict()


@pytest.mark.parametrize("fails_batch", [False, True], ids=["per-input", "whole-batch"])
def test_taken_explicit_id_holds_only_that_file(
    site: Site, emu: Emulator, fails_batch: bool
) -> None:
    """An explicit sidecar id that a foreign input already uses holds that one file with a
    clear reason, the other inputs of the batch land, and the foreign input is untouched,
    whether the server rejects the one item (10010) or the whole batch (10020)."""
    foreign = {
        "id": "taken",
        "data": {
            "image": {"base64": b64(png_bytes(8, 8, seed=500))},
            "concepts": [{"id": "theirs", "value": 1}],
            "metadata": {"owner": "someone"},
        },
    }
    api_call(emu, "POST", {"inputs": [foreign]})
    before = untouched_view(remote_inputs(emu)["taken"])
    emu.set_faults(duplicate_fails_batch=fails_batch)
    site.image("mine.png", 1, id="taken", concepts=["cat"])
    for i in range(2, 6):
        site.image(f"{i}.png", i, concepts=["cat"])

    report = sync_pass(site)

    assert report.exit_code == 1
    assert report.added == 4
    assert len(report.held) == 1
    where, why = report.held[0]
    assert "taken" in where and "mine.png" in why and "already exists" in why
    assert untouched_view(remote_inputs(emu)["taken"]) == before
    for i in range(2, 6):
        assert_remote_input(site, f"{i}.png", concepts={"cat": 1.0})
    if not fails_batch:
        assert emu.stats()["responses"].get("207", 0) >= 1  # a mixed answer, mapped per input

    again = sync_pass(site)
    assert again.planned == []
    assert [path for path, _ in again.held] == ["mine.png"]
    assert untouched_view(remote_inputs(emu)["taken"]) == before


# --- status polling -------------------------------------------------------------------------


def test_polling_records_remote_codes(site: Site, emu: Emulator, traffic: Traffic) -> None:
    """Pending inputs are polled with list-by-ids requests until they settle, and the ledger
    keeps each one's remote code and description: 30000 for processed, 30002 with its reason
    for a processing failure."""
    for i in range(5):
        site.image(f"{i}.png", i, concepts=["cat"])
    bad = site.input_id("4.png")
    emu.set_faults(fail_processing_ids=[bad])

    report = sync_pass(site)

    assert report.exit_code == 1
    assert [(i, p) for i, p, _ in report.failed] == [(bad, "4.png")]
    assert report.failed[0][2].startswith("30002")
    beliefs = site.ledger_inputs()
    assert beliefs[bad].state is InputState.FAILED
    assert beliefs[bad].code == 30002
    assert beliefs[bad].description
    assert "30002" in (beliefs[bad].error or "")
    ok = [b for i, b in beliefs.items() if i != bad]
    assert {(b.state, b.code) for b in ok} == {(InputState.PROCESSED, 30000)}
    assert all(b.description for b in ok)
    assert "GetInput" not in traffic.kinds()
    polls = [b for b in traffic.bodies("ListInputs") if "ids" in b]
    assert polls and all(len(b["ids"]) <= 5 for b in polls)

    again = sync_pass(site)
    assert again.planned == []  # failed for these bytes: not re-sent until the file changes
    assert write_requests(emu) == 1

    emu.set_faults()
    (site.root / "4.png").write_bytes(png_bytes(8, 8, seed=444))
    fixed = sync_pass(site)
    assert fixed.exit_code == 0, fixed.as_dict()
    assert site.ledger_inputs()[bad].state is InputState.PROCESSED
    assert_remote_input(site, "4.png", concepts={"cat": 1.0})


# --- reconcile against the remote -----------------------------------------------------------


def test_owned_input_missing_remotely_is_added_again(site: Site, emu: Emulator) -> None:
    """An owned input deleted behind syncd's back is noticed by the remote listing and added
    again."""
    for i in range(3):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    lost = site.input_id("1.png")
    api_call(emu, "DELETE", {"ids": [lost]})
    wait_until(lambda: lost not in remote_inputs(emu, include_deleting=True), what="delete")

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.missing_readded == 1
    assert report.added == 1
    assert_remote_input(site, "1.png", concepts={"cat": 1.0})


def test_drift_is_reported_and_local_wins(site: Site, emu: Emulator) -> None:
    """Concepts and metadata edited remotely (as in the web UI) are reported as drift and set
    back to the local labels."""
    site.image("a.png", 1, concepts={"cat": True, "dog": False}, metadata={"k": "v"})
    site.image("b.png", 2, concepts=["bird"])
    assert sync_pass(site).exit_code == 0
    target = site.input_id("a.png")
    edit = {
        "id": target,
        "data": {
            "concepts": [{"id": "ufo", "value": 1}, {"id": "cat", "value": 0}],
            "metadata": {"k": "edited", "extra": True},
        },
    }
    api_call(emu, "PATCH", {"inputs": [edit], "action": "merge"})
    assert concepts_of(remote_inputs(emu)[target])["ufo"] == 1.0

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.drifted == [target]
    assert report.relabeled == 1
    assert_remote_input(site, "a.png", concepts={"cat": 1.0, "dog": 0.0}, metadata={"k": "v"})


def test_foreign_inputs_are_counted_and_left_alone(site: Site, emu: Emulator) -> None:
    """Inputs without this source's marker (none at all, or another source's) are counted as
    foreign and never patched or deleted, even when every owned input is deleted."""
    items = [
        {"id": "plain", "data": {"image": {"base64": b64(png_bytes(8, 8, seed=70))}}},
        {
            "id": "other-source",
            "data": {
                "image": {"base64": b64(png_bytes(8, 8, seed=71))},
                "metadata": {
                    MARKER_KEY: {"source": "elsewhere", "path": "0.png", "sha256": "0" * 64}
                },
            },
        },
    ]
    api_call(emu, "POST", {"inputs": items})
    for i in range(4):
        site.image(f"{i}.png", i, concepts=["cat"])
    report = sync_pass(site)
    assert report.exit_code == 0, report.as_dict()
    assert report.foreign == 2
    before = {k: untouched_view(remote_inputs(emu)[k]) for k in ("plain", "other-source")}

    for i in range(3):
        (site.root / f"{i}.png").unlink()
    report = sync_pass(site, allow_mass_delete=True)

    assert report.deleted == 3
    assert report.foreign == 2
    after = remote_inputs(emu)
    assert {k: untouched_view(after[k]) for k in before} == before


def test_lost_ledger_is_rebuilt_without_uploading(site: Site, emu: Emulator) -> None:
    """With the ledger file deleted, the next pass recognises every owned input by its marker
    and hash: zero write requests, and the ledger again knows every input as processed."""
    make_dataset(site.root, classes=("cat", "dog"), per_class=4, seed=2)
    assert sync_pass(site).exit_code == 0
    writes = write_requests(emu)
    ids = set(site.ledger_inputs())
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert write_requests(emu) == writes
    rebuilt = site.ledger_inputs()
    assert set(rebuilt) == ids
    assert {b.state for b in rebuilt.values()} == {InputState.PROCESSED}
    assert sync_pass(site).planned == []


def test_lost_ledger_replaces_only_inputs_whose_hash_differs(
    site: Site, emu: Emulator, traffic: Traffic
) -> None:
    """Rebuilding a lost ledger adopts the inputs whose marker hash matches the file and
    replaces only the one whose file changed meanwhile."""
    for i in range(4):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)
    (site.root / "2.png").write_bytes(png_bytes(8, 8, seed=222))
    changed = site.input_id("2.png")
    traffic.clear()

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert traffic.writes() == ["DeleteInputs", "PostInputs"]
    assert traffic.bodies("DeleteInputs")[0]["ids"] == [changed]
    assert [item["id"] for item in traffic.bodies("PostInputs")[0]["inputs"]] == [changed]
    for i in range(4):
        assert_remote_input(site, f"{i}.png", concepts={"cat": 1.0})


def test_lost_ledger_reports_adopted_inputs(site: Site) -> None:
    """A pass that rebuilds a lost ledger reports how many inputs it adopted."""
    for i in range(3):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)

    report = sync_pass(site)

    assert report.adopted == 3


def test_owned_input_without_a_file_is_deleted(site: Site, emu: Emulator) -> None:
    """An owned input whose file is gone is deleted even when only the remote marker knows it
    (the ledger was lost in between)."""
    for i in range(4):
        site.image(f"{i}.png", i, concepts=["cat"])
    assert sync_pass(site).exit_code == 0
    gone = site.input_id("0.png")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{site.ledger}{suffix}").unlink(missing_ok=True)
    (site.root / "0.png").unlink()

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    assert report.deleted == 1
    assert gone not in remote_inputs(emu, include_deleting=True)
    assert len(owned_ids(emu, site.source)) == 3


# --- invalid sidecars -----------------------------------------------------------------------


def test_invalid_sidecar_holds_a_new_image_until_fixed(site: Site, emu: Emulator) -> None:
    """A new image with an invalid sidecar is not uploaded and is reported held with its path
    and reason; fixing the sidecar releases it on the next pass."""
    site.image("ok.png", 1, concepts=["cat"])
    site.image("bad.png", 2)
    write_sidecar(site.root, "bad.png", '{"concepts": ["cat",]}')

    report = sync_pass(site)

    assert report.exit_code == 1
    assert [p for p, _ in report.held] == ["bad.png"]
    assert "bad.json" in report.held[0][1]
    assert site.input_id("bad.png") not in remote_inputs(emu)

    write_sidecar(site.root, "bad.png", {"concepts": ["cat"]})
    report = sync_pass(site)
    assert report.exit_code == 0, report.as_dict()
    assert report.held == []
    assert_remote_input(site, "bad.png", concepts={"cat": 1.0})


def test_invalid_sidecar_keeps_remote_labels_untouched(site: Site, emu: Emulator) -> None:
    """When a known image's sidecar turns invalid, its remote input keeps its labels (no patch,
    no delete); once fixed, the new labels are applied."""
    for i in range(3):
        site.image(f"{i}.png", i, concepts=["cat"], metadata={"v": 1})
    assert sync_pass(site).exit_code == 0
    writes = write_requests(emu)
    write_sidecar(site.root, "0.png", '{"concepts": "dog"')

    report = sync_pass(site)

    assert report.exit_code == 1
    assert [p for p, _ in report.held] == ["0.png"]
    assert write_requests(emu) == writes
    assert_remote_input(site, "0.png", concepts={"cat": 1.0}, metadata={"v": 1})

    write_sidecar(site.root, "0.png", {"concepts": ["dog"], "metadata": {"v": 2}})
    report = sync_pass(site)
    assert report.exit_code == 0, report.as_dict()
    assert_remote_input(site, "0.png", concepts={"dog": 1.0}, metadata={"v": 2})


# --- auth, routes, url_base, dataset ---------------------------------------------------------


def test_scoped_routes_when_user_and_app_are_set(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """With remote.user_id and remote.app_id every request uses the
    /v2/users/{user}/apps/{app} routes; without them, the short /v2 routes."""
    scoped = make_site(
        tmp_path / "scoped", emu, remote={"user_id": emu.user_id, "app_id": emu.app_id}
    )
    scoped.image("a.png", 1, concepts=["cat"])
    assert sync_pass(scoped).exit_code == 0
    routes = set(emu.stats()["requests"])
    assert routes and all(r.split(" ", 1)[1].startswith("/v2/users/") for r in routes)

    emu.reset()
    short = make_site(tmp_path / "short", emu)
    short.image("a.png", 1, concepts=["cat"])
    assert sync_pass(short).exit_code == 0
    routes = set(emu.stats()["requests"])
    assert routes and not any("/users/" in r for r in routes)


def test_api_key_from_a_file(
    tmp_path: Path, emu: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the variable unset, the key is read from remote.api_key_file and sent as
    `Authorization: Key <key>`."""
    key_file = tmp_path / "key"
    key_file.write_text(emu.api_key + "\n")
    key_file.chmod(0o600)
    site = make_site(tmp_path, emu, remote={"api_key_file": key_file})
    site.env = {}
    monkeypatch.delenv(KEY_ENV, raising=False)
    site.image("a.png", 1, concepts=["cat"])

    assert sync_pass(site).exit_code == 0
    assert_remote_input(site, "a.png", concepts={"cat": 1.0})


def test_dataset_id_puts_new_inputs_in_the_dataset(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """With remote.dataset_id, every add carries `dataset_ids` and the inputs land in it."""
    site = make_site(tmp_path, emu, remote={"dataset_id": "train"})
    for i in range(3):
        site.image(f"{i}.png", i, concepts=["cat"])

    assert sync_pass(site).exit_code == 0

    for body in traffic.bodies("PostInputs"):
        assert all(item["dataset_ids"] == ["train"] for item in body["inputs"])
    assert {tuple(e["dataset_ids"]) for e in remote_inputs(emu).values()} == {("train",)}


def test_url_base_sends_urls_instead_of_bytes(
    tmp_path: Path, emu: Emulator, traffic: Traffic
) -> None:
    """With source.url_base, adds carry `image.url` = url_base + "/" + the quoted relative path
    and no bytes, and the input is stored under that URL with the file's hash in its marker."""
    # The emulator never fetches URLs (docs/emulator.md): an http(s) URL input is stored as
    # given and always processes to 30000, so the request shape and stored URL are what count.
    site = make_site(tmp_path, emu, source_opts={"url_base": "https://cdn.example.com/pets/"})
    site.image("cats/a b.png", 1, concepts=["cat"])
    site.image("dogs/d.png", 2, concepts=["dog"])

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    images = [item["data"]["image"] for b in traffic.bodies("PostInputs") for item in b["inputs"]]
    assert all("base64" not in image for image in images)
    assert sorted(image["url"] for image in images) == [
        "https://cdn.example.com/pets/cats/a%20b.png",
        "https://cdn.example.com/pets/dogs/d.png",
    ]
    entry = remote_inputs(emu)[site.input_id("cats/a b.png")]
    assert entry["image"]["url"] == "https://cdn.example.com/pets/cats/a%20b.png"
    assert entry["status"]["code"] == 30000
    assert metadata_of(entry)[MARKER_KEY]["sha256"] == sha256_of(site.root / "cats/a b.png")
    assert sync_pass(site).planned == []


# --- protocol checks ------------------------------------------------------------------------


def test_every_request_validates_against_the_protobufs(
    site: Site,
    emu: Emulator,
    traffic: Traffic,
    proto_recorder: ProtoRecorder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run with adds, patches (merge and remove), deletes, lists and status polls, plus the
    remote counts of `syncd status`, produces zero protobuf violations in either direction."""
    from syncd.config import load_config
    from syncd.status import collect_status

    for i in range(4):
        site.image(f"{i}.png", i, concepts={"cat": True, "dog": False}, metadata={"i": i})
    assert sync_pass(site).exit_code == 0
    write_sidecar(site.root, "1.png", {"concepts": ["bird"], "metadata": {"j": [1, "x"]}})
    (site.root / "2.png").unlink()
    assert sync_pass(site).exit_code == 0
    monkeypatch.setenv(KEY_ENV, emu.api_key)
    info = collect_status(load_config(site.config))
    assert info["remote_counts"]["processed"] == 3

    kinds = set(traffic.kinds())
    assert {"PostInputs", "PatchInputs", "DeleteInputs", "ListInputs", "GetInputCount"} <= kinds
    assert set(traffic.patch_actions()) == {"merge", "remove"}
    assert any("ids" in b for b in traffic.bodies("ListInputs"))
    assert proto_recorder.violations == []
    assert proto_recorder.checked >= 2 * len(traffic.requests)


# --- the legacy client ----------------------------------------------------------------------


def test_legacy_client_reads_back_what_syncd_wrote(site: Site, emu: Emulator) -> None:
    """The official legacy client clarifai 2.6.2 lists the inputs syncd wrote with the same
    ids, concepts (present and absent) and metadata."""
    python = os.environ.get("SYNCD_LEGACY_PYTHON")
    if not python:
        if os.environ.get("SYNCD_SKIP_LEGACY") == "1":
            pytest.skip("SYNCD_SKIP_LEGACY=1")
        pytest.fail(
            "SYNCD_LEGACY_PYTHON is not set: run `make test` (it builds .venv-legacy with "
            "clarifai==2.6.2), or set SYNCD_SKIP_LEGACY=1 to skip this test"
        )
    info = make_dataset(site.root, classes=("cat", "dog"), per_class=12, seed=4)
    site.image(
        "explicit.png",
        77,
        id="my-own-id",
        concepts={"cat": True, "dog": False},
        metadata={"nested": {"a": [1, 2.5, "x"]}, "flag": False},
    )
    assert sync_pass(site).exit_code == 0

    result = subprocess.run(
        [python, str(REPO / "tests/legacy/read_back.py")],
        env={
            "HOME": os.environ.get("HOME", "/tmp"),
            "CLARIFAI_API_BASE": emu.url,
            "CLARIFAI_API_KEY": emu.api_key,
            "PATH": os.environ.get("PATH", ""),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    legacy = {item["id"]: item for item in json.loads(result.stdout)}
    remote = remote_inputs(emu)
    assert set(legacy) == set(remote)
    assert len(legacy) == len(info.images) + 1
    for input_id, entry in remote.items():
        assert legacy[input_id]["concepts"] == concepts_of(entry), input_id
        assert legacy[input_id]["metadata"] == metadata_of(entry), input_id
    mine = legacy["my-own-id"]
    assert mine["concepts"] == {"cat": 1.0, "dog": 0.0}
    assert mine["metadata"]["nested"] == {"a": [1.0, 2.5, "x"]}
    assert mine["metadata"][MARKER_KEY]["path"] == "explicit.png"


def test_sample_dataset_moves_are_tracked(site: Site, emu: Emulator) -> None:
    """A whole class folder renamed on disk ends with the same number of owned inputs, all
    under the new paths (deletes within the fraction guard)."""
    info = make_dataset(site.root, classes=("cat", "dog", "bird"), per_class=3, seed=9)
    assert sync_pass(site).exit_code == 0
    shutil.move(site.root / "bird", site.root / "birds")

    report = sync_pass(site)

    assert report.exit_code == 0, report.as_dict()
    moved = [p.replace("bird/", "birds/", 1) if p.startswith("bird/") else p for p in info.images]
    assert owned_ids(emu, site.source) == {site.input_id(p) for p in moved}
    assert requests_by_method(emu)["DELETE"] == 1
