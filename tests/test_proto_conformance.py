"""The emulator's wire format against the official protobufs of clarifai-grpc (strict mode).

Every emulator started through conftest's fixtures already validates each accepted request
body and each response body (tests/proto.py); these tests prove the validation itself bites,
that the emulator's own request schema names only real proto fields, and tour every route.
"""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from proto import (
    REQUEST_MESSAGES,
    RESPONSE_MESSAGES,
    ProtoRecorder,
    ProtoViolation,
    validate_request,
    validate_response,
)

from syncd.emulator import schema
from syncd.emulator.routing import RESPONSE_MESSAGES as EMULATOR_RESPONSES

_REPEATED = getattr(FieldDescriptor, "LABEL_REPEATED", 3)


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    return bool(repeated) if repeated is not None else field.label == _REPEATED


def _schema_problems(spec: schema.Msg, descriptor: Descriptor, path: str) -> list[str]:
    problems = []
    if spec.name != descriptor.full_name:
        problems.append(f"{path}: schema says {spec.name}, proto is {descriptor.full_name}")
    for name, sub in spec.fields.items():
        if (spec.name, name) in schema.LEGACY_FIELDS:
            continue
        field = descriptor.fields_by_name.get(name)
        if field is None:
            problems.append(f"{path}.{name}: no such field in {descriptor.full_name}")
            continue
        if sub != schema.ANY and isinstance(sub, list) != _is_repeated(field):
            problems.append(f"{path}.{name}: repeated-ness differs from the proto")
        inner = sub[0] if isinstance(sub, list) else sub
        if isinstance(inner, schema.Msg):
            problems += _schema_problems(inner, field.message_type, f"{path}.{name}")
    return problems


@pytest.mark.parametrize("kind", sorted(schema.REQUESTS))
def test_request_schema_names_only_real_proto_fields(kind):
    """Each field the emulator accepts exists, with the same nesting, in the official message."""
    spec = schema.REQUESTS[kind]
    assert _schema_problems(spec, REQUEST_MESSAGES[kind].DESCRIPTOR, kind) == []


def test_route_kinds_answer_with_the_official_messages():
    """Each emulator route kind answers with the message the official service uses."""
    assert set(EMULATOR_RESPONSES) == set(RESPONSE_MESSAGES)
    for kind, name in EMULATOR_RESPONSES.items():
        assert RESPONSE_MESSAGES[kind].DESCRIPTOR.name == name


class TestValidatorBites:
    def test_unknown_response_field_is_a_violation(self):
        """A response with a field the proto lacks fails strict validation."""
        with pytest.raises(ProtoViolation):
            validate_response("GetInput", {"status": {"code": 10000}, "surprise": 1})

    def test_wrong_type_is_a_violation(self):
        """A response with a wrongly typed field fails strict validation."""
        body = {"status": {"code": 10000}, "counts": {"processed": "many"}}
        with pytest.raises(ProtoViolation):
            validate_response("GetInputCount", body)

    def test_status_code_as_a_name_is_a_violation(self):
        """Responses must carry numeric codes even though protojson would accept names."""
        with pytest.raises(ProtoViolation):
            validate_response("DeleteInput", {"status": {"code": "SUCCESS"}})
        with pytest.raises(ProtoViolation):
            validate_response("ListInputs", {"inputs": [{"id": "a", "status": {"code": "X"}}]})

    def test_legacy_delete_all_is_exempt_only_on_delete_inputs_requests(self):
        """`delete_all` (gone from today's proto) is accepted on DeleteInputs requests only."""
        validate_request("DeleteInputs", {"delete_all": True})
        with pytest.raises(ProtoViolation):
            validate_request("PostInputs", {"delete_all": True})

    @pytest.mark.parametrize(
        "body",
        [
            {"inputs": [{"id": "a", "data": {"imagE": {}}}]},
            {"inputs": [{"id": "a", "data": {"image": {"url": 5}}}]},
            {"inputs": [{"id": "a", "data": {"concepts": [{"id": "c", "value": "high"}]}}]},
            {"inputs": [], "input_id_conflict_resolution": "SOMETIMES"},
            {"inputs": {"id": "a"}},
        ],
    )
    def test_bodies_the_emulator_refuses_are_invalid_protos_too(self, client, body):
        """What the emulator refuses with 11102 the official message refuses as well."""
        assert client.request("POST", "/inputs", json=body).json()["status"]["code"] == 11102
        with pytest.raises(ProtoViolation):
            validate_request("PostInputs", body)

    def test_recorder_collects_instead_of_raising(self):
        """ProtoRecorder records violations and counts every body it checked."""
        recorder = ProtoRecorder()
        recorder("GetInput", "response", {"status": {"code": 10000}})
        recorder("GetInput", "response", {"bogus": True})
        assert recorder.checked == 2
        assert len(recorder.violations) == 1


