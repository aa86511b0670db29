"""`wisp precheck`: is this cluster (or, with `--host`, this machine as a node) ready for wisp?

As `istioctl x precheck`, it reports problems as analysis messages, `Error [WISPnnnn] (resource)
text` or `Warning ...`, and ends with one summary line; `-o json|yaml` prints the same messages
as data. Exit status 0 when no Error was found (Warnings do not fail it), 1 when one was, 2 for
bad arguments.

Cluster checks (through `--kubeconfig`/`--context`): the Kubernetes version; the Gateway API and
Istio CRDs (missing ones are installed by `wisp install`; present ones of another owner would be
taken over); the caller's permission to create and patch every object `wisp install` applies
(SelfSubjectAccessReview, so the answer is the API server's own); installs that conflict (Istio's
CNI DaemonSet, a ztunnel DaemonSet wisp does not own, istiod).

Host checks (`--host`, run on each node, as root): the CNI configuration and binary directories
and a primary plugin to chain after (an istio-cni entry there is a conflict); the tools the node
agent runs (iptables-save/-restore, ip6tables, ipset, nsenter, ip); and kernel support, tried for
real inside a throwaway network namespace (`unshare --net`): an iptables mangle MARK and nat
REDIRECT rule set, and an ipset hash:ip set. Nothing is changed on the host.

The codes are listed in docs/install.md ("wisp precheck").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import kubeapi, output
from .install import DEFAULT_MANIFESTS, InstallError, describe, render
from .kubeapi import Kube, KubeCommandError

MIN_KUBERNETES = (1, 28)
GATEWAY_CRDS = ("gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io",
                "grpcroutes.gateway.networking.k8s.io")
ISTIO_CRDS = ("authorizationpolicies.security.istio.io", "peerauthentications.security.istio.io",
              "requestauthentications.security.istio.io", "virtualservices.networking.istio.io",
              "destinationrules.networking.istio.io")
PART_OF = "app.kubernetes.io/part-of"
HOST_TOOLS = ("iptables-save", "iptables-restore", "ip6tables-save", "ip6tables-restore", "ipset", "nsenter", "ip")
_IPTABLES_TEST = """*mangle
:WISP-PRECHECK - [0:0]
-A OUTPUT -j WISP-PRECHECK
-A WISP-PRECHECK -p tcp -m mark --mark 0x539/0xfff -j ACCEPT
-A WISP-PRECHECK -p tcp -j MARK --set-xmark 0x111/0xfff
COMMIT
*nat
:WISP-PRECHECK - [0:0]
-A OUTPUT -j WISP-PRECHECK
-A WISP-PRECHECK -p tcp -j REDIRECT --to-ports 15001
COMMIT
"""


@dataclass(slots=True)
class Message:
    """One finding: level Error, Warning or Info (passed checks are Info)."""

    level: str
    code: str
    resource: str
    text: str

    def line(self) -> str:
        if self.level == "Info":
            return "✔ %s" % self.text
        return "%s [%s] (%s) %s" % (self.level, self.code, self.resource, self.text)


def add_commands(sub: Any) -> None:
    parser = sub.add_parser("precheck", help="check that a cluster (or, with --host, this node) is ready for wisp")
    kubeapi.add_flags(parser)
    output.add_output_flag(parser)
    parser.add_argument("--host", action="store_true",
                        help="check this machine as a node (CNI directories, iptables, netns, ipset) "
                             "instead of the cluster")
    parser.add_argument("--cni-conf-dir", type=Path, default=Path("/etc/cni/net.d"))
    parser.add_argument("--cni-bin-dir", type=Path, default=Path("/opt/cni/bin"))
    parser.add_argument("--namespace", "-n", default="istio-system",
                        help="where wisp would be installed (default istio-system)")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS, help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        messages = host_checks(args.cni_conf_dir, args.cni_bin_dir) if args.host \
            else asyncio.run(cluster_checks(args))
    except (KubeCommandError, InstallError) as exc:
        messages = [Message("Error", "WISP0001", "cluster", str(exc))]
    errors = [m for m in messages if m.level == "Error"]
    where = "this node" if args.host else "the cluster"
    if args.output != "short":
        output.structured({"target": "host" if args.host else "cluster",
                           "messages": [asdict(m) for m in messages], "errors": len(errors)}, args.output)
        return 1 if errors else 0
    for message in sorted(messages, key=lambda m: {"Info": 0, "Warning": 1, "Error": 2}[m.level]):
        print(message.line())
    if errors:
        print("Error: %d issue(s) found when checking %s. wisp may not be safe to install or upgrade." % (
            len(errors), where))
        return 1
    print("✔ No issues found when checking %s. wisp is safe to install or upgrade!" % where)
    return 0


# -- the cluster -----------------------------------------------------------------------------------


async def cluster_checks(args: argparse.Namespace) -> list[Message]:
    async with await kubeapi.connect(args) as kube:
        messages = await _version(kube)
        if messages and messages[0].code == "WISP0001":
            return messages
        messages += await _crds(kube, GATEWAY_CRDS, "Gateway API")
        messages += await _crds(kube, ISTIO_CRDS, "Istio")
        messages += await _permissions(kube, render(args.manifests, []), args.namespace)
        messages += await _conflicts(kube, args.namespace)
    return messages


async def _version(kube: Kube) -> list[Message]:
    answer = await kube.request("GET", "/version")
    if not answer.ok:
        return [Message("Error", "WISP0001", "cluster", "cannot read the Kubernetes version: %s" % answer.message())]
    text = str(answer.body.get("gitVersion", ""))
    found = re.match(r"v?(\d+)\.(\d+)", text)
    if not found:
        return [Message("Warning", "WISP0002", "cluster", "the server's version %r is not vMAJOR.MINOR" % text)]
    version = (int(found[1]), int(found[2]))
    if version < MIN_KUBERNETES:
        return [Message("Error", "WISP0002", "cluster", "Kubernetes %s is older than %d.%d, the oldest wisp supports"
                        % (text, *MIN_KUBERNETES))]
    return [Message("Info", "", "cluster", "Kubernetes version %s (%d.%d or newer needed)" % (text, *MIN_KUBERNETES))]


async def _crds(kube: Kube, names: tuple[str, ...], family: str) -> list[Message]:
    messages, missing, present = [], [], []
    for name in names:
        answer = await kube.request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + name)
        if answer.status == 404:
            missing.append(name)
            continue
        if not answer.ok:
            messages.append(Message("Error", "WISP0003", "CustomResourceDefinition " + name,
                                    "cannot read it: %s" % answer.message()))
            continue
        served = [v.get("name") for v in answer.body.get("spec", {}).get("versions") or [] if v.get("served")]
        if "v1" not in served:
            messages.append(Message("Error", "WISP0004", "CustomResourceDefinition " + name,
                                    "serves %s but wisp reads v1: upgrade it" % (", ".join(served) or "nothing")))
        managers = {entry.get("manager") for entry in answer.body.get("metadata", {}).get("managedFields") or []}
        labels = answer.body.get("metadata", {}).get("labels") or {}
        if kubeapi.FIELD_MANAGER not in managers and labels.get(PART_OF) != "wisp":
            messages.append(Message("Warning", "WISP0005", "CustomResourceDefinition " + name,
                                    "installed by someone else (%s); wisp install would take over its fields: "
                                    "use the overlay that keeps the cluster's CRDs (docs/install.md)"
                                    % (", ".join(sorted(m for m in managers if m)) or "unknown manager")))
        present.append(name)
    if missing:
        messages.append(Message("Info", "", "cluster", "%s CRDs absent, wisp install adds them: %s"
                                % (family, ", ".join(n.split(".")[0] for n in missing))))
    if present:
        messages.append(Message("Info", "", "cluster", "%s CRDs present: %s"
                                % (family, ", ".join(n.split(".")[0] for n in present))))
    return messages


async def _permissions(kube: Kube, objects: list[dict[str, Any]], namespace: str) -> list[Message]:
    messages: list[Message] = []
    asked: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        resource = await kube.resource(obj["apiVersion"], obj["kind"])
        if resource is None:
            continue  # a kind its own CRDs define: the CRD permission covers it first
        where = namespace if resource.namespaced else ""
        for verb in ("create", "patch"):
            key = (verb, group, resource.plural, where)
            if key in asked:
                continue
            asked.add(key)
            review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                      "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource.plural,
                                                      **({"namespace": where} if where else {})}}}
            answer = await kube.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=review)
            if not answer.ok:
                messages.append(Message("Error", "WISP0006", describe(obj),
                                        "cannot ask whether you may %s it: %s" % (verb, answer.message())))
            elif not answer.body.get("status", {}).get("allowed"):
                scope = "in namespace %s" % where if where else "cluster-wide"
                messages.append(Message("Error", "WISP0006", "%s %s" % (resource.plural, scope),
                                        "you may not %s %s%s %s, which wisp install does"
                                        % (verb, resource.plural, "." + group if group else "", scope)))
    if not messages:
        messages.append(Message("Info", "", "cluster", "you may create and patch all %d kinds of object wisp "
                                "installs (SelfSubjectAccessReview)" % len({k[2] for k in asked})))
    return messages


async def _conflicts(kube: Kube, namespace: str) -> list[Message]:
    messages: list[Message] = []
    daemonsets = await kube.request("GET", "/apis/apps/v1/daemonsets")
    deployments = await kube.request("GET", "/apis/apps/v1/deployments", query={"labelSelector": "app=istiod"})
    for answer, what in ((daemonsets, "DaemonSets"), (deployments, "Deployments")):
        if not answer.ok:
            messages.append(Message("Warning", "WISP0007", "cluster", "cannot list %s to look for conflicting "
                                    "installs: %s" % (what, answer.message())))
    for item in daemonsets.body.get("items") or []:
        meta = item.get("metadata", {})
        labels = meta.get("labels") or {}
        selector = (item.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
        resource = "DaemonSet %s/%s" % (meta.get("namespace"), meta.get("name"))
        if meta.get("name") == "istio-cni-node" or selector.get("k8s-app") == "istio-cni-node":
            messages.append(Message("Error", "WISP0008", resource, "Istio's CNI node agent is installed: two agents "
                                    "would redirect the same pods; uninstall Istio's ambient data plane first"))
        elif meta.get("name") == "ztunnel" and labels.get(PART_OF) != "wisp":
            messages.append(Message("Error", "WISP0009", resource, "a ztunnel wisp does not own (Istio's?) runs "
                                    "there: two node proxies would claim the same pods"))
        elif meta.get("name") == "ztunnel" and meta.get("namespace") == namespace:
            messages.append(Message("Info", "", "cluster", "wisp is already installed in %s (install upgrades it)"
                                    % namespace))
    for item in deployments.body.get("items") or []:
        meta = item.get("metadata", {})
        messages.append(Message("Warning", "WISP0010", "Deployment %s/%s" % (meta.get("namespace"), meta.get("name")),
                                "istiod runs here: its ambient configuration and wisp's would both serve "
                                "node proxies; keep only one control plane per cluster"))
    if not any(m.level != "Info" for m in messages):
        messages.append(Message("Info", "", "cluster", "no conflicting install (istio-cni, Istio's ztunnel, istiod)"))
    return messages


# -- this machine ----------------------------------------------------------------------------------


def host_checks(conf_dir: Path, bin_dir: Path) -> list[Message]:
    messages = _cni_directories(conf_dir, bin_dir)
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if missing:
        messages.append(Message("Error", "WISP0020", "host", "the node agent runs %s, not found on PATH"
                                % ", ".join(missing)))
    else:
        messages.append(Message("Info", "", "host", "tools present: %s" % ", ".join(HOST_TOOLS)))
    if os.geteuid() != 0:
        messages.append(Message("Warning", "WISP0021", "host", "not root: kernel support (netns, iptables, ipset) "
                                "can only be tried as root, as the node agent runs"))
        return messages
    messages += _kernel(missing)
    return messages


def _cni_directories(conf_dir: Path, bin_dir: Path) -> list[Message]:
    messages: list[Message] = []
    if not conf_dir.is_dir():
        return [Message("Error", "WISP0011", str(conf_dir), "no CNI configuration directory: a node needs a primary "
                        "CNI plugin configured there for wisp to chain after (--cni-conf-dir names another)")]
    if not os.access(conf_dir, os.W_OK):
        messages.append(Message("Error", "WISP0012", str(conf_dir), "not writable: the node agent writes its "
                                "chained entry there"))
    configs = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conf", ".conflist", ".json") and p.is_file())
    if not configs:
        messages.append(Message("Warning", "WISP0013", str(conf_dir), "no CNI configuration yet: the node agent "
                                "waits for the primary plugin's file before it chains"))
    for path in configs:
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            messages.append(Message("Warning", "WISP0014", str(path), "not readable JSON: %s" % exc))
            continue
        plugins = config.get("plugins") if isinstance(config, dict) and "plugins" in config else [config]
        types = [p.get("type") for p in plugins if isinstance(p, dict)]
        if "istio-cni" in types:
            messages.append(Message("Error", "WISP0008", str(path), "Istio's CNI plugin is chained here: uninstall "
                                    "istio-cni first"))
        else:
            messages.append(Message("Info", "", "host", "CNI configuration %s (plugins: %s)"
                                    % (path.name, ", ".join(str(t) for t in types))))
    if not bin_dir.is_dir():
        messages.append(Message("Error", "WISP0015", str(bin_dir), "no CNI binary directory: the node agent installs "
                                "its plugin there (--cni-bin-dir names another)"))
    elif not os.access(bin_dir, os.W_OK):
        messages.append(Message("Error", "WISP0015", str(bin_dir), "not writable: the node agent installs its "
                                "plugin there"))
    return messages


def _in_new_netns(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`argv` in a network namespace made for it and gone with it (the host's is never touched)."""
    return subprocess.run(["unshare", "--net", "--", *argv], input=stdin, capture_output=True, text=True,
                          timeout=30, check=False)


