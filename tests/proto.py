"""Strict validation of emulator traffic against the official protobuf messages.

`validate_request(kind, body)` / `validate_response(kind, body)` parse a JSON body into the
clarifai-grpc message of that route kind with `ignore_unknown_fields=False`: an unknown field
or a wrong type raises `ParseError`. `ProtoRecorder` is the emulator's validator hook used by
the fixtures in conftest.py: it records every violation, and the fixture fails the test.
"""

from __future__ import annotations

import threading
from typing import Any

from clarifai_grpc.grpc.api import service_pb2
from clarifai_grpc.grpc.api.status import status_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

REQUEST_MESSAGES: dict[str, type[Message]] = {
    "PostInputs": service_pb2.PostInputsRequest,
    "PatchInputs": service_pb2.PatchInputsRequest,
    "DeleteInputs": service_pb2.DeleteInputsRequest,
    "DeleteInput": service_pb2.DeleteInputRequest,
    "ListInputs": service_pb2.ListInputsRequest,
    "GetInput": service_pb2.GetInputRequest,
    "GetInputCount": service_pb2.GetInputCountRequest,
    "PostInputsSearches": service_pb2.PostInputsSearchesRequest,
    "PostSearches": service_pb2.PostSearchesRequest,
    "ListModels": service_pb2.ListModelsRequest,
}

RESPONSE_MESSAGES: dict[str, type[Message]] = {
    "PostInputs": service_pb2.MultiInputResponse,
    "PatchInputs": service_pb2.MultiInputResponse,
    "ListInputs": service_pb2.MultiInputResponse,
    "GetInput": service_pb2.SingleInputResponse,
    "GetInputCount": service_pb2.SingleInputCountResponse,
    "DeleteInputs": status_pb2.BaseResponse,
    "DeleteInput": status_pb2.BaseResponse,
    "PostInputsSearches": service_pb2.MultiSearchResponse,
    "PostSearches": service_pb2.MultiSearchResponse,
    "ListModels": service_pb2.MultiModelResponse,
    "Unknown": status_pb2.BaseResponse,
}

#: Request fields of the legacy 2.6.2 client that today's proto no longer has.
LEGACY_REQUEST_FIELDS: dict[str, frozenset[str]] = {"DeleteInputs": frozenset({"delete_all"})}


class ProtoViolation(AssertionError):
    """A body does not parse strictly into its official message."""


def validate_request(kind: str, body: dict[str, Any]) -> Message:
    """Parse a request body of route `kind` strictly; the legacy `delete_all` is exempt."""
    exempt = LEGACY_REQUEST_FIELDS.get(kind, frozenset())
    trimmed = {k: v for k, v in body.items() if k not in exempt}
    return _parse(REQUEST_MESSAGES[kind], trimmed)


def validate_response(kind: str, body: dict[str, Any]) -> Message:
    """Parse a response body of route `kind` strictly; status codes must also be numbers."""
    _numeric_codes(body, "")
    return _parse(RESPONSE_MESSAGES[kind], body)


def _parse(message: type[Message], body: dict[str, Any]) -> Message:
    try:
        return json_format.ParseDict(body, message(), ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ProtoViolation(f"{message.DESCRIPTOR.name}: {exc}") from None


def _numeric_codes(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "status" and isinstance(item, dict) and "code" in item:
                code = item["code"]
                if isinstance(code, bool) or not isinstance(code, int):
                    raise ProtoViolation(f"{path}.status.code is {code!r}, not a number")
            _numeric_codes(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _numeric_codes(item, f"{path}[{i}]")


class ProtoRecorder:
    """An emulator validator hook that records violations instead of raising them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.violations: list[str] = []
        self.checked = 0

    def __call__(self, kind: str, direction: str, body: dict[str, Any]) -> None:
        check = validate_request if direction == "request" else validate_response
        try:
            check(kind, body)
        except ProtoViolation as exc:
            with self._lock:
                self.violations.append(f"{kind} {direction}: {exc}")
        with self._lock:
            self.checked += 1