def test_a_tour_of_every_route_is_valid_both_ways(
    manual_client, proto_recorder, make_input, make_png
):
    """Every route kind, in success and in error, sends and answers official messages."""
    seen: set[tuple[str, str]] = set()
    emu = manual_client.emu
    inner = emu.api.validator
    assert inner is proto_recorder

    def spy(kind: str, direction: str, body: dict[str, Any]) -> None:
        seen.add((kind, direction))
        proto_recorder(kind, direction, body)

    emu.api.validator = spy
    c = manual_client
    meta = {"sha": "1", "nested": {"n": 2, "l": [True, None, "x"]}}
    c.post_inputs(
        make_input("a", make_png(), concepts=[{"id": "cat"}, {"id": "dog", "value": 0}]),
        {"id": "u", "data": {"image": {"url": "https://x/u.jpg"}, "metadata": meta}},
        {**make_input("d", make_png(3)), "dataset_ids": ["train"]},
        make_input("a", make_png()),
        make_input("bad id", make_png()),
        {"data": {"image": {"url": "https://x/v.jpg", "allow_duplicate_url": True}}},
        user_app_id={"user_id": "me", "app_id": "demo-app"},
        input_id_conflict_resolution="SKIP",
    )
    emu.advance(1)
    patch = {"concepts": [{"id": "bird", "name": "Bird", "value": 1}], "metadata": {"k": 1}}
    c.request("PATCH", "/inputs", json={"action": "merge", "inputs": [{"id": "a", "data": patch}]})
    c.request("PATCH", "/inputs", json={"action": "merge", "inputs": [{"id": "zz"}]})
    c.request("GET", "/inputs", params=[("ids", "a"), ("status.code", "INPUT_SUCCESS")])
    c.request("GET", "/inputs", params={"page": 2, "per_page": 1})
    c.request("GET", "/inputs", params={"per_page": 5000})
    c.get_input("a")
    c.get_input("missing")
    c.request("GET", "/inputs/status")
    search = {"query": {"filters": [{"annotation": {"data": {"metadata": {"sha": "1"}}}}]}}
    c.request("POST", "/inputs/searches", json={"searches": [search], "pagination": {"page": 1}})
    c.request("POST", "/inputs/searches", json={"searches": [search], "only_count": True})
    ands = [{"input": {"data": {"metadata": {"sha": "1"}}}}]
    c.request("POST", "/searches", json={"query": {"ands": ands}})
    c.request("GET", "/models", params={"page": 1, "per_page": 20})
    c.request("DELETE", "/inputs/a", json={})
    c.request("DELETE", "/inputs", json={"ids": ["u"]})
    c.request("DELETE", "/inputs", json={"delete_all": True})
    c.request("PUT", "/inputs")
    c.request("GET", "/nowhere")
    emu.api.validator = inner

    kinds = set(REQUEST_MESSAGES) - {"ListModels"}
    assert {k for k, d in seen if d == "request"} >= kinds
    assert {k for k, d in seen if d == "response"} == set(RESPONSE_MESSAGES)
    assert proto_recorder.violations == []
