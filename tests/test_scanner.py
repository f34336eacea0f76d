"""The scanner on real temporary trees; races and permission errors forced through injection."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from images import (
    bmp_bytes,
    gif_bytes,
    jpeg_bytes,
    make_tiff,
    png_bytes,
    tiff_bytes,
    webp_bytes,
    write_image,
)
from structlog.testing import capture_logs

from syncd.model import FileStat, Labels, derive_input_id
from syncd.scanner import (
    CHANGED,
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    HASH_CHUNK,
    RACY_WINDOW_NS,
    KnownFile,
    ScanResult,
    judge_bytes,
    read_deferred,
    scan,
)
from syncd.sidecar import SIDECAR_MAX_BYTES

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def not_racy() -> int:
    """A clock an hour ahead: nothing written by the test is within the racy window."""
    return time.time_ns() + 3600 * 10**9


def run(root: Path, **overrides: Any) -> ScanResult:
    options: dict[str, Any] = {
        "source_name": "src",
        "include": DEFAULT_INCLUDE,
        "exclude": DEFAULT_EXCLUDE,
        "labels_from_dirs": False,
        "follow_symlinks": False,
        "max_file_bytes": 20_000_000,
        "known": {},
        "now_ns": not_racy,
    }
    options.update(overrides)
    return scan(root, **options)


def known_from(result: ScanResult) -> dict[str, KnownFile]:
    """What a ledger would remember after storing `result.files`."""
    return {
        r.path: KnownFile(r.stat, r.sha256, r.trusted)
        for r in result.files
        if r.stat is not None and r.sha256 is not None
    }


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


class Opener:
    """An `open_file` that records which relative paths were opened and can misbehave."""

    def __init__(self, root: Path, hook: Callable[[str, Any], None] | None = None) -> None:
        self.root = os.fspath(root)
        self.hook = hook
        self.opened: list[str] = []

    def __call__(self, path: str, mode: str = "r") -> Any:
        rel = os.path.relpath(path, self.root)
        self.opened.append(rel)
        handle = open(path, mode)  # noqa: SIM115 - returned to the scanner, which closes it
        if self.hook is not None:
            try:
                self.hook(rel, handle)
            except BaseException:
                handle.close()
                raise
        return handle


def problems(result: ScanResult) -> dict[str, str | None]:
    return {path: image.problem for path, image in result.snapshot.images.items()}


# --- which files are images -----------------------------------------------------------------


def test_images_by_extension_case_insensitive(tmp_path: Path) -> None:
    """Every default extension is an image in any letter case; other files are not."""
    names = ["a.jpg", "b.JPEG", "c.PnG", "d.gif", "e.TIF", "f.tiff", "g.Bmp", "h.webp"]
    for name in names:
        write_image(tmp_path / name)
    for other in ["notes.md", "photo.heic", "jpg", "x.jpg.bak"]:
        write(tmp_path / other, "x")
    result = run(tmp_path)
    assert list(result.snapshot.images) == sorted(names)
    assert all(problem is None for problem in problems(result).values())
    assert result.stats.files_seen == len(names)


def test_default_excludes(tmp_path: Path) -> None:
    """Dotfiles, dot-folders, editor and download leftovers are never images, even if included."""
    write_image(tmp_path / "keep.jpg")
    for name in [
        ".hidden.jpg", ".git/x.jpg", "sub/.cache/y.jpg", "sub/.Trash/z.png", "a.tmp", "B.TMP",
        "c.jpg.part", "d.crdownload", "e.jpg.swp", "f.jpg~", "sub/.meta.json",
    ]:  # fmt: skip
        write_image(tmp_path / name)
    result = run(tmp_path, include=("*",))
    assert list(result.snapshot.images) == ["keep.jpg"]
    assert result.snapshot.orphan_sidecars == {}


def test_custom_patterns(tmp_path: Path) -> None:
    """Include matches file names; exclude matches every folder's name on the way down."""
    for name in ["a.jpg", "b.png", "raw/c.jpg", "x/RAW/d.jpg", "train/e.jpg", "raw.jpg"]:
        write_image(tmp_path / name)
    result = run(tmp_path, include=("*.JPG",), exclude=("raw",))
    assert list(result.snapshot.images) == ["a.jpg", "raw.jpg", "train/e.jpg"]
    assert run(tmp_path, include=("train/*.jpg",)).snapshot.images == {}  # names have no "/"


def test_directory_named_like_an_image(tmp_path: Path) -> None:
    """A directory called x.jpg is walked as a directory, never read as an image."""
    write_image(tmp_path / "x.jpg" / "inner.png")
    (tmp_path / "empty.png").mkdir()
    result = run(tmp_path)
    assert list(result.snapshot.images) == ["x.jpg/inner.png"]
    assert result.skipped == {}


def test_fifo_named_like_an_image_is_not_opened(tmp_path: Path) -> None:
    """A FIFO (or other special file) matching include is skipped, not opened (it would block)."""
    os.mkfifo(tmp_path / "pipe.jpg")
    write_image(tmp_path / "ok.jpg")
    result = run(tmp_path)
    assert list(result.snapshot.images) == ["ok.jpg"]
    assert result.skipped == {"pipe.jpg": "not a regular file"}


def test_empty_root_is_not_a_problem(tmp_path: Path) -> None:
    """A root with no files gives an empty snapshot, not a root problem."""
    (tmp_path / "empty-dir").mkdir()
    snapshot = run(tmp_path).snapshot
    assert snapshot.images == {} and snapshot.root_problem is None and snapshot.scope is None


# --- sidecars and labels --------------------------------------------------------------------

PRIORITY = ["a.jpg.json", "a.json", "a.jpg.txt", "a.txt"]


@pytest.mark.parametrize("first", range(4))
def test_sidecar_priority(tmp_path: Path, first: int) -> None:
    """The first existing of name.ext.json, name.json, name.ext.txt, name.txt applies."""
    write_image(tmp_path / "a.jpg")
    for index, name in enumerate(PRIORITY[first:], start=first):
        body = f'{{"concepts": ["c{index}"]}}' if name.endswith(".json") else f"c{index}\n"
        write(tmp_path / name, body)
    result = run(tmp_path)
    image = result.snapshot.images["a.jpg"]
    assert image.sidecar == PRIORITY[first]
    assert image.labels == Labels.build({f"c{first}": True}, {})
    shadowed = dict.fromkeys(PRIORITY[first + 1 :], f"not used: a.jpg uses {PRIORITY[first]}")
    assert result.snapshot.orphan_sidecars == shadowed


