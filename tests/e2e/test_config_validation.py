"""Configuration that fails closed, end to end: `wisp apply/delete/get` on the shared local mesh.

Each case of issue #16: the command fails with kubectl's words and exit 1, nothing of the file is
applied, and what was in force stays in force on the wire (STRICT stays STRICT; an ALLOW with a
misspelt selector never applies). Every test removes what it applied.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

STRICT = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-validation, namespace: ambient}
spec: {mtls: {mode: STRICT}}
"""


def apply(mesh, text: str, name: str):
    """`wisp apply -f NAME.yaml` with ``text``; the completed process (not asserted)."""
    path = Path(tempfile.mkdtemp(prefix="wisp-e2e-")) / f"{name}.yaml"
    path.write_text(text)
    try:
        return mesh.wisp("apply", "-f", str(path))
    finally:
        shutil.rmtree(path.parent)


def plaintext_refused(mesh) -> bool:
    return mesh.curl("legacy", "client", "http://far.ambient/", timeout=2)[0] == 0


def test_a_bad_edit_of_strict_fails_and_strict_stays_in_force(mesh):
    assert apply(mesh, STRICT, "strict-validation").stdout.strip() == \
        "peerauthentication.security.istio.io/strict-validation created"
    try:
        mesh.wait_for(lambda: plaintext_refused(mesh), what="plaintext refused")
        result = apply(mesh, STRICT.replace("STRICT", "STRIC"), "strict-validation")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            'The PeerAuthentication "strict-validation" is invalid: spec.mtls.mode: Unsupported value: "STRIC": '
            'supported values: "UNSET", "DISABLE", "PERMISSIVE", "STRICT"')
        assert result.stdout == ""
        shown = json.loads(mesh.wisp("get", "pa", "strict-validation", "-n", "ambient", "-o", "json").stdout)
        assert shown["spec"]["mtls"]["mode"] == "STRICT"
        # Past a config push and then some: plaintext is still refused.
        time.sleep(2)
        assert plaintext_refused(mesh)
        assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200
    finally:
        mesh.delete(STRICT, "strict-validation")
    mesh.wait_for(lambda: not plaintext_refused(mesh), what="plaintext accepted again")


MISSPELT_SELECTOR = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-other, namespace: ambient}
spec:
  selector: {matchLabel: {app: server-far}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/ambient/sa/other"]}}]}]
"""


def test_an_allow_with_a_misspelt_selector_is_refused_and_never_applies(mesh):
    result = apply(mesh, MISSPELT_SELECTOR, "only-other")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'Error from server (BadRequest): error when creating "' + result.args[-1] + '": AuthorizationPolicy in '
        'version "v1" cannot be handled as a AuthorizationPolicy: strict decoding error: unknown field '
        '"spec.selector.matchLabel"')
    missing = mesh.wisp("get", "ap", "only-other", "-n", "ambient")
    assert missing.returncode == 1
    assert 'authorizationpolicies.security.istio.io "only-other" not found' in missing.stderr
    # Applied to every pod of the namespace, it would have refused the client everywhere.
    time.sleep(1)
    assert mesh.curl("ambient", "client", "http://near.ambient/")[0] == 200
    assert mesh.curl("ambient", "client", "http://far.ambient/")[0] == 200


VALID_AND_MISSPELT_KIND = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-nothing-real, namespace: ambient}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [nowhere]}}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizaionPolicy
metadata: {name: typo, namespace: ambient}
spec: {}
"""


def test_a_file_with_an_unknown_kind_applies_nothing(mesh):
    result = apply(mesh, VALID_AND_MISSPELT_KIND, "mixed")
    assert result.returncode == 1
    assert 'no matches for kind "AuthorizaionPolicy" in version "security.istio.io/v1"' in result.stderr
    assert mesh.wisp("get", "ap", "deny-nothing-real", "-n", "ambient").returncode == 1


def test_v1alpha1_and_two_different_documents_of_one_name_are_refused(mesh):
    alpha = apply(mesh, STRICT.replace("security.istio.io/v1", "security.istio.io/v1alpha1"), "alpha")
    assert alpha.returncode == 1
    assert 'no matches for kind "PeerAuthentication" in version "security.istio.io/v1alpha1"' in alpha.stderr
    twice = apply(mesh, STRICT + "---\n" + STRICT.replace("STRICT", "PERMISSIVE"), "twice")
    assert twice.returncode == 1 and "defined twice, differently" in twice.stderr
    assert mesh.wisp("get", "pa", "-n", "ambient", "-o", "name").stdout == ""


POLICY = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: generations, namespace: ambient}
spec:
  selector: {matchLabels: {app: server-near}}
  action: DENY
  rules: [{from: [{source: {namespaces: [nowhere]}}]}]
