"""Pure: cut operations into requests that respect the API's limits."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

#: The API's limit on inputs (or ids) per request.
MAX_BATCH = 128
#: Raw image bytes per add request; base64 makes it 4/3 larger, under the 128 MB body limit.
MAX_BATCH_BYTES = 64 * 1024 * 1024

T = TypeVar("T")


def batches(
    items: Sequence[T],
    *,
    size: int = MAX_BATCH,
    weight: Callable[[T], int] | None = None,
    max_weight: int = MAX_BATCH_BYTES,
) -> Iterator[list[T]]:
    """Consecutive batches of at most `size` items and, when `weight` is given, at most
    `max_weight` total weight (an item heavier than that goes alone)."""
    if not 1 <= size <= MAX_BATCH:
        raise ValueError(f"batch size must be between 1 and {MAX_BATCH}, not {size}")
    return _batches(items, size, weight, max_weight)


def _batches(
    items: Sequence[T], size: int, weight: Callable[[T], int] | None, max_weight: int
) -> Iterator[list[T]]:
    batch: list[T] = []
    total = 0
    for item in items:
        w = weight(item) if weight is not None else 0
        if batch and (len(batch) >= size or (weight is not None and total + w > max_weight)):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += w
    if batch:
        yield batch
