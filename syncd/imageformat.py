"""Recognise the image formats the API accepts from their bytes, cheaply.

Checks magic numbers and that the file is whole (its end marker is present), never decodes
pixels: the client refuses obviously broken files before sending them, and the emulator uses
the same rules to fail processing the way the real service does.
"""

from __future__ import annotations

import struct

#: How many bytes from the start and from the end a check needs.
HEAD_BYTES = 32
TAIL_BYTES = 4096

FORMATS = ("JPEG", "PNG", "GIF", "TIFF", "BMP", "WEBP")


def sniff_format(head: bytes) -> str | None:
    """The format named by the magic number at the start of a file, or None."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head.startswith(b"BM") and len(head) >= 18 and _bmp_header_size(head) in _BMP_HEADERS:
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


# The sizes of the known BMP info headers (BITMAPCOREHEADER .. BITMAPV5HEADER).
_BMP_HEADERS = frozenset({12, 40, 52, 56, 64, 108, 124})


def _bmp_header_size(head: bytes) -> int:
    return int(struct.unpack_from("<I", head, 14)[0])


def image_problem_parts(head: bytes, tail: bytes, size: int) -> str | None:
    """Why a file with this start, end and size is not a whole supported image (None: it is).

    `head` is at least the first HEAD_BYTES bytes (or the whole file), `tail` the last
    TAIL_BYTES bytes (or the whole file).
    """
    if size == 0:
        return "empty file (0 bytes)"
    fmt = sniff_format(head)
    if fmt is None:
        return "not an image: no JPEG, PNG, GIF, TIFF, BMP or WEBP signature"
    trimmed = tail.rstrip(b"\x00")
    if fmt == "JPEG" and b"\xff\xd9" not in trimmed[-TAIL_BYTES:]:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND\xaeB`\x82" not in tail:
        return "truncated PNG (no IEND chunk)"
    if fmt == "GIF" and not trimmed.endswith(b";"):
        return "truncated GIF (no trailer)"
    if fmt == "BMP":
        (declared,) = struct.unpack_from("<I", head, 2)
        if declared > size:
            return f"truncated BMP ({size} of {declared} bytes)"
    if fmt == "WEBP":
        (riff_size,) = struct.unpack_from("<I", head, 4)
        if riff_size + 8 > size:
            return f"truncated WEBP ({size} of {riff_size + 8} bytes)"
    return None


def image_problem(data: bytes) -> str | None:
    """Why these bytes are not a whole supported image, or None when they are."""
    return image_problem_parts(data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data))
