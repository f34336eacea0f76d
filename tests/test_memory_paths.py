"""Pins the body encoder's shortcut (base64 bytes spliced between quotes) to plain `json.dumps`."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.api import encode_inputs
from syncd.engine import _Settled, _Sizes
from syncd.model import FileStat, Labels, LocalImage, Operation, OpKind
from syncd.report import SyncReport
from syncd.scanner import RACY_WINDOW_NS

# Text with quotes, backslashes, control characters, non-BMP characters and surrogate escapes.
ODD_TEXT = st.text(
    st.one_of(
        st.sampled_from(['"', "\\", "/", "\n", "\x00", "\x7f", "é", "\u2028", "😀", " ", "}"]),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
        st.characters(blacklist_categories=("Cs",)),
    ),
    max_size=20,
)
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    ODD_TEXT,
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(ODD_TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def image_field(draw: st.DrawFn) -> dict[str, Any]:
    """`data.image`: base64 as bytes or str (of random bytes), or a url, plus extra keys."""
    kind = draw(st.sampled_from(["bytes", "str", "url", "none"]))
    image: dict[str, Any] = {}
    raw = draw(st.binary(max_size=64))
    if kind == "bytes":
        image["base64"] = base64.b64encode(raw)
    elif kind == "str":
        image["base64"] = base64.b64encode(raw).decode("ascii")
    elif kind == "url":
        image["url"] = "https://example.test/" + draw(ODD_TEXT)
    if draw(st.booleans()):
        image["allow_duplicate_url"] = draw(st.booleans())
    return image


@st.composite
def input_item(draw: st.DrawFn) -> dict[str, Any]:
    """One POST /v2/inputs item with optional id, concepts, metadata, dataset_ids and extras."""
    data: dict[str, Any] = {}
    if draw(st.booleans()):
        data["image"] = draw(image_field())
    if draw(st.booleans()):
        data["concepts"] = draw(
            st.lists(
                st.fixed_dictionaries({"id": ODD_TEXT, "value": st.sampled_from([0.0, 1.0])}),
                max_size=3,
            )
        )
    if draw(st.booleans()):
        data["metadata"] = draw(st.dictionaries(ODD_TEXT, JSON_VALUE, max_size=4))
    item: dict[str, Any] = {"data": data}
    if draw(st.booleans()):
        item["id"] = draw(ODD_TEXT)
    if draw(st.booleans()):
        item["dataset_ids"] = draw(st.lists(ODD_TEXT, max_size=2))
    extra = draw(st.dictionaries(ODD_TEXT.filter(lambda k: k not in item), JSON_VALUE, max_size=2))
    item.update(extra)
    # key order must not matter: the spliced spelling puts image and data first
    keys = draw(st.permutations(list(item)))
    return {k: item[k] for k in keys}


def _plain(value: Any) -> Any:
    """The batch as `json.dumps` sees it: base64 bytes become the equal ASCII str."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@settings(max_examples=300, deadline=None)
@given(batch=st.lists(input_item(), max_size=5))
def test_encode_inputs_parses_to_what_json_dumps_gives(batch: list[dict[str, Any]]) -> None:
    """`encode_inputs(batch)` parses to exactly what `json.dumps({"inputs": batch})` parses to,
    whether base64 is bytes or str, for url images, extra fields and odd text anywhere."""
    body = encode_inputs(batch)

    assert isinstance(body, bytes)
    assert json.loads(body) == json.loads(json.dumps({"inputs": _plain(batch)}))


def test_encode_inputs_splices_base64_bytes_unchanged() -> None:
    """Base64 given as bytes appears in the body byte for byte, between two quotes."""
    raw = base64.b64encode(bytes(range(256)) * 4)
    body = encode_inputs([{"id": "a", "data": {"image": {"base64": raw}, "metadata": {"k": "é"}}}])

    assert b'"base64":"' + raw + b'"' in body
    assert json.loads(body)["inputs"][0]["data"]["metadata"] == {"k": "é"}


def test_encode_inputs_survives_its_placeholder_in_the_batch(monkeypatch: Any) -> None:
    """Should a batch hold the very text that stands in for base64 (it is random, so only a
    test can arrange it), the body is still exactly right."""
    placeholder = "\x00syncd-base64-fixed"
    monkeypatch.setattr("syncd.api._placeholder", lambda: placeholder)
    raw = base64.b64encode(b"\x89PNG")
    batch = [
        {"id": "a", "data": {"image": {"base64": raw}, "metadata": {"k": placeholder}}},
        {"id": "b", "data": {"image": {"base64": raw}}},
    ]
    body = encode_inputs(batch)
    assert json.loads(body) == {"inputs": _plain(batch)}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(list(OpKind)), ODD_TEXT, ODD_TEXT, ODD_TEXT), max_size=5),
    st.lists(st.tuples(ODD_TEXT, ODD_TEXT), max_size=3),
    st.lists(st.dictionaries(st.sampled_from(["path", "action", "why"]), ODD_TEXT), max_size=3),
)
def test_streamed_json_report_is_the_dumped_report(
    ops: list[tuple[OpKind, str, str, str]],
    held: list[tuple[str, str]],
    explain: list[dict[str, str]],
) -> None:
    """`reconcile --json` writes the report piece by piece; it reads back as `as_dict()`."""
    report = SyncReport(
        planned=[Operation(kind, input_id, path, why) for kind, input_id, path, why in ops],
        held=held,
        explain=explain,
        seconds=1.5,
    )
    pieces: list[str] = []
    report.write_json(pieces.append)
    text = "".join(pieces)
    assert text.endswith("}\n")
    assert json.loads(text) == json.loads(json.dumps(report.as_dict(), default=str))


def test_json_report_of_many_operations_goes_out_in_few_writes() -> None:
    """Planned rows are written in chunks, not one write (a system call when stdout is
    unbuffered) per row; the text is the same."""
    ops = [Operation(OpKind.ADD, f"id{i:05d}", f"d/{i}.png", "new file") for i in range(2_500)]
    report = SyncReport(planned=ops, seconds=1.0)
    pieces: list[str] = []
    report.write_json(pieces.append)
    assert len(pieces) <= 10
    assert json.loads("".join(pieces)) == json.loads(json.dumps(report.as_dict(), default=str))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 10**6),  # size
            st.integers(-5, 5),  # mtime, relative to the racy bound
            st.integers(-5, 5),  # ctime, relative to the racy bound
            st.booleans(),  # hashed
        ),
        max_size=20,
    )
)
def test_add_evidence_views_answer_as_the_dicts_did(
    files: list[tuple[int, int, int, bool]],
) -> None:
    """The executor's evidence, read from the snapshot when asked, is exactly the two dicts it
    replaced: every image's size, and the stat of images hashed and older than the racy
    window."""
    started = 10_000_000_000
    racy_from = started - RACY_WINDOW_NS
    images = {
        f"d/{n}.png": LocalImage(
            path=f"d/{n}.png",
            stat=FileStat(size, racy_from + mtime, racy_from + ctime, n),
            input_id=f"id{n}",
            sha256="ab" * 32 if hashed else None,
            labels=Labels(),
        )
        for n, (size, mtime, ctime, hashed) in enumerate(files)
    }
    sizes, settled = _Sizes(images), _Settled(images, started)

    assert dict(sizes) == {p: img.stat.size for p, img in images.items()}
    assert dict(settled) == {
        p: img.stat
        for p, img in images.items()
        if img.sha256 is not None and max(img.stat.mtime_ns, img.stat.ctime_ns) < racy_from
    }
    assert settled.get("no/such.png") is None and sizes.get("no/such.png", 0) == 0
