"""ztunnel's settings from its environment, under the names Istio's ztunnel chart and binary use.

On Kubernetes the DaemonSet says who and where the process is through environment variables
(Istio's `manifests/charts/ztunnel/templates/daemonset.yaml`; the names ztunnel's `src/config.rs`
reads), not through flags; `deploy/ztunnel.yaml` sets the same ones. Each is a default for the
flag beside it: a flag given on the command line wins, and a variable whose flag was given is not
even read, so a bad value there cannot stop a process that does not use it.

| variable | flag | meaning |
|---|---|---|
| NODE_NAME | --node | the node this ztunnel serves |
| POD_NAME, POD_NAMESPACE | — | the ztunnel pod itself (shown by /config_dump) |
| INSTANCE_IP | — | the pod's IP |
| SERVICE_ACCOUNT | — | the pod's service account |
| XDS_ADDRESS, CA_ADDRESS, WISP_CONTROL_PLANE | --control-plane | config stream and CA (wisp serves both on one address) |
| AUTH_TOKEN | --token-file | the projected token the CA reviews |
| CA_ROOT_CA, XDS_ROOT_CA | --root-cert | the mesh roots (a file path) |
| TRUST_DOMAIN | --trust-domain | the SPIFFE trust domain |
| INPOD_UDS | --zds-socket | the node agent's ZDS socket |
| LOG_FORMAT | --log-json | `json` for JSON logs |
| SECRET_TTL | — | lifetime asked for workload certificates, a Go duration (`24h`, `2m`, `90s`); the CA's default (24 h) when unset |

wisp's own WISP_ZTUNNEL_WORKERS, WISP_ZTUNNEL_ENGINE and WISP_LOG_LEVEL are read by main.py.

`read(environ, given)` returns the values found (pure: a mapping in, `FromEnvironment` out) and
raises `EnvironmentProblem` naming the variable, its value and what it should be.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Container, Mapping
from dataclasses import dataclass

from wisp.controlplane.client import check_address

# A Kubernetes namespace, pod or service account name (RFC 1123; pods and accounts may be subdomains).
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Istio's trust domains are DNS-like names; wisp's identities put them in a SPIFFE URI.
_TRUST_DOMAIN = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9._]*[A-Za-z0-9])?$")


class EnvironmentProblem(ValueError):
    """An environment variable holds a value ztunnel cannot use; the message names it."""

    def __init__(self, name: str, value: str, wanted: str) -> None:
        self.name = name
        self.value = value
        super().__init__(f"{name}={value!r} is not {wanted}")


@dataclass(slots=True, frozen=True)
class FromEnvironment:
    """What the environment said; None where it said nothing (or the flag was given)."""

    node: str | None = None
    pod_name: str | None = None
    pod_namespace: str | None = None
    instance_ip: str | None = None
    service_account: str | None = None
    control_plane: str | None = None
    token_file: str | None = None
    root_cert: str | None = None
    trust_domain: str | None = None
    zds_socket: str | None = None
    log_json: bool | None = None
    certificate_ttl: int | None = None


def read(environ: Mapping[str, str], given: Container[str] = ()) -> FromEnvironment:
    """The settings in `environ`, skipping those whose field name is in `given` (set by a flag)."""
    def value(name: str) -> str | None:
        text = environ.get(name)
        return text if text else None

    found: dict[str, object] = {}
    if "node" not in given and (text := value("NODE_NAME")):
        found["node"] = _name("NODE_NAME", text, _SUBDOMAIN, "a node name (RFC 1123, lower case)")
    if text := value("POD_NAME"):
        found["pod_name"] = _name("POD_NAME", text, _SUBDOMAIN, "a pod name (RFC 1123, lower case)")
    if text := value("POD_NAMESPACE"):
        found["pod_namespace"] = _name("POD_NAMESPACE", text, _LABEL, "a namespace name (RFC 1123 label)")
    if text := value("SERVICE_ACCOUNT"):
        found["service_account"] = _name("SERVICE_ACCOUNT", text, _SUBDOMAIN, "a service account name")
    if text := value("INSTANCE_IP"):
        try:
            found["instance_ip"] = str(ipaddress.ip_address(text))
        except ValueError:
            raise EnvironmentProblem("INSTANCE_IP", text, "an IP address") from None
    if "control_plane" not in given:
        found["control_plane"] = _control_plane(environ)
    if "token_file" not in given and (text := value("AUTH_TOKEN")):
        found["token_file"] = _path("AUTH_TOKEN", text)
    if "root_cert" not in given:
        found["root_cert"] = _root_cert(environ)
    if "trust_domain" not in given and (text := value("TRUST_DOMAIN")):
        if len(text) > 255 or not _TRUST_DOMAIN.match(text):
            raise EnvironmentProblem("TRUST_DOMAIN", text, "a trust domain such as cluster.local")
        found["trust_domain"] = text
    if "zds_socket" not in given and (text := value("INPOD_UDS")):
        found["zds_socket"] = _path("INPOD_UDS", text)
    if "log_json" not in given and (text := value("LOG_FORMAT")):
        if text not in ("json", "plain"):
            raise EnvironmentProblem("LOG_FORMAT", text, "json or plain")
        found["log_json"] = text == "json"
    if text := value("SECRET_TTL"):
        found["certificate_ttl"] = _duration_seconds("SECRET_TTL", text)
    return FromEnvironment(**found)  # type: ignore[arg-type]


def _name(variable: str, text: str, pattern: re.Pattern[str], wanted: str) -> str:
    if len(text) > 253 or not pattern.match(text):
        raise EnvironmentProblem(variable, text, wanted)
    return text


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_DURATION_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration_seconds(variable: str, text: str) -> int:
    """Whole seconds of a Go duration (`24h`, `1h30m`, `2m`, `90s`), as Istio's SECRET_TTL is written."""
    wanted = "a positive duration such as 24h, 2m or 90s"
    if len(text) > 32 or not re.fullmatch(r"(?:\d+(?:\.\d+)?(?:h|ms|m|s))+", text):
        raise EnvironmentProblem(variable, text, wanted)
    seconds = sum(float(n) * _DURATION_UNIT[unit] for n, unit in _DURATION_PART.findall(text))
    if seconds < 1:
        raise EnvironmentProblem(variable, text, wanted)
    return int(seconds)


