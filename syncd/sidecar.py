"""Sidecar label files: bytes in, concepts and metadata out, or a SidecarError naming the reason.

Pure functions of bytes and strings, no I/O: the scanner reads the files (at most
SIDECAR_MAX_BYTES + 1 bytes each) and hands the bytes here. The rules are written down for
users in docs/dataset-rules.md; keep the two in step.
"""

from __future__ import annotations

import json
import posixpath
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from syncd.errors import SidecarError
from syncd.model import MARKER_KEY, Labels, canonical_json, normalize_metadata

#: A sidecar larger than this is invalid; the scanner never reads more than this plus one byte.
SIDECAR_MAX_BYTES = 1024 * 1024

#: Deepest nesting of JSON arrays/objects accepted, counting the top-level object as 1.
MAX_JSON_DEPTH = 64

#: Extensions that make a file a sidecar (never an image), in the lookup order's terms.
SIDECAR_EXTENSIONS = (".json", ".txt")

JSON_KEYS = frozenset({"id", "concepts", "not_concepts", "metadata"})
_CONCEPT_ITEM_KEYS = frozenset({"id", "value"})
_INPUT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NEWLINE = re.compile(r"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class SidecarContent:
    """What one sidecar says: an explicit input id (or None), concepts (id -> present?), metadata.

    `metadata` is already normalised (`syncd.model.normalize_metadata`) and never holds the
    reserved MARKER_KEY.
    """

    input_id: str | None = None
    concepts: Mapping[str, bool] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


class _Invalid(Exception):
    """A reason a sidecar is invalid, without the path (added once, by the public functions)."""


def display_path(path: str) -> str:
    """A one-line, printable spelling of a relative path for messages and logs.

    Printable paths are returned unchanged; otherwise bytes that were not UTF-8 (kept by
    os.fsdecode as surrogate escapes) become `\\xNN` and control characters `\\n`, `\\x1b`, ...
    """
    if path.isprintable():
        return path
    try:
        text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        text = path.encode("utf-8", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def sidecar_candidates(image_rel_path: str) -> tuple[str, ...]:
    """The sidecar paths of an image, in priority order: the first that exists applies.

    `dir/name.ext` -> `dir/name.ext.json`, `dir/name.json`, `dir/name.ext.txt`, `dir/name.txt`.
    """
    stem, ext = posixpath.splitext(image_rel_path)
    if not ext:
        return (f"{image_rel_path}.json", f"{image_rel_path}.txt")
    return (
        f"{image_rel_path}.json",
        f"{stem}.json",
        f"{image_rel_path}.txt",
        f"{stem}.txt",
    )


def is_sidecar_name(name: str) -> bool:
    """Whether a file name has a sidecar extension (such a file is never an image)."""
    return name.endswith(SIDECAR_EXTENSIONS)


def validate_input_id(value: object) -> str:
    """Return `value` if it is a usable explicit input id, else raise ValueError with the reason.

    1 to 64 ASCII letters, digits, `-`, `_` or `.`, and not only dots (`.` and `..` would be
    rewritten as path segments in `/v2/inputs/{id}`).
    """
    if not isinstance(value, str):
        raise ValueError(f'"id" must be a string, not {_json_type(value)}')
    if not _INPUT_ID.fullmatch(value) or not value.strip("."):
        raise ValueError(
            f'"id" {_short(value)} is not a valid input id '
            "(1 to 64 characters: letters, digits, '-', '_', '.'; not only dots)"
        )
    return value


def parse_sidecar(data: bytes, *, path: str) -> SidecarContent:
    """Parse a sidecar by its extension: `.json` or `.txt` (lower case, as looked up)."""
    if path.endswith(".json"):
        return parse_json_sidecar(data, path=path)
    if path.endswith(".txt"):
        return parse_text_sidecar(data, path=path)
    raise SidecarError(f"{path}: not a sidecar (expected a .json or .txt file)")


def parse_json_sidecar(data: bytes, *, path: str) -> SidecarContent:
    """Parse a JSON sidecar: an object with optional `id`, `concepts`, `not_concepts`, `metadata`.

    Raises SidecarError("<path>: <reason>"); syntax errors carry the line and column.
    """
    try:
        text = _decode(data)
        if not text.strip():
            raise _Invalid("empty file: expected a JSON object")
        doc = _load_json(text)
        return _interpret(doc)
    except _Invalid as exc:
        raise SidecarError(f"{path}: {exc}") from None


def parse_text_sidecar(data: bytes, *, path: str) -> SidecarContent:
    """Parse a text sidecar: one concept id per line, `#` comments, a leading `-` means absent."""
    try:
        text = _decode(data)
        concepts: dict[str, bool] = {}
        for number, raw in enumerate(_NEWLINE.split(text), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            present = not line.startswith("-")
            name = line if present else line[1:]
            try:
                _add_concept(concepts, _concept_id(name), present)
            except _Invalid as exc:
                raise _Invalid(f"line {number}: {exc}") from None
        return SidecarContent(None, concepts, {})
    except _Invalid as exc:
        raise SidecarError(f"{path}: {exc}") from None


def build_labels(
    content: SidecarContent | None, *, parent_dir: str | None, labels_from_dirs: bool
) -> Labels:
    """The labels an image carries from its sidecar (user metadata only, no marker).

    With `labels_from_dirs`, the name of the image's folder (`parent_dir` is its relative path;
    "" or None is the root, which gives no concept) is a present concept unless the sidecar
    lists it at all. A folder name that is not a usable concept id raises SidecarError.
    """
    concepts = dict(content.concepts) if content is not None else {}
    metadata = content.metadata if content is not None else {}
    if labels_from_dirs and parent_dir not in (None, "", "."):
        folder = posixpath.basename(str(parent_dir).rstrip("/"))
        try:
            concepts.setdefault(_concept_id(folder), True)
        except _Invalid as exc:
            raise SidecarError(
                f"folder name '{display_path(folder)}' is not a usable concept id: {exc}"
            ) from None
    return Labels.build(concepts, metadata)


# --- internals ------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    if len(data) > SIDECAR_MAX_BYTES:
        raise _Invalid(f"too large: over {SIDECAR_MAX_BYTES} bytes (limit {SIDECAR_MAX_BYTES})")
    body = data.removeprefix(_BOM)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = exc.start + len(data) - len(body)
        raise _Invalid(f"not valid UTF-8 (byte {at}: {exc.reason})") from None


def _reject_constant(name: str) -> Any:
    raise _Invalid(f"{name} is not allowed (numbers must be finite)")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Invalid(f"duplicate key {_short(key)} in a JSON object")
        result[key] = value
    return result


def _load_json(text: str) -> Any:
    try:
        doc = json.loads(text, object_pairs_hook=_unique_object, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _Invalid(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise _Invalid(f"nested too deeply (limit {MAX_JSON_DEPTH} levels)") from None
    except ValueError as exc:  # e.g. an integer literal beyond Python's digit limit
        raise _Invalid(f"invalid JSON: {exc}") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise _Invalid(f"nested too deeply (limit {MAX_JSON_DEPTH} levels)")
    return doc


def _depth(doc: Any) -> int:
    """Nesting depth of arrays/objects, without recursion (the document may be ~1000 deep)."""
    deepest = 0
    stack = [(doc, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _interpret(doc: Any) -> SidecarContent:
    if not isinstance(doc, dict):
        raise _Invalid(f"top level must be a JSON object, not {_json_type(doc)}")
    unknown = sorted(set(doc) - JSON_KEYS)
    if unknown:
        allowed = ", ".join(sorted(JSON_KEYS))
        raise _Invalid(f"unknown key {_short(unknown[0])} (allowed: {allowed})")
    input_id = None
    if "id" in doc:
        try:
            input_id = validate_input_id(doc["id"])
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
    concepts: dict[str, bool] = {}
    if "concepts" in doc:
        for cid, present in _concept_entries(doc["concepts"]):
            _add_concept(concepts, cid, present)
    if "not_concepts" in doc:
        for cid in _id_list(doc["not_concepts"], "not_concepts"):
            _add_concept(concepts, cid, False)
    metadata: dict[str, Any] = {}
    if "metadata" in doc:
        metadata = _metadata(doc["metadata"])
    return SidecarContent(input_id, concepts, metadata)


def _concept_entries(value: Any) -> list[tuple[str, bool]]:
    if isinstance(value, dict):
        return [
            (_concept_id(k, f'"concepts" key {_short(k)}'), _presence(v, f'"concepts" {_short(k)}'))
            for k, v in value.items()
        ]
    if not isinstance(value, list):
        raise _Invalid(f'"concepts" must be a list or an object, not {_json_type(value)}')
    entries = []
    for index, item in enumerate(value):
        where = f'"concepts"[{index}]'
        if isinstance(item, str):
            entries.append((_concept_id(item, where), True))
        elif isinstance(item, dict):
            extra = sorted(set(item) - _CONCEPT_ITEM_KEYS)
            if extra:
                raise _Invalid(f"{where}: unknown key {_short(extra[0])} (allowed: id, value)")
            if "id" not in item:
                raise _Invalid(f'{where}: missing "id"')
            present = _presence(item["value"], where) if "value" in item else True
            entries.append((_concept_id(item["id"], where), present))
        else:
            raise _Invalid(f"{where} must be a concept id or an object, not {_json_type(item)}")
    return entries


def _id_list(value: Any, key: str) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid(f'"{key}" must be a list of concept ids, not {_json_type(value)}')
    return [_concept_id(item, f'"{key}"[{index}]') for index, item in enumerate(value)]


def _presence(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return value == 1
    raise _Invalid(f"{where}: value must be true, false, 1 or 0, not {_json_value(value)}")


def _concept_id(value: Any, where: str = "") -> str:
    """A concept id: a string, surrounding whitespace stripped, not empty, no control chars."""
    at = f"{where}: " if where else ""
    if not isinstance(value, str):
        raise _Invalid(f"{at}concept id must be a string, not {_json_type(value)}")
    cid = value.strip()
    if not cid:
        raise _Invalid(f"{at}empty concept id")
    for char in cid:
        category = unicodedata.category(char)
        if category == "Cc":
            raise _Invalid(f"{at}concept id {_short(cid)} contains a control character")
        if category == "Cs":
            raise _Invalid(f"{at}concept id {_short(cid)} contains a lone surrogate")
    return cid


def _add_concept(concepts: dict[str, bool], cid: str, present: bool) -> None:
    if concepts.get(cid, present) != present:
        raise _Invalid(f"concept {_short(cid)} is marked both present and absent")
    concepts[cid] = present


def _metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f'"metadata" must be a JSON object, not {_json_type(value)}')
    if MARKER_KEY in value:
        raise _Invalid(f'"metadata" key {MARKER_KEY!r} is reserved for syncd\'s own marker')
    try:
        normalized = normalize_metadata(value)
    except ValueError as exc:
        raise _Invalid(f'"metadata": {exc}') from None
    try:
        canonical_json(normalized).encode("utf-8")
    except UnicodeEncodeError:
        raise _Invalid('"metadata" contains a lone surrogate (\\ud800-\\udfff escape)') from None
    return normalized


def _short(text: str, limit: int = 80) -> str:
    """repr() of a string for a message (escaped, one line), cut to about `limit` characters."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _json_value(value: Any) -> str:
    if isinstance(value, int | float | bool) or value is None:
        return json.dumps(value)
    return _json_type(value)
