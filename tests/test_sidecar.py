"""Sidecar parsing: the JSON and text forms, every invalid case, and hypothesis properties."""

from __future__ import annotations

import json
import string
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.errors import SidecarError
from syncd.model import Labels, normalize_metadata
from syncd.sidecar import (
    MAX_JSON_DEPTH,
    SIDECAR_MAX_BYTES,
    SidecarContent,
    build_labels,
    display_path,
    is_sidecar_name,
    parse_json_sidecar,
    parse_sidecar,
    parse_text_sidecar,
    sidecar_candidates,
    validate_input_id,
)


def parse(doc: object) -> SidecarContent:
    return parse_json_sidecar(json.dumps(doc).encode(), path="a/b.json")


def json_error(text: str) -> str:
    """Where and why this Python's json module refuses `text`: "line L column C: why"."""
    with pytest.raises(json.JSONDecodeError) as info:
        json.loads(text)
    return f"line {info.value.lineno} column {info.value.colno}: {info.value.msg}"


def invalid(data: bytes, *, path: str = "a/b.json") -> str:
    """The SidecarError message for `data`, which must be invalid."""
    with pytest.raises(SidecarError) as info:
        parse_sidecar(data, path=path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    return message


# --- JSON form ------------------------------------------------------------------------------


def test_json_all_keys() -> None:
    """A JSON sidecar gives its explicit id, concepts, not_concepts and normalised metadata."""
    content = parse(
        {
            "id": "img-001.v2",
            "concepts": ["cat", "dog"],
            "not_concepts": ["bird"],
            "metadata": {"n": 3, "gone": None, "deep": {"x": [1, None, "s"]}, "ok": True},
        }
    )
    assert content.input_id == "img-001.v2"
    assert dict(content.concepts) == {"cat": True, "dog": True, "bird": False}
    assert content.metadata == {"n": 3.0, "deep": {"x": [1.0, "s"]}, "ok": True}


def test_json_empty_object_means_no_labels() -> None:
    """`{}` is valid: no id, no concepts, no metadata."""
    assert parse({}) == SidecarContent(None, {}, {})


@pytest.mark.parametrize(
    "concepts",
    [
        [{"id": "cat", "value": True}, {"id": "dog", "value": False}],
        [{"id": "cat", "value": 1}, {"id": "dog", "value": 0}],
        [{"id": "cat", "value": 1.0}, {"id": "dog", "value": 0.0}],
        [{"id": "cat"}, {"id": "dog", "value": False}],
        {"cat": True, "dog": False},
        {"cat": 1, "dog": 0},
        ["cat", {"id": "dog", "value": 0}],
    ],
)
def test_json_concept_forms(concepts: object) -> None:
    """Every accepted spelling of concepts gives the same id -> present mapping."""
    assert dict(parse({"concepts": concepts}).concepts) == {"cat": True, "dog": False}


def test_json_concept_ids_are_stripped_and_duplicates_agree() -> None:
    """Surrounding whitespace is stripped; the same concept twice with one value is fine."""
    content = parse(
        {"concepts": [" cat ", "cat", {"id": "cat", "value": 1}], "not_concepts": ["x"]}
    )
    assert dict(content.concepts) == {"cat": True, "x": False}


def test_json_permissive_concept_ids() -> None:
    """Concept ids may hold spaces, unicode, punctuation and emoji inside."""
    ids = ["red car", "ñandú", "猫", "a/b:c#d", "👍🏽", "-x", "#y"]
    assert dict(parse({"concepts": ids}).concepts) == dict.fromkeys(ids, True)


def test_json_utf8_bom_is_accepted() -> None:
    """A UTF-8 byte order mark (as some Windows editors write) is ignored."""
    content = parse_json_sidecar(b'\xef\xbb\xbf{"concepts": ["cat"]}', path="a.json")
    assert dict(content.concepts) == {"cat": True}


def test_json_syntax_error_has_line_and_column() -> None:
    """Broken JSON is reported with the path, line and column of the error."""
    message = invalid(b'{\n  "concepts": ["cat"\n  "dog"]\n}')
    assert message == "a/b.json: line 3 column 3: Expecting ',' delimiter"


def test_json_syntax_error_is_worded_by_the_running_python() -> None:
    """A trailing comma: Python 3.13 words it (and places it) otherwise than 3.11."""
    text = '{\n  "concepts": ["cat",\n  ]\n}'
    assert invalid(text.encode()) == f"a/b.json: {json_error(text)}"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file: expected a JSON object"),
        (b"  \n ", "empty file: expected a JSON object"),
        (b'["cat"]', "top level must be a JSON object, not an array"),
        (b'"cat"', "top level must be a JSON object, not a string"),
        (b"null", "top level must be a JSON object, not null"),
        (
            b'{"label": "cat"}',
            "unknown key 'label' (allowed: concepts, id, metadata, not_concepts)",
        ),
        (b'{"Concepts": []}', "unknown key 'Concepts'"),
        (b'{"id": ""}', "\"id\" '' is not a valid input id"),
        (b'{"id": null}', '"id" must be a string, not null'),
        (b'{"id": 12}', '"id" must be a string, not a number'),
        (b'{"id": "a/b"}', "\"id\" 'a/b' is not a valid input id"),
        (b'{"id": "a b"}', "\"id\" 'a b' is not a valid input id"),
        (b'{"id": ".."}', "\"id\" '..' is not a valid input id"),
        (b'{"id": "x\\n"}', "\"id\" 'x\\n' is not a valid input id"),
        (b'{"concepts": "cat"}', '"concepts" must be a list or an object, not a string'),
        (b'{"concepts": 5}', '"concepts" must be a list or an object, not a number'),
        (b'{"concepts": [5]}', '"concepts"[0] must be a concept id or an object, not a number'),
        (b'{"concepts": [""]}', '"concepts"[0]: empty concept id'),
        (b'{"concepts": ["  "]}', '"concepts"[0]: empty concept id'),
        (b'{"concepts": [{"value": 1}]}', '"concepts"[0]: missing "id"'),
        (b'{"concepts": [{"id": 1}]}', '"concepts"[0]: concept id must be a string, not a number'),
        (b'{"concepts": [{"id": "a", "name": "A"}]}', "\"concepts\"[0]: unknown key 'name'"),
        (
            b'{"concepts": [{"id": "a", "value": 0.5}]}',
            "value must be true, false, 1 or 0, not 0.5",
        ),
        (b'{"concepts": [{"id": "a", "value": "yes"}]}', "value must be true, false, 1 or 0"),
        (b'{"concepts": [{"id": "a", "value": null}]}', "not null"),
        (b'{"concepts": {"a": 2}}', "value must be true, false, 1 or 0, not 2"),
        (b'{"concepts": {"": true}}', "empty concept id"),
        (b'{"not_concepts": "cat"}', '"not_concepts" must be a list of concept ids, not a string'),
        (b'{"not_concepts": [{"id": "cat"}]}', '"not_concepts"[0]: concept id must be a string'),
        (
            b'{"concepts": ["cat"], "not_concepts": ["cat"]}',
            "'cat' is marked both present and absent",
        ),
        (b'{"concepts": {"cat": true, " cat": false}}', "'cat' is marked both present and absent"),
        (b'{"concepts": [{"id": "a"}, {"id": "a", "value": 0}]}', "'a' is marked both present"),
        (b'{"concepts": ["ca\\u0007t"]}', "contains a control character"),
        (b'{"concepts": ["a\\tb"]}', "contains a control character"),
        (b'{"concepts": ["\\ud800"]}', "contains a lone surrogate"),
        (b'{"metadata": []}', '"metadata" must be a JSON object, not an array'),
        (b'{"metadata": "x"}', '"metadata" must be a JSON object, not a string'),
        (b'{"metadata": null}', '"metadata" must be a JSON object, not null'),
        (b'{"metadata": {"syncd": {}}}', "\"metadata\" key 'syncd' is reserved"),
        (b'{"metadata": {"a": "\\udc00"}}', '"metadata" contains a lone surrogate'),
        (b'{"metadata": {"\\ud800": 1}}', '"metadata" contains a lone surrogate'),
        (b'{"metadata": {"a": NaN}}', "NaN is not allowed"),
        (b'{"metadata": {"a": Infinity}}', "Infinity is not allowed"),
        (b'{"metadata": {"a": -Infinity}}', "-Infinity is not allowed"),
        (b'{"metadata": {"a": 1e400}}', "metadata numbers must be finite"),
        (
            b'{"metadata": {"a": 1' + b"0" * 400 + b"}}",
            '"metadata": metadata numbers must fit in a double',
        ),
        (b'{"metadata": {"a": 1' + b"0" * 5000 + b"}}", "invalid JSON: Exceeds the limit"),
        (b'{"id": "a", "id": "a"}', "duplicate key 'id' in a JSON object"),
        (b'{"metadata": {"k": 1, "k": 2}}', "duplicate key 'k' in a JSON object"),
        (b'{"concepts": {"cat": true, "cat": true}}', "duplicate key 'cat'"),
        (b'{"a": 1', "line 1 column 8: Expecting ',' delimiter"),
        (b"{'id': 'x'}", "line 1 column 2: Expecting property name enclosed in double quotes"),
        (b'{"concepts": ["x"]} trailing', "line 1 column 21: Extra data"),
        (b'{"concepts": ["\x01"]}', "Invalid control character"),
    ],
)
def test_json_invalid_cases(data: bytes, reason: str) -> None:
    """Each invalid JSON sidecar is refused with a message naming the file and the reason."""
    assert reason in invalid(data)


