"""Sample datasets: real, decodable, varied image bytes, laid out with sidecars that mean what
DatasetInfo says; Pillow is used here only to prove the files decode."""

from __future__ import annotations

import hashlib
import io
import random
import struct
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from syncd import sample
from syncd.errors import SidecarError
from syncd.imageformat import image_problem
from syncd.model import normalize_metadata
from syncd.sidecar import is_sidecar_name, parse_sidecar, sidecar_candidates


def _decode(data: bytes) -> Image.Image:
    """Open and fully decode image bytes with Pillow (truncated data raises)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _segments(jpeg: bytes) -> list[tuple[int, bytes]]:
    """(marker, payload) of every header segment before the scan data."""
    out, pos = [], 2
    while True:
        marker, length = struct.unpack_from(">HH", jpeg, pos)
        out.append((marker & 0xFF, jpeg[pos + 4 : pos + 2 + length]))
        if marker == 0xFFDA:
            return out
        pos += 2 + length


def _huffman_tables(jpeg: bytes) -> dict[int, bytes]:
    """Table class/id byte -> 16 counts + symbols, from every DHT segment."""
    tables = {}
    for marker, payload in _segments(jpeg):
        pos = 0
        while marker == 0xC4 and pos < len(payload):
            count = sum(payload[pos + 1 : pos + 17])
            tables[payload[pos]] = payload[pos + 1 : pos + 17 + count]
            pos += 17 + count
    return tables


def _quant_tables(jpeg: bytes) -> dict[int, bytes]:
    """Table id -> 64 zigzag-ordered 8-bit values, from every DQT segment."""
    tables = {}
    for marker, payload in _segments(jpeg):
        for pos in range(0, len(payload) if marker == 0xDB else 0, 65):
            tables[payload[pos]] = payload[pos + 1 : pos + 65]
    return tables


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- PNG ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "noise"),
    [(1, 1, 0.0), (2, 3, 1.0), (16, 16, 0.0), (37, 23, 0.3), (128, 96, 0.05), (64, 64, 1.0)],
)
def test_png_bytes_decodes_to_requested_size(width: int, height: int, noise: float) -> None:
    """png_bytes gives a whole PNG that Pillow decodes as RGB of the requested size."""
    data = sample.png_bytes(width, height, seed=7, noise=noise)
    assert image_problem(data) is None
    image = _decode(data)
    assert (image.format, image.mode, image.size) == ("PNG", "RGB", (width, height))


def test_encode_png_is_lossless() -> None:
    """encode_png stores exactly the pixels it was given."""
    rgb = random.Random(1).randbytes(3 * 29 * 17)
    assert _decode(sample.encode_png(29, 17, rgb)).tobytes() == rgb


def test_png_noise_controls_size() -> None:
    """More noise makes a bigger file, so noise steers the byte size."""
    sizes = [len(sample.png_bytes(64, 64, seed=3, noise=n)) for n in (0.0, 0.25, 0.5, 1.0)]
    assert sizes == sorted(sizes)
    assert sizes[-1] > 5 * sizes[0]


def test_png_bytes_is_deterministic_and_varied() -> None:
    """The same seed gives the same bytes; different seeds give different pictures."""
    assert sample.png_bytes(32, 32, seed=5) == sample.png_bytes(32, 32, seed=5)
    pictures = {sample.png_bytes(32, 32, seed=s) for s in range(20)}
    assert len(pictures) == 20


def test_sized_pngs_hit_exact_sizes() -> None:
    """SizedPngs makes decodable PNGs of exactly the asked size, from its minimum upwards."""
    maker = sample.SizedPngs(seed=2)
    rng = random.Random(0)
    smallest = maker.min_size("t")
    for size in (smallest, smallest + 1, 2_000, 20_000, 70_000, 200_001):
        data = maker.make(size, rng, "t")
        assert len(data) == size
        assert image_problem(data) is None
        assert _decode(data).mode == "RGB"
    with pytest.raises(ValueError, match="at least"):
        maker.make(smallest - 1, rng, "t")


# --- JPEG ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height"), [(1, 1), (7, 9), (8, 8), (16, 16), (37, 23), (64, 40), (128, 128)]
)
def test_jpeg_bytes_decodes_to_requested_size(width: int, height: int) -> None:
    """jpeg_bytes gives a whole baseline JPEG that Pillow decodes as RGB of the requested size."""
    data = sample.jpeg_bytes(width, height, seed=11)
    assert image_problem(data) is None
    image = _decode(data)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (width, height))


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    quality=st.integers(1, 100),
)
def test_any_small_jpeg_decodes(width: int, height: int, seed: int, quality: int) -> None:
    """Every size and quality yields a JPEG that decodes to that size."""
    data = sample.encode_jpeg(
        width, height, sample.picture(width, height, seed=seed), quality=quality
    )
    assert image_problem(data) is None
    assert _decode(data).size == (width, height)


def test_encode_jpeg_keeps_the_picture() -> None:
    """The decoded JPEG is close to the source pixels (so DCT, zigzag and tables are right)."""
    rgb = sample.picture(64, 48, seed=5)
    decoded = _decode(sample.encode_jpeg(64, 48, rgb, quality=90)).tobytes()
    errors = [abs(a - b) for a, b in zip(rgb, decoded, strict=True)]
    assert sum(errors) / len(errors) < 3


def test_encode_jpeg_of_noise_decodes() -> None:
    """Random pixels (large AC coefficients, long zero runs, 0xFF stuffing) still decode."""
    rgb = random.Random(4).randbytes(3 * 40 * 24)
    data = sample.encode_jpeg(40, 24, rgb, quality=100)
    assert _decode(data).size == (40, 24)


def test_jpeg_tables_match_libjpeg() -> None:
    """Our Huffman and quantisation tables are byte for byte those libjpeg writes by default."""
    reference = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(reference, "JPEG", quality=75)
    ours = sample.encode_jpeg(16, 16, bytes(3 * 256), quality=75)
    assert _huffman_tables(ours) == _huffman_tables(reference.getvalue())
    assert _quant_tables(ours) == _quant_tables(reference.getvalue())
    for bits, symbols in sample.HUFFMAN_TABLES.values():
        assert sum(bits) == len(symbols) == len(set(symbols))


def test_pad_jpeg_reaches_exact_size() -> None:
    """pad_jpeg adds comment segments that keep the JPEG whole and decodable."""
    data = sample.jpeg_bytes(16, 16, seed=1)
    for extra in (0, 4, 5, 1_000, 65_537, 65_539, 65_540, 200_000):
        padded = sample.pad_jpeg(data, len(data) + extra, tag="x")
        assert len(padded) == len(data) + extra
        assert image_problem(padded) is None
        assert _decode(padded).size == (16, 16)
    with pytest.raises(ValueError, match="COM"):
        sample.pad_jpeg(data, len(data) + 3)


# --- make_dataset -------------------------------------------------------------------------


def test_dataset_layout_mixes_formats_and_sidecars(tmp_path: Path) -> None:
    """Class folders hold PNGs and JPEGs, JSON and text sidecars, and images with none."""
    info = sample.make_dataset(tmp_path, per_class=6)
    assert info.root == tmp_path
    assert len(info.images) == 18
    assert {p.split("/")[0] for p in info.images} == {"cat", "dog", "bird"}
    assert "cat/cat_001.png" in info.images
    assert {p.rsplit(".", 1)[1] for p in info.images} == {"png", "jpg"}
    assert {p.rsplit(".", 1)[1] for p in info.sidecars} == {"json", "txt"}
    assert any(p.endswith((".png.json", ".jpg.json")) for p in info.sidecars)
    assert any(p.endswith((".png.txt", ".jpg.txt")) for p in info.sidecars)
    assert any(c == {} for c in info.expected_concepts.values())
    assert any(not v for c in info.expected_concepts.values() for v in c.values())
    assert info.broken == [] and info.broken_images == []
    on_disk = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert on_disk == set(info.images) | set(info.sidecars)


def test_dataset_images_are_real(tmp_path: Path) -> None:
    """Every dataset image passes image_problem and decodes with Pillow."""
    info = sample.make_dataset(tmp_path, per_class=8)
    for rel in info.images:
        data = (tmp_path / rel).read_bytes()
        assert image_problem(data) is None, rel
        assert _decode(data).format == ("JPEG" if rel.endswith(".jpg") else "PNG")
    hashes = {hashlib.sha256((tmp_path / rel).read_bytes()).digest() for rel in info.images}
    assert len(hashes) == len(info.images)


def test_dataset_expectations_match_sidecars(tmp_path: Path) -> None:
    """expected_concepts/metadata are what the sidecar that applies to each image says."""
    info = sample.make_dataset(tmp_path, per_class=12, classes=("cat", "dog", "bird", "fish"))
    used = set()
    for rel in info.images:
        sidecar = next((c for c in sidecar_candidates(rel) if (tmp_path / c).exists()), None)
        if sidecar is None:
            assert info.expected_concepts[rel] == {} and info.expected_metadata[rel] == {}
            continue
        used.add(sidecar)
        content = parse_sidecar((tmp_path / sidecar).read_bytes(), path=sidecar)
        assert content.input_id is None
        assert dict(content.concepts) == info.expected_concepts[rel], rel
        assert dict(content.metadata) == info.expected_metadata[rel], rel
        assert info.expected_concepts[rel][rel.split("/")[0]] is True
    assert used == set(info.sidecars)
    assert all(is_sidecar_name(p) for p in info.sidecars)


def test_dataset_is_deterministic(tmp_path: Path) -> None:
    """The same seed writes the same bytes and info; another seed writes other images."""
    first = sample.make_dataset(tmp_path / "a", seed=3, per_class=5, broken_sidecar=True)
    second = sample.make_dataset(tmp_path / "b", seed=3, per_class=5, broken_sidecar=True)
    other = sample.make_dataset(tmp_path / "c", seed=4, per_class=5, broken_sidecar=True)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert (first.images, first.sidecars, first.broken) == (
        second.images,
        second.sidecars,
        second.broken,
    )
    assert first.expected_concepts == second.expected_concepts
    assert first.expected_metadata == second.expected_metadata
    assert first.images == other.images
    images_a = {_tree(tmp_path / "a")[p] for p in first.images}
    images_c = {_tree(tmp_path / "c")[p] for p in other.images}
    assert images_a.isdisjoint(images_c)


def test_broken_sidecar_is_recorded(tmp_path: Path) -> None:
    """broken_sidecar writes dog/dog_003.json with a JSON syntax error and reports it."""
    info = sample.make_dataset(tmp_path, per_class=4, broken_sidecar=True)
    assert info.broken == ["dog/dog_003.json"]
    assert "dog/dog_003.json" in info.sidecars
    (image,) = info.broken_images
    assert image.startswith("dog/dog_003.")
    assert image not in info.expected_concepts
    assert next(c for c in sidecar_candidates(image) if (tmp_path / c).exists()) == info.broken[0]
    with pytest.raises(SidecarError, match="line"):
        parse_sidecar((tmp_path / info.broken[0]).read_bytes(), path=info.broken[0])


def test_broken_sidecar_without_a_dog_class(tmp_path: Path) -> None:
    """Without a "dog" class the broken sidecar goes to the second class's last image (<= 3)."""
    info = sample.make_dataset(tmp_path, classes=("a", "b"), per_class=2, broken_sidecar=True)
    assert info.broken == ["b/b_002.json"]


