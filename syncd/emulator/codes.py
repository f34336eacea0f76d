"""Status codes the emulator answers with, their descriptions and HTTP statuses.

Numbers and names are those of `clarifai.api.status.StatusCode` (see docs/emulator.md for
where the emulator had to pick a code the real service does not document).
"""

from __future__ import annotations

import os
from typing import Any

SUCCESS = 10000
MIXED_STATUS = 10010
FAILURE = 10020
CONN_THROTTLED = 11005
CONN_KEY_INVALID = 11008
CONN_KEY_NOT_FOUND = 11009
CONN_BAD_REQUEST_FORMAT = 11100
CONN_DOES_NOT_EXIST = 11101
CONN_INVALID_REQUEST = 11102
CONN_METHOD_NOT_ALLOWED = 11103
INPUT_SUCCESS = 30000
INPUT_PENDING = 30001
INPUT_FAILED = 30002
INPUT_IN_PROGRESS = 30003
INPUT_DUPLICATE = 30100
INPUT_DOES_NOT_EXIST = 30102
INPUT_INVALID_ARGUMENT = 30104
INPUT_OVER_LIMIT = 30105
INPUT_INVALID_URL = 30106
INPUT_INVALID_REQUEST = 39999
SEARCH_INVALID_REQUEST = 40002
RPC_SERVER_UNAVAILABLE = 40031
RPC_MAX_MESSAGE_SIZE_EXCEEDED = 40033
INTERNAL_SERVER_ISSUE = 98004

DESCRIPTIONS: dict[int, str] = {
    SUCCESS: "Ok",
    MIXED_STATUS: "Mixed Success",
    FAILURE: "Failure",
    CONN_THROTTLED: "Making too many requests",
    CONN_KEY_INVALID: "Invalid API key or Invalid API key/application pair",
    CONN_KEY_NOT_FOUND: "API key not found",
    CONN_BAD_REQUEST_FORMAT: "Bad request format",
    CONN_DOES_NOT_EXIST: "Resource does not exist",
    CONN_INVALID_REQUEST: "Invalid request",
    CONN_METHOD_NOT_ALLOWED: "Method not allowed",
    INPUT_SUCCESS: "Download complete",
    INPUT_PENDING: "Download pending",
    INPUT_FAILED: "Download failed",
    INPUT_IN_PROGRESS: "Download in progress",
    INPUT_DUPLICATE: "Input duplicate",
    INPUT_DOES_NOT_EXIST: "Input does not exist",
    INPUT_INVALID_ARGUMENT: "Input invalid argument",
    INPUT_OVER_LIMIT: "Input over limit",
    INPUT_INVALID_URL: "Input invalid URL",
    INPUT_INVALID_REQUEST: "Invalid input request",
    SEARCH_INVALID_REQUEST: "Invalid search request",
    RPC_SERVER_UNAVAILABLE: "Server unavailable",
    RPC_MAX_MESSAGE_SIZE_EXCEEDED: "Max message size exceeded",
    INTERNAL_SERVER_ISSUE: "Internal server issue",
}

_HTTP: dict[int, int] = {
    SUCCESS: 200,
    MIXED_STATUS: 207,
    CONN_THROTTLED: 429,
    CONN_KEY_INVALID: 401,
    CONN_KEY_NOT_FOUND: 401,
    CONN_DOES_NOT_EXIST: 404,
    CONN_METHOD_NOT_ALLOWED: 405,
    RPC_MAX_MESSAGE_SIZE_EXCEEDED: 413,
    RPC_SERVER_UNAVAILABLE: 503,
    INTERNAL_SERVER_ISSUE: 500,
}

#: Input status names a request may use instead of numbers (`status.code=INPUT_SUCCESS`).
INPUT_STATUS_NAMES: dict[str, int] = {
    "INPUT_SUCCESS": INPUT_SUCCESS,
    "INPUT_DOWNLOAD_SUCCESS": INPUT_SUCCESS,
    "INPUT_PENDING": INPUT_PENDING,
    "INPUT_DOWNLOAD_PENDING": INPUT_PENDING,
    "INPUT_FAILED": INPUT_FAILED,
    "INPUT_DOWNLOAD_FAILED": INPUT_FAILED,
    "INPUT_IN_PROGRESS": INPUT_IN_PROGRESS,
    "INPUT_DOWNLOAD_IN_PROGRESS": INPUT_IN_PROGRESS,
}

#: `input_id_conflict_resolution` enum values by name.
CONFLICT_RESOLUTION_NAMES: dict[str, int] = {
    "INPUT_ID_CONFLICT_RESOLUTION_NOT_SET": 0,
    "SKIP": 1,
    "SUFFIX": 2,
}


def http_status(code: int) -> int:
    """The HTTP status the emulator pairs with a top-level `code` (400 unless listed)."""
    return _HTTP.get(code, 400)


def status(code: int, details: str = "", *, req_id: bool = True) -> dict[str, Any]:
    """A `Status` object: numeric code, non-empty description, optional details and req_id."""
    out: dict[str, Any] = {"code": code, "description": DESCRIPTIONS.get(code, "Failure")}
    if details:
        out["details"] = details
    if req_id:
        out["req_id"] = os.urandom(16).hex()
    return out


def parse_enum(value: object, names: dict[str, int], valid: set[int] | None = None) -> int:
    """An enum given as a name or a number (int or digit string); ValueError when neither."""
    if isinstance(value, bool):
        raise ValueError(f"invalid enum value {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.lstrip("-").isdigit():
        number = int(value)
    elif isinstance(value, str) and value in names:
        return names[value]
    else:
        raise ValueError(f"invalid enum value {value!r}")
    if valid is not None and number not in valid:
        raise ValueError(f"invalid enum value {value!r}")
    return number


class Refusal(Exception):
    """The whole request is refused with this top-level code (HTTP from the code unless given)."""

    def __init__(
        self,
        code: int,
        details: str,
        *,
        http: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.http = http_status(code) if http is None else http
        self.headers = headers or {}