def _path(variable: str, text: str) -> str:
    if not text.startswith("/") or "\0" in text:
        raise EnvironmentProblem(variable, text, "an absolute file path")
    return text


def _address(variable: str, text: str) -> str:
    """host:port from Istio's forms: `host:port` or `https://host:port` (ztunnel adds https)."""
    bare = text
    if "://" in text:
        scheme, _, bare = text.partition("://")
        if scheme != "https":
            raise EnvironmentProblem(variable, text, "an https:// address (the control plane speaks TLS)")
        bare = bare.rstrip("/")
    try:
        return check_address(bare)
    except ValueError:
        raise EnvironmentProblem(variable, text, "host:port or https://host:port") from None


def _control_plane(environ: Mapping[str, str]) -> str | None:
    """One address: wisp's operator serves the config stream and the CA on the same port, so
    XDS_ADDRESS and CA_ADDRESS must agree (WISP_CONTROL_PLANE, wisp's own name, wins over both)."""
    own = environ.get("WISP_CONTROL_PLANE")
    if own:
        return _address("WISP_CONTROL_PLANE", own)
    addresses = {name: _address(name, environ[name]) for name in ("XDS_ADDRESS", "CA_ADDRESS") if environ.get(name)}
    if len(set(addresses.values())) > 1:
        raise EnvironmentProblem(
            "CA_ADDRESS", environ["CA_ADDRESS"],
            "XDS_ADDRESS (%s): wisp's control plane serves the config stream and the CA on one address"
            % environ["XDS_ADDRESS"])
    return next(iter(addresses.values()), None)


def _root_cert(environ: Mapping[str, str]) -> str | None:
    paths = {}
    for name in ("CA_ROOT_CA", "XDS_ROOT_CA"):
        text = environ.get(name)
        if not text:
            continue
        # Istio also takes SYSTEM (the OS trust store) or inline PEM here; the mesh's roots are
        # what wisp verifies its control plane against, so only a file is meaningful.
        if text == "SYSTEM" or text.lstrip().startswith("-----BEGIN"):
            raise EnvironmentProblem(name, text[:40], "a file path (wisp verifies the control plane with the "
                                     "mesh's root certificate file, not SYSTEM or inline PEM)")
        paths[name] = _path(name, text)
    if len(set(paths.values())) > 1:
        raise EnvironmentProblem("XDS_ROOT_CA", environ["XDS_ROOT_CA"],
                                 "CA_ROOT_CA (%s): both name the one mesh root" % environ["CA_ROOT_CA"])
    return next(iter(paths.values()), None)
