"""The Gateway API CRDs in deploy/crds are enforced whole: every CEL rule runs, defaults are applied
before the checks as the API server applies them, and the trimmed files hold no descriptions.

The documents refused or admitted because of these rules are in test_validation_documents.py;
this file checks the machinery they rely on.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from wisp_operator.validation import admit, load_resources
from wisp_operator.validation import cel
from wisp_operator.validation.resources import CRD_DIRECTORY
from wisp_operator.validation.structural import apply_defaults

GATEWAY_API = ("Gateway", "HTTPRoute", "GRPCRoute")


def rules_of(schema: Any) -> list[str]:
    found: list[str] = []
    if isinstance(schema, dict):
        for rule in schema.get("x-kubernetes-validations") or ():
            found.append(rule["rule"])
        for key, value in schema.items():
            if key != "x-kubernetes-validations":
                found += rules_of(value)
    elif isinstance(schema, list):
        for value in schema:
            found += rules_of(value)
    return found


def keywords(schema: Any, in_properties: bool = False) -> set[str]:
    """Schema keywords used anywhere (property names are not keywords)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, value in schema.items():
            if not in_properties:
                found.add(key)
            found |= keywords(value, in_properties=(key == "properties" and not in_properties))
    elif isinstance(schema, list):
        for value in schema:
            found |= keywords(value)
    return found


def schema_of(kind: str, version: str = "v1") -> dict[str, Any]:
    rt = load_resources().for_kind(kind)
    assert rt is not None
    schema = rt.schema(f"{rt.group}/{version}")
    assert schema is not None
    return schema


@pytest.mark.parametrize("kind", GATEWAY_API)
def test_gateway_api_kinds_are_served_from_their_crds(kind: str) -> None:
    rt = load_resources().for_kind(kind)
    assert rt is not None and rt.schemas, f"{kind} has no CRD schema in deploy/crds"


def test_every_cel_rule_in_deploy_crds_is_enforced() -> None:
    rules = {rule for rt in load_resources().types for schema in rt.schemas.values() for rule in rules_of(schema)}
    assert len(rules) > 60  # the Gateway API CRDs alone carry dozens
    not_enforced = {rule: cel.unsupported_rules().get(rule) for rule in rules
                    if cel.evaluate(rule, {}) is None and "oldSelf" not in rule}
    assert not_enforced == {}


@pytest.mark.parametrize("kind", GATEWAY_API)
def test_trimmed_crds_keep_no_description(kind: str) -> None:
    for schema in load_resources().for_kind(kind).schemas.values():  # type: ignore[union-attr]
        assert "description" not in keywords(schema)


def test_httproute_defaults_are_those_the_api_server_applies() -> None:
    route = {"spec": {"parentRefs": [{"name": "reviews"}], "rules": [{"backendRefs": [{"name": "r", "port": 80}]}]}}
    defaulted = apply_defaults(copy.deepcopy(route), schema_of("HTTPRoute"))
    assert defaulted["spec"]["parentRefs"] == [{"name": "reviews", "group": "gateway.networking.k8s.io",
                                                "kind": "Gateway"}]
    rule = defaulted["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    assert rule["backendRefs"] == [{"name": "r", "port": 80, "group": "", "kind": "Service", "weight": 1}]


def test_httproute_without_rules_gets_the_default_rule() -> None:
    defaulted = apply_defaults({"spec": {}}, schema_of("HTTPRoute"))
    assert defaulted["spec"]["rules"] == [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]


def test_a_rule_that_reads_defaulted_matches_passes_and_the_store_keeps_what_was_sent() -> None:
    # The "at most 128 matches" rule reads self[0].matches.size(): without defaults it would fail
    # on a rule with backendRefs only, as every GAMMA split route is.
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "split", "namespace": "shop"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}]}]}}
    verdict = admit(copy.deepcopy(route))
    assert verdict.refusal is None, verdict.refusal.message
    assert verdict.obj == route