def test_dataset_without_sidecars(tmp_path: Path) -> None:
    """sidecars=False writes images only, each expected to carry no concepts."""
    info = sample.make_dataset(tmp_path, per_class=4, sidecars=False)
    assert info.sidecars == []
    assert info.expected_concepts == {rel: {} for rel in info.images}
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and is_sidecar_name(p.name)]


def test_dataset_size_range(tmp_path: Path) -> None:
    """With size_range every image, PNG or JPEG, lies in it and still decodes."""
    info = sample.make_dataset(tmp_path, per_class=6, size_range=(3_000, 9_000))
    for rel in info.images:
        data = (tmp_path / rel).read_bytes()
        assert 3_000 <= len(data) <= 9_000, rel
        assert image_problem(data) is None
        _decode(data)


def test_dataset_rejects_bad_arguments(tmp_path: Path) -> None:
    """Unusable class names, sizes or counts raise ValueError before writing anything odd."""
    with pytest.raises(ValueError, match="folder name"):
        sample.make_dataset(tmp_path, classes=("a/b",))
    with pytest.raises(ValueError, match="text sidecar"):
        sample.make_dataset(tmp_path, classes=("-neg",))
    with pytest.raises(ValueError, match="distinct"):
        sample.make_dataset(tmp_path, classes=("a", "a"))
    with pytest.raises(ValueError, match="too small"):
        sample.make_dataset(tmp_path, size_range=(10, 100))
    with pytest.raises(ValueError, match="broken_sidecar"):
        sample.make_dataset(tmp_path, per_class=0, broken_sidecar=True)