def _kernel(missing: list[str]) -> list[Message]:
    messages: list[Message] = []
    if shutil.which("unshare") is None:
        return [Message("Error", "WISP0022", "host", "unshare (util-linux) is needed to try kernel support")]
    netns = _in_new_netns(["true"])
    if netns.returncode != 0:
        return [Message("Error", "WISP0022", "host", "cannot create a network namespace: %s"
                        % (netns.stderr.strip() or "exit %d" % netns.returncode))]
    messages.append(Message("Info", "", "host", "network namespaces: created and removed one"))
    if "iptables-restore" not in missing:
        rules = _in_new_netns(["iptables-restore"], _IPTABLES_TEST)
        if rules.returncode != 0:
            messages.append(Message("Error", "WISP0023", "host", "the kernel refused the in-pod rule kinds (mangle "
                                    "MARK, nat REDIRECT): %s" % rules.stderr.strip()))
        else:
            version = subprocess.run(["iptables-restore", "--version"], capture_output=True, text=True, check=False)
            messages.append(Message("Info", "", "host", "iptables: mangle MARK and nat REDIRECT rules accepted (%s)"
                                    % (version.stdout.strip() or "iptables-restore")))
    if "ipset" not in missing:
        sets = _in_new_netns(["ipset", "create", "wisp-precheck", "hash:ip", "family", "inet"])
        if sets.returncode != 0:
            messages.append(Message("Error", "WISP0024", "host", "the kernel refused an ipset hash:ip set (probe "
                                    "SNAT needs one): %s" % sets.stderr.strip()))
        else:
            messages.append(Message("Info", "", "host", "ipset: a hash:ip set created"))
    return messages