def test_gateway_listener_defaults_allow_routes_from_the_same_namespace() -> None:
    gateway = {"spec": {"gatewayClassName": "istio-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}
    listener = apply_defaults(gateway, schema_of("Gateway"))["spec"]["listeners"][0]
    assert listener["allowedRoutes"] == {"namespaces": {"from": "Same"}}


@pytest.mark.parametrize("name, escaped", [
    ("namespace", "__namespace__"), ("name", "name"), ("x-y", "x__dash__y"), ("a.b", "a__dot__b"),
    ("a/b", "a__slash__b"), ("a__b", "a__underscores__b"), ("1st", None), ("a b", None),
])
def test_property_names_are_escaped_as_kubernetes_escapes_them(name: str, escaped: str | None) -> None:
    assert cel.escape_property(name) == escaped


def test_namespace_property_is_read_as_escaped_and_map_keys_stay_as_written() -> None:
    schema = {"type": "object", "properties": {"namespace": {"type": "string"},
                                               "labels": {"type": "object",
                                                          "additionalProperties": {"type": "string"}}}}
    value = {"namespace": "infra", "labels": {"namespace": "x"}}
    assert cel.evaluate("self.__namespace__ == 'infra' && self.labels['namespace'] == 'x'", value, schema).passed


@pytest.mark.parametrize("rule", [
    "'a/b/c'.split('/') == ['a', 'b', 'c']",
    "'a/b/c'.split('/', 2) == ['a', 'b/c']",
    "'abc'.split('') == ['a', 'b', 'c']",
    "'a/b'.split('/', 0) == []",
    "'example.com/team'.split('/')[0].size() < 253",
])
def test_split_behaves_as_the_kubernetes_strings_library(rule: str) -> None:
    outcome = cel.evaluate(rule, None)
    assert outcome is not None and outcome.passed, outcome


def load_strip_script() -> Any:
    spec = importlib.util.spec_from_file_location("strip_descriptions", CRD_DIRECTORY / "strip_descriptions.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_strip_script_drops_description_keywords_only(tmp_path: Path) -> None:
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.com", "creationTimestamp": None},
           "spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
               "description": "a thing", "type": "object",
               "properties": {"description": {"description": "a field named description", "type": "string",
                                              "maxLength": 10, "default": "x"},
                              "spec": {"type": "object", "x-kubernetes-validations": [
                                  {"rule": "has(self.a)", "message": "a is required"}]}}}}}]},
           "status": {"acceptedNames": {"kind": ""}}}
    source = tmp_path / "in.yaml"
    source.write_text("# from somewhere, v1.2.3\n" + yaml.safe_dump(crd))
    target = tmp_path / "out.yaml"
    assert load_strip_script().main(["strip", str(source), str(target)]) == 0
    out = yaml.safe_load(target.read_text())
    schema = out["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema == {"type": "object",
                      "properties": {"description": {"type": "string", "maxLength": 10, "default": "x"},
                                     "spec": {"type": "object", "x-kubernetes-validations": [
                                         {"rule": "has(self.a)", "message": "a is required"}]}}}
    assert "status" not in out and "creationTimestamp" not in out["metadata"]
    assert target.read_text().startswith("# from somewhere, v1.2.3\n")


def test_strip_script_writes_repeats_once_and_they_read_back_equal(tmp_path: Path) -> None:
    big = {"type": "object", "properties": {f"field{i}": {"type": "string", "maxLength": 253,
                                                          "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
                                            for i in range(8)}}
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "things.example.com"},
           "spec": {"versions": [{"name": v, "schema": {"openAPIV3Schema": copy.deepcopy(big)}}
                                 for v in ("v1", "v1beta1")]}}
    source, target = tmp_path / "in.yaml", tmp_path / "out.yaml"
    source.write_text(yaml.safe_dump(crd))
    assert load_strip_script().main(["strip", str(source), str(target)]) == 0
    text = target.read_text()
    assert text.count("maxLength: 253") == 8  # one copy, then an alias
    assert json.dumps(yaml.safe_load(text), sort_keys=True) == json.dumps(crd, sort_keys=True)
