"""Recognise the image formats the API accepts from their bytes, cheaply.

Checks magic numbers and that the file is whole (its end marker is present), never decodes
pixels: the client refuses obviously broken files before sending them, and the emulator uses
the same rules to fail processing the way the real service does.
"""

from __future__ import annotations

import re
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


def image_problem_parts(
    head: bytes, tail: bytes, size: int, jpeg: JpegScan | None = None
) -> str | None:
    """Why a file with this start, end and size is not a whole supported image (None: it is).

    `head` is at least the first HEAD_BYTES bytes (or the whole file), `tail` the last
    TAIL_BYTES bytes (or the whole file). `jpeg`, a JpegScan fed the whole file, decides a
    JPEG's end when it could follow the file's structure; otherwise an end-of-image marker
    must be among the last bytes.
    """
    if size == 0:
        return "empty file (0 bytes)"
    fmt = sniff_format(head)
    if fmt is None:
        return "not an image: no JPEG, PNG, GIF, TIFF, BMP or WEBP signature"
    trimmed = tail.rstrip(b"\x00")
    if fmt == "JPEG":
        if jpeg is not None and jpeg.followed:
            whole = jpeg.ended
        else:
            whole = b"\xff\xd9" in trimmed[-TAIL_BYTES:]
        if not whole:
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
    jpeg = None
    if sniff_format(data[:HEAD_BYTES]) == "JPEG":
        jpeg = JpegScan()
        jpeg.feed(data)
    return image_problem_parts(data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data), jpeg)


#: In entropy-coded data, a 0xFF is followed by 0x00 (a stuffed byte), a restart marker
#: (0xD0-0xD7) or more 0xFF (fill); anything else starts the next segment. (A 0xFF at the end
#: of a piece does not match: what follows it is not known yet.)
_NEXT_MARKER = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")
#: The markers that may follow a scan's data: EOI, another scan (SOS) or the tables between
#: progressive scans (DHT, DQT, DRI, DNL, DAC), and a comment.
_AFTER_SCAN = frozenset({0xD9, 0xDA, 0xC4, 0xDB, 0xDD, 0xDC, 0xCC, 0xFE})


class JpegScan:
    """Follows a JPEG's segments as its bytes stream by, to find the end-of-image marker of
    the image itself: not one inside an embedded thumbnail (APPn segments are skipped by
    their length), and not one after it (a phone's motion photo appends a video).

    `feed` takes the file in consecutive pieces of any size. `ended`: the image's own end
    marker came. `followed`: the structure made sense all along; when it did not (bytes
    where a marker must be, a marker that cannot follow scan data, an impossible length), the
    caller falls back to looking for a marker near the end.
    Entropy-coded data is searched by a regular expression, at about sha256's speed.
    """

    def __init__(self) -> None:
        self.ended = False
        self.followed = True
        self._carry = b""  # the start of a marker or length split across pieces
        self._skip = 0  # bytes of the current segment still to pass over
        self._entropy = False  # inside a scan's entropy-coded data
        self._started = False  # SOI seen

    def feed(self, piece: bytes) -> None:
        if self.ended or not self.followed:
            return
        if self._skip:
            passed = min(self._skip, len(piece))
            self._skip -= passed
            piece = piece[passed:]  # (a copy only in the rare piece that ends a segment)
            if self._skip:
                return
        data = self._carry + piece if self._carry else piece
        self._carry = b""
        i, n = 0, len(data)
        while i < n:
            if self._entropy:
                found = _NEXT_MARKER.search(data, i)
                if found is None:
                    # a trailing 0xFF may start a marker in the next piece
                    self._carry = data[-1:] if data[-1] == 0xFF else b""
                    return
                i = found.start()
                if data[i + 1] not in _AFTER_SCAN:
                    # a stray 0xFF in damaged scan data (libjpeg decodes such files with a
                    # warning): not a structure to judge by, so the tail rule decides
                    self.followed = False
                    return
                self._entropy = False
            if n - i < 2:
                self._carry = data[i:]
                return
            if data[i] != 0xFF:
                self.followed = False  # not a marker where one must be: judged by the tail
                return
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte before a marker
                i += 1
                continue
            if not self._started:
                if marker != 0xD8:
                    self.followed = False
                    return
                self._started = True
                i += 2
                continue
            if marker == 0xD9:
                self.ended = True
                return
            if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
                i += 2
                continue
            if n - i < 4:
                self._carry = data[i:]
                return
            length = (data[i + 2] << 8) | data[i + 3]
            if length < 2 or (marker in (0xDC, 0xDD) and length != 4):  # DNL, DRI: 4 always
                self.followed = False
                return
            self._entropy = marker == 0xDA  # SOS: entropy-coded data follows its header
            end = i + 2 + length
            if end > n:
                self._skip = end - n
                return
            i = end
