"""Every v2 route of the emulator over real HTTP: envelopes, codes, limits, auth."""

from __future__ import annotations

import base64
import http.client
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.emulator import Emulator
from syncd.emulator.server import parse_query

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
DUPLICATE = "Input has a duplicate ID."


def ids_of(response: requests.Response) -> list[str]:
    return [i["id"] for i in response.json()["inputs"]]


class TestEnvelope:
    def test_post_answers_pending_inputs_in_the_real_envelope(self, client, make_input, make_png):
        """A POST answers 200/10000 with req_id, description and inputs at 30001."""
        r = client.post_inputs(make_input("a", make_png(1)), make_input("b", make_png(2)))
        assert r.status_code == 200
        body = r.json()
        assert body["status"]["code"] == 10000
        assert body["status"]["description"] == "Ok"
        assert re.fullmatch(r"[0-9a-f]{32}", body["status"]["req_id"])
        assert [i["id"] for i in body["inputs"]] == ["a", "b"]
        for item in body["inputs"]:
            assert item["status"] == {"code": 30001, "description": "Download pending"}
            assert RFC3339.fullmatch(item["created_at"])
            assert RFC3339.fullmatch(item["modified_at"])

    def test_read_backs_show_a_hosted_url_and_never_base64(self, client, make_input, make_png):
        """Inputs posted as bytes come back with data.image.url under the emulator, no base64."""
        client.post_inputs(make_input("a", make_png(1)))
        r = client.get_input("a")
        image = r.json()["input"]["data"]["image"]
        assert image == {"url": f"{client.emu.url}/_emulator/blobs/a"}
        assert "base64" not in r.text
        blob = requests.get(image["url"], timeout=5)
        assert blob.content == make_png(1)
        assert blob.headers["Content-Type"] == "image/png"

    def test_concepts_read_back_with_name_app_id_and_explicit_zero(
        self, client, make_input, make_png
    ):
        """Concepts come back with name = id, app_id, and negative ones carry "value": 0."""
        concepts = [{"id": "cat"}, {"id": "dog", "value": 0}]
        client.post_inputs(make_input("a", make_png(), concepts=concepts))
        got = client.get_input("a").json()["input"]["data"]["concepts"]
        assert got == [
            {"id": "cat", "name": "cat", "value": 1.0, "app_id": "demo-app"},
            {"id": "dog", "name": "dog", "value": 0.0, "app_id": "demo-app"},
        ]

    def test_metadata_numbers_come_back_as_floats(self, client, make_input, make_png):
        """Metadata is a Struct: integers come back as doubles, everything else unchanged."""
        meta = {"n": 1, "f": 2.5, "s": "x", "b": False, "l": [1, "a"], "o": {"k": None}}
        client.post_inputs(make_input("a", make_png(), metadata=meta))
        got = client.get_input("a").json()["input"]["data"]["metadata"]
        assert got == {"n": 1.0, "f": 2.5, "s": "x", "b": False, "l": [1.0, "a"], "o": {"k": None}}
        assert isinstance(got["n"], float)

    def test_empty_list_still_carries_inputs(self, client):
        """A list of an empty app answers `inputs: []`, never omits it."""
        r = client.request("GET", "/inputs")
        assert r.status_code == 200
        assert r.json()["inputs"] == []

    def test_count_has_all_eight_fields_even_when_zero(self, client):
        """GET inputs/status always carries all eight counts."""
        counts = client.request("GET", "/inputs/status").json()["counts"]
        assert counts == {
            "processed": 0,
            "to_process": 0,
            "errors": 0,
            "processing": 0,
            "reindexed": 0,
            "to_reindex": 0,
            "reindex_errors": 0,
            "reindexing": 0,
        }

    def test_errors_on_list_routes_still_carry_the_list(self, client):
        """A refused list request still carries `inputs: []` next to its status."""
        r = client.request("GET", "/inputs", params={"per_page": 5000})
        assert r.status_code == 400
        assert r.json()["inputs"] == []

    def test_keep_alive_and_content_length_on_every_response(self, emulator, api_key):
        """Two requests share one HTTP/1.1 connection; every answer has a Content-Length."""
        conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)
        try:
            for path in ("/v2/inputs", "/v2/nowhere"):
                conn.request("GET", path, headers={"Authorization": f"Key {api_key}"})
                response = conn.getresponse()
                body = response.read()
                assert response.version == 11
                assert int(response.headers["Content-Length"]) == len(body)
                assert response.headers.get("Connection") != "close"
        finally:
            conn.close()

    def test_models_list_is_enough_for_clients(self, client):
        """GET /v2/models answers 10000 with an empty `models` list."""
        r = client.request("GET", "/models", params={"page": 1, "per_page": 20})
        assert r.status_code == 200
        assert r.json()["models"] == []