"""


def conditions(mesh, name: str) -> list[dict]:
    result = mesh.wisp("get", "authorizationpolicies", name, "-n", "ambient", "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout).get("status", {}).get("conditions", [])


def test_apply_reports_each_object_truthfully_and_status_follows_generation(mesh):
    try:
        assert apply(mesh, POLICY, "generations").stdout.strip() == \
            "authorizationpolicy.security.istio.io/generations created"
        mesh.wait_for(lambda: [c.get("observedGeneration") for c in conditions(mesh, "generations")] == [1],
                      what="ZtunnelAccepted for generation 1")
        assert apply(mesh, POLICY, "generations").stdout.strip() == \
            "authorizationpolicy.security.istio.io/generations unchanged"
        # An HTTP attribute: the condition's reason and generation both move on.
        changed = POLICY.replace("[nowhere]}}]", "[nowhere]}}], to: [{operation: {methods: [GET]}}]")
        assert apply(mesh, changed, "generations").stdout.strip() == \
            "authorizationpolicy.security.istio.io/generations configured"
        mesh.wait_for(lambda: [(c["reason"], c["observedGeneration"]) for c in conditions(mesh, "generations")]
                      == [("UnsupportedValue", 2)], what="fresh condition for generation 2")
        # Moved to a waypoint (targetRefs): ztunnel no longer gets it, so its ZtunnelAccepted goes;
        # what is left is Istio's WaypointAccepted, refused because `near` has no waypoint.
        waypoint = changed.replace("selector: {matchLabels: {app: server-near}}",
                                   "targetRefs: [{kind: Service, group: '', name: near}]")
        assert apply(mesh, waypoint, "generations").returncode == 0
        mesh.wait_for(lambda: [(c["type"], c["status"], c["reason"]) for c in conditions(mesh, "generations")]
                      == [("WaypointAccepted", "False", "AncestorNotBound")],
                      what="stale ZtunnelAccepted cleared, WaypointAccepted written")
    finally:
        mesh.delete(POLICY, "generations")
    listing = json.loads(mesh.wisp("get", "ap", "-A", "-o", "json").stdout)
    assert [o for o in listing["items"] if o["metadata"]["name"] == "generations"] == []


def test_get_knows_short_plural_and_singular_names_and_refuses_unknown_types(mesh):
    for name in ("ap", "authorizationpolicy", "authorizationpolicies", "AuthorizationPolicy", "pa", "ra", "vs",
                 "dr", "gtw", "httproutes", "po", "svc", "ns"):
        result = mesh.wisp("get", name, "-A", "-o", "yaml")
        assert result.returncode == 0, (name, result.stderr)
        assert "kind: List" in result.stdout
    unknown = mesh.wisp("get", "foo")
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == 'error: the server doesn\'t have a resource type "foo"'
    wide = mesh.wisp("get", "pods", "-n", "ambient", "-o", "wide")
    assert wide.returncode == 0 and "client" in wide.stdout


SPIFFE = """apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: spiffe-principal, namespace: ambient}
spec:
  selector: {matchLabels: {app: server-near}}
  action: ALLOW
  rules: [{from: [{source: {principals: ["spiffe://cluster.local/ns/ambient/sa/client"]}}]}]
"""


def test_a_spiffe_principal_never_matches_and_both_apply_and_status_say_so(mesh):
    result = apply(mesh, SPIFFE, "spiffe-principal")
    try:
        assert result.returncode == 0
        assert "Warning: " in result.stderr and "never matches" in result.stderr
        # As in Istio: the only ALLOW never matches, so the client is refused.
        mesh.wait_for(lambda: mesh.curl("ambient", "client", "http://near.ambient/", timeout=2)[0] == 0,
                      what="client refused")
        mesh.wait_for(lambda: any("never match" in c.get("message", "") for c in conditions(mesh, "spiffe-principal")),
                      what="condition naming the principal")
    finally:
        mesh.delete(SPIFFE, "spiffe-principal")
    mesh.wait_for(lambda: mesh.curl("ambient", "client", "http://near.ambient/", timeout=2)[0] == 200,
                  what="client allowed again")


def test_delete_of_a_missing_object_is_not_found(mesh):
    path = Path(tempfile.mkdtemp(prefix="wisp-e2e-")) / "gone.yaml"
    path.write_text(POLICY.replace("generations", "never-applied"))
    try:
        result = mesh.wisp("delete", "-f", str(path))
    finally:
        shutil.rmtree(path.parent)
    assert result.returncode == 1
    assert ('Error from server (NotFound): error when deleting "' + str(path) + '": '
            'authorizationpolicies.security.istio.io "never-applied" not found') in result.stderr
