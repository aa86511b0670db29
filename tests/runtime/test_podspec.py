"""A pod's spec read as kubelet reads it (runtime/podspec.py): pure, dicts in and out."""

from __future__ import annotations

import pytest

from runtime.podspec import (
    DEFAULT_CAPABILITIES,
    ContainerConfigError,
    Security,
    command_line,
    container_env,
    env_sources,
    expand,
    security,
    service_env,
)

POD = {
    "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"},
                 "annotations": {"team": "a"}},
    "spec": {"nodeName": "node2", "serviceAccountName": "web"},
}


def env_of(container: dict, sources: dict | None = None, **kw) -> dict[str, str]:
    return container_env(container, POD, host_ip="10.250.0.12", pod_ip="10.244.2.10", sources=sources or {}, **kw)


@pytest.mark.parametrize("text, expected", [
    ("$(A)", "1"),
    ("x$(A)y$(B)z", "x1y2z"),
    ("$(MISSING)", "$(MISSING)"),
    ("$$(A)", "$(A)"),
    ("$$", "$"),
    ("$$$(A)", "$1"),
    ("$A", "$A"),
    ("$(A", "$(A"),
    ("end$", "end$"),
    ("$()", "$()"),
])
def test_expansion_is_kubernetes(text: str, expected: str) -> None:
    assert expand(text, {"A": "1", "B": "2"}.get) == expected


def test_env_values_expand_only_variables_defined_before_them() -> None:
    env = env_of({"env": [{"name": "A", "value": "a"}, {"name": "B", "value": "$(A)-$(C)"},
                          {"name": "C", "value": "c"}]})
    assert env["B"] == "a-$(C)"


def test_field_refs_give_the_pods_own_facts() -> None:
    def field(path: str) -> dict:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}
    env = env_of({"env": [
        {"name": "NAME", **field("metadata.name")}, {"name": "NS", **field("metadata.namespace")},
        {"name": "UID", **field("metadata.uid")}, {"name": "NODE", **field("spec.nodeName")},
        {"name": "SA", **field("spec.serviceAccountName")}, {"name": "IP", **field("status.podIP")},
        {"name": "HOST", **field("status.hostIP")}, {"name": "APP", **field("metadata.labels['app']")},
        {"name": "TEAM", **field("metadata.annotations['team']")},
    ]})
    assert [env[k] for k in ("NAME", "NS", "UID", "NODE", "SA", "IP", "HOST", "APP", "TEAM")] == [
        "web-1", "shop", "u-1", "node2", "web", "10.244.2.10", "10.250.0.12", "web", "a"]


def test_an_unknown_field_path_is_a_config_error() -> None:
    with pytest.raises(ContainerConfigError, match="metadata.generation"):
        env_of({"env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "metadata.generation"}}}]})


def test_config_map_and_secret_keys_and_env_from_with_a_prefix() -> None:
    sources = {("configmaps", "cfg"): {"mode": "fast", "bad key": "x"}, ("secrets", "s"): {"token": "t0k"}}
    container = {
        "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}],
        "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}],
    }
    env = env_of(container, sources)
    assert env["CFG_mode"] == "fast" and "CFG_bad key" not in env
    assert env["MODE"] == "fast" and env["TOKEN"] == "t0k"
    assert env_sources(container) == {("configmaps", "cfg"), ("secrets", "s")}


def test_a_missing_source_fails_unless_optional() -> None:
    ref = {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "k"}}}
    with pytest.raises(ContainerConfigError, match='configmap "absent" not found'):
        env_of({"env": [ref]}, {("configmaps", "absent"): None})
    ref["valueFrom"]["configMapKeyRef"]["optional"] = True
    assert "X" not in env_of({"env": [ref]}, {("configmaps", "absent"): None})
    missing_key = {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s", "key": "nope"}}}
    with pytest.raises(ContainerConfigError, match="couldn't find key nope in secret shop/s"):
        env_of({"env": [missing_key]}, {("secrets", "s"): {"other": "v"}})


def test_resource_field_refs_divide_and_round_up() -> None:
    container = {"resources": {"limits": {"memory": "512Mi"}, "requests": {"cpu": "250m"}},
                 "env": [{"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                            "divisor": "1Mi"}}},
                         {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                         {"name": "NODE_CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}}]}
    env = env_of(container)
    assert (env["MEM"], env["CPU"], env["NODE_CPU"]) == ("512", "1", "8")


def test_the_kubernetes_service_variables_are_there_and_expand() -> None:
    env = env_of({"env": [{"name": "API", "value": "https://$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}]},
                 services=service_env())
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["API"] == "https://10.96.0.1:443"


def test_command_and_args_expand_from_the_containers_variables() -> None:
    container = {"command": ["server", "--port=$(PORT)"], "args": ["$(MISSING)", "$$(PORT)"]}
    assert command_line(container, {"PORT": "80"}) == (["server", "--port=80"], ["$(MISSING)", "$(PORT)"])


def test_security_defaults_to_the_pods_own_uid_without_capabilities() -> None:
    assert security(POD, {}, 2_000_000_123) == Security(2_000_000_123, 2_000_000_123, (), False)


def test_container_security_context_wins_over_the_pods() -> None:
    pod = {"spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}}
    result = security(pod, {"securityContext": {"runAsUser": 1337}}, 2_000_000_123)
    assert (result.uid, result.gid) == (1337, 1000)


def test_root_keeps_the_runtimes_default_capabilities_minus_drop_plus_add() -> None:
    ztunnel = {"securityContext": {"runAsUser": 0, "capabilities": {"drop": ["ALL"],
                                                                    "add": ["NET_ADMIN", "SYS_ADMIN", "NET_RAW"]}}}
    assert security(POD, ztunnel, 5).capabilities == ("NET_ADMIN", "NET_RAW", "SYS_ADMIN")
    plain_root = security(POD, {"securityContext": {"runAsUser": 0, "capabilities": {"drop": ["CAP_KILL"]}}}, 5)
    assert "KILL" not in plain_root.capabilities
    assert set(plain_root.capabilities) == set(DEFAULT_CAPABILITIES) - {"KILL"}


def test_a_privileged_container_runs_as_root_unless_told_otherwise() -> None:
    result = security(POD, {"securityContext": {"privileged": True}}, 5)
    assert (result.uid, result.gid, result.privileged) == (0, 0, True)


def test_run_as_non_root_refuses_root() -> None:
    with pytest.raises(ContainerConfigError, match="runAsNonRoot"):
        security(POD, {"securityContext": {"runAsNonRoot": True, "runAsUser": 0}}, 5)
