"""PATCH /v2/inputs semantics on an input's `data`, as pure functions.

Follows the merge / remove / overwrite rules of clarifai-api.md section 1.3. `data` here is
an input's data without its image (images are immutable: patching one is refused), with
`concepts` as a list of {"id", "name", "value"} and `metadata` as a JSON object whose numbers
are floats (a protobuf Struct holds only doubles).
"""

from __future__ import annotations

import copy
from typing import Any

ACTIONS = ("merge", "remove", "overwrite")

_MISSING: Any = object()


class PatchError(ValueError):
    """A patch that cannot be applied to one input; the text is the per-input details."""


def struct_value(value: Any) -> Any:
    """A JSON value as a protobuf Struct stores it: every number becomes a float."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): struct_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [struct_value(v) for v in value]
    raise PatchError(f"unsupported metadata value {value!r}")


def normalize_concept(raw: dict[str, Any]) -> dict[str, Any]:
    """A request concept as stored: id required, name defaults to the id, value to 1.0."""
    cid = raw.get("id")
    if not isinstance(cid, str) or not cid:
        raise PatchError("every concept needs a non-empty id")
    name = raw.get("name") or cid
    value = raw.get("value", 1.0)
    return {"id": cid, "name": name, "value": float(value)}


def normalize_data(raw: dict[str, Any]) -> dict[str, Any]:
    """Request `data` (already schema-checked, image removed) in its stored form."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "concepts":
            out[key] = _dedupe_by_id([normalize_concept(c) for c in value])
        elif key == "metadata":
            out[key] = struct_value(value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_patch(stored: dict[str, Any], patch: dict[str, Any], action: str) -> dict[str, Any]:
    """The data that results from applying `patch` to `stored` with `action`; pure."""
    if "image" in patch:
        raise PatchError("data.image cannot be patched: delete the input and add it again")
    normalized = normalize_data(patch) if action != "remove" else _normalize_remove(patch)
    if action == "overwrite":
        return normalized
    result = copy.deepcopy(stored)
    if action == "merge":
        for key, value in normalized.items():
            merged = _merge(result.get(key, _MISSING), value)
            result[key] = merged
    elif action == "remove":
        for key, value in normalized.items():
            _remove_key(result, key, value)
    else:
        raise PatchError(f"unknown action {action!r}")
    return {k: v for k, v in result.items() if not (k == "concepts" and v == [])}


def _normalize_remove(patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(patch)
    if "concepts" in out:
        out["concepts"] = [{"id": c.get("id")} for c in out["concepts"]]
    if "metadata" in out:
        out["metadata"] = struct_value(out["metadata"])
    return out


def _merge(target: Any, patch: Any) -> Any:
    if patch is None:
        return None if target is _MISSING else target
    if isinstance(patch, dict):
        if not patch:
            return {}
        base = dict(target) if isinstance(target, dict) else {}
        for key, value in patch.items():
            if value is None:
                continue
            base[key] = _merge(base.get(key, _MISSING), value)
        return base
    if isinstance(patch, list):
        if not patch or not isinstance(target, list):
            return list(patch)
        if _is_id_list(patch) and _is_id_list(target):
            return _merge_id_list(target, patch)
        return [*target, *patch]
    return patch


def _merge_id_list(target: list[Any], patch: list[Any]) -> list[Any]:
    out = list(target)
    index = {item["id"]: i for i, item in enumerate(out)}
    for item in patch:
        at = index.get(item["id"])
        if at is None:
            index[item["id"]] = len(out)
            out.append(item)
        else:
            out[at] = _merge(out[at], item)
    return out


def _remove_key(data: dict[str, Any], key: str, patch: Any) -> None:
    if key not in data:
        return
    if key == "metadata":
        if isinstance(patch, dict) and isinstance(data[key], dict):
            _remove_meta(data[key], patch)
        return
    current = data[key]
    if isinstance(patch, list) and isinstance(current, list) and _is_id_list(current):
        drop = {item.get("id") for item in patch if isinstance(item, dict)}
        data[key] = [item for item in current if item["id"] not in drop]
    else:
        del data[key]


def _remove_meta(target: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if value is True:
            target.pop(key, None)
        elif value is None or value == {}:
            continue
        elif isinstance(value, dict):
            if isinstance(target.get(key), dict):
                _remove_meta(target[key], value)
        elif (
            isinstance(value, list)
            and _is_id_list(value)
            and isinstance(target.get(key), list)
            and _is_id_list(target[key])
        ):
            drop = {item["id"] for item in value}
            target[key] = [item for item in target[key] if item["id"] not in drop]
        else:
            target[key] = value


def _is_id_list(items: list[Any]) -> bool:
    return bool(items) and all(isinstance(i, dict) and isinstance(i.get("id"), str) for i in items)


def _dedupe_by_id(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id: dict[str, dict[str, Any]] = {}
    for concept in concepts:
        by_id[concept["id"]] = concept
    return list(by_id.values())
