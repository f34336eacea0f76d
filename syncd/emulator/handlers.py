"""What each v2 route does with a checked request: returns (code, details, body fields).

Requests arrive here already authenticated and shape-checked (schema.py); a handler refuses a
whole request by raising `Refusal`, and reports per-input failures inside its body.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from syncd.emulator import codes
from syncd.emulator.clock import rfc3339
from syncd.emulator.codes import Refusal
from syncd.emulator.faults import Faults
from syncd.emulator.patching import ACTIONS, PatchError, normalize_data, struct_value
from syncd.emulator.routing import Route
from syncd.emulator.store import InputView, ItemError, NewInput, Outcome, Store
from syncd.imageformat import image_problem

MAX_BATCH = 128
MAX_PER_PAGE = 1000
DEFAULT_PER_PAGE = 128
MAX_IMAGE_BYTES = 20 * 1024 * 1024
INPUT_ID = re.compile(r"[A-Za-z0-9_.\-]{1,128}")

Result = tuple[int, str, dict[str, Any]]


class Handlers:
    """The route handlers over one store, rendering inputs the way the real service does."""

    def __init__(self, store: Store, *, app_id: str, base_url: Callable[[], str]) -> None:
        self.store = store
        self.app_id = app_id
        self.base_url = base_url
        self.posted: Callable[[list[str | None]], None] = lambda ids: None
        self.injected_failures: Callable[[int], None] = lambda n: None

    def dispatch(self, kind: str, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        handler = getattr(self, "_" + _snake(kind))
        return handler(request, route, faults)

    # --- writes -----------------------------------------------------------------------------

    def _post_inputs(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        raw_inputs = _batch(request.get("inputs", []), "inputs")
        self.posted([raw.get("id") for raw in raw_inputs])
        items = [parse_new_input(raw) for raw in raw_inputs]
        outcomes = self.store.add(
            items,
            suffix_conflicts=request.get("input_id_conflict_resolution") == 2,
            duplicate_fails_batch=faults.duplicate_fails_batch,
            fail_ids=faults.fail_processing_ids,
        )
        injected = sum(
            1
            for o in outcomes
            if isinstance(o, InputView) and o.record.id in faults.fail_processing_ids
        )
        if injected:
            self.injected_failures(injected)
        return self._batch_result(outcomes)

    def _patch_inputs(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        action = request.get("action", "")
        if action not in ACTIONS:
            raise Refusal(
                codes.INPUT_INVALID_REQUEST,
                f"action must be one of {', '.join(ACTIONS)}, got {action!r}",
            )
        items: list[tuple[str, dict[str, Any]] | ItemError] = []
        for raw in _batch(request.get("inputs", []), "inputs"):
            input_id = raw.get("id")
            if not input_id:
                items.append(ItemError(None, codes.INPUT_INVALID_ARGUMENT, "input id is required"))
            else:
                items.append((input_id, raw.get("data", {})))
        return self._batch_result(self.store.patch(items, action))

    def _delete_inputs(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        if request.get("delete_all"):
            self.store.delete(None)
            return codes.SUCCESS, "", {}
        ids = _batch(request.get("ids", []), "ids")
        self.store.delete(ids)
        return codes.SUCCESS, "", {}

    def _delete_input(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        self.store.delete([route.input_id or ""])
        return codes.SUCCESS, "", {}

    def _batch_result(self, outcomes: list[Outcome]) -> Result:
        ok = sum(1 for o in outcomes if isinstance(o, InputView))
        code = codes.SUCCESS if ok == len(outcomes) else codes.FAILURE if ok == 0 else None
        code = codes.MIXED_STATUS if code is None else code
        return code, "", {"inputs": [self.render_outcome(o) for o in outcomes]}

    # --- reads ------------------------------------------------------------------------------

    def _list_inputs(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        page, per_page = _page(request)
        ids = request.get("ids")
        if ids is not None and len(ids) > MAX_BATCH:
            raise Refusal(
                codes.INPUT_INVALID_REQUEST, f"at most {MAX_BATCH} ids per request, got {len(ids)}"
            )
        status_code = request.get("status", {}).get("code")
        views = self.store.list_inputs(
            ids=ids, status_code=status_code, page=page, per_page=per_page
        )
        return codes.SUCCESS, "", {"inputs": [self.render(v) for v in views]}

    def _get_input(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        view = self.store.get(route.input_id or "")
        if view is None:
            raise Refusal(codes.CONN_DOES_NOT_EXIST, f"Input '{route.input_id}' does not exist")
        return codes.SUCCESS, "", {"input": self.render(view)}

    def _get_input_count(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        return codes.SUCCESS, "", {"counts": self.store.counts()}

    def _list_models(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        return codes.SUCCESS, "", {"models": []}

    def _post_inputs_searches(
        self, request: dict[str, Any], route: Route, faults: Faults
    ) -> Result:
        searches = request.get("searches", [])
        if len(searches) != 1:
            raise Refusal(codes.SEARCH_INVALID_REQUEST, "exactly one search is supported")
        query = searches[0].get("query", {})
        if query.get("ranks") or query.get("ands"):
            raise Refusal(
                codes.SEARCH_INVALID_REQUEST,
                "the emulator supports query.filters (metadata, concepts) only",
            )
        wanted = [
            (f.get("negate", False), _filter_data(f.get("annotation") or f.get("input") or {}))
            for f in query.get("filters", [])
        ]
        return self._search(wanted, request, only_count=request.get("only_count", False))

    def _post_searches(self, request: dict[str, Any], route: Route, faults: Faults) -> Result:
        if request.get("searches"):
            raise Refusal(codes.SEARCH_INVALID_REQUEST, "use query.ands with POST /v2/searches")
        ands = request.get("query", {}).get("ands", [])
        if any(a.get("output") for a in ands):
            raise Refusal(codes.SEARCH_INVALID_REQUEST, "predicted-concept search is unsupported")
        wanted = [
            (a.get("negate", False), _filter_data(a.get("input") or a.get("annotation") or {}))
            for a in ands
        ]
        return self._search(wanted, request, only_count=False)

    def _search(
        self, wanted: list[tuple[bool, dict[str, Any]]], request: dict[str, Any], only_count: bool
    ) -> Result:
        def where(view: InputView) -> bool:
            if view.code != codes.INPUT_SUCCESS:
                return False
            return all(_matches(view.record.data, want) != negate for negate, want in wanted)

        body: dict[str, Any] = {"id": os.urandom(16).hex(), "hits": []}
        if only_count:
            body["hit_counts"] = [{"estimated_total": self.store.count_where(where)}]
            return codes.SUCCESS, "", body
        page, per_page = _page(request.get("pagination", {}))
        views = self.store.list_inputs(page=page, per_page=per_page, where=where)
        body["hits"] = [{"score": 1.0, "input": self.render(v)} for v in views]
        return codes.SUCCESS, "", body

    # --- rendering --------------------------------------------------------------------------

    def render(self, view: InputView) -> dict[str, Any]:
        """An input as the real service returns it: hosted URL, never the base64 bytes."""
        rec = view.record
        url = rec.image_url or f"{self.base_url()}/_emulator/blobs/{quote(rec.id, safe='')}"
        image: dict[str, Any] = {"url": url}
        if rec.allow_duplicate_url:
            image["allow_duplicate_url"] = True
        out: dict[str, Any] = {
            "id": rec.id,
            "data": {"image": image, **self._render_data(rec.data)},
            "created_at": rfc3339(rec.created_at),
            "modified_at": rfc3339(rec.modified_at),
            "status": _item_status(view.code, view.details),
        }
        if rec.dataset_ids:
            out["dataset_ids"] = list(rec.dataset_ids)
        return out

    def render_outcome(self, outcome: Outcome) -> dict[str, Any]:
        if isinstance(outcome, InputView):
            return self.render(outcome)
        out: dict[str, Any] = {}
        if outcome.id:
            out["id"] = outcome.id
        if outcome.data is not None:
            out["data"] = self._render_data(outcome.data)
        out["status"] = _item_status(outcome.code, outcome.details)
        return out

    def _render_data(self, data: dict[str, Any]) -> dict[str, Any]:
        out = dict(data)
        if "concepts" in out:
            out["concepts"] = [{**c, "app_id": self.app_id} for c in out["concepts"]]
        return out


def parse_new_input(raw: dict[str, Any]) -> NewInput | ItemError:
    """One POSTed input (shape-checked) as a NewInput, or the per-input error it earns."""
    input_id = raw.get("id") or None
    if input_id is not None and not INPUT_ID.fullmatch(input_id):
        return ItemError(
            input_id,
            codes.INPUT_INVALID_ARGUMENT,
            f"invalid input id {input_id!r}: use 1-128 letters, digits, '-', '_' or '.'",
        )
    data = dict(raw.get("data", {}))
    image = data.pop("image", {})
    url: str | None = image.get("url") or None
    blob: bytes | None = image.get("base64") or None
    problem = _image_source_problem(url, blob)
    if problem is not None:
        return ItemError(input_id, problem[0], problem[1])
    try:
        stored = normalize_data(data)
    except PatchError as exc:
        return ItemError(input_id, codes.INPUT_INVALID_ARGUMENT, str(exc))
    reason = image_problem(blob) if blob is not None else None
    return NewInput(
        id=input_id,
        data=stored,
        image_bytes=blob,
        image_url=url,
        allow_duplicate_url=bool(image.get("allow_duplicate_url", False)),
        dataset_ids=tuple(raw.get("dataset_ids", ())),
        fail_reason=None if reason is None else f"not a decodable image: {reason}",
    )


def _image_source_problem(url: str | None, blob: bytes | None) -> tuple[int, str] | None:
    if url and blob:
        return codes.INPUT_INVALID_ARGUMENT, "give data.image.url or data.image.base64, not both"
    if not url and not blob:
        return (
            codes.INPUT_INVALID_ARGUMENT,
            "data.image.url or data.image.base64 is required (the emulator stores images only)",
        )
    if blob is not None and len(blob) > MAX_IMAGE_BYTES:
        return (
            codes.INPUT_OVER_LIMIT,
            f"image is {len(blob)} bytes; the limit is {MAX_IMAGE_BYTES} bytes (20 MiB)",
        )
    if url and not url.startswith(("http://", "https://")):
        return codes.INPUT_INVALID_URL, f"invalid image URL {url!r}"
    return None


def _batch(items: list[Any], name: str) -> list[Any]:
    if not items:
        raise Refusal(codes.INPUT_INVALID_REQUEST, f"no {name} in the request")
    if len(items) > MAX_BATCH:
        raise Refusal(
            codes.INPUT_INVALID_REQUEST,
            f"at most {MAX_BATCH} {name} per request, got {len(items)}",
        )
    return items


def _page(request: dict[str, Any]) -> tuple[int, int]:
    """(page, per_page) with the proto defaults for 0 / absent; per_page above 1000 refused."""
    page = request.get("page") or 1
    per_page = request.get("per_page") or DEFAULT_PER_PAGE
    if per_page > MAX_PER_PAGE:
        raise Refusal(
            codes.CONN_INVALID_REQUEST, f"per_page must be at most {MAX_PER_PAGE}, got {per_page}"
        )
    return page, per_page


def _filter_data(holder: dict[str, Any]) -> dict[str, Any]:
    data = holder.get("data", {})
    unsupported = set(data) - {"metadata", "concepts"}
    if unsupported or set(holder) - {"data"}:
        raise Refusal(
            codes.SEARCH_INVALID_REQUEST,
            "the emulator searches by data.metadata and data.concepts only",
        )
    return {
        "metadata": struct_value(data.get("metadata", {})),
        "concepts": [(c.get("id"), float(c.get("value", 1.0))) for c in data.get("concepts", [])],
    }


def _matches(data: dict[str, Any], want: dict[str, Any]) -> bool:
    if not _contains(data.get("metadata", {}), want["metadata"]):
        return False
    have = {c["id"]: c["value"] for c in data.get("concepts", [])}
    return all(have.get(cid) == value for cid, value in want["concepts"])


def _contains(have: Any, want: Any) -> bool:
    if isinstance(want, dict):
        return isinstance(have, dict) and all(
            k in have and _contains(have[k], v) for k, v in want.items()
        )
    return have == want


def _item_status(code: int, details: str) -> dict[str, Any]:
    return codes.status(code, details, req_id=False)


@functools.cache
def _snake(kind: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", kind).lower()