def test_json_bad_encoding_names_the_byte() -> None:
    """Bytes that are not UTF-8 are refused, naming the offset of the first bad byte."""
    message = invalid(b'{"concepts": ["caf\xe9"]}')
    assert message == "a/b.json: not valid UTF-8 (byte 18: invalid continuation byte)"


def test_json_nesting_limit() -> None:
    """Nesting up to MAX_JSON_DEPTH levels is accepted; one more is refused."""

    def nested(levels: int) -> bytes:  # the top-level object is level 1
        inner = b'{"k": ' * (levels - 2) + b"[1]" + b"}" * (levels - 2)
        return b'{"metadata": ' + inner + b"}"

    assert parse_json_sidecar(nested(MAX_JSON_DEPTH), path="a.json").metadata
    assert "nested too deeply (limit 64 levels)" in invalid(nested(MAX_JSON_DEPTH + 1))


@pytest.mark.parametrize("opener", [b"[", b'{"k": '])
def test_json_nested_a_thousand_deep(opener: bytes) -> None:
    """A document nested 1,000 deep is refused cleanly (no RecursionError escapes)."""
    closer = b"]" if opener == b"[" else b"}"
    data = b'{"metadata": {"x": ' + opener * 1000 + b"1" + closer * 1000 + b"}}"
    assert "nested too deeply" in invalid(data)


