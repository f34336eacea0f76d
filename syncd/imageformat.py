"""Recognise the image formats the API accepts from their bytes, cheaply.

Checks magic numbers and that the file is whole (its end marker is present, its declared size
fits; a JPEG's segments and a TIFF's first directory are followed as the file streams by while
it is hashed), never decodes pixels: the client refuses obviously broken files before sending
them, and the emulator uses the same rules to fail processing the way the real service does.
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
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):  # (+: BigTIFF)
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
    head: bytes,
    tail: bytes,
    size: int,
    jpeg: JpegScan | None = None,
    tiff: TiffScan | None = None,
) -> str | None:
    """Why a file with this start, end and size is not a whole supported image (None: it is).

    `head` is at least the first HEAD_BYTES bytes (or the whole file), `tail` the last
    TAIL_BYTES bytes (or the whole file). `jpeg`, a JpegScan fed the whole file, decides a
    JPEG's end when it could follow the file's structure; otherwise an end-of-image marker
    must be among the last bytes. `tiff`, a TiffScan fed the whole file, finds a TIFF cut
    before its directory or its image data ends (without it, a TIFF is not checked).
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
    if fmt == "TIFF" and tiff is not None and tiff.truncated(size):
        return f"truncated TIFF (its directory or image data ends past its {size} bytes)"
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
    fmt = sniff_format(data[:HEAD_BYTES])
    jpeg = JpegScan() if fmt == "JPEG" else None
    tiff = TiffScan() if fmt == "TIFF" else None
    for scan in (jpeg, tiff):
        if scan is not None:
            scan.feed(data)
    return image_problem_parts(data[:HEAD_BYTES], data[-TAIL_BYTES:], len(data), jpeg, tiff)


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


#: Bytes per value of every TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, SBYTE,
#: UNDEFINED, SSHORT, SLONG, SRATIONAL, FLOAT, DOUBLE).
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
#: Values a decoder needs besides the strips, which libtiff writes after them, at the end:
#: BitsPerSample, ColorMap, ExtraSamples, SampleFormat, JPEGTables, ReferenceBlackWhite.
_TIFF_DECODING = frozenset({258, 320, 338, 339, 347, 532})
#: The types offsets and counts come in: SHORT, LONG.
_TIFF_OFFSET_KINDS = frozenset({3, 4})
#: StripOffsets, StripByteCounts, TileOffsets, TileByteCounts.
_TIFF_OFFSETS = {273: 279, 324: 325}
#: The offset and count arrays, and those plus the values a decoder needs.
_TIFF_ARRAYS = frozenset({*_TIFF_OFFSETS, *_TIFF_OFFSETS.values()})
_TIFF_CHECKED = _TIFF_ARRAYS | _TIFF_DECODING
#: The longest offset array read (4 MB: a million strips); a longer one leaves no verdict
#: rather than holding a damaged file's worth of bytes.
_TIFF_MAX_ARRAY = 4 << 20
#: How far back a TIFF scan keeps bytes: the offset arrays an IFD points to usually sit just
#: before it (libtiff writes them before the directory at the end of the file).
_TIFF_WINDOW = 1 << 16


