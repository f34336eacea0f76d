"""The emulator's asynchronous state machines on a ManualClock, and its state file."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from syncd.emulator import Emulator, ManualClock


def status_of(client, input_id: str) -> int:
    return client.get_input(input_id).json()["input"]["status"]["code"]


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x01" * 64 + b"\xff\xd9"
GIF = b"GIF89a" + b"\x01\x00\x01\x00\x00\x00\x00" + b"\x00" * 8 + b";"
TIFF = b"II*\x00\x08\x00\x00\x00" + b"\x00" * 32
BMP = (
    b"BM"
    + struct.pack("<IHHI", 58, 0, 0, 54)
    + struct.pack("<IiiHHIIiiII", 40, 1, 1, 1, 24, 0, 4, 2835, 2835, 0, 0)
    + b"\x00\x00\xff\x00"
)
WEBP = b"RIFF" + struct.pack("<I", 32) + b"WEBPVP8 " + b"\x00" * 24


class TestProcessing:
    def test_pending_then_in_progress_then_processed(self, manual_client, make_input, make_png):
        """An input is 30001 until delay/2, 30003 until the delay, then 30000."""
        manual_client.post_inputs(make_input("a", make_png()))
        emu = manual_client.emu
        assert status_of(manual_client, "a") == 30001
        emu.advance(0.24)
        assert status_of(manual_client, "a") == 30001
        emu.advance(0.02)
        assert status_of(manual_client, "a") == 30003
        emu.advance(0.23)
        assert status_of(manual_client, "a") == 30003
        emu.advance(0.02)
        assert status_of(manual_client, "a") == 30000

    @pytest.mark.parametrize("data", [JPEG, GIF, TIFF, BMP, WEBP], ids=lambda d: d[:4].hex())
    def test_whole_images_of_every_supported_format_succeed(self, manual_client, make_input, data):
        """Whole JPEG, GIF, TIFF, BMP and WEBP bytes end in 30000."""
        manual_client.post_inputs(make_input("a", data))
        manual_client.emu.advance(1)
        assert status_of(manual_client, "a") == 30000

    @pytest.mark.parametrize(
        ("data", "reason"),
        [
            (JPEG[:-2], "truncated JPEG (no end-of-image marker)"),
            (None, "truncated PNG (no IEND chunk)"),
            (b"hello, not an image", "not an image"),
            (GIF[:-1], "truncated GIF"),
            (BMP[:20], "truncated BMP"),
            (WEBP[:20], "truncated WEBP"),
        ],
    )
    def test_bytes_that_are_no_whole_image_end_in_30002(
        self, manual_client, make_input, make_png, data, reason
    ):
        """Undecodable or truncated bytes are accepted (30001) and later fail with 30002."""
        data = make_png()[:-12] if data is None else data
        r = manual_client.post_inputs(make_input("a", data))
        assert r.json()["inputs"][0]["status"]["code"] == 30001
        manual_client.emu.advance(0.3)
        assert status_of(manual_client, "a") == 30003
        manual_client.emu.advance(0.3)
        status = manual_client.get_input("a").json()["input"]["status"]
        assert status["code"] == 30002
        assert status["description"] == "Download failed"
        assert status["details"].startswith("not a decodable image: ")
        assert reason in status["details"]

    def test_fail_processing_ids_fault_fails_chosen_inputs(
        self, manual_client, make_input, make_png
    ):
        """Inputs posted with an id in fail_processing_ids end in 30002 despite good bytes."""
        manual_client.emu.set_faults(fail_processing_ids=["bad"])
        manual_client.post_inputs(make_input("bad", make_png()), make_input("good", make_png(2)))
        manual_client.emu.advance(1)
        assert status_of(manual_client, "bad") == 30002
        assert status_of(manual_client, "good") == 30000
        assert manual_client.emu.stats()["faults_injected"] == {"fail_processing": 1}

    def test_counts_follow_the_state_machine(self, manual_client, make_input, make_png):
        """inputs/status counts pending, in-progress, processed and failed inputs."""

        def counts() -> tuple[int, int, int, int]:
            c = manual_client.request("GET", "/inputs/status").json()["counts"]
            return c["to_process"], c["processing"], c["processed"], c["errors"]

        manual_client.post_inputs(make_input("a", make_png()), make_input("b", b"junk"))
        assert counts() == (2, 0, 0, 0)
        manual_client.emu.advance(0.3)
        manual_client.post_inputs(make_input("c", make_png(3)))
        assert counts() == (1, 2, 0, 0)
        manual_client.emu.advance(0.3)
        assert counts() == (0, 1, 1, 1)
        manual_client.emu.advance(0.3)
        assert counts() == (0, 0, 2, 1)

    def test_zero_processing_delay_is_final_at_once(
        self, make_emulator, client_for, make_input, make_png
    ):
        """With processing_delay 0 the POST answer already shows the final status."""
        emu = make_emulator(clock=ManualClock(), processing_delay=0)
        r = client_for(emu).post_inputs(make_input("a", make_png()), make_input("b", b"x"))
        assert [i["status"]["code"] for i in r.json()["inputs"]] == [30000, 30002]


class TestDeletes:
    def test_deleted_input_stays_readable_then_is_gone(self, manual_client, make_input, make_png):
        """After DELETE an input is listed and GET-able for delete_delay, then 404 / 11101."""
        manual_client.post_inputs(make_input("a", make_png()), make_input("b", make_png(2)))
        manual_client.request("DELETE", "/inputs/a")
        manual_client.emu.advance(0.49)
        assert manual_client.get_input("a").status_code == 200
        listed = manual_client.request("GET", "/inputs").json()["inputs"]
        assert [i["id"] for i in listed] == ["a", "b"]
        manual_client.emu.advance(0.01)
        r = manual_client.get_input("a")
        assert r.status_code == 404
        assert r.json()["status"]["code"] == 11101
        listed = manual_client.request("GET", "/inputs").json()["inputs"]
        assert [i["id"] for i in listed] == ["b"]

    def test_an_id_being_deleted_is_still_a_duplicate(self, manual_client, make_input, make_png):
        """Re-posting an id whose delete is in progress is a duplicate; once gone it is free."""
        manual_client.post_inputs(make_input("a", make_png()))
        manual_client.request("DELETE", "/inputs", json={"ids": ["a"]})
        r = manual_client.post_inputs(make_input("a", make_png(2)))
        assert r.json()["inputs"][0]["status"]["details"] == "Input has a duplicate ID."
        manual_client.emu.advance(0.5)
        r = manual_client.post_inputs(make_input("a", make_png(2)))
        assert r.status_code == 200
        assert manual_client.emu.image_bytes("a") == make_png(2)

    def test_patch_of_an_input_being_deleted_fails(self, manual_client, make_input, make_png):
        """An input being deleted can no longer be patched (30102)."""
        manual_client.post_inputs(make_input("a", make_png()))
        manual_client.request("DELETE", "/inputs/a")
        body = {"action": "merge", "inputs": [{"id": "a", "data": {"metadata": {"k": 1}}}]}
        r = manual_client.request("PATCH", "/inputs", json=body)
        assert r.json()["inputs"][0]["status"]["code"] == 30102

    def test_repeated_delete_keeps_the_first_deadline(self, manual_client, make_input, make_png):
        """Deleting an input twice does not postpone its disappearance."""
        manual_client.post_inputs(make_input("a", make_png()))
        manual_client.request("DELETE", "/inputs/a")
        manual_client.emu.advance(0.3)
        manual_client.request("DELETE", "/inputs/a")
        manual_client.emu.advance(0.2)
        assert manual_client.get_input("a").status_code == 404

    def test_store_snapshot_shows_the_deleting_flag(self, manual_client, make_input, make_png):
        """The control store lists inputs in creation order with status and deleting flag."""
        manual_client.post_inputs(make_input("a", make_png()), make_input("b", make_png(2)))
        manual_client.request("DELETE", "/inputs/b")
        snap = manual_client.emu.store_snapshot()
        assert [(s["id"], s["seq"], s["deleting"]) for s in snap] == [
            ("a", 1, False),
            ("b", 2, True),
        ]
        assert snap[0]["status"]["code"] == 30001
        assert snap[0]["image"]["format"] == "PNG"
        assert snap[0]["image"]["size"] == len(make_png())


class TestStateFile:
    def test_a_restart_keeps_inputs_timestamps_and_pending_deletes(
        self, make_emulator: Callable[..., Emulator], client_for, make_input, make_png, tmp_path
    ):
        """With state_path, a new emulator on the same file serves what the old one held."""
        state = tmp_path / "emulator.db"
        clock = ManualClock()
        first = make_emulator(clock=clock, state_path=state)
        client = client_for(first)
        client.post_inputs(
            make_input("a", make_png(), concepts=[{"id": "cat"}]), make_input("b", make_png(2))
        )
        body = {"action": "merge", "inputs": [{"id": "a", "data": {"metadata": {"k": 1}}}]}
        client.request("PATCH", "/inputs", json=body)
        client.request("DELETE", "/inputs/b")
        before = client.get_input("a").json()["input"]
        first.stop()

        second = make_emulator(clock=clock, state_path=state)
        again = client_for(second)
        after = again.get_input("a").json()["input"]
        assert after["data"]["image"]["url"] != before["data"]["image"]["url"]
        after["data"]["image"] = before["data"]["image"]
        assert after == before
        assert second.image_bytes("a") == make_png()
        assert [s["deleting"] for s in second.store_snapshot()] == [False, True]
        clock.advance(1)
        assert again.get_input("b").status_code == 404
        assert again.post_inputs(make_input("c", make_png(3))).json()["inputs"][0]["id"] == "c"
        assert [s["seq"] for s in second.store_snapshot()] == [1, 3]

    def test_reset_clears_the_state_file(
        self, make_emulator, client_for, make_input, make_png, tmp_path
    ):
        """reset() empties the store and its state file."""
        state = tmp_path / "emulator.db"
        first = make_emulator(state_path=state)
        client_for(first).post_inputs(make_input("a", make_png()))
        first.reset()
        first.stop()
        assert make_emulator(state_path=state).store_snapshot() == []
