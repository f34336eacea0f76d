"""syncd.imageformat: format sniffing and whole-file checks on real, tiny image files.

Tests marked xfail(strict=True) pin known weaknesses reported to the module's owner; when one
is fixed the test starts passing and pytest says so, and the marker should go.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from images import (
    bmp_bytes,
    gif_bytes,
    jpeg_bytes,
    make_tiff,
    png_bytes,
    tiff_bytes,
    webp_bytes,
)

from syncd.imageformat import (
    FORMATS,
    HEAD_BYTES,
    TAIL_BYTES,
    JpegScan,
    TiffScan,
    image_problem,
    image_problem_parts,
    sniff_format,
)

SAMPLES = {
    "JPEG": jpeg_bytes(16, 8, tag="x"),
    "PNG": png_bytes(2, 2, (1, 2, 3)),
    "GIF": gif_bytes(),
    "TIFF": tiff_bytes(),
    "BMP": bmp_bytes(2, 2),
    "WEBP": webp_bytes(),
}


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_whole_files_are_recognised(fmt: str) -> None:
    """Each supported format is sniffed by its magic number and a whole file has no problem."""
    data = SAMPLES[fmt]
    assert sniff_format(data[:HEAD_BYTES]) == fmt
    assert image_problem(data) is None


def test_every_format_has_a_sample() -> None:
    """The samples above cover every format the module claims to support."""
    assert set(SAMPLES) == set(FORMATS)


@pytest.mark.parametrize(
    ("fmt", "cut", "reason"),
    [
        ("JPEG", 2, "truncated JPEG (no end-of-image marker)"),
        ("PNG", 1, "truncated PNG (no IEND chunk)"),
        ("PNG", 12, "truncated PNG (no IEND chunk)"),
        ("GIF", 1, "truncated GIF (no trailer)"),
        ("BMP", 1, "truncated BMP (69 of 70 bytes)"),
        ("WEBP", 2, "truncated WEBP"),
    ],
)
def test_truncated_files_are_refused(fmt: str, cut: int, reason: str) -> None:
    """A file missing its last bytes is reported as truncated, naming the format."""
    problem = image_problem(SAMPLES[fmt][:-cut])
    assert problem is not None and problem.startswith(reason)


def test_large_truncated_jpeg() -> None:
    """A JPEG cut in the middle of a large scan (no EOI within the tail) is refused."""
    data = jpeg_bytes(4096, 4096)  # 262,144 blocks: a 64 KiB scan
    assert image_problem(data) is None
    assert image_problem(data[: len(data) // 2]) == "truncated JPEG (no end-of-image marker)"


def test_zero_padding_after_the_end_is_tolerated() -> None:
    """Trailing NUL bytes (preallocated files) do not hide the end marker."""
    for fmt in ("JPEG", "PNG", "GIF"):
        assert image_problem(SAMPLES[fmt] + b"\x00" * 100) is None


def test_empty_file() -> None:
    """A zero-byte file is reported as empty."""
    assert image_problem(b"") == "empty file (0 bytes)"


@pytest.mark.parametrize(
    "data",
    [
        b"hello world",
        b"<html></html>",
        b"%PDF-1.7\n",
        b"\x00" * 64,
        b"RIFF\x10\x00\x00\x00WAVEfmt ",
    ],
)
def test_not_an_image(data: bytes) -> None:
    """Bytes without a supported signature are not an image."""
    assert image_problem(data) == "not an image: no JPEG, PNG, GIF, TIFF, BMP or WEBP signature"


def test_parts_match_the_whole_file_check() -> None:
    """image_problem_parts with the head, tail and size gives the same answer as image_problem."""
    big = png_bytes(tag="x" * 20_000)
    for data in [*SAMPLES.values(), big, big[:-5], b"", b"BM"]:
        parts = image_problem_parts(data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data))
        assert parts == image_problem(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(SAMPLES)), st.binary(max_size=64), st.integers(0, 200))
def test_any_bytes_never_raise(fmt: str, noise: bytes, keep: int) -> None:
    """A valid start followed by anything, or cut anywhere, gives None or a reason, never raises."""
    for data in (SAMPLES[fmt][:keep] + noise, noise, SAMPLES[fmt][:keep]):
        result = image_problem(data)
        assert result is None or isinstance(result, str)


def test_jpeg_with_a_large_appended_trailer_is_whole() -> None:
    """A JPEG followed by more than TAIL_BYTES of other data is still a whole image."""
    assert image_problem(jpeg_bytes() + b"\x01" * (TAIL_BYTES + 1000)) is None


def test_png_with_trailing_bytes_is_whole() -> None:
    """A PNG followed by a few stray bytes is still a whole image."""
    assert image_problem(png_bytes() + b"\n") is None


def test_text_starting_with_bm_is_not_an_image() -> None:
    """A text file that happens to start with "BM" is reported as not an image."""
    problem = image_problem(b"BMW owners manual\n" * 3)
    assert problem is not None and problem.startswith("not an image")


def test_truncated_tiff_is_refused() -> None:
    """A TIFF cut before its pixel data is reported as truncated."""
    assert image_problem(tiff_bytes()[:-1]) is not None


def test_small_truncated_jpeg_with_thumbnail_is_refused() -> None:
    """A small JPEG whose main scan is cut is refused even if it embeds a whole thumbnail."""
    thumb = jpeg_bytes(tag="thumb")
    app1 = b"\xff\xe1" + (len(thumb) + 8).to_bytes(2, "big") + b"Exif\x00\x00" + thumb
    data = b"\xff\xd8" + app1 + jpeg_bytes(64, 64)[2:]
    assert image_problem(data) is None
    assert image_problem(data[:-40]) is not None


def _segment(marker: int, data: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(data) + 2).to_bytes(2, "big") + data


#: A JPEG's structure as a progressive file has it: two scans with a Huffman table between,
#: entropy-coded data holding stuffed 0xFF bytes, restart markers and fill bytes, and an
#: APP1 (EXIF) segment that embeds a whole thumbnail with its own end marker.
THUMB = jpeg_bytes(tag="thumb")
STRUCTURED = b"".join(
    [
        b"\xff\xd8",
        _segment(0xE1, b"Exif\x00\x00" + THUMB),
        _segment(0xDB, b"\x00" + b"\x01" * 64),
        _segment(0xC2, b"\x08\x00\x08\x00\x08\x01\x01\x11\x00"),
        _segment(0xC4, b"\x00" + b"\x01" + b"\x00" * 15 + b"\x00"),
        _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"),
        b"\x12\xff\x00\x34\xff\xd0\x56\xff\x00\xff\xd1\x78",
        _segment(0xC4, b"\x10" + b"\x01" + b"\x00" * 15 + b"\x00"),
        _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"),
        b"\x9a\xff\x00" * 50 + b"\xbc",
        b"\xff\xff\xd9",  # a fill byte, then the image's end
    ]
)


def test_jpeg_structure_is_followed_past_thumbnails_stuffing_and_scans() -> None:
    """The image's own end marker is found through an embedded thumbnail, stuffed bytes,
    restart markers and several scans; cutting it off anywhere after the thumbnail is
    truncation, whatever end markers the thumbnail holds."""
    assert image_problem(STRUCTURED) is None
    assert image_problem(STRUCTURED + b"\x00\x00\x00\x18ftypmp42" + b"\xff\xd9" * 9000) is None
    thumb_end = STRUCTURED.index(THUMB) + len(THUMB)
    for cut in (thumb_end, thumb_end + 40, len(STRUCTURED) - 30, len(STRUCTURED) - 1):
        problem = image_problem(STRUCTURED[:cut])
        assert problem == "truncated JPEG (no end-of-image marker)", cut


def test_jpeg_whose_structure_cannot_be_followed_is_judged_by_its_tail() -> None:
    """Bytes where a marker must be (as some cameras write) make the check fall back to an
    end marker among the last bytes, so such files are not refused for their oddity."""
    odd = b"\xff\xd8" + _segment(0xE0, b"JFIF\x00") + b"camera junk" + jpeg_bytes()[2:]
    scan = JpegScan()
    scan.feed(odd)
    assert not scan.followed
    assert image_problem(odd) is None
    assert image_problem(odd[:-2]) == "truncated JPEG (no end-of-image marker)"


@pytest.mark.parametrize(
    "stray",
    [b"\xff\xea\x65\x1b", b"\xff\xdc\x41\x6c", b"\xff\x12\x34\x56"],
    ids=["app10", "dnl-with-a-wrong-length", "no-such-marker"],
)
def test_damaged_scan_data_is_judged_by_its_tail(stray: bytes) -> None:
    """A stray 0xFF in scan data (a bit error libjpeg decodes past with a warning) reads as a
    marker that cannot follow scan data, or one with an impossible length: the structure is
    not judged, and the file is whole by the tail rule, as before this check existed."""
    second_scan = STRUCTURED.rindex(b"\x9a\xff\x00")
    damaged = STRUCTURED[:second_scan] + stray + STRUCTURED[second_scan:]
    scan = JpegScan()
    scan.feed(damaged)
    assert not scan.followed
    assert image_problem(damaged) is None


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["whole", "trailer", "cut"]),
    st.integers(0, 10_000),
    st.lists(st.integers(1, 300), min_size=1, max_size=40),
)
def test_jpeg_scan_gives_one_verdict_however_the_bytes_are_cut(
    kind: str, at: int, pieces: list[int]
) -> None:
    """Fed in pieces of any sizes (as reads return them), the scan reaches the verdict it
    reaches on the whole file at once."""
    data = {
        "whole": STRUCTURED,
        "trailer": STRUCTURED + bytes(range(256)) * 8,
        "cut": STRUCTURED[: at % len(STRUCTURED)],
    }[kind]
    whole = JpegScan()
    whole.feed(data)
    split = JpegScan()
    start = 0
    for size in pieces * (len(data) // max(1, sum(pieces)) + 1):
        split.feed(data[start : start + size])
        start += size
        if start >= len(data):
            break
    assert (split.ended, split.followed) == (whole.ended, whole.followed)


@pytest.mark.parametrize("order", ["II", "MM"])
@pytest.mark.parametrize("strips", [1, 7])
@pytest.mark.parametrize("ifd_last", [False, True], ids=["directory-first", "directory-last"])
def test_tiff_cut_anywhere_is_truncated(order: str, strips: int, ifd_last: bool) -> None:
    """Both byte orders, one strip or several (offsets in arrays outside the directory), the
    directory first or last: the whole file passes, and every cut of it is refused (also a
    single raw strip cut short, which libtiff would read what there is of: far likelier a
    cut download than a whole image with a wrong length)."""
    data = make_tiff(order, strips, ifd_last=ifd_last)
    assert image_problem(data) is None
    for cut in range(4, len(data)):  # (shorter than its magic number, it is no TIFF at all)
        problem = image_problem(data[:cut])
        assert problem is not None and problem.startswith("truncated TIFF"), cut


def test_tiff_values_a_decoder_needs_must_be_in_the_file() -> None:
    """libtiff writes some values after the strips, at the very end (BitsPerSample of an RGB
    image, JPEGTables): a file cut there is refused, as decoders cannot open it."""
    rgb = make_tiff("II", 7, ifd_last=True, rgb=True)
    assert image_problem(rgb) is None
    assert (image_problem(rgb[:-2]) or "").startswith("truncated TIFF")


def test_bigtiff_is_an_image_the_check_does_not_judge() -> None:
    """A BigTIFF (magic 43) is a TIFF: not refused as 'not an image', and not judged."""
    assert sniff_format(b"II+\x00\x08\x00\x00\x00") == "TIFF"
    assert image_problem(b"II+\x00\x08\x00\x00\x00" + bytes(200)) is None


def test_a_tiff_check_that_cannot_be_made_refuses_nothing() -> None:
    """A TIFF read in pieces whose offset arrays lie more than the kept window before its
    directory is not judged: not refused."""
    far = make_tiff("II", 7, ifd_last=True, gap=70_000)
    scan = TiffScan()
    for start in range(0, len(far), 4096):  # read as a file is: the arrays pass long before
        scan.feed(far[start : start + 4096])
    assert scan.truncated(len(far)) is None
    assert image_problem(far) is None


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["II", "MM"]),
    st.sampled_from([1, 3, 40]),
    st.booleans(),
    st.integers(0, 10_000),
    st.lists(st.integers(1, 500), min_size=1, max_size=30),
)
def test_tiff_scan_gives_one_verdict_however_the_bytes_are_cut(
    order: str, strips: int, ifd_last: bool, at: int, pieces: list[int]
) -> None:
    """Fed in pieces of any sizes, the TIFF scan says what it says of the bytes at once."""
    whole_file = make_tiff(order, strips, ifd_last=ifd_last)
    data = whole_file[: at % (len(whole_file) + 1)]
    once = TiffScan()
    once.feed(data)
    split = TiffScan()
    start = 0
    while start < len(data):
        for size in pieces:
            split.feed(data[start : start + size])
            start += size
    assert split.truncated(len(data)) == once.truncated(len(data))
