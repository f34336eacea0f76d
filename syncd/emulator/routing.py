"""Which v2 route a path names, in both spellings, and which HTTP verbs it takes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

SHORT_PREFIX = "/v2"
SCOPED_PREFIX = "/v2/users/{user_id}/apps/{app_id}"
_SCOPED = re.compile(r"/v2/users/([^/]+)/apps/([^/]+)(/.*)")

# Order matters: the fixed `inputs/...` words must win over `inputs/{input_id}`.
_TABLE: tuple[tuple[re.Pattern[str], str, dict[str, str]], ...] = (
    (
        re.compile(r"/inputs"),
        "/inputs",
        {
            "POST": "PostInputs",
            "PATCH": "PatchInputs",
            "DELETE": "DeleteInputs",
            "GET": "ListInputs",
        },
    ),
    (re.compile(r"/inputs/status"), "/inputs/status", {"GET": "GetInputCount"}),
    (re.compile(r"/inputs/searches"), "/inputs/searches", {"POST": "PostInputsSearches"}),
    # Real routes the emulator does not implement: answered as unknown routes (404, 11101).
    (re.compile(r"/inputs/(?:stream|jobs(?:/.*)?|data_sources|uploads)"), "", {}),
    (
        re.compile(r"/inputs/(?P<input_id>[^/]+)"),
        "/inputs/{input_id}",
        {"GET": "GetInput", "DELETE": "DeleteInput"},
    ),
    (re.compile(r"/searches"), "/searches", {"POST": "PostSearches"}),
    (re.compile(r"/models"), "/models", {"GET": "ListModels"}),
)

#: Every route kind and the response message it answers with (names in clarifai-grpc).
RESPONSE_MESSAGES: dict[str, str] = {
    "PostInputs": "MultiInputResponse",
    "PatchInputs": "MultiInputResponse",
    "ListInputs": "MultiInputResponse",
    "GetInput": "SingleInputResponse",
    "GetInputCount": "SingleInputCountResponse",
    "DeleteInputs": "BaseResponse",
    "DeleteInput": "BaseResponse",
    "PostInputsSearches": "MultiSearchResponse",
    "PostSearches": "MultiSearchResponse",
    "ListModels": "MultiModelResponse",
    "Unknown": "BaseResponse",
}

#: Repeated fields a response of this kind always carries, even when empty or on error.
ALWAYS_LISTS: dict[str, str] = {
    "PostInputs": "inputs",
    "PatchInputs": "inputs",
    "ListInputs": "inputs",
    "PostInputsSearches": "hits",
    "PostSearches": "hits",
    "ListModels": "models",
}


@dataclass(frozen=True, slots=True)
class Route:
    """A matched path. `kind` is None when the verb is not allowed on it."""

    template: str
    kind: str | None
    allowed: tuple[str, ...]
    input_id: str | None = None
    user_id: str | None = None
    app_id: str | None = None

    @property
    def scoped(self) -> bool:
        return self.user_id is not None


def match_route(method: str, path: str) -> Route | None:
    """The route for `path` (no query string), or None for an unknown path."""
    user_id = app_id = None
    if path.startswith("/v2/users/"):
        scoped = _SCOPED.fullmatch(path)
        if scoped is None:
            return None
        user_id, app_id, rest = unquote(scoped[1]), unquote(scoped[2]), scoped[3]
        prefix = SCOPED_PREFIX
    elif path.startswith("/v2/"):
        rest, prefix = path[len(SHORT_PREFIX) :], SHORT_PREFIX
    else:
        return None
    for pattern, template, methods in _TABLE:
        found = pattern.fullmatch(rest)
        if found is None:
            continue
        if not methods:
            return None
        input_id = found.groupdict().get("input_id")
        return Route(
            template=prefix + template,
            kind=methods.get(method),
            allowed=tuple(methods),
            input_id=None if input_id is None else unquote(input_id),
            user_id=user_id,
            app_id=app_id,
        )
    return None