def test_json_nested_far_beyond_the_recursion_limit() -> None:
    """Even 100,000 levels (within the size cap) only yield a SidecarError."""
    assert "nested too deeply" in invalid(b"[" * 100_000)


def test_oversized_sidecar_is_refused() -> None:
    """A sidecar over SIDECAR_MAX_BYTES is invalid, saying so, whatever its content."""
    data = b'{"metadata": {"pad": "' + b"x" * (10 * 1024 * 1024) + b'"}}'
    assert f"too large: over {SIDECAR_MAX_BYTES} bytes" in invalid(data)
    assert "too large" in invalid(b"cat\n" * (SIDECAR_MAX_BYTES // 4 + 1), path="a.txt")


def test_sidecar_exactly_at_the_cap_is_read() -> None:
    """A sidecar of exactly SIDECAR_MAX_BYTES bytes is still parsed."""
    data = b'{"metadata": {"pad": "'
    data += b"x" * (SIDECAR_MAX_BYTES - len(data) - 3) + b'"}}'
    assert len(data) == SIDECAR_MAX_BYTES
    assert len(parse_json_sidecar(data, path="a.json").metadata["pad"]) > 1000


# --- text form ------------------------------------------------------------------------------


def test_text_sidecar_rules() -> None:
    """One id per line, whitespace stripped, blanks and # comments ignored, '-' means absent."""
    data = b"# labels for b.jpg\r\n  cat \r\n\r\n-dog\n- bird\n\t# indented comment\nred car\ncat\n"
    content = parse_text_sidecar(data, path="a/b.txt")
    assert content == SidecarContent(
        None, {"cat": True, "dog": False, "bird": False, "red car": True}, {}
    )


def test_text_sidecar_old_mac_line_ends() -> None:
    """Lone CR line ends split lines like LF does."""
    assert dict(parse_text_sidecar(b"cat\rdog\r", path="a.txt").concepts) == {
        "cat": True,
        "dog": True,
    }


def test_empty_text_sidecar_is_valid() -> None:
    """An empty (or comment-only) text sidecar gives no concepts."""
    assert parse_text_sidecar(b"", path="a.txt") == SidecarContent()
    assert parse_text_sidecar(b"# nothing yet\n\n", path="a.txt") == SidecarContent()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"cat\n-cat\n", "line 2: concept 'cat' is marked both present and absent"),
        (b"cat\n-\n", "line 2: empty concept id"),
        (b"cat\n- \n", "line 2: empty concept id"),
        (b"a\tb\n", "line 1: concept id 'a\\tb' contains a control character"),
        (b"ok\nnul\x00here\n", "line 2: concept id 'nul\\x00here' contains a control character"),
        (b"caf\xe9\n", "not valid UTF-8 (byte 3: invalid continuation byte)"),
        (b"\xff\xfec\x00a\x00t\x00", "not valid UTF-8 (byte 0: invalid start byte)"),
    ],
)
def test_text_invalid_cases(data: bytes, reason: str) -> None:
    """Each invalid text sidecar is refused, with the line number where one applies."""
    assert invalid(data, path="x/y.txt") == f"x/y.txt: {reason}"


