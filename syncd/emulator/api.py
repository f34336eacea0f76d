"""One v2 request in, one reply out: routing, auth, faults, parsing, envelopes. No sockets.

Order of checks, as a client meets them: unknown path (404, 11101) → wrong verb (405, 11103)
→ authorization (401: 11102 malformed header, 11009 unknown key, 11008 wrong user/app) →
throttle (429, 11005) → added latency → injected 5xx → body / query parsing (400: 11100
unparsable, 11102 unknown field or wrong type) → the route itself → maybe drop the connection.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from syncd.emulator import codes
from syncd.emulator.codes import INPUT_STATUS_NAMES, Refusal, parse_enum
from syncd.emulator.faults import Faults, Stats, Throttle
from syncd.emulator.handlers import Handlers
from syncd.emulator.routing import ALWAYS_LISTS, Route, match_route
from syncd.emulator.schema import REQUESTS, SchemaError, check
from syncd.emulator.store import Store

log = structlog.get_logger(__name__)

#: Called as validator(kind, "request" | "response", body) for every accepted request body
#: (GET: its query as a typed dict) and every response body. See tests/proto.py.
Validator = Callable[[str, str, dict[str, Any]], None]

MALFORMED_AUTH = (
    "Empty or malformed authorization header. Please provide an API key or session token."
)
_QUERY_KINDS = {"ListInputs", "GetInput", "GetInputCount", "ListModels"}
_APP_QUERY = {"user_app_id.user_id", "user_app_id.app_id"}
_LIST_QUERY = _APP_QUERY | {"page", "per_page", "ids", "status.code"}
_FAULT_CODES = {
    500: codes.INTERNAL_SERVER_ISSUE,
    502: codes.FAILURE,
    503: codes.RPC_SERVER_UNAVAILABLE,
}


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes


@dataclass(slots=True)
class HttpReply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


class V2Api:
    """Answers v2 requests for one user's one app from a Store."""

    def __init__(
        self,
        store: Store,
        *,
        user_id: str,
        app_id: str,
        api_keys: tuple[str, ...],
        stats: Stats,
        faults: Callable[[], Faults],
        base_url: Callable[[], str],
        validator: Validator | None = None,
        sleep: Callable[[float], object],
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.user_id = user_id
        self.app_id = app_id
        self.api_keys = frozenset(api_keys)
        self.stats = stats
        self.throttle = Throttle()
        self.validator = validator
        self.hook_errors: list[str] = []
        self._faults = faults
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.handlers = Handlers(store, app_id=app_id, base_url=base_url)
        self.handlers.posted = stats.posted
        self.handlers.injected_failures = lambda n: stats.fault("fail_processing", n)

    def handle(self, req: HttpRequest) -> HttpReply:
        route = match_route(req.method, req.path)
        if route is None:
            self.stats.request(f"{req.method} <unknown route>")
            return self._error("Unknown", Refusal(codes.CONN_DOES_NOT_EXIST, "unknown route"))
        self.stats.request(f"{req.method} {route.template}")
        if route.kind is None:
            allowed = ", ".join(route.allowed)
            refusal = Refusal(
                codes.CONN_METHOD_NOT_ALLOWED,
                f"{req.method} is not allowed on {route.template} (allowed: {allowed})",
                headers={"Allow": allowed},
            )
            return self._error("Unknown", refusal)
        kind = route.kind
        faults = self._faults()
        try:
            self._admit(req, route, faults)
            request = self._parse(kind, req, route)
            code, details, body = self.handlers.dispatch(kind, request, route, faults)
        except Refusal as refusal:
            return self._error(kind, refusal)
        reply = self._reply(kind, code, details, body)
        if faults.drop_rate and self._rng.random() < faults.drop_rate:
            self.stats.fault("drop")
            reply.drop = True
        return reply

    def refuse(self, method: str, path: str, refusal: Refusal) -> HttpReply:
        """Answer a request refused before it could be read (a body over the size limit)."""
        route = match_route(method, path)
        kind = route.kind if route is not None and route.kind is not None else "Unknown"
        template = route.template if route is not None else "<unknown route>"
        self.stats.request(f"{method} {template}")
        return self._error(kind, refusal)

    # --- before the route runs --------------------------------------------------------------

    def _admit(self, req: HttpRequest, route: Route, faults: Faults) -> None:
        key = self._authenticate(req.headers.get("Authorization"))
        if route.scoped:
            self._check_app(route.user_id, route.app_id)
        if not self.throttle.admit(key, self.store.clock.now(), faults.throttle_rps):
            headers = {} if faults.retry_after is None else {"Retry-After": str(faults.retry_after)}
            raise Refusal(
                codes.CONN_THROTTLED,
                f"exceeded limit of {faults.throttle_rps:g} requests per second",
                headers=headers,
            )
        if faults.latency:
            self.stats.fault("latency")
            self._sleep(faults.latency)
        if faults.error_rate and self._rng.random() < faults.error_rate:
            self.stats.fault("error")
            raise Refusal(
                _FAULT_CODES[faults.error_status],
                f"injected fault: HTTP {faults.error_status}",
                http=faults.error_status,
            )

    def _authenticate(self, header: str | None) -> str:
        parts = (header or "").split(" ")
        if len(parts) != 2 or parts[0] != "Key" or not parts[1]:
            raise Refusal(codes.CONN_INVALID_REQUEST, MALFORMED_AUTH, http=401)
        if parts[1] not in self.api_keys:
            raise Refusal(codes.CONN_KEY_NOT_FOUND, "API key not found")
        return parts[1]

    def _check_app(self, user_id: str | None, app_id: str | None) -> None:
        user_ok = user_id in (None, "", "me", self.user_id)
        if not user_ok or app_id not in (None, "", self.app_id):
            raise Refusal(
                codes.CONN_KEY_INVALID,
                f"this API key does not grant access to user {user_id!r}, app {app_id!r}",
            )

    def _parse(self, kind: str, req: HttpRequest, route: Route) -> dict[str, Any]:
        """The checked request as a dict; hands the validator hook what was accepted."""
        if kind in _QUERY_KINDS:
            request = _parse_query(kind, req.query)
            raw = dict(request)
            if route.input_id is not None:
                raw["input_id"] = route.input_id
        else:
            raw = _parse_json(req.body)
            try:
                request = check(REQUESTS[kind], raw)
            except SchemaError as exc:
                raise Refusal(codes.CONN_INVALID_REQUEST, str(exc)) from None
            app = _parse_query("BodyRoute", req.query).get("user_app_id")
            if app:
                self._check_app(app.get("user_id"), app.get("app_id"))
        app = request.get("user_app_id")
        if app:
            self._check_app(app.get("user_id"), app.get("app_id"))
        self._hook(kind, "request", raw)
        return request

    # --- replies ----------------------------------------------------------------------------

    def _reply(
        self,
        kind: str,
        code: int,
        details: str,
        fields: Mapping[str, Any],
        *,
        http: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> HttpReply:
        body: dict[str, Any] = {"status": codes.status(code, details)}
        always = ALWAYS_LISTS.get(kind)
        if always is not None:
            body[always] = []
        body.update(fields)
        self._hook(kind, "response", body)
        status = codes.http_status(code) if http is None else http
        self.stats.response(status)
        # (a reply is a fresh tree of dicts: no cycle to look for)
        data = json.dumps(body, separators=(",", ":"), check_circular=False).encode()
        return HttpReply(status, data, headers=headers or {})

    def _error(self, kind: str, refusal: Refusal) -> HttpReply:
        return self._reply(
            kind, refusal.code, refusal.details, {}, http=refusal.http, headers=refusal.headers
        )

    def _hook(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        if self.validator is None:
            return
        try:
            self.validator(kind, direction, body)
        except Exception as exc:  # a broken hook must not take the server down
            log.exception("validator_raised", kind=kind, direction=direction)
            self.hook_errors.append(f"{kind} {direction}: {exc!r}")


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise Refusal(
            codes.CONN_BAD_REQUEST_FORMAT, f"could not parse the request body as JSON: {exc}"
        ) from None
    if not isinstance(parsed, dict):
        raise Refusal(codes.CONN_BAD_REQUEST_FORMAT, "the request body must be a JSON object")
    return parsed


def _parse_query(kind: str, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """A query string as the typed fields of the request message it stands for."""
    allowed = _LIST_QUERY if kind == "ListInputs" else _APP_QUERY
    out: dict[str, Any] = {}
    for key, values in query.items():
        if key not in allowed:
            if kind == "ListModels":
                continue  # enough of ListModels for clients: its filters are ignored
            raise Refusal(codes.CONN_INVALID_REQUEST, f"unknown query parameter {key!r}")
        value = values[-1]
        if key in ("page", "per_page"):
            if not value.isdigit():
                raise Refusal(codes.CONN_INVALID_REQUEST, f"{key} must be a non-negative integer")
            out[key] = int(value)
        elif key == "ids":
            out["ids"] = list(values)
        elif key == "status.code":
            try:
                out["status"] = {"code": parse_enum(value, INPUT_STATUS_NAMES)}
            except ValueError as exc:
                raise Refusal(codes.CONN_INVALID_REQUEST, f"status.code: {exc}") from None
        else:
            out.setdefault("user_app_id", {})[key.split(".", 1)[1]] = value
    return out
