"""Tiny, valid image files built from bytes, for tests (no imaging library needed).

Every function returns a whole file that a real decoder accepts. Pass `tag` to get different
bytes (and so a different sha256) for the same picture: it goes into a comment/text chunk.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def png_bytes(
    width: int = 1, height: int = 1, rgb: tuple[int, int, int] = (0, 0, 0), *, tag: str = ""
) -> bytes:
    """A truecolour PNG of one colour; `tag` adds a tEXt chunk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes(rgb) * width  # filter type 0, then RGB triples
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    text = chunk(b"tEXt", b"Comment\x00" + tag.encode("utf-8", "surrogateescape")) if tag else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + text
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def jpeg_bytes(width: int = 8, height: int = 8, *, tag: str = "") -> bytes:
    """A baseline greyscale JPEG, mid-grey everywhere; `tag` adds a COM segment.

    Each 8x8 block is a zero DC difference and an end-of-block: two one-bit Huffman codes.
    """

    def segment(marker: int, data: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data

    one_code = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    blocks = -(-width // 8) * -(-height // 8)
    bits = "00" * blocks
    bits += "1" * (-len(bits) % 8)  # pad the last byte with 1 bits
    scan = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    return b"".join(
        [
            b"\xff\xd8",
            segment(0xFE, tag.encode("utf-8", "surrogateescape")) if tag else b"",
            segment(0xDB, b"\x00" + b"\x01" * 64),
            segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00"),
            segment(0xC4, b"\x00" + one_code),
            segment(0xC4, b"\x10" + one_code),
            segment(0xDA, b"\x01\x01\x00\x00\x3f\x00"),
            scan,
            b"\xff\xd9",
        ]
    )


def gif_bytes(*, tag: str = "") -> bytes:
    """A 1x1 GIF89a (black pixel); `tag` adds a comment extension."""
    comment = b""
    if tag:
        data = tag.encode("utf-8", "surrogateescape")[:255]
        comment = b"\x21\xfe" + bytes([len(data)]) + data + b"\x00"
    return (
        b"GIF89a"
        + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0)  # global colour table of 2 entries
        + b"\x00\x00\x00\xff\xff\xff"
        + comment
        + b"\x2c"
        + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
        + b"\x02\x02\x44\x01\x00"  # LZW: clear, index 0, end
        + b";"
    )


def bmp_bytes(width: int = 1, height: int = 1) -> bytes:
    """A 24-bit BMP, black."""
    row = b"\x00" * (3 * width)
    row += b"\x00" * (-len(row) % 4)
    pixels = row * height
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, len(pixels), 2835, 2835, 0, 0)
    size = 14 + len(info) + len(pixels)
    return b"BM" + struct.pack("<IHHI", size, 0, 0, 14 + len(info)) + info + pixels


def tiff_bytes() -> bytes:
    """A 1x1 uncompressed 8-bit greyscale little-endian TIFF."""
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 3, 1),  # ImageWidth
        (257, 3, 1),  # ImageLength
        (258, 3, 8),  # BitsPerSample
        (259, 3, 1),  # Compression: none
        (262, 3, 1),  # Photometric: black is zero
        (273, 4, 0),  # StripOffsets (patched below)
        (277, 3, 1),  # SamplesPerPixel
        (278, 3, 1),  # RowsPerStrip
        (279, 4, 1),  # StripByteCounts
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    pixel_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, given in entries:
        value = pixel_offset if tag == 273 else given
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x80"


def make_tiff(order: str, strips: int, *, ifd_last: bool, gap: int = 0, rgb: bool = False) -> bytes:
    """A TIFF of `strips` strips of 100 bytes. ifd_last: libtiff's layout (pixel data, then
    the offset arrays, then the directory, at the end); else the directory first. `gap` bytes
    of padding go between the arrays and the directory. rgb (with ifd_last): BitsPerSample is
    three values, stored after the directory, as libtiff writes them."""
    fmt = "<" if order == "II" else ">"
    counts = [100] * strips

    def directory(at: int, strip_offsets: list[int], arrays_at: int) -> bytes:
        bits = (258, 3, 3, at + dir_len) if rgb else (258, 3, 1, 8)
        entries = [(256, 3, 1, 10), (257, 3, 1, 10 * strips), bits, (259, 3, 1, 1)]
        if strips == 1:
            entries += [(273, 4, 1, strip_offsets[0]), (279, 4, 1, counts[0])]
        else:
            entries += [(273, 4, strips, arrays_at), (279, 4, strips, arrays_at + 4 * strips)]
        body = struct.pack(fmt + "H", len(entries))
        for tag, kind, count, value in sorted(entries):
            packed = struct.pack(fmt + "I", value)
            if kind == 3 and count == 1:
                packed = struct.pack(fmt + "HH", value, 0)
            body += struct.pack(fmt + "HHI", tag, kind, count) + packed
        return body + struct.pack(fmt + "I", 0)

    n_entries = 6
    dir_len = 2 + 12 * n_entries + 4
    arrays_len = 8 * strips if strips > 1 else 0
    if ifd_last:
        pixels_at = 8
        offsets = [pixels_at + 100 * i for i in range(strips)]
        arrays_at = pixels_at + 100 * strips
        ifd_at = arrays_at + arrays_len + gap
        pixels = bytes(100 * strips)
    else:
        ifd_at = 8
        arrays_at = ifd_at + dir_len
        pixels_at = arrays_at + arrays_len + gap
        offsets = [pixels_at + 100 * i for i in range(strips)]
        pixels = bytes(100 * strips)
    arrays = struct.pack(fmt + "I" * strips, *offsets) + struct.pack(fmt + "I" * strips, *counts)
    arrays = arrays if strips > 1 else b""
    header = order.encode() + struct.pack(fmt + "HI", 42, ifd_at)
    ifd = directory(ifd_at, offsets, arrays_at)
    if ifd_last:
        trailer = struct.pack(fmt + "HHH", 8, 8, 8) if rgb else b""
        return header + pixels + arrays + bytes(gap) + ifd + trailer
    return header + ifd + arrays + bytes(gap) + pixels


def webp_bytes() -> bytes:
    """A 1x1 lossless (VP8L) WebP: five one-symbol prefix codes, so the pixel takes no bits."""
    bits = [0] * 14 + [0] * 14 + [0] + [0, 0, 0]  # width-1, height-1, alpha hint, version
    bits += [0, 0, 0]  # no transform, no colour cache, no meta prefix codes
    for symbol in (0, 0, 0, 255, 0):  # green, red, blue, alpha (opaque), distance
        bits += [1, 0, 1] + [(symbol >> i) & 1 for i in range(8)]  # simple, 1 symbol, 8 bits
    bits += [0] * (-len(bits) % 8)
    data = b"\x2f" + bytes(
        sum(bit << i for i, bit in enumerate(bits[k : k + 8])) for k in range(0, len(bits), 8)
    )
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(data)) + data + b"\x00" * (len(data) % 2)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def write_image(path: Path, data: bytes | None = None, *, tag: str = "") -> Path:
    """Write a valid image (by default a PNG distinguished by `tag`), creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(tag=tag or path.name) if data is None else data)
    return path