def test_shared_sidecar_applies_to_both_images(tmp_path: Path) -> None:
    """`name.json` applies to name.jpg and name.png, and is read once."""
    write_image(tmp_path / "n.jpg")
    write_image(tmp_path / "n.png")
    write(tmp_path / "n.json", '{"concepts": {"cat": true}, "metadata": {"k": 1}}')
    opener = Opener(tmp_path)
    result = run(tmp_path, open_file=opener)
    want = Labels.build({"cat": True}, {"k": 1})
    for path in ("n.jpg", "n.png"):
        image = result.snapshot.images[path]
        assert (image.sidecar, image.labels, image.problem) == ("n.json", want, None)
    assert opener.opened.count("n.json") == 1
    assert result.snapshot.orphan_sidecars == {}


def test_orphan_sidecars_are_reported(tmp_path: Path) -> None:
    """Sidecars with no image are reported as orphans; directories named *.json are not."""
    write_image(tmp_path / "a.jpg")
    write(tmp_path / "lonely.json", "{}")
    write(tmp_path / "sub" / "notes.txt", "cat")
    write(tmp_path / "sub" / "a.json", "{}")  # a.jpg is in the parent folder
    (tmp_path / "dir.json").mkdir()
    result = run(tmp_path)
    assert list(result.snapshot.images) == ["a.jpg"]
    assert result.snapshot.orphan_sidecars == {
        "lonely.json": "no image for this sidecar",
        "sub/a.json": "no image for this sidecar",
        "sub/notes.txt": "no image for this sidecar",
    }


def test_labels_and_input_ids(tmp_path: Path) -> None:
    """An explicit sidecar id is the input id; otherwise the id is derived from the path."""
    write_image(tmp_path / "a.jpg")
    write(tmp_path / "a.json", '{"id": "my-id", "concepts": ["x"], "metadata": {"n": 2}}')
    write_image(tmp_path / "d" / "b.png")
    images = run(tmp_path, source_name="photos").snapshot.images
    assert images["a.jpg"].input_id == "my-id"
    assert images["a.jpg"].labels == Labels.build({"x": True}, {"n": 2.0})
    assert images["d/b.png"].input_id == derive_input_id("photos", "d/b.png")
    assert images["d/b.png"].labels == Labels()


def test_labels_from_dirs(tmp_path: Path) -> None:
    """The parent folder's name is a present concept unless the sidecar marks it absent."""
    write_image(tmp_path / "top.jpg")
    write_image(tmp_path / "cats" / "a.jpg")
    write_image(tmp_path / "cats" / "b.jpg")
    write(tmp_path / "cats" / "b.txt", "-cats\ntabby\n")
    write_image(tmp_path / "pets" / "dogs" / "c.jpg")
    images = run(tmp_path, labels_from_dirs=True).snapshot.images
    assert images["top.jpg"].labels == Labels()
    assert images["cats/a.jpg"].labels == Labels.build({"cats": True}, {})
    assert images["cats/b.jpg"].labels == Labels.build({"cats": False, "tabby": True}, {})
    assert images["pets/dogs/c.jpg"].labels == Labels.build({"dogs": True}, {})


def test_invalid_sidecar_holds_its_image_only(tmp_path: Path) -> None:
    """An invalid sidecar leaves its image without labels and with the reason; others go on."""
    write_image(tmp_path / "bad.jpg")
    write(tmp_path / "bad.json", '{"concepts": ["cat" "dog"]}')
    write_image(tmp_path / "good.jpg")
    result = run(tmp_path)
    bad = result.snapshot.images["bad.jpg"]
    assert bad.labels is None
    assert bad.problem == "bad.json: line 1 column 21: Expecting ',' delimiter"
    assert bad.sha256 is not None  # the image itself is fine: its hash is cached
    assert {r.path: r.trusted for r in result.files} == {"bad.jpg": True, "good.jpg": True}
    assert result.snapshot.images["good.jpg"].problem is None


def test_huge_sidecar_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """A 10 MB sidecar is invalid, naming its size, and no more than the cap is read from it."""
    write_image(tmp_path / "a.jpg")
    write(tmp_path / "a.json", b'{"metadata": {"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}}')
    read: list[int] = []

    class Counting:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def read(self, size: int = -1) -> bytes:
            data = self.handle.read(size)
            read.append(len(data))
            return data

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    def open_file(path: str, mode: str = "r") -> Any:
        handle = open(path, mode)  # noqa: SIM115
        return Counting(handle) if path.endswith(".json") else handle

    result = run(tmp_path, open_file=open_file)
    size = (tmp_path / "a.json").stat().st_size
    assert result.snapshot.images["a.jpg"].problem == (
        f"a.json: too large: {size} bytes (limit {SIDECAR_MAX_BYTES})"
    )
    assert sum(read) == SIDECAR_MAX_BYTES + 1


def test_deeply_nested_sidecar(tmp_path: Path) -> None:
    """A sidecar nested 1,000 deep holds its image with a clear reason."""
    write_image(tmp_path / "a.jpg")
    write(tmp_path / "a.json", b'{"metadata": {"x": ' + b"[" * 1000 + b"]" * 1000 + b"}}")
    assert "nested too deeply" in (run(tmp_path).snapshot.images["a.jpg"].problem or "")


def test_unreadable_sidecar(tmp_path: Path) -> None:
    """A sidecar that cannot be opened holds its image, naming the sidecar and the error."""
    write_image(tmp_path / "a.jpg")
    write(tmp_path / "a.json", "{}")

    def deny(rel: str, handle: Any) -> None:
        if rel == "a.json":
            raise PermissionError(errno.EACCES, "Permission denied")

    image = run(tmp_path, open_file=Opener(tmp_path, deny)).snapshot.images["a.jpg"]
    assert (image.labels, image.problem) == (None, "a.json: unreadable: Permission denied")


def test_explicit_id_conflicts_hold_both_images(tmp_path: Path) -> None:
    """Two sidecars giving the same id hold both images, each naming the other."""
    for name in ("a", "b"):
        write_image(tmp_path / f"{name}.jpg")
        write(tmp_path / f"{name}.json", '{"id": "same"}')
    write_image(tmp_path / "n.jpg")
    write_image(tmp_path / "n.png")
    write(tmp_path / "n.json", '{"id": "shared"}')
    write_image(tmp_path / "ok.jpg")
    assert problems(run(tmp_path)) == {
        "a.jpg": "input id 'same' is also used by b.jpg",
        "b.jpg": "input id 'same' is also used by a.jpg",
        "n.jpg": "input id 'shared' is also used by n.png",
        "n.png": "input id 'shared' is also used by n.jpg",
        "ok.jpg": None,
    }


# --- hashing --------------------------------------------------------------------------------