def test_dataset_metadata_is_normalised(tmp_path: Path) -> None:
    """expected_metadata is already in the remote's form (numbers as floats)."""
    info = sample.make_dataset(tmp_path, per_class=6)
    metas = [m for m in info.expected_metadata.values() if m]
    assert metas
    for meta in metas:
        assert meta == normalize_metadata(meta)
        assert isinstance(meta["index"], float)


# --- make_flat_tree -----------------------------------------------------------------------


def test_flat_tree_of_2000_files(tmp_path: Path, record_property) -> None:
    """2,000 distinct, whole PNGs spread evenly over the folders, sizes in range, total right."""
    started = time.perf_counter()
    total = sample.make_flat_tree(tmp_path, files=2_000, dirs=16, size_range=(2_000, 20_000))
    rate = 2_000 / (time.perf_counter() - started)
    record_property("files_per_second", round(rate))
    print(f"make_flat_tree: {rate:.0f} files/s")
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2_000
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"d{j:04d}" for j in range(16)]
    assert {len(list(d.iterdir())) for d in tmp_path.iterdir()} == {125}
    blobs = [p.read_bytes() for p in files]
    assert total == sum(len(b) for b in blobs)
    assert all(2_000 <= len(b) <= 20_000 for b in blobs)
    assert len({hashlib.sha256(b).digest() for b in blobs}) == 2_000
    assert all(image_problem(b) is None for b in blobs)
    for blob in blobs[::40]:
        assert _decode(blob).mode == "RGB"
    assert max(len(b) for b in blobs) - min(len(b) for b in blobs) > 10_000


def test_flat_tree_is_deterministic_and_distinct_with_tiny_range(tmp_path: Path) -> None:
    """The same seed gives the same tree; a one-byte range still gives distinct files."""
    sample.make_flat_tree(tmp_path / "a", files=50, dirs=3, seed=9)
    sample.make_flat_tree(tmp_path / "b", files=50, dirs=3, seed=9)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    total = sample.make_flat_tree(tmp_path / "c", files=200, dirs=2, size_range=(1_500, 1_500))
    assert total == 200 * 1_500
    assert len(set(_tree(tmp_path / "c").values())) == 200


def test_flat_tree_rejects_impossible_sizes(tmp_path: Path) -> None:
    """A size range below the smallest sample PNG, or no folders, raises ValueError."""
    with pytest.raises(ValueError, match="needs"):
        sample.make_flat_tree(tmp_path, files=1, dirs=1, size_range=(10, 100))
    with pytest.raises(ValueError, match="dirs"):
        sample.make_flat_tree(tmp_path, files=1, dirs=0)
