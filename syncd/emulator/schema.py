"""Request shapes: unknown fields and wrong JSON types are refused, as strict protojson does.

Each message lists the fields of the official proto message it stands for (the names are
checked against `clarifai-grpc` in tests/test_proto_conformance.py). Fields the emulator
does not interpret are typed ANY: accepted, kept or ignored, never inspected.
`check` returns a cleaned copy: nulls dropped (protojson reads null as "unset"), enums as
numbers, base64 decoded to bytes.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any

from syncd.emulator.codes import CONFLICT_RESOLUTION_NAMES, parse_enum


class SchemaError(ValueError):
    """A request body does not fit its message; the text names the path and the reason."""


@dataclass(frozen=True)
class Msg:
    """A proto message: its full name (for the conformance test) and its fields."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Enum:
    names: dict[str, int]


STR, BOOL, NUM, UINT, INT, BYTES, TIMESTAMP, STRUCT, ANY = (
    "string",
    "bool",
    "number",
    "uint",
    "int",
    "bytes",
    "timestamp",
    "struct",
    "any",
)

USER_APP_ID = Msg("clarifai.api.UserAppIDSet", {"user_id": STR, "app_id": STR})
CONCEPT = Msg(
    "clarifai.api.Concept",
    {
        "id": STR,
        "name": STR,
        "value": NUM,
        "created_at": TIMESTAMP,
        "language": STR,
        "app_id": STR,
        "definition": STR,
        "vocab_id": STR,
        "user_id": STR,
        "visibility": ANY,
        "keypoint_info": ANY,
        "extra_info": ANY,
        "metadata": STRUCT,
        "image": ANY,
    },
)
IMAGE = Msg(
    "clarifai.api.Image",
    {
        "url": STR,
        "base64": BYTES,
        "allow_duplicate_url": BOOL,
        "hosted": ANY,
        "image_info": ANY,
        "hosted_image_info": ANY,
        "decoded_bytes": BYTES,
    },
)
GEO = Msg(
    "clarifai.api.Geo",
    {
        "geo_point": Msg("clarifai.api.GeoPoint", {"longitude": NUM, "latitude": NUM}),
        "geo_limit": ANY,
        "geo_box": [ANY],
    },
)
DATA = Msg(
    "clarifai.api.Data",
    {
        "image": IMAGE,
        "video": ANY,
        "concepts": [CONCEPT],
        "metadata": STRUCT,
        "geo": GEO,
        "colors": [ANY],
        "clusters": [ANY],
        "embeddings": [ANY],
        "regions": [ANY],
        "frames": [ANY],
        "text": ANY,
        "audio": ANY,
        "tracks": [ANY],
        "time_segments": [ANY],
        "hits": [ANY],
        "heatmaps": [ANY],
        "parts": [ANY],
        "ndarray": ANY,
        "int_value": INT,
        "float_value": NUM,
        "bytes_value": BYTES,
        "bool_value": BOOL,
        "string_value": STR,
        "struct_value": STRUCT,
    },
)
INPUT = Msg(
    "clarifai.api.Input",
    {
        "id": STR,
        "data": DATA,
        "created_at": TIMESTAMP,
        "modified_at": TIMESTAMP,
        "status": ANY,
        "dataset_ids": [STR],
        "settings": ANY,
    },
)
ANNOTATION = Msg(
    "clarifai.api.Annotation",
    {
        "id": STR,
        "input_id": STR,
        "data": DATA,
        "annotation_info": STRUCT,
        "user_id": STR,
        "model_version_id": STR,
        "embed_model_version_id": STR,
        "status": ANY,
        "created_at": TIMESTAMP,
        "modified_at": TIMESTAMP,
        "trusted": BOOL,
        "input_level": BOOL,
        "consensus_info": STRUCT,
        "task_id": STR,
        "worker": ANY,
    },
)
FILTER = Msg(
    "clarifai.api.Filter",
    {"negate": BOOL, "annotation": ANNOTATION, "input": INPUT, "last_updated_time_range": ANY},
)
AND = Msg(
    "clarifai.api.And", {"input": INPUT, "output": ANY, "negate": BOOL, "annotation": ANNOTATION}
)
QUERY = Msg(
    "clarifai.api.Query", {"ands": [AND], "language": STR, "filters": [FILTER], "ranks": [ANY]}
)
SEARCH = Msg(
    "clarifai.api.Search",
    {
        "query": QUERY,
        "id": STR,
        "application_id": STR,
        "name": STR,
        "as_of": TIMESTAMP,
        "git_hash": STR,
        "created_at": TIMESTAMP,
        "modified_at": TIMESTAMP,
        "algorithm": STR,
        "save": BOOL,
        "min_value": NUM,
        "visibility": ANY,
        "metric": ANY,
    },
)
PAGINATION = Msg("clarifai.api.Pagination", {"page": UINT, "per_page": UINT})