def test_hash_only_what_changed(tmp_path: Path) -> None:
    """A second scan with the first's records reads no image; a changed file alone is re-read."""
    for name in ("a.jpg", "b.png", "c/d.gif"):
        write_image(tmp_path / name)
    write(tmp_path / "a.json", '{"concepts": ["x"]}')
    first = run(tmp_path)
    assert first.stats.files_hashed == 3
    assert all(image.hashed for image in first.snapshot.images.values())
    assert first.stats.bytes_hashed == sum(r.stat.size for r in first.files if r.stat)

    opener = Opener(tmp_path)
    second = run(tmp_path, known=known_from(first), open_file=opener)
    assert (second.stats.files_hashed, second.stats.bytes_hashed) == (0, 0)
    assert opener.opened == ["a.json"]  # sidecars are always read; images were not
    assert not any(image.hashed for image in second.snapshot.images.values())
    assert second.files == first.files
    assert second.snapshot.images["a.jpg"].labels == first.snapshot.images["a.jpg"].labels

    write_image(tmp_path / "b.png", png_bytes(3, 3, tag="changed"))
    opener = Opener(tmp_path)
    third = run(tmp_path, known=known_from(second), open_file=opener)
    assert third.stats.files_hashed == 1
    assert sorted(opener.opened) == ["a.json", "b.png"]
    new = third.snapshot.images["b.png"]
    assert (
        new.hashed and new.sha256 == hashlib.sha256((tmp_path / "b.png").read_bytes()).hexdigest()
    )


# --- new images deferred to the add that sends them -------------------------------------------


def test_deferred_scan_reads_no_new_image(tmp_path: Path) -> None:
    """With `defer_new`, an image the ledger has no hash for is not read: it comes out
    deferred (no hash, no problem yet, no file record), whatever its bytes. Images the scan
    must judge now are still read: one whose sidecar is invalid (held, its file problem
    named too), an oversized one, and a known one whose stat changed."""
    write_image(tmp_path / "new.jpg")
    write_image(tmp_path / "labelled.png")
    write(tmp_path / "labelled.json", '{"concepts": ["cat"]}')
    write(tmp_path / "garbage.png", b"not an image at all")
    write(tmp_path / "bad-sidecar.png", b"not an image either")
    write(tmp_path / "bad-sidecar.json", "{")
    write(tmp_path / "huge.png", png_bytes(3, 3) + b"\0" * 300)
    write_image(tmp_path / "known.png")
    known = known_from(run(tmp_path))
    known = {"known.png": known["known.png"]}
    write_image(tmp_path / "known.png", png_bytes(4, 4, tag="changed"))

    opener = Opener(tmp_path)
    result = run(tmp_path, known=known, open_file=opener, defer_new=True, max_file_bytes=200)
    images = result.snapshot.images

    assert sorted(opener.opened) == [
        "bad-sidecar.json",
        "bad-sidecar.png",
        "known.png",
        "labelled.json",
    ]
    for name in ("new.jpg", "labelled.png", "garbage.png"):
        image = images[name]
        assert image.deferred and image.sha256 is None and image.problem is None, image
        assert not image.hashed
    assert images["labelled.png"].labels == Labels((("cat", 1.0),))
    assert "not an image" in (images["bad-sidecar.png"].problem or "")
    assert "bad-sidecar.json" in (images["bad-sidecar.png"].problem or "")
    assert "too large" in (images["huge.png"].problem or "")
    assert images["known.png"].hashed and not images["known.png"].deferred
    assert not any(
        image.deferred
        for name, image in images.items()
        if name not in ("new.jpg", "labelled.png", "garbage.png")
    )
    recorded = {r.path for r in result.changed}
    assert recorded == {"bad-sidecar.png", "huge.png", "known.png"}
    assert result.stats.files_hashed == 2  # bad-sidecar.png and known.png


def test_deferred_images_read_later_match_a_scan_that_read_them(tmp_path: Path) -> None:
    """`read_deferred` gives a deferred image the hash, problem and file record a scan
    without deferring would have given it, and counts it as hashed."""
    write_image(tmp_path / "good.jpg")
    write(tmp_path / "cut.png", png_bytes(4, 4)[:-8])
    eager = run(tmp_path)
    deferred = run(tmp_path, defer_new=True)

    read, records, hashed, bytes_hashed = read_deferred(
        tmp_path,
        deferred.snapshot.images.values(),
        max_file_bytes=20_000_000,
        racy_from_ns=not_racy() - RACY_WINDOW_NS,
    )

    assert {img.path: img for img in read} == eager.snapshot.images
    assert sorted(records, key=lambda r: r.path) == sorted(eager.changed, key=lambda r: r.path)
    assert (hashed, bytes_hashed) == (eager.stats.files_hashed, eager.stats.bytes_hashed)