def test_parse_sidecar_dispatches_on_extension() -> None:
    """`.json` goes to the JSON parser, `.txt` to the text parser, anything else is refused."""
    assert dict(parse_sidecar(b'"x"\n', path="a.txt").concepts) == {'"x"': True}
    assert dict(parse_sidecar(b'{"concepts": ["x"]}', path="a.json").concepts) == {"x": True}
    with pytest.raises(SidecarError, match=r"^a\.yaml: not a sidecar"):
        parse_sidecar(b"x", path="a.yaml")


# --- names and ids --------------------------------------------------------------------------


def test_sidecar_candidates_priority() -> None:
    """The lookup order is name.ext.json, name.json, name.ext.txt, name.txt, in the same folder."""
    assert sidecar_candidates("d/e/cat.01.JPG") == (
        "d/e/cat.01.JPG.json",
        "d/e/cat.01.json",
        "d/e/cat.01.JPG.txt",
        "d/e/cat.01.txt",
    )
    assert sidecar_candidates("noext") == ("noext.json", "noext.txt")
    assert sidecar_candidates("d.x/noext") == ("d.x/noext.json", "d.x/noext.txt")


def test_is_sidecar_name() -> None:
    """Only lower-case .json and .txt names are sidecars."""
    assert is_sidecar_name("a.json") and is_sidecar_name("a.jpg.txt")
    assert not is_sidecar_name("a.JSON") and not is_sidecar_name("a.jpg")


@pytest.mark.parametrize("value", ["a", "A-b_c.9", "x" * 64, "0" * 32, ".hidden", "a..b"])
def test_valid_input_ids(value: str) -> None:
    """Letters, digits, '-', '_' and '.' up to 64 characters are accepted unchanged."""
    assert validate_input_id(value) == value


@pytest.mark.parametrize(
    "value", ["", "x" * 65, "a/b", "a b", "ä", ".", "..", "...", "a\n", "a\x00", 5, None, ["a"]]
)
def test_invalid_input_ids(value: object) -> None:
    """Anything else raises ValueError with a message that can follow a path."""
    with pytest.raises(ValueError, match=r'^"id" '):
        validate_input_id(value)


def test_display_path() -> None:
    """Printable paths are unchanged; control characters and undecodable bytes are escaped."""
    assert display_path("a b/ñ.jpg") == "a b/ñ.jpg"
    assert display_path("a\nb.jpg") == "a\\nb.jpg"
    assert display_path("x\x1b[31m.jpg") == "x\\x1b[31m.jpg"
    assert display_path(b"caf\xe9.jpg".decode("utf-8", "surrogateescape")) == "caf\\xe9.jpg"


# --- labels ---------------------------------------------------------------------------------


def test_build_labels_without_sidecar() -> None:
    """No sidecar and no folder labels: no concepts, empty metadata."""
    assert build_labels(None, parent_dir="cats", labels_from_dirs=False) == Labels()


def test_build_labels_from_dirs() -> None:
    """The parent folder's name (not its path) becomes a present concept."""
    labels = build_labels(None, parent_dir="animals/cats", labels_from_dirs=True)
    assert labels.concepts_dict() == {"cats": 1.0}


@pytest.mark.parametrize("parent", [None, "", "."])
def test_build_labels_root_gives_no_folder_concept(parent: str | None) -> None:
    """An image directly under the root gets no folder concept."""
    assert build_labels(None, parent_dir=parent, labels_from_dirs=True) == Labels()


def test_build_labels_sidecar_can_veto_the_folder_concept() -> None:
    """A sidecar that marks the folder concept absent wins over labels_from_dirs."""
    content = SidecarContent(None, {"cats": False, "tabby": True}, {"n": 1.0})
    labels = build_labels(content, parent_dir="cats", labels_from_dirs=True)
    assert labels.concepts_dict() == {"cats": 0.0, "tabby": 1.0}
    assert labels.metadata_dict() == {"n": 1.0}


