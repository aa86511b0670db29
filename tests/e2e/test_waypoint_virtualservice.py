"""A sidecar-era VirtualService and DestinationRule on a waypoint, end to end on the shared local mesh.

The module adds namespace `vs` (a client, echo v1 and v2 behind one Service `echo`, pods labelled
`version: v1`/`v2`) and a waypoint for it (`wisp waypoint apply -n vs --enroll-namespace --wait`).
A DestinationRule names the subsets by label, a VirtualService splits 80/20 between them: the
waypoint sends the requests where the canary says, and the objects' status says what it did and
what it did not carry out (issue 12, Must-show: "VirtualService canary 80/20 with subsets works on
the waypoint; an unsupported field shows in status").
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter

import pytest

from .objects import client, echo_deployment, manifest, namespace, service

NS = "vs"

APP = manifest(
    namespace(NS),
    client(NS),
    *(echo_deployment(NS, f"echo-{v}", labels={"app": "echo", "version": v}, account="echo")
      for v in ("v1", "v2")),
    service(NS, "echo"),
)

SUBSETS = f"""
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: echo-versions, namespace: {NS}}}
spec:
  host: echo
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def canary(extra: str = "") -> str:
    """The sidecar-era canary: short host names, 80/20 by subset, a header to see it is in force."""
    return f"""
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: echo-canary, namespace: {NS}}}
spec:
  hosts: [echo]
  http:
  - headers: {{request: {{set: {{x-canary: "on"}}}}}}
    route:
    - {{destination: {{host: echo, subset: v1}}, weight: 80}}
    - {{destination: {{host: echo.{NS}.svc.cluster.local, subset: v2}}, weight: 20}}
{extra}"""


def version(body: str) -> str:
    found = re.search(r"^hostname=echo-(v\d)-", body, re.M)
    return found.group(1) if found else "?"


def many(mesh, url: str, count: int) -> list[str]:
    """`count` requests on one keep-alive connection (curl's URL globbing); the bodies, in order."""
    separator = f"--{secrets.token_hex(4)}--"
    result = mesh.in_pod(NS, "client", "curl", "-s", "-m", "90", "-w", separator, f"{url}?n=[1-{count}]", timeout=120)
    bodies = result.stdout.split(separator)[:-1]
    assert len(bodies) == count, result.stderr[-500:]
    return bodies


def conditions(mesh, resource: str, name: str) -> dict[str, dict]:
    shown = mesh.wisp("get", resource, name, "-n", NS, "-o", "json")
    if shown.returncode != 0:
        return {}
    return {c["type"]: c for c in json.loads(shown.stdout).get("status", {}).get("conditions", [])}


@pytest.fixture(scope="module")
def waypoint(mesh):
    mesh.apply(APP, "vs-app")
    try:
        mesh.wait_for(lambda: sum(1 for p in mesh.status()["pods"] if p["namespace"] == NS and p["ready"]) == 3,
                      timeout=60, what="the vs namespace's pods ready")
        enrolled = mesh.wisp("waypoint", "apply", "-n", NS, "--enroll-namespace", "--wait",
                             "--waypoint-timeout", "90s", timeout=120)
        assert enrolled.returncode == 0, enrolled.stderr
        yield
    finally:
        mesh.wisp("waypoint", "delete", "-n", NS, "--all")
        mesh.delete(APP, "vs-app")


def test_a_virtualservice_canary_with_subsets_splits_80_20_through_the_waypoint(mesh, waypoint):
    mesh.apply(SUBSETS, "vs-subsets")
    mesh.apply(canary(), "vs-canary")
    try:
        mesh.wait_for(lambda: "header x-canary=on" in mesh.curl(NS, "client", "http://echo.vs/")[1],
                      timeout=20, interval=0.3, what="the canary VirtualService in force at the waypoint")
        counts = Counter(version(body) for body in many(mesh, "http://echo.vs/canary", 1000))
        # Binomial(1000, 0.8): one standard deviation is 12.6 requests; ±50 is about four.
        assert set(counts) == {"v1", "v2"} and abs(counts["v1"] - 800) <= 50, counts
        status = conditions(mesh, "virtualservices", "echo-canary")
        assert (status["Accepted"]["status"], status["ResolvedRefs"]["status"],
                status["UnsupportedFields"]["status"]) == ("True", "True", "False"), status
        assert status["Accepted"]["message"] == f"applied to Service {NS}/echo port 80 (waypoint {NS}/waypoint)"
        assert conditions(mesh, "dr", "echo-versions")["Accepted"]["status"] == "True"
    finally:
        mesh.delete(canary(), "vs-canary")
        mesh.delete(SUBSETS, "vs-subsets")


def test_an_unsupported_field_shows_in_status_and_the_rest_still_routes(mesh, waypoint):
    text = canary("""    corsPolicy: {allowOrigins: [{exact: "https://shop.example"}], allowMethods: [GET]}
  tcp:
  - route: [{destination: {host: echo, port: {number: 80}}}]
""")
    mesh.apply(SUBSETS, "vs-subsets")
    mesh.apply(text, "vs-unsupported")
    try:
        status = mesh.wait_for(lambda: conditions(mesh, "vs", "echo-canary").get("UnsupportedFields", {}).get("status")
                               == "True" and conditions(mesh, "vs", "echo-canary"),
                               timeout=20, interval=0.3, what="UnsupportedFields=True on the VirtualService")
        message = status["UnsupportedFields"]["message"]
        assert "spec.tcp: tcp routes are not supported on a waypoint; ignored" in message, message
        assert "spec.http[0].corsPolicy: CORS is not enforced on a waypoint; ignored" in message, message
        assert status["Accepted"]["status"] == "True"
        mesh.wait_for(lambda: "header x-canary=on" in mesh.curl(NS, "client", "http://echo.vs/")[1],
                      timeout=20, interval=0.3, what="the VirtualService's http route in force")
        assert {version(body) for body in many(mesh, "http://echo.vs/still", 50)} <= {"v1", "v2"}
    finally:
        mesh.delete(text, "vs-unsupported")
        mesh.delete(SUBSETS, "vs-subsets")