JUDGED_SAMPLES = {
    "png": png_bytes(5, 5),
    "jpeg": jpeg_bytes(8, 8),
    "gif": gif_bytes(),
    "bmp": bmp_bytes(3, 2),
    "tiff": tiff_bytes(),
    "striped tiff": make_tiff("MM", 7, ifd_last=True),
    "webp": webp_bytes(),
    "jpeg past one read": jpeg_bytes(8, 8) + bytes(range(256)) * (HASH_CHUNK // 256 + 3),
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    kind=st.sampled_from(sorted(JUDGED_SAMPLES)),
    cut=st.integers(0, 2**40),
    whole=st.booleans(),
    trailer=st.binary(max_size=40),
)
def test_judging_bytes_in_memory_agrees_with_the_scan(
    tmp_path: Path, kind: str, cut: int, whole: bool, trailer: bytes
) -> None:
    """The add judges a deferred image's bytes in memory, in one piece (`judge_bytes`); the
    scan reads a file in pieces. Whole, cut anywhere, or followed by other bytes, both give
    the same hash and the same verdict."""
    data = JUDGED_SAMPLES[kind]
    data = (data if whole else data[: cut % (len(data) + 1)]) + trailer
    path = write(tmp_path / "judged" / "x.png", data)
    image = run(path.parent).snapshot.images["x.png"]
    assert judge_bytes(data) == (image.sha256, image.problem)


def test_untrusted_known_hash_is_not_reused(tmp_path: Path) -> None:
    """A known entry with the same stat but trusted=False is read again."""
    write_image(tmp_path / "a.jpg")
    first = run(tmp_path)
    known = {p: KnownFile(k.stat, "0" * 64, trusted=False) for p, k in known_from(first).items()}
    image = run(tmp_path, known=known).snapshot.images["a.jpg"]
    assert image.hashed and image.sha256 == first.snapshot.images["a.jpg"].sha256


def test_stale_known_hash_is_not_reused(tmp_path: Path) -> None:
    """A trusted known entry whose stat differs (here the inode) is read again."""
    write_image(tmp_path / "a.jpg")
    first = run(tmp_path)
    record = first.files[0]
    assert record.stat is not None
    size, mtime_ns, ctime_ns, _ = record.stat.fields()
    moved = KnownFile(FileStat(size, mtime_ns, ctime_ns, 1), "0" * 64, trusted=True)
    image = run(tmp_path, known={"a.jpg": moved}).snapshot.images["a.jpg"]
    assert image.hashed and image.sha256 == record.sha256


def test_racy_window(tmp_path: Path) -> None:
    """A file modified within the racy window of the scan start is not trusted; later it is."""
    write_image(tmp_path / "a.jpg")
    st = os.stat(tmp_path / "a.jpg")
    changed = max(st.st_mtime_ns, st.st_ctime_ns)
    soon = run(tmp_path, now_ns=lambda: changed + 10**9)  # 1 s later, window 2 s
    assert soon.files[0].trusted is False
    again = run(tmp_path, now_ns=lambda: changed + 10**9, known=known_from(soon))
    assert again.stats.files_hashed == 1 and again.files[0].trusted is False
    later = run(tmp_path, now_ns=lambda: changed + 3 * 10**9, known=known_from(again))
    assert later.stats.files_hashed == 1 and later.files[0].trusted is True
    settled = run(tmp_path, now_ns=lambda: changed + 4 * 10**9, known=known_from(later))
    assert settled.stats.files_hashed == 0
    assert run(tmp_path, now_ns=lambda: changed, racy_window_ns=0).files[0].trusted is False


def test_streamed_hash_of_a_file_larger_than_a_chunk(tmp_path: Path) -> None:
    """Files spanning several read chunks hash correctly, with the end marker found at the end."""
    big = write_image(tmp_path / "big.png", png_bytes(tag="x" * (2 * HASH_CHUNK + 12345)))
    head = jpeg_bytes()
    filler = HASH_CHUNK + 1 - len(head)  # puts the EOI marker across the chunk boundary
    segments = b""
    while filler > 0:
        size = min(filler, 65535)
        if 0 < filler - size < 4:
            size -= 4
        segments += b"\xff\xfe" + (size - 2).to_bytes(2, "big") + b"c" * (size - 4)
        filler -= size
    split = write_image(tmp_path / "split.jpg", head[:2] + segments + head[2:])
    assert split.stat().st_size == HASH_CHUNK + 1
    result = run(tmp_path)
    for path in (big, split):
        image = result.snapshot.images[path.name]
        assert image.problem is None
        assert image.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert result.stats.bytes_hashed == big.stat().st_size + split.stat().st_size


# --- bad input ------------------------------------------------------------------------------


def test_bad_image_files_are_held_and_others_go_on(tmp_path: Path) -> None:
    """Non-image bytes, a truncated JPEG and an empty file are held with their reason."""
    write(tmp_path / "text.jpg", "hello, I am not a picture")
    write(tmp_path / "cut.jpg", jpeg_bytes()[:-10])
    write(tmp_path / "zero.png", b"")
    write_image(tmp_path / "good.png")
    result = run(tmp_path)
    assert problems(result) == {
        "cut.jpg": "truncated JPEG (no end-of-image marker)",
        "good.png": None,
        "text.jpg": "not an image: no JPEG, PNG, GIF, TIFF, BMP or WEBP signature",
        "zero.png": "empty file (0 bytes)",
    }
    errors = {r.path: (r.trusted, r.error) for r in result.files}
    assert errors["good.png"] == (True, None)
    assert errors["zero.png"] == (False, "empty file (0 bytes)")
    again = run(tmp_path, known=known_from(result))
    assert again.stats.files_hashed == 3  # held files are checked again, the good one is not
    assert problems(again) == problems(result)
    assert result.stats.problems == 3


def test_too_large_is_refused_unread(tmp_path: Path) -> None:
    """A file over max_file_bytes is held, naming its size and the limit, and is never opened."""
    write_image(tmp_path / "big.png", png_bytes(tag="x" * 500))
    write_image(tmp_path / "small.png", png_bytes())
    size = (tmp_path / "big.png").stat().st_size
    opener = Opener(tmp_path)
    result = run(tmp_path, max_file_bytes=200, open_file=opener)
    assert problems(result) == {
        "big.png": f"too large: {size} bytes (limit 200)",
        "small.png": None,
    }
    assert opener.opened == ["small.png"]
    assert result.snapshot.images["big.png"].sha256 is None


def test_unreadable_file_by_injection(tmp_path: Path) -> None:
    """EACCES on open holds that image as unreadable; the rest of the scan goes on."""
    write_image(tmp_path / "locked.jpg")
    write_image(tmp_path / "open.jpg")

    def deny(rel: str, handle: Any) -> None:
        if rel == "locked.jpg":
            raise PermissionError(errno.EACCES, "Permission denied")

    result = run(tmp_path, open_file=Opener(tmp_path, deny))
    assert problems(result) == {"locked.jpg": "unreadable: Permission denied", "open.jpg": None}
    locked = result.snapshot.images["locked.jpg"]
    assert locked.sha256 is None and not locked.hashed


@pytest.mark.skipif(IS_ROOT, reason="root ignores file permissions")
def test_unreadable_file_by_chmod(tmp_path: Path) -> None:
    """A real mode-000 file is held as unreadable."""
    path = write_image(tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        assert problems(run(tmp_path)) == {"locked.jpg": "unreadable: Permission denied"}
    finally:
        path.chmod(0o644)


def test_file_rewritten_while_being_read(tmp_path: Path) -> None:
    """A file that grows during the read is skipped this pass, unhashed and untrusted."""
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")

    def grow(rel: str, handle: Any) -> None:
        if rel == "a.jpg":
            with open(tmp_path / rel, "ab") as other:
                other.write(b"more")

    result = run(tmp_path, open_file=Opener(tmp_path, grow))
    image = result.snapshot.images["a.jpg"]
    assert (image.problem, image.sha256, image.hashed) == (CHANGED, None, False)
    record = next(r for r in result.files if r.path == "a.jpg")
    assert (record.sha256, record.trusted, record.error) == (None, False, CHANGED)
    assert result.snapshot.images["b.jpg"].problem is None


def test_file_replaced_while_being_read(tmp_path: Path) -> None:
    """A file replaced by another of the same size (new inode) during the read is skipped."""
    write_image(tmp_path / "a.jpg", png_bytes(tag="one"))

    def replace(rel: str, handle: Any) -> None:
        write(tmp_path / "new.tmp", png_bytes(tag="two"))
        os.replace(tmp_path / "new.tmp", tmp_path / rel)

    result = run(tmp_path, open_file=Opener(tmp_path, replace))
    assert problems(result) == {"a.jpg": CHANGED}


def test_file_deleted_while_being_read(tmp_path: Path) -> None:
    """A file unlinked while open is skipped this pass with 'changed while being read'."""
    write_image(tmp_path / "a.jpg")

    def unlink(rel: str, handle: Any) -> None:
        os.unlink(tmp_path / rel)

    result = run(tmp_path, open_file=Opener(tmp_path, unlink))
    assert problems(result) == {"a.jpg": CHANGED}


def test_file_deleted_between_stat_and_open(tmp_path: Path) -> None:
    """A file that vanished before it could be opened is held, not judged deleted, this pass."""
    write_image(tmp_path / "a.jpg")

    def gone(rel: str, handle: Any) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    result = run(tmp_path, open_file=Opener(tmp_path, gone))
    assert problems(result) == {"a.jpg": f"{CHANGED} (it vanished)"}


def _after_first_stat(name: str, action: Callable[[], None]) -> Callable[[str], os.stat_result]:
    """A `stat` that runs `action` right after the first stat of `name` (before the read)."""
    done: list[bool] = []

    def stat(path: str) -> os.stat_result:
        st = os.stat(path)
        if path.endswith(name) and not done:
            done.append(True)
            action()
        return st

    return stat


@pytest.mark.parametrize("change", ["deleted", "grown", "rewritten"])
def test_raw_read_sees_a_file_change_between_stat_and_read(tmp_path: Path, change: str) -> None:
    """Images read through raw descriptors (the default) meet the same races as file objects:
    gone before the open, grown or rewritten before the read are all held, never hashed."""
    path = write_image(tmp_path / "a.jpg", png_bytes(tag="one"))
    write_image(tmp_path / "b.jpg")
    action = {
        "deleted": path.unlink,
        "grown": lambda: path.write_bytes(png_bytes(tag="one") + b"more"),
        "rewritten": lambda: path.write_bytes(png_bytes(tag="two")),
    }[change]

    result = run(tmp_path, stat=_after_first_stat("a.jpg", action))

    expected = f"{CHANGED} (it vanished)" if change == "deleted" else CHANGED
    assert problems(result) == {"a.jpg": expected, "b.jpg": None}
    assert result.snapshot.images["a.jpg"].sha256 is None


def test_reads_answered_in_pieces_still_hash_the_whole_file(tmp_path: Path) -> None:
    """A file system that answers each read with at most 1,000 bytes (as some FUSE ones do)
    gets the same hash and no problem: a short read is not taken for the end of the file."""
    data = png_bytes(tag="pieces " * 800)  # ~5.6 KB: six reads of 1,000 bytes
    write_image(tmp_path / "a.png", data)

    class Pieces:
        def __init__(self, path: str) -> None:
            self.handle = open(path, "rb")  # noqa: SIM115 - closed by __exit__

        def read(self, n: int) -> bytes:
            return self.handle.read(min(n, 1000))

        def __enter__(self) -> Pieces:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

    result = run(tmp_path, open_file=lambda path, mode="rb": Pieces(path))
    image = result.snapshot.images["a.png"]
    assert image.problem is None
    assert image.sha256 == hashlib.sha256(data).hexdigest()


def test_a_motion_photo_is_whole_and_a_thumbnail_does_not_hide_truncation(
    tmp_path: Path,
) -> None:
    """A JPEG with a video appended (a phone's motion photo: far more than the last 4 KB after
    its end marker) is a whole image; a JPEG cut short is held even when an embedded
    thumbnail brings an end marker of its own. Both judged while the file is hashed."""
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 1000  # ~256 KB, with 0xFF D9s
    write_image(tmp_path / "motion.jpg", jpeg_bytes(64, 64) + video)
    thumb = jpeg_bytes(tag="thumb")
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    with_thumb = b"\xff\xd8" + app1 + jpeg_bytes(64, 64)[2:]
    write_image(tmp_path / "cut.jpg", with_thumb[:-40])

    result = run(tmp_path)

    assert problems(result) == {
        "cut.jpg": "truncated JPEG (no end-of-image marker)",
        "motion.jpg": None,
    }


def test_a_cut_tiff_is_held_and_a_whole_one_is_not(tmp_path: Path) -> None:
    """The scan reads a TIFF's first directory as it hashes the file: image data ending past
    the file is held as truncated; a whole TIFF with several strips passes."""
    whole = make_tiff("MM", 7, ifd_last=False)
    write_image(tmp_path / "whole.tif", whole)
    write_image(tmp_path / "cut.tif", whole[:-50])

    result = run(tmp_path)

    assert problems(result)["whole.tif"] is None
    assert (problems(result)["cut.tif"] or "").startswith("truncated TIFF")


def test_a_file_under_another_programs_lease_is_held_as_busy(tmp_path: Path) -> None:
    """A file someone holds a write lease on (as Samba and NFS servers do) cannot be opened
    without waiting: it is held as busy, to be tried again next pass, and the scan goes on."""
    path = write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease holder's break notice
    holder = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        result = run(tmp_path)
    finally:
        fcntl.fcntl(holder, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        os.close(holder)
        signal.signal(signal.SIGIO, previous)
    held = problems(result)
    assert held["b.jpg"] is None
    assert held["a.jpg"] is not None and held["a.jpg"].startswith("unreadable: busy")


def _scan_that_must_not_hang(root: Path, stat: Callable[[str], os.stat_result]) -> ScanResult:
    """`run(root, stat=stat)` on a thread, failing the test if it has not ended in 30 s."""
    results: list[ScanResult] = []
    worker = threading.Thread(target=lambda: results.append(run(root, stat=stat)), daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "the scan hung on the pipe"
    return results[0]


def test_a_file_swapped_for_a_fifo_does_not_hang_the_scan(tmp_path: Path) -> None:
    """A file replaced by a named pipe between its stat and its read is held; the scan goes
    on (opening a pipe for reading would otherwise wait for a writer for ever)."""
    path = write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")

    def swap() -> None:
        path.unlink()
        os.mkfifo(path)

    result = _scan_that_must_not_hang(tmp_path, _after_first_stat("a.jpg", swap))

    assert problems(result) == {"a.jpg": CHANGED, "b.jpg": None}


def test_a_sidecar_swapped_for_a_fifo_does_not_hang_the_scan(tmp_path: Path) -> None:
    """A sidecar replaced by a named pipe after the listing holds its image (the sidecar
    reads as empty); the scan goes on."""
    write_image(tmp_path / "a.jpg")
    sidecar = write(tmp_path / "a.json", '{"concepts": {"cat": true}}')
    write_image(tmp_path / "b.jpg")

    def swap() -> None:
        sidecar.unlink()
        os.mkfifo(sidecar)

    result = _scan_that_must_not_hang(tmp_path, _after_first_stat("a.jpg", swap))

    held = problems(result)
    assert held["b.jpg"] is None
    assert held["a.jpg"] is not None and "a.json" in held["a.jpg"]


def test_file_deleted_between_listing_and_stat(tmp_path: Path) -> None:
    """A file gone before its stat is simply absent (no image, no cache row)."""
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg")

    def stat(path: str) -> os.stat_result:
        if path.endswith("a.jpg"):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")
        return os.stat(path)

    result = run(tmp_path, stat=stat)
    assert list(result.snapshot.images) == ["b.jpg"]
    assert [r.path for r in result.files] == ["b.jpg"]
    assert result.snapshot.covers("a.jpg")


def test_file_that_cannot_be_stat_ed(tmp_path: Path) -> None:
    """An I/O error on stat leaves the path unscanned (never judged missing) and recorded."""
    write_image(tmp_path / "a.jpg")

    def stat(path: str) -> os.stat_result:
        if path.endswith("a.jpg"):
            raise OSError(errno.EIO, "Input/output error")
        return os.stat(path)

    result = run(tmp_path, stat=stat)
    assert result.snapshot.images == {}
    assert result.snapshot.unscanned == ("a.jpg",)
    assert not result.snapshot.covers("a.jpg")
    assert [(r.path, r.stat, r.error) for r in result.files] == [
        ("a.jpg", None, "cannot stat: Input/output error")
    ]


def test_odd_names(tmp_path: Path) -> None:
    """Spaces, unicode, newlines and non-UTF-8 bytes in names are scanned like any other."""
    raw = os.fsencode(tmp_path)
    names = [b"with space.jpg", "ünï 猫.png".encode(), b"new\nline.jpg", b"caf\xe9.jpg"]
    for name in names:
        write_image(Path(os.fsdecode(raw + b"/" + name)))
    write(Path(os.fsdecode(raw + b"/caf\xe9.json")), '{"concepts": ["coffee"]}')
    write_image(Path(os.fsdecode(raw + b"/bad\xff.jpg")))
    write(Path(os.fsdecode(raw + b"/bad\xff.json")), "{")
    with capture_logs() as logs:
        result = run(tmp_path)
    images = result.snapshot.images
    latin = os.fsdecode(b"caf\xe9.jpg")
    assert set(images) == {os.fsdecode(n) for n in [*names, b"bad\xff.jpg"]}
    assert images[latin].labels == Labels.build({"coffee": True}, {})
    assert images[latin].input_id == derive_input_id("src", latin)
    assert images[latin].problem is None and images["new\nline.jpg"].problem is None
    bad = images[os.fsdecode(b"bad\xff.jpg")]
    assert (
        bad.problem
        == "bad\\xff.json: line 1 column 2: Expecting property name enclosed in double quotes"
    )
    logged = [e for e in logs if e["event"] == "scan_image_problem"]
    assert [e["path"] for e in logged] == ["bad\\xff.jpg"]


def test_long_names_and_deep_paths(tmp_path: Path) -> None:
    """A 254-byte name and a 3,000-character path work; past PATH_MAX the folder is unscanned."""
    long_name = "n" * 250 + ".jpg"
    write_image(tmp_path / long_name)
    deep = "/".join(f"{i:02d}" + "d" * 98 for i in range(30))  # 3,029 characters
    write_image(tmp_path / deep / "deep.png")
    too_deep = make_deep(tmp_path / "x", levels=25, name_len=200)  # > 5,000 characters
    try:
        result = run(tmp_path)
        assert set(result.snapshot.images) == {long_name, f"{deep}/deep.png"}
        unscanned = result.snapshot.unscanned
        assert len(unscanned) == 1 and f"x/{too_deep}".startswith(unscanned[0])
        assert len(os.fspath(tmp_path / unscanned[0])) >= 4096
        assert not result.snapshot.covers(f"x/{too_deep}/deep.png")
    finally:
        shutil.rmtree(tmp_path / "x")


def make_deep(base: Path, *, levels: int, name_len: int) -> str:
    """Create nested folders past PATH_MAX (with dir_fd) and a PNG at the bottom."""
    base.mkdir()
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    parts = []
    try:
        for i in range(levels):
            name = f"{i:03d}" + "d" * (name_len - 3)
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            parts.append(name)
        out = os.open("deep.png", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, png_bytes())
        os.close(out)
    finally:
        os.close(fd)
    return "/".join(parts)


# --- symlinks and directories ---------------------------------------------------------------


def test_symlinks_not_followed_by_default(tmp_path: Path) -> None:
    """Without follow_symlinks, links to images and to folders are ignored."""
    outside = tmp_path / "outside"
    write_image(outside / "o.jpg")
    root = tmp_path / "root"
    write_image(root / "real.jpg")
    (root / "link.jpg").symlink_to(outside / "o.jpg")
    (root / "linkdir").symlink_to(outside)
    result = run(root)
    assert list(result.snapshot.images) == ["real.jpg"]
    assert result.skipped == {}


def test_symlinks_followed_when_configured(tmp_path: Path) -> None:
    """With follow_symlinks, a linked image and a linked folder's images are found by link path."""
    outside = tmp_path / "outside"
    write_image(outside / "o.jpg")
    root = tmp_path / "root"
    write_image(root / "real.jpg")
    (root / "link.jpg").symlink_to(outside / "o.jpg")
    (root / "linkdir").symlink_to(outside)
    images = run(root, follow_symlinks=True).snapshot.images
    assert list(images) == ["link.jpg", "linkdir/o.jpg", "real.jpg"]
    assert images["link.jpg"].sha256 == images["linkdir/o.jpg"].sha256


def test_symlink_loops_are_reported(tmp_path: Path) -> None:
    """Links back to an ancestor, self-links and dangling links are skipped with a reason."""
    write_image(tmp_path / "a" / "x.jpg")
    (tmp_path / "a" / "back").symlink_to(tmp_path)
    (tmp_path / "a" / "here").symlink_to(".")
    (tmp_path / "self.jpg").symlink_to("self.jpg")
    (tmp_path / "gone.jpg").symlink_to("nowhere.jpg")
    result = run(tmp_path, follow_symlinks=True)
    assert list(result.snapshot.images) == ["a/x.jpg"]
    assert result.skipped == {
        "a/back": "symlink loop: leads back to a directory above it",
        "a/here": "symlink loop: leads back to a directory above it",
        "gone.jpg": "broken symlink: No such file or directory",
        "self.jpg": "broken symlink: Too many levels of symbolic links",
    }
    assert result.stats.problems == 4


def test_unreadable_directory_by_injection(tmp_path: Path) -> None:
    """An unlistable folder is unscanned (nothing under it judged missing); the walk goes on."""
    write_image(tmp_path / "locked" / "a.jpg")
    write_image(tmp_path / "open" / "b.jpg")

    def listdir(path: str) -> Any:
        if path.endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return os.scandir(path)

    with capture_logs() as logs:
        result = run(tmp_path, listdir=listdir)
    snapshot = result.snapshot
    assert list(snapshot.images) == ["open/b.jpg"]
    assert snapshot.unscanned == ("locked",)
    assert not snapshot.covers("locked/a.jpg") and snapshot.covers("open/gone.jpg")
    assert {"event": "scan_dir_unreadable", "path": "locked", "error": "Permission denied",
            "log_level": "warning"} in logs  # fmt: skip


@pytest.mark.skipif(IS_ROOT, reason="root ignores directory permissions")
def test_unreadable_directory_by_chmod(tmp_path: Path) -> None:
    """A real mode-000 folder is unscanned."""
    locked = tmp_path / "locked"
    write_image(locked / "a.jpg")
    locked.chmod(0)
    try:
        assert run(tmp_path).snapshot.unscanned == ("locked",)
    finally:
        locked.chmod(0o755)


# --- the root -------------------------------------------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    """A root that does not exist is a root problem with no images."""
    snapshot = run(tmp_path / "nope").snapshot
    assert snapshot.root_problem == f"root {tmp_path / 'nope'} does not exist"
    assert snapshot.images == {} and not snapshot.covers("a.jpg")


def test_root_is_a_file(tmp_path: Path) -> None:
    """A root that is a file is a root problem."""
    write_image(tmp_path / "a.jpg")
    assert (
        run(tmp_path / "a.jpg").snapshot.root_problem
        == f"root {tmp_path / 'a.jpg'} is not a directory"
    )


def test_unreadable_root(tmp_path: Path) -> None:
    """A root that cannot be listed is a root problem, not an empty dataset."""
    write_image(tmp_path / "a.jpg")

    def listdir(path: str) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    snapshot = run(tmp_path, listdir=listdir).snapshot
    assert snapshot.root_problem == f"root {tmp_path} is unreadable"
    assert snapshot.images == {}


# --- scoped scans ---------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ["top.jpg", "a/x.jpg", "a/y.jpg", "a/n.jpg", "a/n.png", "a/deep/z.jpg", "b/w.jpg"]:
        write_image(tmp_path / name)
    write(tmp_path / "a" / "n.json", '{"concepts": ["shared"]}')
    return tmp_path


def counting_listdir(calls: list[str], root: Path) -> Callable[[str], Any]:
    def listdir(path: str) -> Any:
        calls.append(os.path.relpath(path, root))
        return os.scandir(path)

    return listdir


def test_scope_single_file(tree: Path) -> None:
    """A file in scope is the only image read, its folder is listed once, and scope says so."""
    calls: list[str] = []
    result = run(tree, scope=["a/x.jpg"], listdir=counting_listdir(calls, tree))
    assert list(result.snapshot.images) == ["a/x.jpg"]
    assert result.snapshot.scope == ("a/x.jpg",)
    assert calls == ["a"]
    assert result.snapshot.covers("a/x.jpg") and not result.snapshot.covers("a/y.jpg")


def test_scope_many_files_in_one_folder(tree: Path) -> None:
    """Several files of one folder in scope list that folder once."""
    calls: list[str] = []
    result = run(
        tree, scope=["a/x.jpg", "a/y.jpg", "./a/x.jpg"], listdir=counting_listdir(calls, tree)
    )
    assert list(result.snapshot.images) == ["a/x.jpg", "a/y.jpg"]
    assert calls == ["a"]


def test_scope_deleted_file(tree: Path) -> None:
    """A scoped path that no longer exists is absent, and covered so the planner can judge it."""
    result = run(tree, scope=["a/gone.jpg", "gone-dir/x.jpg"])
    assert result.snapshot.images == {}
    assert result.snapshot.covers("a/gone.jpg") and result.snapshot.covers("gone-dir/x.jpg")
    assert result.snapshot.unscanned == ()


def test_scope_sidecar_reaches_its_images(tree: Path) -> None:
    """A changed sidecar in scope re-reads every image it applies to, and scope covers them."""
    result = run(tree, scope=["a/n.json"])
    assert list(result.snapshot.images) == ["a/n.jpg", "a/n.png"]
    assert result.snapshot.scope == ("a/n.jpg", "a/n.json", "a/n.png")
    (tree / "a" / "n.json").unlink()
    after = run(tree, scope=["a/n.json"])
    assert all(image.labels == Labels() for image in after.snapshot.images.values())


def test_scope_directory_is_recursive(tree: Path) -> None:
    """A folder in scope is walked with everything below it, and nothing else."""
    result = run(tree, scope=["a", "a/x.jpg"])
    assert list(result.snapshot.images) == [
        "a/deep/z.jpg",
        "a/n.jpg",
        "a/n.png",
        "a/x.jpg",
        "a/y.jpg",
    ]
    assert result.snapshot.covers("a/deep/old.jpg") and not result.snapshot.covers("b/w.jpg")


@pytest.mark.parametrize("whole", ["", ".", "./"])
def test_scope_of_the_root_is_a_full_scan(tree: Path, whole: str) -> None:
    """A scope naming the root itself is a full scan (scope None)."""
    full = run(tree)
    result = run(tree, scope=[whole, "a/x.jpg"])
    assert result.snapshot.scope is None
    assert result.snapshot.images.keys() == full.snapshot.images.keys()


def test_scope_under_an_excluded_or_linked_folder(tree: Path) -> None:
    """Scoped paths under excluded names or unfollowed links are not read."""
    write_image(tree / ".git" / "x.jpg")
    (tree / "link").symlink_to(tree / "b")
    result = run(tree, scope=[".git/x.jpg", "link/w.jpg", "link", "a/.hidden.jpg"])
    assert result.snapshot.images == {}
    assert run(tree, scope=["link/w.jpg"], follow_symlinks=True).snapshot.images.keys() == {
        "link/w.jpg"
    }


@pytest.mark.parametrize("bad", ["../x.jpg", "/etc/passwd", "a/../../x"])
def test_scope_outside_the_root_is_refused(tree: Path, bad: str) -> None:
    """A scope path that leaves the root is a programming error."""
    with pytest.raises(ValueError, match="scope path"):
        run(tree, scope=[bad])


def test_empty_scope_scans_nothing(tree: Path) -> None:
    """An empty scope reads nothing and covers nothing."""
    snapshot = run(tree, scope=[]).snapshot
    assert snapshot.images == {} and snapshot.scope == () and not snapshot.covers("top.jpg")


# --- the whole result -----------------------------------------------------------------------


def test_results_are_sorted_and_repeatable(tree: Path) -> None:
    """Two scans of the same tree give the same, path-sorted snapshot and records."""
    first, second = run(tree), run(tree)
    assert first.snapshot == second.snapshot and first.files == second.files
    assert list(first.snapshot.images) == sorted(first.snapshot.images)
    assert [r.path for r in first.files] == sorted(first.snapshot.images)


def test_summary_is_logged(tree: Path) -> None:
    """Each scan ends with one scan_finished event carrying the counters."""
    with capture_logs() as logs:
        result = run(tree)
    finished = [e for e in logs if e["event"] == "scan_finished"]
    assert len(finished) == 1
    assert finished[0]["files_hashed"] == result.stats.files_hashed == 7
    assert finished[0]["images"] == 7 and finished[0]["dirs"] == result.stats.dirs == 4


SCOPE_CANDIDATES = [
    "", "top.jpg", "top.json", "a", "a/x.jpg", "a/x.jpg.json", "a/x.json", "a/n.json", "a/n.jpg",
    "a/n.png", "a/deep", "a/deep/z.jpg", "a/deep/z.txt", "a/gone.jpg", "b", "b/w.jpg",
    "b/orphan.txt", "c", "c/missing.jpg",
]  # fmt: skip


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scope=st.lists(st.sampled_from(SCOPE_CANDIDATES), max_size=4))
def test_scoped_scan_agrees_with_a_full_scan(tree: Path, scope: list[str]) -> None:
    """Whatever a scoped scan covers, it reports exactly as a full scan does."""
    write(tree / "a" / "x.jpg.json", '{"concepts": ["x"]}')
    write(tree / "a" / "x.json", '{"concepts": ["shadowed"]}')
    write(tree / "a" / "deep" / "z.txt", "zed\n")
    write(tree / "b" / "orphan.txt", "o\n")
    full = run(tree, labels_from_dirs=True).snapshot
    part = run(tree, labels_from_dirs=True, scope=scope).snapshot
    assert part.images == {p: image for p, image in full.images.items() if part.covers(p)}
    assert set(part.orphan_sidecars.items()) <= set(full.orphan_sidecars.items())
    if part.scope is not None:
        for sidecar in part.scope:
            if sidecar in full.orphan_sidecars:
                assert part.orphan_sidecars[sidecar] == full.orphan_sidecars[sidecar]


# --- mount points ----------------------------------------------------------------------------


def _table(*sequence: dict[str, int]) -> Callable[[], dict[str, int]]:
    """A mount table answering these in turn (the last one from then on)."""
    answers = list(sequence)

    def read() -> dict[str, int]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return read


def test_an_unmounted_disk_is_not_judged_missing(tmp_path: Path) -> None:
    """A known mount point that is not mounted and holds no image (what an unmount leaves) is
    not scanned: nothing under it is judged missing, and it is reported. A hidden marker file
    (`.not-mounted`) and an empty folder (a NAS's `@eaDir`) do not make it a folder of its own."""
    write_image(tmp_path / "local" / "a.jpg")
    (tmp_path / "nas" / "@eaDir").mkdir(parents=True)
    (tmp_path / "nas" / ".not-mounted").write_text("")
    result = run(tmp_path, known_mounts=["nas"], mount_table=_table({}))
    assert result.unmounted == frozenset({"nas"})
    assert result.snapshot.unscanned == ("nas",)
    assert not result.snapshot.covers("nas/deep/b.jpg")
    assert result.snapshot.covers("local/gone.jpg")
    assert "mounted here and is not now" in result.skipped["nas"]

    scoped = run(
        tmp_path, known_mounts=["nas"], mount_table=_table({}), scope=["nas/deep/b.jpg", "nas"]
    )
    assert scoped.snapshot.unscanned == ("nas",)
    assert not scoped.snapshot.covers("nas/deep/b.jpg")


def test_a_mounted_disk_is_scanned_as_usual(tmp_path: Path) -> None:
    """A known mount point that is mounted is scanned like any folder."""
    write_image(tmp_path / "nas" / "b.jpg")
    result = run(tmp_path, known_mounts=["nas"], mount_table=_table({"nas": 7}))
    assert result.unmounted == frozenset() and result.snapshot.unscanned == ()
    assert sorted(result.snapshot.images) == ["nas/b.jpg"]
    assert result.snapshot.covers("nas/gone.jpg")
    assert result.mounts_seen == frozenset({"nas"})


def test_a_former_mount_point_with_images_of_its_own_is_an_ordinary_folder(
    tmp_path: Path,
) -> None:
    """Images put in the folder, at any depth (the disk's data copied onto the root's file
    system) say it is an ordinary folder now: scanned, its absent files judged missing."""
    write_image(tmp_path / "nas" / "sub" / "b.jpg")
    result = run(tmp_path, known_mounts=["nas"], mount_table=_table({}))
    assert result.unmounted == frozenset() and result.snapshot.unscanned == ()
    assert sorted(result.snapshot.images) == ["nas/sub/b.jpg"]
    assert result.snapshot.covers("nas/gone.jpg")


@pytest.mark.parametrize("known", [["nas"], []], ids=["noted", "never-noted"])
@pytest.mark.parametrize("after", [{}, {"nas": 8}], ids=["unmounted", "mounted-again"])
def test_a_disk_unmounted_during_the_scan_is_not_judged_missing(
    tmp_path: Path, known: list[str], after: dict[str, int]
) -> None:
    """In the table when the scan began, gone from it (or there under a new mount id: unmounted
    and mounted again) when it ended: what the walk saw of it may be the empty folder below,
    so nothing under it is judged missing, noted before or not (a first pass too)."""
    write_image(tmp_path / "nas" / "b.jpg")
    result = run(tmp_path, known_mounts=known, mount_table=_table({"nas": 7}, after))
    assert result.unmounted == frozenset({"nas"}) and result.snapshot.unscanned == ("nas",)
    assert not result.snapshot.covers("nas/gone.jpg")
    assert "during the scan" in result.skipped["nas"]


def test_a_root_that_changes_during_the_scan_judges_nothing_missing(tmp_path: Path) -> None:
    """The root (or the disk it is on) unmounted while the scan walked it: the folders not yet
    walked looked gone, so the whole snapshot is a root problem: nothing judged missing."""
    write_image(tmp_path / "a" / "x.jpg")
    looks = []

    def stat(path: str) -> Any:
        st = os.stat(path)
        if path == str(tmp_path):
            looks.append(path)
            if len(looks) > 1:  # the second look at the root: another folder is there now
                return os.stat(tmp_path / "a")
        return st

    result = run(tmp_path, stat=stat)
    assert result.snapshot.root_problem is not None
    assert "changed during the scan" in result.snapshot.root_problem
    assert not result.snapshot.covers("a/x.jpg")


def test_a_followed_link_to_a_disk_that_went_away_is_not_judged_missing(tmp_path: Path) -> None:
    """With follow_symlinks, a link to a folder on a disk that was unmounted (its target gone)
    is reported and nothing under it is judged missing."""
    root = tmp_path / "root"
    write_image(root / "local.jpg")
    (root / "photos").symlink_to(tmp_path / "media" / "DISK")
    result = run(root, follow_symlinks=True)
    assert "photos" in result.snapshot.unscanned
    assert not result.snapshot.covers("photos/a.jpg")
    assert result.snapshot.covers("gone.jpg")


def test_without_a_mount_table_nothing_is_judged_unmounted(tmp_path: Path) -> None:
    """No table (not Linux): a known mount point is scanned as a folder, as before."""
    (tmp_path / "nas").mkdir()
    result = run(tmp_path, known_mounts=["nas"], mount_table=lambda: None)
    assert result.unmounted == frozenset() and result.snapshot.unscanned == ()
    assert result.mounts_seen is None
