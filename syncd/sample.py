"""Sample datasets made of real image bytes, for the demo, the tests and the benchmarks.

Pure Python (zlib, struct, random), no Pillow: PNGs are written chunk by chunk, JPEGs by a
small baseline encoder (YCbCr 4:4:4, the quantisation and Huffman tables of ITU T.81 Annex K).
Everything is deterministic for a given seed. The tests prove with Pillow that the files decode.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import mul
from pathlib import Path
from typing import Any

import structlog

from syncd.model import normalize_metadata

log = structlog.get_logger(__name__)

Color = tuple[int, int, int]

# --- pictures -------------------------------------------------------------------------------


def _color(rng: random.Random) -> Color:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def picture(width: int, height: int, *, seed: int, noise: float = 0.0) -> bytes:
    """Packed RGB pixels: a diagonal two-colour gradient with a disc, `noise` random pixels.

    `noise` is the fraction (0..1) of pixels replaced by random bytes.
    """
    _check_size(width, height)
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be between 0 and 1, not {noise}")
    rng = random.Random(seed)
    (r0, g0, b0), (r1, g1, b1), disc = _color(rng), _color(rng), bytes(_color(rng))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    radius2 = (rng.uniform(0.15, 0.4) * min(width, height)) ** 2
    span = max(width + height - 2, 1)
    out = bytearray()
    for y in range(height):
        for x in range(width):
            if (x - cx) ** 2 + (y - cy) ** 2 <= radius2:
                out += disc
                continue
            t = (x + y) / span
            out += bytes(
                (round(r0 + (r1 - r0) * t), round(g0 + (g1 - g0) * t), round(b0 + (b1 - b0) * t))
            )
    if noise > 0.0:
        for i in range(width * height):
            if noise >= 1.0 or rng.random() < noise:
                out[3 * i : 3 * i + 3] = rng.randbytes(3)
    return bytes(out)


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= 65535 and 1 <= height <= 65535):
        raise ValueError(f"image size must be 1..65535 x 1..65535, not {width}x{height}")


# --- PNG --------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_STORED_MAX = 65535


def _chunk(kind: bytes, data: bytes | bytearray) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))
    return struct.pack(">I", len(data)) + kind + bytes(data) + struct.pack(">I", crc)


def _ihdr(width: int, height: int) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A truecolour 8-bit PNG of packed RGB pixels (rows top to bottom, no filtering)."""
    _check_size(width, height)
    stride = 3 * width
    if len(rgb) != stride * height:
        raise ValueError(f"expected {stride * height} bytes of RGB, got {len(rgb)}")
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    idat = _chunk(b"IDAT", zlib.compress(raw, 6))
    return PNG_SIGNATURE + _ihdr(width, height) + idat + _PNG_IEND


def png_bytes(width: int, height: int, *, seed: int, noise: float = 0.0) -> bytes:
    """A real PNG of `picture(...)`; more `noise` compresses worse, so makes bigger files."""
    return encode_png(width, height, picture(width, height, seed=seed, noise=noise))


def _stored_blocks(data: bytes | bytearray) -> bytes:
    """`data` as uncompressed deflate blocks, the last one final (one empty block if no data)."""
    out = bytearray()
    pos = 0
    while True:
        piece = data[pos : pos + _STORED_MAX]
        pos += len(piece)
        final = pos >= len(data)
        out += struct.pack("<BHH", int(final), len(piece), len(piece) ^ 0xFFFF)
        out += piece
        if final:
            return bytes(out)


