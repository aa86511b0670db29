"""The local store as an API server: a file is validated whole, applied whole or not at all, and
apply says truthfully what changed (created / configured / unchanged) per object."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import yaml

from wisp_operator.auth import ROLE_RUNTIME, Caller
from wisp_operator.controller import Controller
from wisp_operator.distributor import Distributor
from wisp_operator.local_api import LocalApi
from wisp_operator.local_source import LocalSource
from wisp_operator.store import ObjectStore

STRICT = {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
          "metadata": {"name": "strict", "namespace": "shop"}, "spec": {"mtls": {"mode": "STRICT"}}}


def docs(text: str) -> list[Any]:
    return list(yaml.safe_load_all(text))


def policy(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "only-client", "namespace": "shop"}, "spec": spec}


def source(tmp_path: Path) -> tuple[LocalSource, ObjectStore]:
    store = ObjectStore()
    src = LocalSource(tmp_path, store)
    src.load()
    return src, store


def test_a_bad_edit_of_strict_is_refused_and_strict_stays(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    assert src.apply_file("applied/strict.yaml", [STRICT]).applied == ((("PeerAuthentication", "shop", "strict"), "created"),)
    typo = json.loads(json.dumps(STRICT).replace("STRICT", "STRIC"))
    result = src.apply_file("applied/strict.yaml", [typo])
    assert result.applied == ()
    assert [e.kubectl("strict.yaml") for e in result.errors] == [
        'The PeerAuthentication "strict" is invalid: spec.mtls.mode: Unsupported value: "STRIC": '
        'supported values: "UNSET", "DISABLE", "PERMISSIVE", "STRICT"']
    assert store.get("PeerAuthentication", "shop", "strict")["spec"]["mtls"]["mode"] == "STRICT"
    assert yaml.safe_load((tmp_path / "applied/strict.yaml").read_text())["spec"]["mtls"]["mode"] == "STRICT"


def test_a_hand_edited_bad_file_is_refused_whole_and_its_last_good_version_stays(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    src.apply_file("applied/strict.yaml", [STRICT])
    (tmp_path / "applied/strict.yaml").write_text(yaml.safe_dump(STRICT).replace("STRICT", "STRIC"))
    errors = src.load()
    assert ["Unsupported value" in e.problem for e in errors] == [True]
    assert store.get("PeerAuthentication", "shop", "strict")["spec"]["mtls"]["mode"] == "STRICT"


def test_an_allow_with_a_misspelt_selector_never_applies(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    bad = policy(selector={"matchLabel": {"app": "web"}}, rules=[{"from": [{"source": {"principals": ["a"]}}]}])
    result = src.apply_file("applied/p.yaml", [bad])
    assert 'strict decoding error: unknown field "spec.selector.matchLabel"' in result.errors[0].kubectl("p.yaml")
    assert store.get("AuthorizationPolicy", "shop", "only-client") is None
    assert not (tmp_path / "applied/p.yaml").exists()


def test_one_bad_object_refuses_the_whole_file(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    good = policy(rules=[{}])
    misspelt = dict(policy(), kind="AuthorizaionPolicy", metadata={"name": "other", "namespace": "shop"})
    result = src.apply_file("applied/p.yaml", [good, misspelt])
    assert result.errors[0].kubectl("p.yaml") == (
        'error: resource mapping not found for name: "other" namespace: "shop" from "p.yaml": no matches for kind '
        '"AuthorizaionPolicy" in version "security.istio.io/v1"\nensure CRDs are installed first')
    assert store.get("AuthorizationPolicy", "shop", "only-client") is None


def test_two_different_documents_with_one_name_refuse_the_file(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    result = src.apply_file("applied/p.yaml", [policy(action="ALLOW"), policy(action="DENY", rules=[{}])])
    assert "defined twice, differently, in this file (also document 1)" in result.errors[0].problem
    assert store.get("AuthorizationPolicy", "shop", "only-client") is None


def test_apply_reports_created_unchanged_configured_and_generation_follows_the_spec(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    key = ("AuthorizationPolicy", "shop", "only-client")
    assert src.apply_file("applied/p.yaml", [policy(rules=[{}])]).applied == ((key, "created"),)
    assert store.get(*key)["metadata"]["generation"] == 1
    assert src.apply_file("applied/p.yaml", [policy(rules=[{}])]).applied == ((key, "unchanged"),)
    labelled = dict(policy(rules=[{}]), metadata={"name": "only-client", "namespace": "shop", "labels": {"a": "b"}})
    assert src.apply_file("applied/p.yaml", [labelled]).applied == ((key, "configured"),)
    assert store.get(*key)["metadata"]["generation"] == 1  # metadata only: same generation
    assert src.apply_file("applied/p.yaml", [policy(action="DENY", rules=[{}])]).applied == ((key, "configured"),)
    assert store.get(*key)["metadata"]["generation"] == 2


def test_the_users_generation_is_ignored(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    mine = dict(policy(), metadata={"name": "only-client", "namespace": "shop", "generation": 42})
    src.apply_file("applied/p.yaml", [mine])
    assert store.get("AuthorizationPolicy", "shop", "only-client")["metadata"]["generation"] == 1


def test_applying_an_object_defined_in_another_file_moves_it_here(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    (tmp_path / "app/base.yaml").write_text(yaml.safe_dump_all([policy(rules=[{}]), STRICT]))
    src, store = source(tmp_path)
    result = src.apply_file("applied/p.yaml", [policy(action="DENY", rules=[{}])])
    assert result.applied == ((("AuthorizationPolicy", "shop", "only-client"), "configured"),)
    assert store.get("AuthorizationPolicy", "shop", "only-client")["spec"]["action"] == "DENY"
    assert [d["kind"] for d in yaml.safe_load_all((tmp_path / "app/base.yaml").read_text())] == ["PeerAuthentication"]
    assert src.errors == []


def test_applying_never_deletes_what_an_earlier_apply_of_the_same_file_name_created(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    src.apply_file("applied/p.yaml", [STRICT])
    src.apply_file("applied/p.yaml", [policy(rules=[{}])])
    assert store.get("PeerAuthentication", "shop", "strict") is not None
    assert store.get("AuthorizationPolicy", "shop", "only-client") is not None


def test_delete_removes_objects_and_says_which_existed(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    src.apply_file("applied/p.yaml", [policy(rules=[{}]), STRICT])
    outcome = src.delete_objects([("AuthorizationPolicy", "shop", "only-client"), ("PeerAuthentication", "shop", "nope")])
    assert outcome == [(("AuthorizationPolicy", "shop", "only-client"), True), (("PeerAuthentication", "shop", "nope"), False)]
    assert store.get("AuthorizationPolicy", "shop", "only-client") is None
    assert store.get("PeerAuthentication", "shop", "strict") is not None


def test_recreating_a_deleted_object_starts_at_generation_one(tmp_path: Path) -> None:
    src, store = source(tmp_path)
    src.apply_file("applied/p.yaml", [policy(rules=[{}])])
    src.apply_file("applied/p.yaml", [policy(action="DENY", rules=[{}])])
    src.delete_objects([("AuthorizationPolicy", "shop", "only-client")])
    src.apply_file("applied/p.yaml", [policy(rules=[{}])])
    assert store.get("AuthorizationPolicy", "shop", "only-client")["metadata"]["generation"] == 1


# --- the HTTP face the CLI uses ------------------------------------------------------------------


def call(api: LocalApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    answer: dict[str, Any] = {}

    async def read_body() -> bytes:
        return json.dumps(body).encode()

    async def respond(status: int, payload: Any) -> None:
        answer.update(status=status, payload=payload)

    async def run() -> None:
        await api.handle({"path": path, "method": method}, None, None, Caller(ROLE_RUNTIME, None), read_body, respond)

    asyncio.run(run())
    return answer["status"], answer["payload"]


def local_api(tmp_path: Path) -> LocalApi:
    src, store = source(tmp_path)
    return LocalApi(store, Controller(store, Distributor()), source=src)


def test_apply_route_answers_422_with_kubectl_lines_and_changes_nothing(tmp_path: Path) -> None:
    api = local_api(tmp_path)
    bad = json.loads(json.dumps(policy(action="deny")))
    status, payload = call(api, "POST", "/v1/local/apply", {"path": "applied/p.yaml", "source": "p.yaml", "documents": [bad]})
    assert status == 422
    assert payload["messages"] == ['The AuthorizationPolicy "only-client" is invalid: spec.action: Unsupported value: '
                                   '"deny": supported values: "ALLOW", "DENY", "AUDIT", "CUSTOM"']
    assert api.store.get("AuthorizationPolicy", "shop", "only-client") is None


def test_apply_route_names_resources_as_kubectl_does_and_passes_warnings(tmp_path: Path) -> None:
    api = local_api(tmp_path)
    spiffe = policy(rules=[{"from": [{"source": {"principals": ["spiffe://cluster.local/ns/shop/sa/client"]}}]}])
    status, payload = call(api, "POST", "/v1/local/apply", {"path": "applied/p.yaml", "documents": [spiffe]})
    assert status == 200
    assert [(r["resource"], r["name"], r["action"]) for r in payload["results"]] == [
        ("authorizationpolicy.security.istio.io", "only-client", "created")]
    assert "never matches" in payload["warnings"][0]


def test_apply_route_refuses_a_path_outside_the_directory(tmp_path: Path) -> None:
    status, payload = call(local_api(tmp_path), "POST", "/v1/local/apply", {"path": "../x.yaml", "documents": []})
    assert status == 400 and "not a manifest file name" in payload["error"]


def test_discovery_lists_istio_and_gateway_api_short_names(tmp_path: Path) -> None:
    status, payload = call(local_api(tmp_path), "GET", "/v1/local/resources")
    short = {r["kind"]: r["shortNames"] for r in payload["resources"]}
    assert status == 200
    assert (short["AuthorizationPolicy"], short["PeerAuthentication"], short["RequestAuthentication"]) == (["ap"], ["pa"], ["ra"])
    assert (short["VirtualService"], short["DestinationRule"], short["Gateway"]) == (["vs"], ["dr"], ["gtw"])
