"""ztunnel's configuration from its environment as Istio's chart sets it (ztunnel/environment.py):
each variable is the default of its flag, a flag wins, a bad value is a usage error naming the
variable, and the DaemonSet of deploy/ztunnel.yaml yields the configuration it means."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ztunnel.environment import EnvironmentProblem, FromEnvironment, read
from ztunnel.main import parse_args

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

# What the kubelet puts in the environment of Istio's ztunnel pod (its chart's variables).
ISTIO_CHART_ENV = {
    "NODE_NAME": "node-1", "POD_NAME": "ztunnel-x7k2p", "POD_NAMESPACE": "istio-system",
    "INSTANCE_IP": "10.244.1.7", "SERVICE_ACCOUNT": "ztunnel",
    "CA_ADDRESS": "istiod.istio-system.svc:15012", "XDS_ADDRESS": "istiod.istio-system.svc:15012",
    "ISTIO_META_CLUSTER_ID": "Kubernetes", "RUST_LOG": "info",
}
ALL_NAMES = ("NODE_NAME", "POD_NAME", "POD_NAMESPACE", "INSTANCE_IP", "SERVICE_ACCOUNT", "CA_ADDRESS",
             "XDS_ADDRESS", "WISP_CONTROL_PLANE", "AUTH_TOKEN", "CA_ROOT_CA", "XDS_ROOT_CA", "TRUST_DOMAIN",
             "INPOD_UDS", "LOG_FORMAT", "SECRET_TTL", "WISP_ZTUNNEL_WORKERS", "WISP_ZTUNNEL_ENGINE", "WISP_LOG_LEVEL")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_istio_chart_variables_say_who_and_where_the_ztunnel_is() -> None:
    found = read(ISTIO_CHART_ENV)
    assert found == FromEnvironment(node="node-1", pod_name="ztunnel-x7k2p", pod_namespace="istio-system",
                                    instance_ip="10.244.1.7", service_account="ztunnel",
                                    control_plane="istiod.istio-system.svc:15012")


def test_an_https_address_as_ztunnel_accepts_it_is_taken_as_host_port() -> None:
    found = read({"XDS_ADDRESS": "https://cp.example:15012", "CA_ADDRESS": "https://cp.example:15012/"})
    assert found.control_plane == "cp.example:15012"


def test_wisp_control_plane_wins_over_istios_names() -> None:
    assert read({"WISP_CONTROL_PLANE": "a:1", "XDS_ADDRESS": "b:2"}).control_plane == "a:1"


def test_paths_trust_domain_socket_and_log_format() -> None:
    found = read({"AUTH_TOKEN": "/t/istio-token", "CA_ROOT_CA": "/r/root-cert.pem", "TRUST_DOMAIN": "example.org",
                  "INPOD_UDS": "/var/run/ztunnel/ztunnel.sock", "LOG_FORMAT": "json"})
    assert (found.token_file, found.root_cert, found.trust_domain, found.zds_socket, found.log_json) == (
        "/t/istio-token", "/r/root-cert.pem", "example.org", "/var/run/ztunnel/ztunnel.sock", True)


def test_empty_variables_say_nothing() -> None:
    assert read({name: "" for name in ALL_NAMES}) == FromEnvironment()


@pytest.mark.parametrize(("environ", "words"), [
    ({"NODE_NAME": "Node_1"}, "NODE_NAME='Node_1' is not a node name"),
    ({"POD_NAMESPACE": "a.b"}, "POD_NAMESPACE='a.b' is not a namespace name"),
    ({"INSTANCE_IP": "10.0.0.300"}, "INSTANCE_IP='10.0.0.300' is not an IP address"),
    ({"XDS_ADDRESS": "istiod"}, "XDS_ADDRESS='istiod' is not host:port or https://host:port"),
    ({"CA_ADDRESS": "http://cp:15012"}, "is not an https:// address"),
    ({"XDS_ADDRESS": "a:15012", "CA_ADDRESS": "b:15012"}, "serves the config stream and the CA on one address"),
    ({"AUTH_TOKEN": "tokens/istio-token"}, "AUTH_TOKEN='tokens/istio-token' is not an absolute file path"),
    ({"CA_ROOT_CA": "SYSTEM"}, "CA_ROOT_CA='SYSTEM' is not a file path"),
    ({"CA_ROOT_CA": "/a.pem", "XDS_ROOT_CA": "/b.pem"}, "both name the one mesh root"),
    ({"TRUST_DOMAIN": "spiffe://x"}, "TRUST_DOMAIN='spiffe://x' is not a trust domain"),
    ({"LOG_FORMAT": "yaml"}, "LOG_FORMAT='yaml' is not json or plain"),
    ({"SECRET_TTL": "120"}, "SECRET_TTL='120' is not a positive duration"),
    ({"SECRET_TTL": "-2m"}, "SECRET_TTL='-2m' is not a positive duration"),
    ({"SECRET_TTL": "0s"}, "SECRET_TTL='0s' is not a positive duration"),
    ({"SECRET_TTL": "2 days"}, "SECRET_TTL='2 days' is not a positive duration"),
])
def test_a_bad_value_names_the_variable_and_what_it_should_be(environ: dict[str, str], words: str) -> None:
    with pytest.raises(EnvironmentProblem) as raised:
        read(environ)
    assert words in str(raised.value)


@pytest.mark.parametrize(("text", "seconds"), [("24h", 86400), ("2m", 120), ("90s", 90), ("1h30m", 5400),
                                               ("1.5m", 90), ("2m500ms", 120)])
def test_secret_ttl_is_read_as_istios_go_duration(text: str, seconds: int) -> None:
    assert read({"SECRET_TTL": text}).certificate_ttl == seconds


def test_secret_ttl_sets_the_lifetime_ztunnel_asks_the_ca_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["--node", "n1"]).certificate_ttl is None
    monkeypatch.setenv("SECRET_TTL", "2m")
    assert parse_args(["--node", "n1"]).certificate_ttl == 120


def test_a_variable_whose_flag_was_given_is_not_read() -> None:
    found = read({"NODE_NAME": "Bad_Name", "XDS_ADDRESS": "nonsense"}, given={"node", "control_plane"})
    assert found.node is None and found.control_plane is None


def test_the_command_line_takes_its_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**ISTIO_CHART_ENV, "AUTH_TOKEN": "/t/tok", "CA_ROOT_CA": "/r/root.pem",
                        "TRUST_DOMAIN": "example.org", "INPOD_UDS": "/z.sock"}.items():
        monkeypatch.setenv(name, value)
    config = parse_args([])
    assert (config.node, config.control_plane, config.trust_domain, config.zds_socket) == (
        "node-1", "istiod.istio-system.svc:15012", "example.org", "/z.sock")
    assert (str(config.token_path()), str(config.root_path())) == ("/t/tok", "/r/root.pem")
    assert (config.pod_name, config.pod_namespace, config.instance_ip, config.service_account) == (
        "ztunnel-x7k2p", "istio-system", "10.244.1.7", "ztunnel")


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**ISTIO_CHART_ENV, "AUTH_TOKEN": "/t/tok", "TRUST_DOMAIN": "example.org"}.items():
        monkeypatch.setenv(name, value)
    config = parse_args(["--node", "node-2", "--control-plane", "10.0.0.1:15012", "--token-file", "/other",
                         "--trust-domain", "cluster.local", "--zds-socket", "/s.sock"])
    assert (config.node, config.control_plane, str(config.token_path()), config.trust_domain, config.zds_socket) == (
        "node-2", "10.0.0.1:15012", "/other", "cluster.local", "/s.sock")


def test_a_flag_rescues_a_bad_variable_it_replaces(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NODE_NAME", "Not A Name")
    assert parse_args(["--node", "n1"]).node == "n1"


def test_a_bad_variable_is_a_usage_error_naming_it(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("XDS_ADDRESS", "istiod.istio-system.svc")
    with pytest.raises(SystemExit) as exited:
        parse_args(["--node", "n1"])
    assert exited.value.code == 2
    assert "environment: XDS_ADDRESS='istiod.istio-system.svc' is not host:port" in capsys.readouterr().err


def test_without_environment_the_defaults_hold() -> None:
    config = parse_args(["--node", "n1"])
    assert (config.control_plane, config.trust_domain, config.zds_socket, config.pod_name) == (
        None, "cluster.local", "/var/run/ztunnel/ztunnel.sock", None)


def _pod_environment(container: dict) -> dict[str, str]:
    """The environment the kubelet gives `container` on node-1 (field references resolved)."""
    fields = {"spec.nodeName": "node-1", "metadata.name": "ztunnel-abcde", "metadata.namespace": "istio-system",
              "status.podIP": "10.244.1.9", "spec.serviceAccountName": "ztunnel"}
    env = {}
    for entry in container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_the_daemonset_of_deploy_configures_ztunnel_through_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    daemonset = next(doc for doc in yaml.safe_load_all((DEPLOY / "ztunnel.yaml").read_text())
                     if doc and doc["kind"] == "DaemonSet")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    for name, value in _pod_environment(container).items():
        monkeypatch.setenv(name, value)
    config = parse_args(container["args"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config.node == "node-1" and config.pod_name == "ztunnel-abcde"
    assert config.control_plane == "wisp-operator.istio-system.svc:15012"
    assert config.trust_domain == "cluster.local" and config.workers == 2
    assert str(config.token_path()) == mounts["istio-token"] + "/istio-token"
    assert str(config.root_path()) == mounts["istiod-ca-cert"] + "/root-cert.pem"
    assert config.zds_socket == mounts["cni-ztunnel-sock-dir"] + "/ztunnel.sock"


def test_the_process_refuses_a_bad_variable_before_starting(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "ztunnel.main"], capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", "NODE_NAME": "n1", "INSTANCE_IP": "not-an-ip"}, check=False)
    assert done.returncode == 2
    assert "INSTANCE_IP='not-an-ip' is not an IP address" in done.stderr