def _stored_overhead(nbytes: int) -> int:
    return 5 * max(1, -(-nbytes // _STORED_MAX))


@dataclass(frozen=True)
class _Band:
    """A gradient band, deflated once and ended by a sync flush so stored blocks can follow."""

    width: int
    height: int
    zhead: bytes  # zlib header + deflate blocks, byte aligned, not final
    adler: int  # adler32 of the band's raw (filtered) bytes

    @property
    def rowlen(self) -> int:
        return 1 + 3 * self.width


class SizedPngs:
    """PNGs of an exact byte size, fast enough for 100,000 files.

    Each file is a precompressed gradient band (one of a few templates) followed by rows of
    random pixels stored uncompressed, so the noise decides the size for the cost of a memcpy;
    a tEXt chunk carrying `tag` takes up the last few bytes. Distinct tags give distinct files.
    """

    def __init__(self, *, seed: int, widths: Sequence[int] = (48, 64, 80, 96, 112, 128)) -> None:
        rng = random.Random(seed)
        self._bands = [self._band(w, 8, rng.getrandbits(32)) for w in widths]
        self._largest = max(self._bands, key=lambda b: len(b.zhead))

    @staticmethod
    def _band(width: int, height: int, seed: int) -> _Band:
        rgb = picture(width, height, seed=seed)
        stride = 3 * width
        raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
        comp = zlib.compressobj(9)
        zhead = comp.compress(raw) + comp.flush(zlib.Z_SYNC_FLUSH)
        return _Band(width, height, zhead, zlib.adler32(raw))

    @staticmethod
    def _text(tag: str) -> bytes:
        return b"Comment\x00syncd sample " + tag.encode("latin-1", "replace")

    def _fixed(self, band: _Band, tag: str) -> int:
        # signature, IHDR, IDAT framing + zlib head + adler32, tEXt framing + text, IEND
        return 8 + 25 + 12 + len(band.zhead) + 4 + 12 + len(self._text(tag)) + 12

    def min_size(self, tag: str = "") -> int:
        """The smallest size `make` can produce for this tag."""
        return self._fixed(self._largest, tag) + _stored_overhead(0)

    def make(self, size: int, rng: random.Random, tag: str) -> bytes:
        """A PNG of exactly `size` bytes; its pixels and template come from `rng`."""
        band = rng.choice(self._bands)
        avail = size - self._fixed(band, tag)
        if size < self.min_size(tag):
            raise ValueError(f"a sample PNG needs at least {self.min_size(tag)} bytes, not {size}")
        rows = avail // band.rowlen
        while rows and rows * band.rowlen + _stored_overhead(rows * band.rowlen) > avail:
            rows -= 1
        nbytes = rows * band.rowlen
        noise = bytearray(rng.randbytes(nbytes))
        noise[:: band.rowlen] = bytes(rows)  # filter type 0 for every row
        zdata = (
            band.zhead + _stored_blocks(noise) + struct.pack(">I", zlib.adler32(noise, band.adler))
        )
        pad = avail - nbytes - _stored_overhead(nbytes)
        return (
            PNG_SIGNATURE
            + _ihdr(band.width, band.height + rows)
            + _chunk(b"IDAT", zdata)
            + _chunk(b"tEXt", self._text(tag) + b" " * pad)
            + _PNG_IEND
        )


# --- JPEG (baseline, YCbCr 4:4:4) -------------------------------------------------------------


def _zigzag() -> tuple[int, ...]:
    """Natural (row-major) index of each coefficient in zigzag order."""
    cells = [(x + y, y if (x + y) % 2 else x, 8 * y + x) for y in range(8) for x in range(8)]
    return tuple(index for _, _, index in sorted(cells))


ZIGZAG = _zigzag()

# Annex K, tables K.1 and K.2, natural order.
_LUMA_Q = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)  # fmt: skip
_CHROMA_Q = (
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
) + (99,) * 32  # fmt: skip

# Annex K.3: (code-length counts for lengths 1..16, symbols in code order).
HUFFMAN_TABLES: dict[str, tuple[tuple[int, ...], bytes]] = {
    "dc_luma": ((0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0), bytes(range(12))),
    "dc_chroma": ((0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0), bytes(range(12))),
    "ac_luma": (
        (0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7D),
        bytes.fromhex(
            "01020300041105122131410613516107227114328191a1082342b1c11552d1f0"
            "2433627282090a161718191a25262728292a3435363738393a434445464748494a"
            "535455565758595a636465666768696a737475767778797a838485868788898a"
            "92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6"
            "c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9fa"
        ),
    ),
    "ac_chroma": (
        (0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77),
        bytes.fromhex(
            "000102031104052131061241510761711322328108144291a1b1c109233352f0"
            "156272d10a162434e125f11718191a262728292a35363738393a434445464748"
            "494a535455565758595a636465666768696a737475767778797a828384858687"
            "88898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3"
            "c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9fa"
        ),
    ),
}

_DCT = tuple(
    tuple(
        (math.sqrt(0.125) if u == 0 else 0.5) * math.cos((2 * x + 1) * u * math.pi / 16)
        for x in range(8)
    )
    for u in range(8)
)


_Codes = dict[int, tuple[int, int]]
_DHT_ORDER = ((0x00, "dc_luma"), (0x10, "ac_luma"), (0x01, "dc_chroma"), (0x11, "ac_chroma"))


def _huffman_codes(bits: Sequence[int], symbols: bytes) -> _Codes:
    """Symbol -> (code, length), canonical codes as in T.81 Annex C."""
    codes: _Codes = {}
    code, k = 0, 0
    for length, count in enumerate(bits, start=1):
        for _ in range(count):
            codes[symbols[k]] = (code, length)
            code, k = code + 1, k + 1
        code <<= 1
    return codes


_CODES = {name: _huffman_codes(*table) for name, table in HUFFMAN_TABLES.items()}


def quant_table(base: Sequence[int], quality: int) -> tuple[int, ...]:
    """Scale an Annex K table to a 1..100 quality the way libjpeg does (baseline: <= 255)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be 1..100, not {quality}")
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return tuple(min(255, max(1, (q * scale + 50) // 100)) for q in base)


class _BitWriter:
    """Entropy-coded segment writer: big-endian bits, 0xFF stuffed with 0x00."""

    def __init__(self) -> None:
        self.out = bytearray()
        self._acc = 0
        self._n = 0

    def write(self, code: int, length: int) -> None:
        self._acc = (self._acc << length) | code
        self._n += length
        while self._n >= 8:
            self._n -= 8
            byte = (self._acc >> self._n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0)
        self._acc &= (1 << self._n) - 1

    def flush(self) -> bytes:
        if self._n:
            self.write((1 << (8 - self._n)) - 1, 8 - self._n)  # pad with 1-bits
        return bytes(self.out)


def _fdct_quantize(block: list[list[float]], quant: Sequence[int]) -> list[int]:
    """Forward 8x8 DCT of a level-shifted block, quantised, in zigzag order."""
    rows = [[sum(map(mul, cu, row)) for cu in _DCT] for row in block]  # rows[y][u]
    cols = list(zip(*rows, strict=True))  # cols[u][y]
    natural = [0.0] * 64
    for u, col in enumerate(cols):
        for v, cv in enumerate(_DCT):
            natural[8 * v + u] = sum(map(mul, cv, col))
    return [round(natural[i] / quant[i]) for i in ZIGZAG]


def _magnitude(value: int) -> tuple[int, int]:
    """(size category, the bits that follow it) of a DC difference or AC coefficient."""
    size = abs(value).bit_length()
    return size, value if value >= 0 else value + (1 << size) - 1


def _encode_block(out: _BitWriter, coeffs: list[int], prev_dc: int, dc: _Codes, ac: _Codes) -> int:
    size, bits = _magnitude(coeffs[0] - prev_dc)
    out.write(*dc[size])
    if size:
        out.write(bits, size)
    run = 0
    for value in coeffs[1:]:
        if value == 0:
            run += 1
            continue
        while run > 15:
            out.write(*ac[0xF0])  # ZRL: sixteen zeros
            run -= 16
        size, bits = _magnitude(value)
        out.write(*ac[(run << 4) | size])
        out.write(bits, size)
        run = 0
    if run:
        out.write(*ac[0x00])  # EOB
    return coeffs[0]


def _planes(width: int, height: int, rgb: bytes) -> list[list[list[float]]]:
    """Level-shifted Y, Cb, Cr planes padded to whole 8x8 blocks by repeating the edges."""
    pw, ph = -(-width // 8) * 8, -(-height // 8) * 8
    planes: list[list[list[float]]] = [[], [], []]
    for y in range(ph):
        base = 3 * width * min(y, height - 1)
        ys, cbs, crs = [], [], []
        for x in range(pw):
            i = base + 3 * min(x, width - 1)
            r, g, b = rgb[i], rgb[i + 1], rgb[i + 2]
            ys.append(0.299 * r + 0.587 * g + 0.114 * b - 128.0)
            cbs.append(-0.168736 * r - 0.331264 * g + 0.5 * b)
            crs.append(0.5 * r - 0.418688 * g - 0.081312 * b)
        for plane, row in zip(planes, (ys, cbs, crs), strict=True):
            plane.append(row)
    return planes


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def _jpeg_headers(width: int, height: int, luma_q: Sequence[int], chroma_q: Sequence[int]) -> bytes:
    jfif = _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    dqt = _segment(
        0xDB,
        b"\x00" + bytes(luma_q[i] for i in ZIGZAG) + b"\x01" + bytes(chroma_q[i] for i in ZIGZAG),
    )
    sof = _segment(
        0xC0, struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x11\x00\x02\x11\x01\x03\x11\x01"
    )
    dht = b""
    for klass, name in _DHT_ORDER:
        bits, symbols = HUFFMAN_TABLES[name]
        dht += bytes([klass, *bits]) + symbols
    sos = _segment(0xDA, b"\x03\x01\x00\x02\x11\x03\x11\x00\x3f\x00")
    return b"\xff\xd8" + jfif + dqt + sof + _segment(0xC4, dht) + sos


def encode_jpeg(width: int, height: int, rgb: bytes, *, quality: int = 85) -> bytes:
    """A baseline JPEG (JFIF, YCbCr 4:4:4, standard tables) of packed RGB pixels."""
    _check_size(width, height)
    if len(rgb) != 3 * width * height:
        raise ValueError(f"expected {3 * width * height} bytes of RGB, got {len(rgb)}")
    luma_q, chroma_q = quant_table(_LUMA_Q, quality), quant_table(_CHROMA_Q, quality)
    tables = (
        (luma_q, _CODES["dc_luma"], _CODES["ac_luma"]),
        (chroma_q, _CODES["dc_chroma"], _CODES["ac_chroma"]),
        (chroma_q, _CODES["dc_chroma"], _CODES["ac_chroma"]),
    )
    planes = _planes(width, height, rgb)
    out = _BitWriter()
    prev = [0, 0, 0]
    for by in range(0, len(planes[0]), 8):
        for bx in range(0, len(planes[0][0]), 8):
            for c, (plane, (quant, dc, ac)) in enumerate(zip(planes, tables, strict=True)):
                block = [row[bx : bx + 8] for row in plane[by : by + 8]]
                prev[c] = _encode_block(out, _fdct_quantize(block, quant), prev[c], dc, ac)
    return _jpeg_headers(width, height, luma_q, chroma_q) + out.flush() + b"\xff\xd9"


def jpeg_bytes(width: int, height: int, *, seed: int) -> bytes:
    """A real baseline JPEG of `picture(...)` (gradient and disc, no noise)."""
    return encode_jpeg(width, height, picture(width, height, seed=seed))


def pad_jpeg(data: bytes, size: int, *, tag: str = "") -> bytes:
    """`data` grown to exactly `size` bytes with COM (comment) segments after SOI + APP0."""
    extra = size - len(data)
    if extra == 0:
        return data
    if extra < 4:
        raise ValueError(f"cannot pad a JPEG by {extra} bytes (a COM segment takes at least 4)")
    head = 2 + 18 if data[2:4] == b"\xff\xe0" else 2
    text = b"syncd sample " + tag.encode("latin-1", "replace")
    segments = bytearray()
    while extra:
        take = min(extra, 65535 + 2)
        if 0 < extra - take < 4:  # leave room for a last whole segment
            take = extra - 4
        payload = (text + b" " * take)[: take - 4]
        segments += _segment(0xFE, payload)
        extra -= take
    return data[:head] + bytes(segments) + data[head:]


# --- datasets -------------------------------------------------------------------------------


@dataclass
class DatasetInfo:
    """What make_dataset wrote; every path is relative to `root`, with `/` separators.

    `expected_concepts` (and `expected_metadata`, already normalised) hold what the sidecar of
    each image means with labels_from_dirs off: `{}` for an image without a sidecar. Images
    whose sidecar is broken (listed in `broken`) have no entry.
    """

    root: Path
    images: list[str]
    sidecars: list[str]
    broken: list[str]
    expected_concepts: dict[str, dict[str, bool]]
    expected_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def broken_images(self) -> list[str]:
        """Images that must come out with a problem because their sidecar is invalid."""
        return [p for p in self.images if p not in self.expected_concepts]


_SIDECAR_KINDS = ("json_ids", "text", "json_objects", "none", "json_map", "text_ext")
_BROKEN_SIDECAR = b'{\n  "concepts": ["dog",\n  "metadata": {"note": "missing bracket"}\n}\n'


def _labels(
    rng: random.Random, cls: str, index: int, others: Sequence[str]
) -> tuple[dict[str, bool], dict[str, Any]]:
    """(concept id -> present, metadata) for one image of class `cls`."""
    negatives = rng.sample(list(others), k=min(len(others), rng.randint(0, 2)))
    extras = [rng.choice(("indoor", "outdoor"))] if rng.random() < 0.5 else []
    concepts = {cls: True, **dict.fromkeys(extras, True), **dict.fromkeys(negatives, False)}
    metadata = {
        "class": cls,
        "index": index,
        "split": rng.choice(("train", "val", "test")),
        "camera": {"iso": 100 * rng.randint(1, 32), "flash": rng.random() < 0.5},
        "tags": sorted(rng.sample(["sample", "demo", "café", "nuit", "snow"], k=2)),
        "score": round(rng.random(), 3),
    }
    return concepts, metadata


def _sidecar(
    kind: str, image: str, concepts: dict[str, bool], metadata: dict[str, Any]
) -> tuple[str, bytes, dict[str, Any]]:
    """(relative sidecar path, its bytes, the metadata it carries) for one kind of sidecar."""
    stem = image.rsplit(".", 1)[0]
    present = [c for c, v in concepts.items() if v]
    absent = [c for c, v in concepts.items() if not v]
    if kind == "json_ids":
        doc: dict[str, Any] = {"concepts": present, "not_concepts": absent}
        return f"{stem}.json", _json(doc), {}
    if kind == "json_objects":
        items = [{"id": c, "value": 1 if v else 0} for c, v in concepts.items()]
        return f"{image}.json", _json({"concepts": items, "metadata": metadata}), metadata
    if kind == "json_map":
        return f"{stem}.json", _json({"concepts": concepts, "metadata": metadata}), metadata
    lines = ["# labels for " + image.rsplit("/", 1)[-1], *present, "", *("-" + c for c in absent)]
    path = f"{stem}.txt" if kind == "text" else f"{image}.txt"
    return path, ("\n".join(lines) + "\n").encode(), {}


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _check_range(size_range: tuple[int, int]) -> None:
    lo, hi = size_range
    if not 0 < lo <= hi:
        raise ValueError(f"size_range must be (low, high) with 0 < low <= high, not {size_range}")


def make_dataset(
    root: Path,
    *,
    classes: Sequence[str] = ("cat", "dog", "bird"),
    per_class: int = 10,
    sidecars: bool = True,
    broken_sidecar: bool = False,
    seed: int = 0,
    size_range: tuple[int, int] | None = None,
) -> DatasetInfo:
    """Write `root/<class>/<class>_NNN.{png,jpg}` images with a mix of sidecars; deterministic.

    Image k (1-based) of class number c is a JPEG when (k + c) % 3 == 0, else a PNG; its
    sidecar kind cycles through JSON (id lists, {"id","value"} objects, a map) as `name.json`
    or `name.ext.json`, text as `name.txt` or `name.ext.txt`, and none. `broken_sidecar`
    replaces the sidecar of dog_003 (or of the 2nd class's 3rd image, or the nearest that
    exists) with `name.json` holding a JSON syntax error. With `size_range` every image's size
    lies in it (PNG noise rows, JPEG comment padding).
    """
    _check_names(classes)
    if per_class < 0:
        raise ValueError(f"per_class must be >= 0, not {per_class}")
    if broken_sidecar and per_class == 0:
        raise ValueError("broken_sidecar needs at least one image per class")
    if size_range is not None:
        _check_range(size_range)
    started = time.perf_counter()
    rng = random.Random(seed)
    sized = SizedPngs(seed=rng.getrandbits(32)) if size_range else None
    broken_cls = "dog" if "dog" in classes else classes[min(1, len(classes) - 1)]
    broken_at = (broken_cls, min(3, per_class)) if broken_sidecar else None
    info = DatasetInfo(Path(root), [], [], [], {}, {})
    for c, cls in enumerate(classes):
        (Path(root) / cls).mkdir(parents=True, exist_ok=True)
        others = [o for o in classes if o != cls]
        for k in range(1, per_class + 1):
            is_jpeg = (k + c) % 3 == 0
            image = f"{cls}/{cls}_{k:03d}.{'jpg' if is_jpeg else 'png'}"
            image_seed = rng.getrandbits(32)
            _write(
                Path(root) / image,
                _image(
                    rng, image, seed=image_seed, is_jpeg=is_jpeg, size_range=size_range, sized=sized
                ),
            )
            info.images.append(image)
            concepts, metadata = _labels(rng, cls, k, others)
            if broken_at == (cls, k):
                sidecar = image.rsplit(".", 1)[0] + ".json"
                _write(Path(root) / sidecar, _BROKEN_SIDECAR)
                info.sidecars.append(sidecar)
                info.broken.append(sidecar)
                continue
            kind = _SIDECAR_KINDS[(k - 1 + 2 * c) % len(_SIDECAR_KINDS)] if sidecars else "none"
            if kind == "none":
                info.expected_concepts[image], info.expected_metadata[image] = {}, {}
                continue
            sidecar, data, meta = _sidecar(kind, image, concepts, metadata)
            _write(Path(root) / sidecar, data)
            info.sidecars.append(sidecar)
            info.expected_concepts[image] = concepts
            info.expected_metadata[image] = normalize_metadata(meta)
    log.info(
        "sample_dataset_written",
        root=str(root),
        images=len(info.images),
        sidecars=len(info.sidecars),
        broken=len(info.broken),
        seconds=round(time.perf_counter() - started, 3),
    )
    return info


def _check_names(classes: Sequence[str]) -> None:
    if not classes:
        raise ValueError("classes must not be empty")
    for name in classes:
        if not name or name in (".", "..") or "/" in name or "\0" in name or name != name.strip():
            raise ValueError(f"class name {name!r} cannot be a folder name")
        if name.startswith(("#", "-")):
            raise ValueError(f"class name {name!r} would not survive a text sidecar (# or -)")
    if len(set(classes)) != len(classes):
        raise ValueError("class names must be distinct")


def _image(
    rng: random.Random,
    tag: str,
    *,
    seed: int,
    is_jpeg: bool,
    size_range: tuple[int, int] | None,
    sized: SizedPngs | None,
) -> bytes:
    if is_jpeg:
        side = rng.choice((16, 20, 24, 32, 37, 48) if size_range else (16, 24, 32, 37, 48, 64))
        data = jpeg_bytes(side, rng.choice((16, 23, 32, side)), seed=seed)
        if size_range is None:
            return data
        lo, hi = max(size_range[0], len(data) + 4), size_range[1]
        if lo > hi:
            if size_range[0] <= len(data) <= hi:
                return data
            raise ValueError(f"size_range {size_range} is too small for a sample JPEG")
        return pad_jpeg(data, rng.randint(lo, hi), tag=tag)
    if size_range is None or sized is None:
        side = rng.choice((16, 24, 32, 48, 64, 96))
        noise = rng.choice((0.0, 0.05, 0.2, 0.5))
        return png_bytes(side, rng.choice((16, 32, side)), seed=seed, noise=noise)
    lo = max(size_range[0], sized.min_size(tag))
    if lo > size_range[1]:
        raise ValueError(f"size_range {size_range} is too small for a sample PNG")
    return sized.make(rng.randint(lo, size_range[1]), rng, tag)


def make_flat_tree(
    root: Path,
    *,
    files: int,
    dirs: int,
    size_range: tuple[int, int] = (2_000, 20_000),
    seed: int = 0,
) -> int:
    """Write `files` PNGs round-robin into `dirs` folders (d0000, ...), no sidecars.

    Sizes are uniform in `size_range`; every file's bytes differ (random noise rows and the
    file's own tag), so every hash differs. Deterministic for a seed. Returns the total bytes.
    """
    if files < 0 or dirs < 1:
        raise ValueError(f"need files >= 0 and dirs >= 1, not files={files} dirs={dirs}")
    _check_range(size_range)
    started = time.perf_counter()
    rng = random.Random(seed)
    sized = SizedPngs(seed=rng.getrandbits(32))
    lo, hi = size_range
    last_tag = f"{seed}/{max(files - 1, 0)}"
    if sized.min_size(last_tag) > hi:
        raise ValueError(f"size_range {size_range}: a sample PNG needs {sized.min_size(last_tag)}")
    folders = [Path(root) / f"d{j:04d}" for j in range(dirs)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(files):
        tag = f"{seed}/{i}"
        data = sized.make(rng.randint(max(lo, sized.min_size(tag)), hi), rng, tag)
        _write(folders[i % dirs] / f"img_{i:06d}.png", data)
        total += len(data)
    seconds = time.perf_counter() - started
    log.info(
        "sample_tree_written",
        root=str(root),
        files=files,
        dirs=dirs,
        bytes=total,
        seconds=round(seconds, 3),
        files_per_second=round(files / seconds) if seconds > 0 else None,
    )
    return total
