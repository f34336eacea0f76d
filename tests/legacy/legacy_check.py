"""Drive the official legacy client `clarifai==2.6.2` against an emulator; exit 1 on a mismatch.

Run by tests/test_legacy_client.py under a separate virtualenv (its protobuf 3.x pin clashes
with clarifai-grpc). Needs CLARIFAI_API_BASE (the emulator URL) and CLARIFAI_API_KEY.
Standard library + clarifai only: it cannot import syncd.
"""

import base64
import os
import struct
import sys
import time
import zlib

from clarifai.errors import ApiError
from clarifai.rest import ClarifaiApp, Image

TIMEOUT = 10.0


class Mismatch(Exception):
    pass


def expect(what, got, want):
    if got != want:
        raise Mismatch(f"{what}: got {got!r}, want {want!r}")


def png_b64(seed):
    """A small, whole PNG (8x8 grey) whose pixels depend on `seed`."""

    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + bytes((seed + x + y) % 256 for x in range(8)) for y in range(8))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)
    raw = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows))
    return base64.b64encode(raw + chunk(b"IEND", b""))


def wait_for(what, condition):
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise Mismatch(f"timed out waiting for {what}")
        time.sleep(0.02)


def labels(img):
    return sorted(img.concepts or []), sorted(img.not_concepts or [])


def is_gone(app, input_id):
    try:
        app.inputs.get(input_id)
    except ApiError as exc:
        expect(f"GET deleted {input_id} code", exc.error_code, 11101)
        expect(f"GET deleted {input_id} HTTP", exc.response.status_code, 404)
        return True
    return False


def check(app):
    ids = ["leg-1", "leg-2", "leg-3", "leg-4"]
    images = [
        Image(
            base64=png_b64(1),
            image_id="leg-1",
            concepts=["cat"],
            not_concepts=["dog"],
            metadata={"k": "v", "n": 1},
        ),
        Image(base64=png_b64(2), image_id="leg-2", concepts=["dog"]),
        Image(base64=png_b64(3), image_id="leg-3"),
        Image(url="https://samples.clarifai.com/metro-north.jpg", image_id="leg-4"),
    ]
    created = app.inputs.bulk_create_images(images)
    expect("bulk_create_images ids", [c.input_id for c in created], ids)
    expect("bulk_create_images status", {c.status.code for c in created}, {30001})

    one = app.inputs.get("leg-1")
    expect("get labels", labels(one), (["cat"], ["dog"]))
    expect("get metadata", dict(one.metadata), {"k": "v", "n": 1.0})
    expect("get url is hosted", one.url.endswith("/_emulator/blobs/leg-1"), True)

    wait_for("processing", lambda: app.inputs.check_status().processed == 4)
    counts = app.inputs.check_status()
    expect("check_status", (counts.processed, counts.to_process, counts.errors), (4, 0, 0))

    expect("get_by_page(1, 3)", [i.input_id for i in app.inputs.get_by_page(1, 3)], ids[:3])
    expect("get_by_page(2, 3)", [i.input_id for i in app.inputs.get_by_page(2, 3)], ids[3:])
    expect("get_all", [i.input_id for i in app.inputs.get_all()], ids)

    merged = app.inputs.merge_concepts("leg-1", ["bird"], ["fish"])
    expect("merge_concepts", labels(merged), (["bird", "cat"], ["dog", "fish"]))
    expect("merge keeps metadata", dict(merged.metadata), {"k": "v", "n": 1.0})

    bulk = app.inputs.bulk_merge_concepts(["leg-2", "leg-3"], [[("x", True)], [("y", False)]])
    expect("bulk_merge_concepts", [labels(b) for b in bulk], [(["dog", "x"], []), ([], ["y"])])

    removed = app.inputs.delete_concepts("leg-1", ["bird", "dog"])
    expect("delete_concepts", labels(removed), (["cat"], ["fish"]))

    bulk = app.inputs.bulk_delete_concepts(["leg-2", "leg-3"], [["x"], ["y"]])
    expect("bulk_delete_concepts", [labels(b) for b in bulk], [(["dog"], []), ([], [])])

    replaced = app.inputs.merge_concepts("leg-2", ["only"], None, overwrite=True)
    expect("merge_concepts(overwrite=True)", labels(replaced), (["only"], []))

    expect("delete one", app.inputs.delete("leg-1").code, 10000)
    wait_for("leg-1 to be gone", lambda: is_gone(app, "leg-1"))

    expect("delete many", app.inputs.delete(["leg-2", "leg-3"]).code, 10000)
    wait_for("leg-2, leg-3 to be gone", lambda: is_gone(app, "leg-2") and is_gone(app, "leg-3"))
    expect("get_all after deletes", [i.input_id for i in app.inputs.get_all()], ["leg-4"])

    expect("delete_all", app.inputs.delete_all().code, 10000)
    wait_for("the app to be empty", lambda: not list(app.inputs.get_all()))
    counts = app.inputs.check_status()
    expect("check_status after delete_all", (counts.processed, counts.to_process), (0, 0))


def main():
    app = ClarifaiApp(api_key=os.environ["CLARIFAI_API_KEY"])
    try:
        check(app)
    except Mismatch as exc:
        print(f"legacy client mismatch: {exc}", file=sys.stderr)
        return 1
    print("legacy client check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
