"""A pod's spec read as kubelet reads it: environment, `$(VAR)` expansion, security context.

Pure functions over plain data (the pod and container objects as the API or a manifest gives
them), shared by the local runtime's and the Kubernetes kubelet (`kubelet.py`).

Contract:
- `expand(text, mapping)` is Kubernetes' expansion (k8s.io/kubernetes
  third_party/forked/golang/expansion): `$(NAME)` becomes the value when `mapping` has NAME and
  stays as written otherwise, `$$` is a literal `$`, any other `$` is kept.
- `container_env(container, pod, …)` builds the container's variables in Kubernetes' order:
  `envFrom` sources first, then `env` (each value expanded with the variables defined before it
  and the service variables), `valueFrom` with fieldRef (metadata.name/namespace/uid,
  metadata.labels['k'], metadata.annotations['k'], spec.nodeName, spec.serviceAccountName,
  status.hostIP(s), status.podIP(s)), resourceFieldRef, configMapKeyRef and secretKeyRef read
  from `sources` (`("configmaps"|"secrets", name)` → the object's data, None when it does not
  exist; secrets already decoded). A missing non-optional source or key raises
  `ContainerConfigError`, the message as kubelet words it.
- `command_line(container, env)` expands `command` and `args` with the container's variables.
- `security(pod, container)` merges pod and container securityContext into `Security` (uid, gid,
  capabilities kept, privileged), with the runtime's defaults: the pod's own uid unless
  runAsUser says otherwise or the container is privileged (an image without USER runs as root);
  root keeps the container runtime's default capabilities minus `drop` plus `add`, another user
  none (Kubernetes gives a non-root process no effective capability either).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SERVICE_HOST = "10.96.0.1"
SERVICE_PORT = "443"
# containerd's and Docker's default set for a root container.
DEFAULT_CAPABILITIES = ("AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                        "NET_BIND_SERVICE", "NET_RAW", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_FIELD_KEY = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


class ContainerConfigError(ValueError):
    """The container's configuration cannot be completed (kubelet's CreateContainerConfigError)."""


def service_env() -> dict[str, str]:
    """The variables of the `kubernetes` Service every container gets."""
    return {
        "KUBERNETES_SERVICE_HOST": SERVICE_HOST,
        "KUBERNETES_SERVICE_PORT": SERVICE_PORT,
        "KUBERNETES_SERVICE_PORT_HTTPS": SERVICE_PORT,
        "KUBERNETES_PORT": f"tcp://{SERVICE_HOST}:{SERVICE_PORT}",
        "KUBERNETES_PORT_443_TCP": f"tcp://{SERVICE_HOST}:{SERVICE_PORT}",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": SERVICE_PORT,
        "KUBERNETES_PORT_443_TCP_ADDR": SERVICE_HOST,
    }


def expand(text: str, mapping: Callable[[str], str | None]) -> str:
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                out.append("$")
                advance = 1
            elif following == "(":
                close = text.find(")", cursor + 2)
                if close == -1:
                    out.append("$(")
                    advance = 1
                else:
                    name = text[cursor + 2:close]
                    value = mapping(name)
                    out.append(f"$({name})" if value is None else value)
                    advance = close - cursor
            else:
                out.append("$" + following)
                advance = 1
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    return "".join(out) + text[checkpoint:]


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """The container's command and args with `$(VAR)` expanded from its variables."""
    def expanded(key: str) -> list[str]:
        return [expand(str(item), env.get) for item in container.get(key) or []]
    return expanded("command"), expanded("args")


