"""Read what the remote says about an input into the model's terms."""

from __future__ import annotations

from typing import Any

from syncd.envelope import RemoteRecord
from syncd.model import Labels, Marker, RemoteInput, canonical_json, normalize_metadata


def labels_from_data(data: dict[str, Any]) -> Labels:
    """Concepts (id -> value) and normalised metadata from an input's `data`.

    A concept without `value` reads as 0.0, the protobuf default (the service always shows it).
    """
    return _labels_and_metadata(data)[0]


def _labels_and_metadata(data: dict[str, Any]) -> tuple[Labels, dict[str, Any]]:
    """The labels, and the normalised metadata dict they were spelled from."""
    concepts = {}
    for concept in data.get("concepts") or ():
        cid = concept.get("id")
        if isinstance(cid, str) and cid:
            concepts[cid] = float(concept.get("value", 0.0))
    metadata = data.get("metadata") or {}
    try:
        normalized = normalize_metadata(metadata) if isinstance(metadata, dict) else {}
    except ValueError:
        normalized = {}
    return Labels(tuple(sorted(concepts.items())), canonical_json(normalized)), normalized


def remote_input(record: RemoteRecord) -> RemoteInput:
    # the marker is read from the normalised dict itself: parsing labels.metadata again would
    # give the same dict (normalisation keeps strings as they are) at twice the cost
    labels, metadata = _labels_and_metadata(record.data or {})
    return RemoteInput(
        input_id=record.input_id,
        labels=labels,
        marker=Marker.from_metadata(metadata),
        status_code=record.status_code,
    )