def test_build_labels_unusable_folder_name() -> None:
    """A folder name that is not a usable concept id is an error naming it."""
    with pytest.raises(SidecarError, match=r"folder name 'a\\nb' is not a usable concept id"):
        build_labels(None, parent_dir="x/a\nb", labels_from_dirs=True)
    bad = b"\xff".decode("utf-8", "surrogateescape")
    with pytest.raises(SidecarError, match=r"folder name '\\xff'.*lone surrogate"):
        build_labels(None, parent_dir=bad, labels_from_dirs=True)


# --- properties -----------------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=512))
def test_any_bytes_only_ever_raise_sidecar_error(data: bytes) -> None:
    """Arbitrary bytes either parse or raise SidecarError, for both formats."""
    for path in ("x.json", "x.txt"):
        try:
            parse_sidecar(data, path=path)
        except SidecarError as exc:
            assert str(exc).startswith(f"{path}: ")


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
sidecar_like = st.dictionaries(
    st.sampled_from(["id", "concepts", "not_concepts", "metadata", "other"]),
    json_values,
    max_size=4,
)


@FAST
@given(st.one_of(json_values, sidecar_like))
def test_any_json_document_only_ever_raises_sidecar_error(doc: object) -> None:
    """Any JSON document (including NaN, huge numbers, surrogates) parses or is refused cleanly."""
    data = json.dumps(doc).encode("utf-8", "surrogatepass")
    try:
        content = parse_json_sidecar(data, path="x.json")
    except SidecarError:
        return
    json.dumps(dict(content.metadata), allow_nan=False).encode("utf-8")  # always sendable


def _usable(cid: str) -> bool:
    return (
        cid == cid.strip()
        and cid != ""
        and all(unicodedata.category(c) not in ("Cc", "Cs") for c in cid)
    )


concept_ids = st.text(min_size=1, max_size=12).filter(_usable)
concept_maps = st.dictionaries(concept_ids, st.booleans(), max_size=8)
metadata_docs = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k != "syncd" and _usable(k or "x")),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=10,
    ),
    max_size=5,
)
ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True).filter(lambda s: s.strip("."))


def _spell(concepts: dict[str, bool], form: int) -> dict[str, object]:
    if form == 0:
        return {
            "concepts": [c for c, v in concepts.items() if v],
            "not_concepts": [c for c, v in concepts.items() if not v],
        }
    if form == 1:
        return {"concepts": [{"id": c, "value": v} for c, v in concepts.items()]}
    if form == 2:
        return {"concepts": [{"id": c, "value": int(v)} for c, v in concepts.items()]}
    return {"concepts": concepts}


@FAST
@given(concept_maps, st.integers(0, 3), st.none() | ids, st.none() | metadata_docs)
def test_valid_json_sidecars_round_trip(
    concepts: dict[str, bool], form: int, input_id: str | None, metadata: dict | None
) -> None:
    """A valid sidecar, in any concept spelling, parses back to what was written."""
    doc = _spell(concepts, form)
    if input_id is not None:
        doc["id"] = input_id
    if metadata is not None:
        doc["metadata"] = metadata
    content = parse_json_sidecar(json.dumps(doc, ensure_ascii=False).encode(), path="x.json")
    assert dict(content.concepts) == concepts
    assert content.input_id == input_id
    assert content.metadata == normalize_metadata(metadata or {})


text_ids = concept_ids.filter(lambda c: c[0] not in "#-" and "\r" not in c and "\n" not in c)
padding = st.text(alphabet=" \t", max_size=3)


@FAST
@given(
    st.dictionaries(text_ids, st.booleans(), max_size=8),
    st.lists(padding, min_size=4, max_size=4),
    st.booleans(),
)
def test_valid_text_sidecars_round_trip(
    concepts: dict[str, bool], pads: list[str], crlf: bool
) -> None:
    """Lines with padding, comments and blank lines parse back to the concepts written."""
    eol = "\r\n" if crlf else "\n"
    lines = ["# generated", ""]
    for cid, present in concepts.items():
        lines.append(f"{pads[0]}{'' if present else '-'}{pads[1]}{cid}{pads[2]}")
        lines.append(pads[3])
    content = parse_text_sidecar(eol.join(lines).encode(), path="x.txt")
    assert dict(content.concepts) == concepts


@FAST
@given(st.text(alphabet=string.printable + "ñ猫\x00\x1b", max_size=40))
def test_any_text_only_ever_raises_sidecar_error(text: str) -> None:
    """Any text in a .txt sidecar parses or is refused with a SidecarError."""
    try:
        content = parse_text_sidecar(text.encode(), path="x.txt")
    except SidecarError:
        return
    assert all(_usable(c) for c in content.concepts)
