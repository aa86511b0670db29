"""deploy/crds/ on the real API server: accepted by server-side apply, Established, and refusing what
wisp's own validation refuses, at the same fields.

The documents are tests/operator/test_validation_documents.py's, imported, not copied. For each
invalid one, wisp's verdict says at which stage it is refused, and the real API server is asked
the same question (a dry-run create with strict field validation, as `kubectl apply` sends):
- schema and CEL refusals (`Invalid`): the server answers 422 and its causes name the same field
  paths with the same words as wisp's errors;
- unknown fields (strict decoding, `BadRequest`): the server answers 400 with the same message;
- kinds or versions not served (`NoMatch`): the built kubectl prints the same line;
- istiod's webhook (`BadRequest` from `validation.istio.io`): there is no istiod on the test bed,
  so the API server ACCEPTS these; the test asserts that, so the split between what the CRDs
  enforce and what only the webhook enforces stays as docs/configuration.md describes it.
The documented valid examples are accepted, and the object the server would store equals the one
wisp checked (wisp's defaults applied), so wisp's structural defaulting is the server's.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from runtime.testbed.cluster import Cluster
from wisp_operator.validation import admit, load_resources
from wisp_operator.validation.errors import BAD_REQUEST, INVALID, NO_MATCH
from wisp_operator.validation.structural import apply_defaults

from ..operator.test_validation_documents import INVALID_DOCS, VALID
from .conftest import wait_for

CRD_DIRECTORY = Path(__file__).resolve().parents[2] / "deploy" / "crds"


def _crds() -> list[dict[str, Any]]:
    found = []
    for path in sorted(CRD_DIRECTORY.glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc and doc.get("kind") == "CustomResourceDefinition"]
    return found


CRDS = _crds()
PLURALS = {(crd["spec"]["group"], crd["spec"]["names"]["kind"]): crd["spec"]["names"]["plural"] for crd in CRDS}
WEBHOOK_MARK = 'admission webhook "validation.istio.io"'


@pytest.fixture(scope="module")
def crds(cluster: Cluster) -> list[str]:
    """Apply deploy/crds/ server-side once and wait until every CRD is Established."""
    applied = cluster.kubectl("apply", "--server-side", "-f", str(CRD_DIRECTORY), timeout=120)
    names = [crd["metadata"]["name"] for crd in CRDS]
    with cluster.client() as client:
        def established() -> bool:
            for name in names:
                status = client.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/%s" % name).json()
                conditions = {c["type"]: c["status"] for c in status.get("status", {}).get("conditions", [])}
                if conditions.get("Established") != "True":
                    return False
            return True

        wait_for(established, "every CRD of deploy/crds Established")
        namespaces = {doc["metadata"].get("namespace") for doc in _documents()} - {None}
        for namespace in namespaces:
            response = client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
            assert response.status_code in (201, 409), response.text
    assert all(name in applied.stdout for name in names), applied.stdout
    return names


def _documents() -> list[dict[str, Any]]:
    return [yaml.safe_load(text) for text in VALID.values()] + [yaml.safe_load(text) for text, _, _ in INVALID_DOCS.values()]


def _dry_run_create(cluster: Cluster, obj: dict[str, Any]) -> Any:
    group, _, version = obj["apiVersion"].rpartition("/")
    plural = PLURALS[(group, obj["kind"])]
    path = "/apis/%s/%s/namespaces/%s/%s" % (group, version, obj["metadata"]["namespace"], plural)
    with cluster.client() as client:
        return client.post(path, params={"dryRun": "All", "fieldValidation": "Strict"},
                           content=json.dumps(obj), headers={"Content-Type": "application/json"})


def test_crds_are_applied_server_side_and_established(cluster: Cluster, crds: list[str]) -> None:
    served = json.loads(cluster.kubectl("get", "crd", "-o", "json", "--show-managed-fields").stdout)["items"]
    by_name = {crd["metadata"]["name"]: crd for crd in served}
    for name in crds:
        conditions = {c["type"]: c["status"] for c in by_name[name]["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert conditions["NamesAccepted"] == "True"
        # Server-side apply recorded kubectl as the manager of the fields it sent.
        managers = {entry["manager"] for entry in by_name[name]["metadata"]["managedFields"]}
        assert "kubectl" in managers


def test_the_crds_serve_the_versions_wisp_serves(cluster: Cluster, crds: list[str]) -> None:
    resources = load_resources(str(CRD_DIRECTORY))
    for crd in CRDS:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            api_version = "%s/%s" % (group, version["name"])
            assert (resources.served(api_version, kind) is not None) == version["served"], api_version
        listing = json.loads(cluster.kubectl("get", "--raw", "/apis/%s" % group).stdout)
        served = {v["version"] for v in listing["versions"]}
        assert served >= {v["name"] for v in crd["spec"]["versions"] if v["served"]}


@pytest.mark.parametrize("case", sorted(VALID))
def test_documented_example_is_accepted_and_stored_as_wisp_defaults_it(cluster: Cluster, crds: list[str], case: str) -> None:
    obj = yaml.safe_load(VALID[case])
    response = _dry_run_create(cluster, copy.deepcopy(obj))
    assert response.status_code == 201, response.text
    stored = response.json()
    verdict = admit(copy.deepcopy(obj))
    assert verdict.refusal is None
    rt = load_resources().served(obj["apiVersion"], obj["kind"])
    schema = rt.schema(obj["apiVersion"])
    expected = apply_defaults(json.loads(json.dumps(verdict.obj)), schema)
    assert stored.get("spec") == expected.get("spec")


# What kube-apiserver 1.37 writes differently from wisp only in form (k8s.io/apiextensions-apiserver
# v0.37.2 pkg/apiserver/schema/cel/validation.go, pkg/registry/customresource/strategy.go):
# - a failed CEL rule on an object or array shows no value (`Invalid value: <message>`), on a scalar
#   the value itself; wisp shows the type (`Invalid value: "object": <message>`), as releases
#   before field.OmitValueType did;
# - a Duplicate shows the key as JSON (`{"name":"a"}`), wisp as Go's %#v
#   (`map[string]interface {}{"name":"a"}`);
# - an entry of a map (additionalProperties) is `matchLabels[app]`, wisp writes `matchLabels.app`;
# - after a schema error that blocks CEL (Unsupported, Required, Too long, Too many, wrong type) the
#   server adds `<nil>: Invalid value: null: some validation rules were not checked ...`.
NOT_CHECKED = "some validation rules were not checked because the object was invalid"
TYPE_PLACEHOLDER = re.compile(r'^Invalid value: "(?:object|array|string|integer|number|boolean)": ')
SHOWN_VALUE = re.compile(r'^Invalid value: (?:"(?:[^"\\]|\\.)*"|-?[0-9.]+|null|true|false): ')

# Where wisp's refusal genuinely differs from the API server's (also in docs/configuration.md):
# the server's causes as it gives them, and why they differ.
DIFFERENT = {
    "dr two load balancers": (
        {("<nil>", 'Invalid value: "": "spec.trafficPolicy.loadBalancer" must validate one and only one '
                   "schema (oneOf). Found 2 valid alternatives")},
        "oneOf: the API server names no field and puts the path in its message; wisp names the field",
    ),
    "gtw two listeners with one name": (
        {("spec.listeners[1]", 'Duplicate value: {"name":"mesh"}'),
         ("spec.listeners", "Invalid value: Listener name must be unique within the Gateway")},
        "the API server still runs the listeners' CEL rules after the list-map Duplicate error "
        "(Duplicate does not block CEL) and reports both; wisp stops at the Duplicate",
    ),
}


def _server_errors(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(cause.get("field", ""), cause.get("message", "")) for cause in body.get("details", {}).get("causes", [])}


def _as_server_writes(path: str, message: str) -> tuple[str, str]:
    """wisp's (path, message) put into kube-apiserver 1.37's form (the differences listed above)."""
    if TYPE_PLACEHOLDER.match(message) and "in body must be of type" not in message:
        message = "Invalid value: " + TYPE_PLACEHOLDER.sub("", message)
    message = message.replace("Duplicate value: map[string]interface {}", "Duplicate value: ")
    return path, message


def _without_shown_value(path: str, message: str) -> tuple[str, str]:
    # A map entry `[app]` as wisp writes it (`.app`); a scalar's value, which wisp shows as its type.
    path = re.sub(r"\[([^\]0-9][^\]]*)\]", r".\1", path)
    return path, SHOWN_VALUE.sub("Invalid value: ", message)


@pytest.mark.parametrize("case", sorted(INVALID_DOCS))
def test_what_wisp_refuses_the_api_server_refuses_at_the_same_fields(cluster: Cluster, crds: list[str], case: str) -> None:
    text, reason, _ = INVALID_DOCS[case]
    obj = yaml.safe_load(text)
    refusal = admit(copy.deepcopy(obj)).refusal
    assert refusal is not None and refusal.reason == reason

    if reason == NO_MATCH:
        done = cluster.kubectl("apply", "-f", "-", input=text, check=False)
        assert done.returncode != 0
        assert refusal.kubectl("STDIN") in done.stderr
        return

    response = _dry_run_create(cluster, copy.deepcopy(obj))
    body = response.json()
    if reason == BAD_REQUEST and WEBHOOK_MARK in refusal.message:
        # Only istiod's webhook refuses this one, and the test bed runs no istiod.
        assert response.status_code == 201, body.get("message")
        return
    if reason == BAD_REQUEST:
        assert response.status_code == 400, body
        assert body["message"] == refusal.message
        return
    assert reason == INVALID
    assert response.status_code == 422, body
    theirs = {cause for cause in _server_errors(body) if NOT_CHECKED not in cause[1]}
    if case in DIFFERENT:
        expected, _why = DIFFERENT[case]
        assert theirs == expected
        return
    ours = {_as_server_writes(error.path, error.body()) for error in refusal.errors}
    if ours != theirs:
        # The same field and words once the value shown (type for wisp, the value for the server) is set aside.
        ours = {_without_shown_value(*error) for error in ours}
        theirs = {_without_shown_value(*error) for error in theirs}
    assert {path for path, _ in ours} == {path for path, _ in theirs}, (ours, theirs)
    assert ours == theirs
