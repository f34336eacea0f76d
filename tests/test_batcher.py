"""The batcher: request size and byte limits, order, and a heavy item going alone."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.batcher import MAX_BATCH, MAX_BATCH_BYTES, batches


def _cut(items: list[int], **kwargs: object) -> list[list[int]]:
    """Batches of integer items whose weight is their value (when a weight is asked for)."""
    return list(batches(items, **kwargs))  # type: ignore[arg-type]


def _weight(item: int) -> int:
    return item


def test_limits_match_the_api() -> None:
    """The limits are the API's: 128 inputs per request, and base64 bodies under 128 MB."""
    assert MAX_BATCH == 128
    assert MAX_BATCH_BYTES * 4 / 3 < 128 * 1000 * 1000


@pytest.mark.parametrize("size", [0, -1, MAX_BATCH + 1, 1000])
def test_size_outside_1_to_128_is_refused(size: int) -> None:
    """A batch size below 1 or above 128 raises ValueError (once iteration starts)."""
    with pytest.raises(ValueError, match="batch size"):
        list(batches([1, 2, 3], size=size))


@pytest.mark.parametrize("size", [1, MAX_BATCH])
def test_size_bounds_are_accepted(size: int) -> None:
    """Sizes 1 and 128 are valid and cut 300 items into full batches plus a remainder."""
    items = list(range(300))
    got = _cut(items, size=size)
    assert [len(b) for b in got[:-1]] == [size] * (len(got) - 1)
    assert len(got[-1]) == (300 % size or size)
    assert [x for b in got for x in b] == items


@pytest.mark.parametrize(
    ("items", "kwargs", "expected"),
    [
        pytest.param([], {}, [], id="empty-input-no-batches"),
        pytest.param([1], {}, [[1]], id="single-item"),
        pytest.param(list(range(7)), {"size": 3}, [[0, 1, 2], [3, 4, 5], [6]], id="by-count"),
        pytest.param(
            list(range(256)), {}, [list(range(128)), list(range(128, 256))], id="default-128"
        ),
        pytest.param(
            [30, 30, 30, 30],
            {"weight": _weight, "max_weight": 64},
            [[30, 30], [30, 30]],
            id="weight-limit",
        ),
        pytest.param(
            [32, 32, 1], {"weight": _weight, "max_weight": 64}, [[32, 32], [1]], id="weight-exact"
        ),
        pytest.param(
            [10, 100, 10],
            {"weight": _weight, "max_weight": 50},
            [[10], [100], [10]],
            id="heavy-item-alone-middle",
        ),
        pytest.param(
            [100, 10, 10],
            {"weight": _weight, "max_weight": 50},
            [[100], [10, 10]],
            id="heavy-item-alone-first",
        ),
        pytest.param(
            [10, 10, 100],
            {"weight": _weight, "max_weight": 50},
            [[10, 10], [100]],
            id="heavy-item-alone-last",
        ),
        pytest.param(
            [100, 100], {"weight": _weight, "max_weight": 50}, [[100], [100]], id="two-heavy"
        ),
        pytest.param(
            [1, 1, 1, 1, 1],
            {"size": 2, "weight": _weight, "max_weight": 10},
            [[1, 1], [1, 1], [1]],
            id="count-binds-before-weight",
        ),
        pytest.param(
            [0, 0, 0], {"size": 2, "weight": _weight, "max_weight": 0}, [[0, 0], [0]], id="zero"
        ),
        pytest.param(
            [10**9, 10**9],
            {"size": 5, "max_weight": 1},
            [[10**9, 10**9]],
            id="no-weight-function-no-weight-limit",
        ),
    ],
)
def test_batches_table(
    items: list[int], kwargs: dict[str, object], expected: list[list[int]]
) -> None:
    """Each named case cuts its items into exactly the expected consecutive batches."""
    assert _cut(items, **kwargs) == expected


def test_order_preserved_and_sequences_accepted() -> None:
    """Any sequence (here a tuple of strings) comes back in order, as lists."""
    items = tuple(f"op-{i:03d}" for i in range(10))
    got = list(batches(items, size=4))
    assert got == [list(items[0:4]), list(items[4:8]), list(items[8:10])]
    assert all(isinstance(b, list) for b in got)


def test_weight_is_asked_once_per_item() -> None:
    """The weight function is called exactly once per item, in order."""
    seen: list[int] = []

    def weight(item: int) -> int:
        seen.append(item)
        return item

    list(batches([5, 1, 9, 3], size=2, weight=weight, max_weight=8))
    assert seen == [5, 1, 9, 3]


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.integers(min_value=0, max_value=120), max_size=300),
    size=st.integers(min_value=1, max_value=MAX_BATCH),
    max_weight=st.integers(min_value=0, max_value=400),
    weighted=st.booleans(),
)
def test_batches_property(items: list[int], size: int, max_weight: int, weighted: bool) -> None:
    """Concatenating the batches gives the input back, and every batch is within the limits."""
    kwargs: dict[str, object] = {"size": size, "max_weight": max_weight}
    if weighted:
        kwargs["weight"] = _weight
    got = _cut(items, **kwargs)
    assert [x for b in got for x in b] == items
    for batch in got:
        assert 1 <= len(batch) <= size
        if weighted:
            assert sum(batch) <= max_weight or len(batch) == 1


@settings(max_examples=200, deadline=None)
@given(
    items=st.lists(st.integers(min_value=0, max_value=120), min_size=1, max_size=300),
    size=st.integers(min_value=1, max_value=MAX_BATCH),
    max_weight=st.integers(min_value=0, max_value=400),
)
def test_batches_are_not_split_needlessly(items: list[int], size: int, max_weight: int) -> None:
    """Every batch but the last is closed only because the next item would break a limit."""
    got = _cut(items, size=size, weight=_weight, max_weight=max_weight)
    for batch, following in itertools.pairwise(got):
        nxt = following[0]
        assert len(batch) == size or sum(batch) + nxt > max_weight