class TiffScan:
    """Reads a TIFF's first directory as the file's bytes stream by, to tell whether its image
    data (strips or tiles) ends within the file.

    `feed` takes consecutive pieces; `truncated(size)` afterwards: True when the directory or
    the image data lies beyond `size`, False when all of it lies within, None when the scan
    could not tell (BigTIFF, offset arrays out of reach): the file is then not refused.
    """

    def __init__(self) -> None:
        self._pos = 0  # bytes fed so far
        self._head = b""  # the 8-byte header
        self._order = ""  # "<" or ">"
        self._ifd = -1  # offset of the first directory (-1: not known yet)
        self._dir_len: int | None = None  # its length, once its entry count is known
        self._wanted: dict[int, int] = {}  # start -> length of ranges not yet whole
        self._kept: dict[int, bytes] = {}  # start -> bytes of wanted ranges, from the start
        self._recent = b""  # the last _TIFF_WINDOW bytes before the piece in hand
        self._piece = b""  # the piece in hand, and where it starts
        self._piece_at = 0
        self._unknown = False

    def feed(self, piece: bytes) -> None:
        if self._unknown or not piece:
            return
        self._piece, self._piece_at = piece, self._pos
        self._pos += len(piece)
        if len(self._head) < 8:
            self._head += piece[: 8 - len(self._head)]
            if len(self._head) == 8:
                self._read_header()
        for at in list(self._wanted):
            self._collect(at)
        if self._directory_read():
            # only ranges ahead are wanted now: no look-back window to keep (with small
            # pieces, rebuilding it cost as much as hashing)
            self._recent = b""
        elif len(piece) >= _TIFF_WINDOW:
            self._recent = piece[-_TIFF_WINDOW:]
        else:
            self._recent = (self._recent + piece)[-_TIFF_WINDOW:]
        self._piece = b""

    def _directory_read(self) -> bool:
        return self._dir_len is not None and len(self._kept.get(self._ifd, b"")) >= self._dir_len

    def truncated(self, size: int) -> bool | None:
        if self._unknown:
            return None
        if self._ifd < 0 or self._ifd + 2 > size:
            return True  # no whole header, or the directory starts past the end
        if self._dir_len is None:
            return None
        if self._ifd + self._dir_len > size:
            return True
        if not self._directory_read():
            return None
        # the offset and count arrays, and the values decoders need (BitsPerSample of an RGB
        # image, JPEGTables: libtiff writes them last)
        if any(offset + length > size for offset, length in self._outside(_TIFF_CHECKED)):
            return True
        # (libtiff would read what there is of a single raw strip whose length runs past the
        # end; such a file is far likelier a cut download than a complete image with a bogus
        # length, so it is refused like any other)
        ends = self._data_ends()
        return None if ends is None else max(ends, default=0) > size

    # --- the header, the directory, the arrays it points to -----------------------------

    def _read_header(self) -> None:
        order = {b"II": "<", b"MM": ">"}.get(self._head[:2])
        if order is None or struct.unpack(order + "H", self._head[2:4])[0] != 42:
            self._unknown = True  # BigTIFF (43) or not a TIFF: no verdict
            return
        self._order = order
        self._ifd = struct.unpack(order + "I", self._head[4:8])[0]
        self._want(self._ifd, 2)

    def _want(self, at: int, length: int) -> None:
        """Keep bytes [at, at + length) (from the window, the piece in hand and later ones)."""
        self._kept[at] = self._kept.get(at, b"")[:length]
        self._wanted[at] = length
        self._collect(at)

    def _collect(self, at: int) -> None:
        length = self._wanted[at]
        got = self._kept[at]
        need, end = at + len(got), at + length
        window_at = self._piece_at - len(self._recent)
        if need < window_at:
            del self._wanted[at]  # passed before the window: out of reach, no verdict needs it
            return
        if need < self._piece_at:
            got += self._recent[need - window_at : min(end, self._piece_at) - window_at]
            need = at + len(got)
        if self._piece_at <= need < self._pos:
            got += self._piece[need - self._piece_at : min(end, self._pos) - self._piece_at]
        self._kept[at] = got
        if len(got) == length:
            del self._wanted[at]
            self._got(at)

    def _got(self, at: int) -> None:
        """A wanted range is whole: the entry count asks for the directory, the directory for
        the offset and count arrays stored outside it."""
        if at != self._ifd:
            return
        if self._dir_len is None:
            (count,) = struct.unpack(self._order + "H", self._kept[at][:2])
            self._dir_len = 2 + 12 * count + 4  # the entries, then the next directory's offset
            self._want(at, self._dir_len)
            return
        for offset, length in self._outside(_TIFF_ARRAYS):
            if offset not in self._kept and length <= _TIFF_MAX_ARRAY:
                self._want(offset, length)

    def _entries(self) -> dict[int, tuple[int, int, bytes]]:
        """tag -> (type, count, the 4 value bytes) of the first directory."""
        data = self._kept[self._ifd][:-4]  # (without the next directory's offset)
        out = {}
        for n in range(2, len(data) - 11, 12):
            tag, kind, count = struct.unpack(self._order + "HHI", data[n : n + 8])
            out[tag] = (kind, count, data[n + 8 : n + 12])
        return out

    def _outside(self, tags: frozenset[int]) -> list[tuple[int, int]]:
        """(offset, length) of the values of `tags` stored outside the directory (offset and
        count arrays only in the types they may have)."""
        out = []
        for tag, (kind, count, value) in self._entries().items():
            if tag not in tags or (tag in _TIFF_ARRAYS and kind not in _TIFF_OFFSET_KINDS):
                continue
            length = count * _TIFF_TYPE_SIZES.get(kind, 1)
            if length > 4:
                out.append((struct.unpack(self._order + "I", value)[0], length))
        return out

    def _values(self, kind: int, count: int, value: bytes) -> list[int] | None:
        length = count * _TIFF_TYPE_SIZES[kind]
        if length <= 4:
            raw = value[:length]
        else:
            raw = self._kept.get(struct.unpack(self._order + "I", value)[0], b"")
            if len(raw) < length:
                return None
        fmt = self._order + ("H" if kind == 3 else "I") * count
        return list(struct.unpack(fmt, raw[:length]))

    def _data_ends(self) -> list[int] | None:
        """Where each strip or tile ends, or None when not known."""
        entries = self._entries()
        for offsets_tag, counts_tag in _TIFF_OFFSETS.items():
            if offsets_tag not in entries or counts_tag not in entries:
                continue
            kinds = (entries[offsets_tag][0], entries[counts_tag][0])
            if not all(k in _TIFF_OFFSET_KINDS for k in kinds):
                return None
            offsets = self._values(*entries[offsets_tag])
            counts = self._values(*entries[counts_tag])
            if offsets is None or counts is None or len(offsets) != len(counts):
                return None
            return [o + c for o, c in zip(offsets, counts, strict=True)]
        return None