class TestSpellings:
    def test_scoped_and_short_routes_share_one_store(
        self, emulator, client_for, make_input, make_png
    ):
        """A POST on the scoped route (user `me`) is readable on the short one and vice versa."""
        scoped = client_for(emulator, scoped=True)
        me = emulator.url + "/v2/users/me/apps/demo-app"
        r = scoped.session.post(me + "/inputs", json={"inputs": [make_input("a", make_png())]})
        assert r.status_code == 200
        short = client_for(emulator)
        assert short.get_input("a").status_code == 200
        short.post_inputs(make_input("b", make_png(2)))
        assert ids_of(scoped.request("GET", "/inputs")) == ["a", "b"]
        assert sum(scoped.request("GET", "/inputs/status").json()["counts"].values()) == 2

    def test_user_app_id_repeated_in_body_and_query_is_accepted(
        self, emulator, client_for, make_input, make_png
    ):
        """user_app_id may repeat the path ids in the body or as query parameters."""
        scoped = client_for(emulator, scoped=True)
        app = {"user_id": "me", "app_id": "demo-app"}
        r = scoped.post_inputs(make_input("a", make_png()), user_app_id=app)
        assert r.status_code == 200
        query = {"user_app_id.user_id": "demo-user", "user_app_id.app_id": "demo-app"}
        assert scoped.request("GET", "/inputs/a", params=query).status_code == 200


