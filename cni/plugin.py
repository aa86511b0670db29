"""`wisp-cni`: the chained CNI plugin (synchronous; runs once per container-runtime call).

ADD asks the node agent, over its unix socket, to put the pod in the mesh and blocks until it
has (5 s); a failure fails the ADD so the runtime retries and the pod never starts unprotected.
DEL and CHECK succeed without doing anything (the agent sees pods go through its pod source);
VERSION lists the versions spoken. Every failure is a CNI error object on stdout with a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SUPPORTED_VERSIONS = ("0.3.1", "0.4.0", "1.0.0")
LATEST = SUPPORTED_VERSIONS[-1]
AGENT_TIMEOUT = 5.0
ADD_URL = "http://agent/v1/cni/add"

# CNI spec error codes.
ERR_INCOMPATIBLE_VERSION = 1
ERR_INVALID_CONFIG = 7
ERR_DECODING = 6
ERR_INVALID_ENV = 4
ERR_TRY_AGAIN_LATER = 11
ERR_AGENT_REFUSED = 999  # 100+ are the plugin's own


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code, self.msg, self.details = code, msg, details
        super().__init__(msg)


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_code: int
    stdout: str


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: `K=V;K=V` (empty items ignored)."""
    out: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS item {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _config(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except ValueError as exc:
        raise CniError(ERR_DECODING, "network configuration on stdin is not JSON", str(exc)) from None
    if not isinstance(config, dict):
        raise CniError(ERR_INVALID_CONFIG, "network configuration must be a JSON object")
    return config


def _version(config: Mapping[str, Any]) -> str:
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"incompatible CNI version {version}",
                       f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    return version


def _require(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise CniError(ERR_INVALID_ENV, f"{name} is not set")
    return value


def pod_ips(prev_result: Any) -> list[str]:
    if prev_result is None:
        return []
    if not isinstance(prev_result, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be an object")
    ips = prev_result.get("ips", [])
    if not isinstance(ips, list):
        raise CniError(ERR_INVALID_CONFIG, "prevResult.ips must be a list")
    out = []
    for entry in ips:
        address = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(address, str) or not address:
            raise CniError(ERR_INVALID_CONFIG, "prevResult.ips entries need an address")
        out.append(address.split("/", 1)[0])
    return out


def _result(config: Mapping[str, Any], version: str) -> str:
    prev = config.get("prevResult")
    result = dict(prev) if isinstance(prev, dict) else {}
    result["cniVersion"] = version  # the result speaks the request's version
    return json.dumps(result)


def add(environ: Mapping[str, str], config: dict[str, Any], version: str, transport=None) -> str:
    import httpx  # only ADD needs it; VERSION/DEL/CHECK stay fast

    cni_args = parse_cni_args(_require(environ, "CNI_ARGS"))
    for name in ("K8S_POD_NAME", "K8S_POD_NAMESPACE"):
        if not cni_args.get(name):
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS has no {name}")
    netns = _require(environ, "CNI_NETNS")
    container_id = environ.get("CNI_CONTAINERID") or cni_args.get("K8S_POD_INFRA_CONTAINER_ID", "")
    agent_socket = config.get("agent_socket")
    if not isinstance(agent_socket, str) or not agent_socket:
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no agent_socket")
    request = {
        "netns": netns,
        "pod_name": cni_args["K8S_POD_NAME"],
        "pod_namespace": cni_args["K8S_POD_NAMESPACE"],
        "pod_ips": pod_ips(config.get("prevResult")),
        "container_id": container_id,
    }
    transport = transport or httpx.HTTPTransport(uds=agent_socket)
    try:
        with httpx.Client(transport=transport, timeout=AGENT_TIMEOUT) as client:
            response = client.post(ADD_URL, json=request)
    except httpx.TimeoutException:
        raise CniError(ERR_TRY_AGAIN_LATER, f"node agent did not answer within {AGENT_TIMEOUT:g} s",
                       agent_socket) from None
    except httpx.HTTPError as exc:
        raise CniError(ERR_TRY_AGAIN_LATER, "node agent unreachable",
                       f"{agent_socket}: {exc or type(exc).__name__}") from None
    if not 200 <= response.status_code < 300:
        try:
            body = response.json()
            reason = body.get("error") if isinstance(body, dict) else None
        except ValueError:
            reason = None
        reason = reason or response.text.strip() or response.reason_phrase
        raise CniError(ERR_AGENT_REFUSED, f"node agent refused pod {request['pod_namespace']}/"
                       f"{request['pod_name']}: {reason}", f"status {response.status_code}")
    return _result(config, version)


def run(environ: Mapping[str, str], stdin: bytes, transport=None) -> Outcome:
    """One plugin invocation, as a function: (exit code, stdout)."""
    version = LATEST
    try:
        command = _require(environ, "CNI_COMMAND")
        if command == "VERSION":
            requested = LATEST
            if stdin.strip():
                requested = _config(stdin).get("cniVersion") or LATEST
            return Outcome(0, json.dumps({"cniVersion": requested if isinstance(requested, str) else LATEST,
                                          "supportedVersions": list(SUPPORTED_VERSIONS)}))
        if command not in ("ADD", "DEL", "CHECK"):
            raise CniError(ERR_INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                           "this plugin handles ADD, DEL, CHECK and VERSION")
        config = _config(stdin)
        if isinstance(config.get("cniVersion"), str):
            version = config["cniVersion"]
        version = _version(config)
        if command == "ADD":
            return Outcome(0, add(environ, config, version, transport))
        return Outcome(0, "")  # DEL and CHECK: nothing of ours to remove or check here
    except CniError as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        return Outcome(1, json.dumps(error))
    except Exception as exc:  # a bug must still answer in CNI's terms, never with a traceback
        return Outcome(1, json.dumps({"cniVersion": version, "code": ERR_AGENT_REFUSED,
                                      "msg": "internal error in wisp-cni", "details": repr(exc)}))


def main() -> None:
    try:
        stdin = sys.stdin.buffer.read()
    except (OSError, ValueError):
        stdin = b""
    outcome = run(os.environ, stdin)
    if outcome.stdout:
        sys.stdout.write(outcome.stdout + "\n")
        sys.stdout.flush()
    sys.exit(outcome.exit_code)


if __name__ == "__main__":
    main()
