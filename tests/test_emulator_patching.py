"""PATCH merge / remove / overwrite on an input's data: the rules of clarifai-api.md 1.3."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.emulator.patching import PatchError, apply_patch, normalize_data


def concept(cid: str, value: float = 1.0) -> dict[str, Any]:
    return {"id": cid, "name": cid, "value": value}


STORED = {
    "concepts": [concept("cat"), concept("dog", 0.0)],
    "metadata": {"key1": "a", "nested": {"x": 1.0, "y": 2.0}, "tags": ["t1"]},
    "geo": {"geo_point": {"longitude": 1.0, "latitude": 2.0}},
}

CASES = [
    # (action, patch, expected data)
    (
        "merge",
        {"concepts": [{"id": "dog", "value": 1}, {"id": "bird"}]},
        {**STORED, "concepts": [concept("cat"), concept("dog"), concept("bird")]},
    ),
    (
        "merge",
        {"metadata": {"key2": "b", "nested": {"y": 3, "z": 4}}},
        {
            **STORED,
            "metadata": {
                "key1": "a",
                "nested": {"x": 1.0, "y": 3.0, "z": 4.0},
                "tags": ["t1"],
                "key2": "b",
            },
        },
    ),
    (
        "merge",
        {"metadata": {"key1": None, "nested": {}, "tags": ["t2"]}},
        {**STORED, "metadata": {"key1": "a", "nested": {}, "tags": ["t1", "t2"]}},
    ),
    (
        "merge",
        {"metadata": {"tags": [], "nested": "flat"}},
        {**STORED, "metadata": {"key1": "a", "nested": "flat", "tags": []}},
    ),
    (
        "merge",
        {"geo": {"geo_point": {"longitude": 5.0, "latitude": 6.0}}},
        {**STORED, "geo": {"geo_point": {"longitude": 5.0, "latitude": 6.0}}},
    ),
    (
        "remove",
        {"concepts": [{"id": "dog"}, {"id": "absent"}]},
        {**STORED, "concepts": [concept("cat")]},
    ),
    (
        "remove",
        {"metadata": {"key1": True, "nested": {"x": True, "y": False}, "tags": {}}},
        {**STORED, "metadata": {"nested": {"y": False}, "tags": ["t1"]}},
    ),
    (
        "remove",
        {"metadata": {"nested": {"x": True, "y": True}}},
        {**STORED, "metadata": {"key1": "a", "nested": {}, "tags": ["t1"]}},
    ),
    (
        "remove",
        {"concepts": [{"id": "cat"}, {"id": "dog"}]},
        {k: v for k, v in STORED.items() if k != "concepts"},
    ),
    (
        "overwrite",
        {"concepts": [{"id": "fish"}], "metadata": {"only": 1}},
        {"concepts": [concept("fish")], "metadata": {"only": 1.0}},
    ),
    ("overwrite", {"concepts": [{"id": "fish"}]}, {"concepts": [concept("fish")]}),
]


@pytest.mark.parametrize(("action", "patch", "expected"), CASES)
def test_patch_table(action, patch, expected):
    """Each action transforms the stored data exactly as the documented rules say."""
    assert apply_patch(STORED, patch, action) == expected


def test_patch_never_mutates_its_inputs():
    """apply_patch is pure: the stored data and the patch are left untouched."""
    stored = normalize_data({"metadata": {"a": {"b": 1}}, "concepts": [{"id": "c"}]})
    before = repr(stored)
    patch = {"metadata": {"a": {"c": 2}}, "concepts": [{"id": "c", "value": 0}]}
    apply_patch(stored, patch, "merge")
    apply_patch(stored, {"metadata": {"a": {"b": True}}}, "remove")
    assert repr(stored) == before


@pytest.mark.parametrize("action", ["merge", "remove", "overwrite"])
def test_image_cannot_be_patched(action):
    """A patch touching data.image is refused: images are immutable."""
    with pytest.raises(PatchError):
        apply_patch(STORED, {"image": {"url": "https://x/y"}}, action)


def test_concept_without_id_is_refused():
    """Every concept in a merge needs an id."""
    with pytest.raises(PatchError):
        apply_patch(STORED, {"concepts": [{"name": "nameless"}]}, "merge")


json_scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=3)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)
metadata = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(stored=metadata, patch=metadata)
def test_merge_is_idempotent(stored, patch):
    """Merging the same metadata patch twice gives the result of merging it once, unless
    it appends to id-less lists."""
    data = normalize_data({"metadata": stored})
    once = apply_patch(data, {"metadata": patch}, "merge")
    twice = apply_patch(once, {"metadata": patch}, "merge")
    if "[" not in repr(patch):
        assert twice == once


@given(stored=metadata, patch=metadata)
def test_overwrite_result_ignores_what_was_stored(stored, patch):
    """overwrite depends only on the patch, never on the stored data."""
    data = normalize_data({"metadata": stored})
    assert apply_patch(data, {"metadata": patch}, "overwrite") == normalize_data(
        {"metadata": patch}
    )