class TestPost:
    def test_missing_id_gets_32_hex_characters(self, client, make_input, make_png):
        """An input without id is given 32 lowercase hex characters."""
        (new_id,) = ids_of(client.post_inputs(make_input(None, make_png())))
        assert re.fullmatch(r"[0-9a-f]{32}", new_id)

    @pytest.mark.parametrize("bad_id", ["has space", "a/b", "x" * 129, "ünï"])
    def test_invalid_id_is_a_per_input_error(self, client, make_input, make_png, bad_id):
        """Ids outside 1-128 of [A-Za-z0-9_.-] fail per item with 30104, the rest goes in."""
        r = client.post_inputs(make_input(bad_id, make_png()), make_input("ok", make_png(2)))
        assert r.status_code == 207
        bad, ok = r.json()["inputs"]
        assert bad["status"]["code"] == 30104
        assert "invalid input id" in bad["status"]["details"]
        assert ok["status"]["code"] == 30001

    def test_existing_id_is_a_duplicate_and_the_rest_goes_in(self, client, make_input, make_png):
        """Re-posting an id gives that item 30104 'Input has a duplicate ID.' and 207/10010."""
        client.post_inputs(make_input("a", make_png()))
        r = client.post_inputs(make_input("a", make_png(2)), make_input("b", make_png(3)))
        assert r.status_code == 207
        body = r.json()
        assert body["status"]["code"] == 10010
        assert body["status"]["description"] == "Mixed Success"
        dup, ok = body["inputs"]
        assert dup["id"] == "a"
        assert dup["status"]["code"] == 30104
        assert dup["status"]["details"] == DUPLICATE
        assert ok["status"]["code"] == 30001
        stored = client.emu.image_bytes("a")
        assert stored == make_png()

    def test_a_batch_of_only_duplicates_fails_with_400(self, client, make_input, make_png):
        """When no item of a POST succeeds the answer is HTTP 400 with 10020."""
        client.post_inputs(make_input("a", make_png()))
        r = client.post_inputs(make_input("a", make_png()))
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 10020
        assert r.json()["inputs"][0]["status"]["details"] == DUPLICATE

    def test_second_identical_id_in_one_request_is_the_duplicate(
        self, client, make_input, make_png
    ):
        """Two items with one id in a POST: the first goes in, the second is the duplicate."""
        r = client.post_inputs(make_input("a", make_png(1)), make_input("a", make_png(2)))
        first, second = r.json()["inputs"]
        assert first["status"]["code"] == 30001
        assert second["status"]["details"] == DUPLICATE
        assert client.emu.image_bytes("a") == make_png(1)

    def test_duplicate_url_needs_allow_duplicate_url(self, client):
        """A second input with the same URL fails with 30100 unless allow_duplicate_url."""
        url = "https://example.com/a.jpg"
        client.post_inputs({"id": "a", "data": {"image": {"url": url}}})
        dup = client.post_inputs({"id": "b", "data": {"image": {"url": url}}})
        assert dup.json()["inputs"][0]["status"]["code"] == 30100
        allowed = {"url": url, "allow_duplicate_url": True}
        ok = client.post_inputs({"id": "c", "data": {"image": allowed}})
        assert ok.status_code == 200
        assert client.get_input("c").json()["input"]["data"]["image"] == allowed

    def test_input_without_image_is_refused_per_item(self, client):
        """An input with neither image url nor bytes fails per item with 30104."""
        r = client.post_inputs({"id": "a", "data": {"metadata": {"k": "v"}}})
        assert r.status_code == 400
        assert r.json()["inputs"][0]["status"]["code"] == 30104

    def test_conflict_resolution_suffix_accepts_enum_name_or_number(
        self, client, make_input, make_png
    ):
        """input_id_conflict_resolution SUFFIX (by name or as 2) renames a taken id to id-1..."""
        client.post_inputs(make_input("a", make_png()))
        by_name = client.post_inputs(
            make_input("a", make_png(2)), input_id_conflict_resolution="SUFFIX"
        )
        by_number = client.post_inputs(make_input("a", make_png(3)), input_id_conflict_resolution=2)
        assert ids_of(by_name) == ["a-1"]
        assert ids_of(by_number) == ["a-2"]

    def test_dataset_ids_are_kept(self, client, make_input, make_png):
        """dataset_ids given on POST are read back."""
        item = {**make_input("a", make_png()), "dataset_ids": ["train"]}
        client.post_inputs(item)
        assert client.get_input("a").json()["input"]["dataset_ids"] == ["train"]


class TestLimits:
    def test_128_inputs_are_accepted_129_refused(self, client, make_input, make_png):
        """A POST may carry 128 inputs; 129 refuse the whole request (400, 39999)."""
        png = make_png()
        ok = client.post_inputs(*[make_input(f"i{n}", png) for n in range(128)])
        assert ok.status_code == 200
        r = client.post_inputs(*[make_input(f"j{n}", png) for n in range(129)])
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 39999
        assert client.get_input("j0").status_code == 404

    def test_delete_of_more_than_128_ids_is_refused(self, client):
        """DELETE /v2/inputs takes at most 128 ids (400, 39999)."""
        r = client.request("DELETE", "/inputs", json={"ids": [f"i{n}" for n in range(129)]})
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 39999

    def test_per_page_up_to_1000(self, client):
        """per_page 1000 is fine; 1001 is refused with 400 / 11102."""
        assert client.request("GET", "/inputs", params={"per_page": 1000}).status_code == 200
        r = client.request("GET", "/inputs", params={"per_page": 1001})
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 11102

    def test_image_over_20_mib_is_a_per_input_30105(self, client, make_input, make_png):
        """Image bytes above 20 MiB fail that item with 30105; the others go in."""
        big = make_png() + b"\0" * (20 * 1024 * 1024)
        r = client.post_inputs(make_input("big", big), make_input("small", make_png()))
        assert r.status_code == 207
        big_item, small_item = r.json()["inputs"]
        assert big_item["status"]["code"] == 30105
        assert small_item["status"]["code"] == 30001

    def test_body_over_the_limit_is_refused_from_content_length(self, emulator, api_key):
        """A declared body over 128 MB is answered 413 / 40033 without being read."""
        conn = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=5)
        try:
            conn.putrequest("POST", "/v2/inputs")
            conn.putheader("Authorization", f"Key {api_key}")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(128 * 1024 * 1024 + 1))
            conn.endheaders(b'{"inputs": [')
            response = conn.getresponse()
            body = json.loads(response.read())
        finally:
            conn.close()
        assert response.status == 413
        assert body["status"]["code"] == 40033
        assert body["inputs"] == []

    def test_chunked_body_over_the_limit_is_refused(
        self, make_emulator: Callable[..., Emulator], api_key
    ):
        """A chunked body that grows past the limit is refused with 413 / 40033 as well."""
        emu = make_emulator(max_body_bytes=100)
        chunks = iter([b'{"inputs": [', b" " * 200, b"]}"])
        r = requests.post(
            emu.url + "/v2/inputs",
            data=chunks,
            headers={"Authorization": f"Key {api_key}"},
            timeout=5,
        )
        assert r.status_code == 413
        assert r.json()["status"]["code"] == 40033