#: Request messages by route kind. `delete_all` is the legacy 2.6.2 field (see docs).
REQUESTS: dict[str, Msg] = {
    "PostInputs": Msg(
        "clarifai.api.PostInputsRequest",
        {
            "user_app_id": USER_APP_ID,
            "inputs": [INPUT],
            "inputs_add_job_id": STR,
            "input_id_conflict_resolution": Enum(CONFLICT_RESOLUTION_NAMES),
        },
    ),
    "PatchInputs": Msg(
        "clarifai.api.PatchInputsRequest",
        {"user_app_id": USER_APP_ID, "inputs": [INPUT], "action": STR},
    ),
    "DeleteInputs": Msg(
        "clarifai.api.DeleteInputsRequest",
        {"user_app_id": USER_APP_ID, "ids": [STR], "delete_all": BOOL},
    ),
    "DeleteInput": Msg(
        "clarifai.api.DeleteInputRequest", {"user_app_id": USER_APP_ID, "input_id": STR}
    ),
    "PostInputsSearches": Msg(
        "clarifai.api.PostInputsSearchesRequest",
        {
            "user_app_id": USER_APP_ID,
            "searches": [SEARCH],
            "pagination": PAGINATION,
            "only_count": BOOL,
        },
    ),
    "PostSearches": Msg(
        "clarifai.api.PostSearchesRequest",
        {
            "user_app_id": USER_APP_ID,
            "query": QUERY,
            "searches": [SEARCH],
            "pagination": PAGINATION,
        },
    ),
}

#: Fields the emulator accepts that today's proto no longer has.
LEGACY_FIELDS = {("clarifai.api.DeleteInputsRequest", "delete_all")}


def check(spec: Any, value: Any, path: str = "") -> Any:
    """Check `value` against `spec` and return its cleaned copy; raise SchemaError if unfit."""
    if isinstance(spec, Msg):
        if not isinstance(value, dict):
            raise SchemaError(f"{_where(path)}expected an object, got {_kind(value)}")
        out: dict[str, Any] = {}
        for key, item in value.items():
            sub = spec.fields.get(key)
            if sub is None:
                raise SchemaError(f"unknown field {key!r} in {path or 'the request body'}")
            if item is not None:
                out[key] = check(sub, item, f"{path}.{key}" if path else key)
        return out
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise SchemaError(f"{_where(path)}expected a list, got {_kind(value)}")
        return [check(spec[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(spec, Enum):
        try:
            return parse_enum(value, spec.names)
        except ValueError as exc:
            raise SchemaError(f"{_where(path)}{exc}") from None
    return _check_scalar(spec, value, path)


def _check_scalar(kind: str, value: Any, path: str) -> Any:
    if kind == ANY:
        return value
    if kind in (STR, TIMESTAMP) and isinstance(value, str):
        return value
    if kind == BOOL and isinstance(value, bool):
        return value
    if kind == STRUCT and isinstance(value, dict):
        return value
    if kind == NUM:
        return _number(value, path)
    if kind in (UINT, INT):
        return _integer(value, path, unsigned=kind == UINT)
    if kind == BYTES and isinstance(value, str):
        return decode_base64(value, path)
    if value is None or kind not in (STR, TIMESTAMP, BOOL, STRUCT, BYTES):
        raise SchemaError(f"{_where(path)}unsupported value {value!r}")
    expected = {STRUCT: "an object", BYTES: "a base64 string"}.get(kind, f"a {kind}")
    raise SchemaError(f"{_where(path)}expected {expected}, got {_kind(value)}")


def _number(value: Any, path: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
        else:
            if not math.isnan(number) or value == "NaN":
                return number
    raise SchemaError(f"{_where(path)}expected a number, got {_kind(value)}")


def _integer(value: Any, path: str, *, unsigned: bool) -> int:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif (isinstance(value, float) and value.is_integer()) or (
        isinstance(value, str) and value.lstrip("-").isdigit()
    ):
        number = int(value)
    if number is None or (unsigned and number < 0):
        kind = "a non-negative integer" if unsigned else "an integer"
        raise SchemaError(f"{_where(path)}expected {kind}, got {value!r}")
    return number


def decode_base64(text: str, path: str = "") -> bytes:
    """Standard or URL-safe base64, padded or not, as protojson accepts for `bytes` fields."""
    cleaned = text.replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(f"{_where(path)}invalid base64") from None


def _where(path: str) -> str:
    return f"{path}: " if path else ""


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "a number"
    )