def field_value(pod: Mapping[str, Any], path: str, *, host_ip: str, pod_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.hostIP": host_ip, "status.hostIPs": host_ip, "status.podIP": pod_ip, "status.podIPs": pod_ip,
    }
    if path in simple:
        return str(simple[path] or "")
    match = _FIELD_KEY.match(path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    raise ContainerConfigError(f"unsupported fieldRef fieldPath {path!r}")


# What the node offers (runtime/testbed/nodes.py's node_object) when a container sets no limit.
NODE_ALLOCATABLE = {"cpu": "8", "memory": "16Gi", "ephemeral-storage": "100Gi"}
_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text).strip())
    if not match or match.group(2) not in _SUFFIX:
        raise ContainerConfigError(f"unreadable resource quantity {text!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """resourceFieldRef as kubelet answers it: the limit (or request), else the node's
    allocatable, divided by the divisor and rounded up."""
    resource = str(ref.get("resource") or "")
    kind, _, name = resource.partition(".")
    if kind not in ("limits", "requests") or name not in NODE_ALLOCATABLE:
        raise ContainerConfigError(f"unsupported resourceFieldRef resource {resource!r}")
    resources = container.get("resources") or {}
    value = (resources.get(kind) or {}).get(name)
    if value is None and kind == "requests":
        value = (resources.get("limits") or {}).get(name)
    amount = quantity(value) if value is not None else quantity(NODE_ALLOCATABLE[name])
    divisor = quantity(ref.get("divisor") or "1")
    return str(max(1, math.ceil(amount / divisor)) if amount else 0)


def container_env(container: Mapping[str, Any], pod: Mapping[str, Any], *, host_ip: str, pod_ip: str,
                  sources: Mapping[tuple[str, str], Mapping[str, str] | None],
                  services: Mapping[str, str] | None = None) -> dict[str, str]:
    """The container's own variables (see the module docstring); base variables such as PATH
    and HOSTNAME are the caller's."""
    services = dict(services or {})
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        if not isinstance(source, dict):
            continue
        prefix = str(source.get("prefix") or "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if not isinstance(ref, dict):
                continue
            data = sources.get((kind, str(ref.get("name", ""))))
            if data is None:
                if ref.get("optional"):
                    continue
                raise ContainerConfigError(f'{kind[:-1]} "{ref.get("name")}" not found')
            for name, value in data.items():
                if _ENV_NAME.match(prefix + name):
                    env[prefix + name] = value

    def mapping(name: str) -> str | None:
        return env.get(name, services.get(name))

    for item in container.get("env") or []:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            continue
        name = item["name"]
        source = item.get("valueFrom")
        if not isinstance(source, dict):
            env[name] = expand(str(item.get("value", "")), mapping)
            continue
        if isinstance(source.get("fieldRef"), dict):
            env[name] = field_value(pod, str(source["fieldRef"].get("fieldPath", "")), host_ip=host_ip, pod_ip=pod_ip)
        elif isinstance(source.get("resourceFieldRef"), dict):
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            for kind, key in (("configmaps", "configMapKeyRef"), ("secrets", "secretKeyRef")):
                ref = source.get(key)
                if not isinstance(ref, dict):
                    continue
                data = sources.get((kind, str(ref.get("name", ""))))
                wanted = str(ref.get("key", ""))
                if data is None:
                    if not ref.get("optional"):
                        raise ContainerConfigError(f'{kind[:-1]} "{ref.get("name")}" not found')
                elif wanted in data:
                    env[name] = data[wanted]
                elif not ref.get("optional"):
                    raise ContainerConfigError(f"couldn't find key {wanted} in {kind[:-1]} "
                                               f"{(pod.get('metadata') or {}).get('namespace')}/{ref.get('name')}")
                break
            else:
                raise ContainerConfigError(f"env {name}: valueFrom needs fieldRef, resourceFieldRef, "
                                           "configMapKeyRef or secretKeyRef")
    return {**services, **env}


def env_sources(container: Mapping[str, Any]) -> set[tuple[str, str]]:
    """The ConfigMaps and Secrets the container's variables read."""
    wanted = set()
    for source in container.get("envFrom") or []:
        if isinstance(source, dict):
            for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
                if isinstance(source.get(key), dict):
                    wanted.add((kind, str(source[key].get("name", ""))))
    for item in container.get("env") or []:
        source = item.get("valueFrom") if isinstance(item, dict) else None
        if isinstance(source, dict):
            for kind, key in (("configmaps", "configMapKeyRef"), ("secrets", "secretKeyRef")):
                if isinstance(source.get(key), dict):
                    wanted.add((kind, str(source[key].get("name", ""))))
    return wanted


@dataclass(slots=True, frozen=True)
class Security:
    uid: int
    gid: int
    capabilities: tuple[str, ...] = ()
    privileged: bool = False


def security(pod: Mapping[str, Any], container: Mapping[str, Any], own_uid: int) -> Security:
    """The user, group and capabilities the container runs with (see the module docstring)."""
    pod_context = (pod.get("spec") or {}).get("securityContext") or {}
    context = container.get("securityContext") or {}

    def setting(name: str) -> Any:
        value = context.get(name)
        return pod_context.get(name) if value is None else value

    privileged = bool(context.get("privileged"))
    run_as = setting("runAsUser")
    uid = _id(run_as, "runAsUser") if run_as is not None else (0 if privileged else own_uid)
    run_as_group = setting("runAsGroup")
    # Without runAsGroup: the pod's own group with its own uid, else the image's group (root).
    gid = _id(run_as_group, "runAsGroup") if run_as_group is not None else (own_uid if uid == own_uid else 0)
    if setting("runAsNonRoot") and uid == 0:
        raise ContainerConfigError("container has runAsNonRoot and image will run as root")
    caps = context.get("capabilities") or {}
    drop = {_capability(c) for c in caps.get("drop") or []}
    add = [_capability(c) for c in caps.get("add") or []]
    if privileged:
        kept: tuple[str, ...] = ()
    elif uid != 0:
        kept = ()
    else:
        base = [] if "ALL" in drop else [c for c in DEFAULT_CAPABILITIES if c not in drop]
        kept = tuple(sorted(set(base) | {c for c in add if c != "ALL"}))
    return Security(uid, gid, kept, privileged)


def _id(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**31:
        raise ContainerConfigError(f"{what} {value!r} is not a valid id")
    return value


def _capability(name: Any) -> str:
    text = str(name).upper()
    return text[4:] if text.startswith("CAP_") else text