class TestRequestErrors:
    def test_unparsable_json_is_400_11100(self, client):
        """A body that is not JSON (or not an object) answers 400 with 11100."""
        for body in (b"{not json", b"[1, 2]", b"\xff\xfe"):
            r = client.request("POST", "/inputs", data=body)
            assert r.status_code == 400
            assert r.json()["status"]["code"] == 11100

    @pytest.mark.parametrize(
        "body",
        [
            {"inputs": [{"id": "a", "data": {"image": {"url": "https://x/a"}}}], "extra": 1},
            {"inputs": [{"id": "a", "data": {"imagE": {"url": "https://x/a"}}}]},
            {"inputs": [{"id": "a", "data": {"image": {"url": 5}}}]},
            {"inputs": {"id": "a"}},
            {"inputs": [{"id": "a", "data": {"image": {"base64": "***"}}}]},
            {"inputs": [{"id": "a", "data": {"concepts": [{"id": "c", "value": "high"}]}}]},
            {"inputs": [], "input_id_conflict_resolution": "SOMETIMES"},
            {"perPage": 1},
        ],
    )
    def test_unknown_fields_and_wrong_types_are_400_11102(self, client, body):
        """Unknown fields, wrong JSON types, bad base64 and bad enum names: 400 with 11102."""
        r = client.request("POST", "/inputs", json=body)
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 11102
        assert r.json()["status"]["details"]

    def test_unknown_query_parameter_is_400_11102(self, client):
        """A list query with an unknown parameter is refused with 11102."""
        r = client.request("GET", "/inputs", params={"pages": 2})
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 11102

    @pytest.mark.parametrize(
        "path", ["/v2/nothing", "/v2/inputs/stream", "/v2/inputs/jobs/add", "/elsewhere", "/v2/"]
    )
    def test_unknown_routes_are_404_11101(self, emulator, api_key, path):
        """Paths the emulator does not serve answer 404 with 11101."""
        r = requests.get(emulator.url + path, headers={"Authorization": f"Key {api_key}"})
        assert r.status_code == 404
        assert r.json()["status"]["code"] == 11101

    def test_wrong_verb_is_405_11103_with_allow(self, client):
        """A known path with a verb it does not take answers 405 / 11103 and an Allow header."""
        r = client.request("PUT", "/inputs")
        assert r.status_code == 405
        assert r.json()["status"]["code"] == 11103
        assert r.headers["Allow"] == "POST, PATCH, DELETE, GET"
        assert client.request("POST", "/inputs/status").status_code == 405


class TestAuth:
    @pytest.mark.parametrize("header", [None, "", "Key", "Bearer abc", "Key a b", "key abc"])
    def test_missing_or_malformed_header_is_401_11102(self, emulator, header):
        """No header, or anything but `Key <secret>`, answers 401 with 11102."""
        headers = {} if header is None else {"Authorization": header}
        r = requests.get(emulator.url + "/v2/inputs", headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json()["status"]["code"] == 11102
        assert r.json()["status"]["details"].startswith("Empty or malformed authorization")

    def test_unknown_key_is_401_11009(self, emulator, client_for):
        """A well-formed key the emulator does not know answers 401 with 11009."""
        r = client_for(emulator, key="nope").request("GET", "/inputs")
        assert r.status_code == 401
        assert r.json()["status"]["code"] == 11009
        assert r.json()["inputs"] == []

    @pytest.mark.parametrize(
        "prefix", ["/v2/users/someone/apps/demo-app", "/v2/users/me/apps/other-app"]
    )
    def test_scoped_route_of_another_user_or_app_is_401_11008(self, emulator, api_key, prefix):
        """The scoped spelling with a user or app the key is not for answers 401 / 11008."""
        headers = {"Authorization": f"Key {api_key}"}
        r = requests.get(emulator.url + prefix + "/inputs", headers=headers, timeout=5)
        assert r.status_code == 401
        assert r.json()["status"]["code"] == 11008

    def test_body_user_app_id_mismatch_is_401_11008(self, client, make_input, make_png):
        """user_app_id in the body naming another app is refused like a bad path."""
        app = {"user_id": "me", "app_id": "other"}
        r = client.post_inputs(make_input("a", make_png()), user_app_id=app)
        assert r.status_code == 401
        assert r.json()["status"]["code"] == 11008

    def test_any_configured_key_works(self, make_emulator, client_for):
        """Every --api-key given is accepted on the short routes."""
        emu = make_emulator(api_keys=["k1", "k2"])
        assert emu.api_key == "k1"
        for key in ("k1", "k2"):
            assert client_for(emu, key=key).request("GET", "/inputs").status_code == 200


class TestListing:
    def post_many(self, client, make_input, make_png, n: int) -> list[str]:
        ids = [f"in-{i:03d}" for i in range(n)]
        client.post_inputs(*[make_input(i, make_png(k)) for k, i in enumerate(ids)])
        return ids

    def test_pages_follow_creation_order(self, client, make_input, make_png):
        """Pages list inputs oldest first; a page past the end is an empty success."""
        ids = self.post_many(client, make_input, make_png, 5)
        pages = [
            ids_of(client.request("GET", "/inputs", params={"page": p, "per_page": 2}))
            for p in (1, 2, 3)
        ]
        assert pages == [ids[0:2], ids[2:4], ids[4:5]]
        r = client.request("GET", "/inputs", params={"page": 1000, "per_page": 500})
        assert r.status_code == 200
        assert r.json()["inputs"] == []

    def test_default_page_size_is_128(self, client, make_input, make_png):
        """Without per_page a page holds 128 inputs."""
        self.post_many(client, make_input, make_png, 128)
        client.post_inputs(make_input("last", make_png()))
        assert len(ids_of(client.request("GET", "/inputs"))) == 128
        assert ids_of(client.request("GET", "/inputs", params={"page": 2})) == ["last"]

    def test_ids_filter_with_repeated_keys(self, client, make_input, make_png):
        """`ids=a&ids=b` lists only those ids (that exist), in creation order."""
        ids = self.post_many(client, make_input, make_png, 4)
        query = [("ids", ids[3]), ("ids", ids[1]), ("ids", "missing")]
        assert ids_of(client.request("GET", "/inputs", params=query)) == [ids[1], ids[3]]

    def test_status_filter_by_name_or_number(self, manual_client, make_input, make_png):
        """`status.code` filters by processing status, given as a number or an enum name."""
        manual_client.post_inputs(make_input("old", make_png()))
        manual_client.emu.advance(1)
        manual_client.post_inputs(make_input("new", make_png(2)))
        for value in ("30000", "INPUT_SUCCESS", "INPUT_DOWNLOAD_SUCCESS"):
            r = manual_client.request("GET", "/inputs", params={"status.code": value})
            assert ids_of(r) == ["old"]
        pending = manual_client.request("GET", "/inputs", params={"status.code": 30001})
        assert ids_of(pending) == ["new"]


class TestPatch:
    def test_merge_adds_concepts_and_metadata_keys(self, client, make_input, make_png):
        """merge adds new concept ids, flips existing values and deep-merges metadata."""
        concepts = [{"id": "cat", "value": 1}]
        client.post_inputs(make_input("a", make_png(), concepts=concepts, metadata={"k": 1}))
        patch = {"concepts": [{"id": "cat", "value": 0}, {"id": "dog"}], "metadata": {"j": "x"}}
        r = client.request(
            "PATCH", "/inputs", json={"action": "merge", "inputs": [{"id": "a", "data": patch}]}
        )
        assert r.status_code == 200
        data = r.json()["inputs"][0]["data"]
        assert [(c["id"], c["value"]) for c in data["concepts"]] == [("cat", 0.0), ("dog", 1.0)]
        assert data["metadata"] == {"k": 1.0, "j": "x"}
        assert data["image"]["url"].endswith("/_emulator/blobs/a")
        assert client.get_input("a").json()["input"]["data"] == data

    def test_remove_drops_concepts_and_true_metadata_keys(self, client, make_input, make_png):
        """remove deletes concept ids and metadata keys whose patch value is true."""
        concepts = [{"id": "cat"}, {"id": "dog"}]
        client.post_inputs(
            make_input("a", make_png(), concepts=concepts, metadata={"k": 1, "j": 2})
        )
        patch = {"concepts": [{"id": "dog"}], "metadata": {"k": True, "j": False}}
        r = client.request(
            "PATCH", "/inputs", json={"action": "remove", "inputs": [{"id": "a", "data": patch}]}
        )
        data = r.json()["inputs"][0]["data"]
        assert [c["id"] for c in data["concepts"]] == ["cat"]
        assert data["metadata"] == {"j": False}

    def test_overwrite_replaces_labels_and_keeps_the_image(self, client, make_input, make_png):
        """overwrite leaves exactly the sent concepts and metadata, and the original image."""
        client.post_inputs(make_input("a", make_png(), concepts=[{"id": "cat"}], metadata={"k": 1}))
        patch = {"concepts": [{"id": "dog"}]}
        r = client.request(
            "PATCH", "/inputs", json={"action": "overwrite", "inputs": [{"id": "a", "data": patch}]}
        )
        data = r.json()["inputs"][0]["data"]
        assert [c["id"] for c in data["concepts"]] == ["dog"]
        assert "metadata" not in data
        assert client.emu.image_bytes("a") == make_png()

    def test_patch_of_a_missing_id_fails_that_item_with_30102(self, client, make_input, make_png):
        """A PATCH naming an unknown id fails that item (30102); others are applied (207)."""
        client.post_inputs(make_input("a", make_png()))
        body = {
            "action": "merge",
            "inputs": [
                {"id": "ghost", "data": {"metadata": {"x": 1}}},
                {"id": "a", "data": {"metadata": {"x": 1}}},
            ],
        }
        r = client.request("PATCH", "/inputs", json=body)
        assert r.status_code == 207
        ghost, a = r.json()["inputs"]
        assert ghost["status"]["code"] == 30102
        assert a["data"]["metadata"] == {"x": 1.0}
        only_ghost = {"action": "merge", "inputs": [body["inputs"][0]]}
        r = client.request("PATCH", "/inputs", json=only_ghost)
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 10020

    def test_patching_the_image_is_refused(self, client, make_input, make_png):
        """Image bytes are immutable: a PATCH carrying data.image fails that item with 30104."""
        client.post_inputs(make_input("a", make_png()))
        patch = make_input("a", make_png(9))
        r = client.request("PATCH", "/inputs", json={"action": "merge", "inputs": [patch]})
        assert r.json()["inputs"][0]["status"]["code"] == 30104
        assert client.emu.image_bytes("a") == make_png()

    @pytest.mark.parametrize("action", [None, "", "replace"])
    def test_unknown_action_is_refused(self, client, action):
        """A PATCH without merge / remove / overwrite is refused as a whole (400, 39999)."""
        body: dict[str, Any] = {"inputs": [{"id": "a"}]}
        if action is not None:
            body["action"] = action
        r = client.request("PATCH", "/inputs", json=body)
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 39999


class TestDelete:
    def test_delete_by_ids_and_one_by_one(self, client, make_input, make_png):
        """DELETE by ids and DELETE one both answer 10000 and the inputs then disappear."""
        client.post_inputs(*[make_input(i, make_png(n)) for n, i in enumerate("abc")])
        r = client.request("DELETE", "/inputs", json={"ids": ["a", "b"]})
        assert r.status_code == 200
        assert r.json() == {"status": r.json()["status"]}
        assert r.json()["status"]["code"] == 10000
        assert client.request("DELETE", "/inputs/c").json()["status"]["code"] == 10000
        assert all(s["deleting"] for s in client.emu.store_snapshot())

    def test_delete_of_unknown_ids_succeeds(self, client):
        """Deleting ids that do not exist is not an error (deletes are idempotent)."""
        assert client.request("DELETE", "/inputs", json={"ids": ["nope"]}).status_code == 200
        assert client.request("DELETE", "/inputs/nope").status_code == 200

    def test_delete_without_ids_is_refused(self, client):
        """A DELETE /v2/inputs with no ids (and no legacy delete_all) is refused (39999)."""
        r = client.request("DELETE", "/inputs", json={})
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 39999

    def test_legacy_delete_all_deletes_everything(self, client, make_input, make_png):
        """The 2.6.2 body {"delete_all": true} starts deleting every input of the app."""
        client.post_inputs(*[make_input(i, make_png(n)) for n, i in enumerate("abc")])
        r = client.request("DELETE", "/inputs", json={"delete_all": True})
        assert r.status_code == 200
        assert [s["deleting"] for s in client.emu.store_snapshot()] == [True, True, True]


class TestSearch:
    def search(self, client, metadata: dict[str, Any], **extra: Any) -> requests.Response:
        query = {"filters": [{"annotation": {"data": {"metadata": metadata}}}]}
        body = {"searches": [{"query": query}], **extra}
        return client.request("POST", "/inputs/searches", json=body)

    def test_metadata_filter_matches_by_containment(self, manual_client, make_input, make_png):
        """A metadata filter finds processed inputs whose metadata contains it."""
        manual_client.post_inputs(
            make_input("a", make_png(1), metadata={"sha": "1", "o": {"k": "v", "z": 1}}),
            make_input("b", make_png(2), metadata={"sha": "2"}),
        )
        assert self.search(manual_client, {"sha": "1"}).json()["hits"] == []
        manual_client.emu.advance(1)
        hits = self.search(manual_client, {"o": {"k": "v"}}).json()["hits"]
        assert [h["input"]["id"] for h in hits] == ["a"]
        assert hits[0]["score"] == 1.0
        count = self.search(manual_client, {"sha": "2"}, only_count=True).json()
        assert count["hit_counts"] == [{"estimated_total": 1}]

    def test_legacy_searches_route(self, manual_client, make_input, make_png):
        """POST /v2/searches with query.ands[].input.data.metadata searches the same way."""
        manual_client.post_inputs(make_input("a", make_png(), metadata={"k": "v"}))
        manual_client.emu.advance(1)
        ands = [{"input": {"data": {"metadata": {"k": "v"}}}}]
        r = manual_client.request("POST", "/searches", json={"query": {"ands": ands}})
        assert [h["input"]["id"] for h in r.json()["hits"]] == ["a"]

    def test_unsupported_search_is_refused(self, client):
        """A filter the emulator cannot evaluate is refused with 400 / 40002, not ignored."""
        query = {"filters": [{"annotation": {"data": {"image": {"url": "https://x/y"}}}}]}
        r = client.request("POST", "/inputs/searches", json={"searches": [{"query": query}]})
        assert r.status_code == 400
        assert r.json()["status"]["code"] == 40002


def test_post_with_base64_round_trips_exact_bytes(client, make_input):
    """Bytes posted as base64 (standard alphabet) are stored byte for byte."""
    data = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"
    client.post_inputs(make_input("j", data))
    assert client.emu.image_bytes("j") == data
    assert base64.b64encode(client.emu.image_bytes("j") or b"") == base64.b64encode(data)


class TestQueryParsing:
    @settings(max_examples=500, deadline=None)
    @given(st.text(alphabet="ab=&%+;2F0 é", max_size=40))
    def test_the_fast_split_agrees_with_parse_qs(self, query: str) -> None:
        """A query with nothing escaped is split by hand; any query parses as parse_qs would."""
        assert parse_query(query) == parse_qs(query, keep_blank_values=True)

    def test_a_poll_of_ids_is_read_in_order_with_blank_values_kept(self) -> None:
        query = "ids=a&ids=b.c&ids=&page=1&per_page=3&flag"
        assert parse_query(query) == {
            "ids": ["a", "b.c", ""],
            "page": ["1"],
            "per_page": ["3"],
            "flag": [""],
        }
