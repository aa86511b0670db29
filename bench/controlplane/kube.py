"""`python -m bench.controlplane --kube`: the watch path, against the test bed's real API server.

What it measures (10,000 pods, 1,000 services, 500 policies: the scenario of scenario.py):
1. The cluster is written to the test bed's kube-apiserver (runtime/testbed, docs/testbed.md):
   Namespaces, ServiceAccounts, Services, Gateways, AuthorizationPolicies, the mesh-wide
   PeerAuthentication and the Pods, each Pod with ``nodeName`` set to one of ``nodes`` registered
   simulated nodes, so nothing is scheduled; the test bed's kubelet stand-in (runtime/testbed/nodes.py)
   marks each pod Running with an IP from its node's range. Written concurrently over HTTP/2;
   timed, but not a target.
2. The operator's Kubernetes mode, in its own spawned process (so its peak RSS is its own):
   ``KubeSource`` (paged list, then watch) feeding the ``ObjectStore``, the ``Controller`` and the
   ``Distributor``, as ``wisp-operator --kubeconfig`` runs them (no HTTP server, no status writer:
   not what is measured). Timed from start to the first model with every pod's workload published.
3. A burst of ``burst`` pod changes: merge patches of one label (``version: v2``, which changes
   the workload's canonical revision), ``concurrency`` in flight. For each pod, the lag runs to
   the first published model holding the changed workload, from when its patch was sent and from
   when it was answered (the write is committed between the two; with 64 in flight the answer
   can reach this process after the watch event reached the operator); the watch event's arrival
   in the store splits it. "Falling behind" would show as lags that grow through the burst; the
   last publication against the last answered write says how far behind the operator ended.

Clocks: CLOCK_MONOTONIC, shared by the processes on this machine.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from . import kube_operator
from .report import percentile
from .scenario import Scale, cluster as scenario_cluster

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "crds"
CHANGED_LABEL = ("version", "v2")


class KubeBenchError(RuntimeError):
    """The test bed or the operator process failed; the message says which and where."""


@dataclass(frozen=True, slots=True)
class KubePlan:
    scale: Scale = field(default_factory=Scale)
    # Simulated nodes: the test bed gives each a /24 for pod IPs, so at least pods / 250.
    nodes: int = 50
    burst: int = 1000
    concurrency: int = 64

    def describe(self) -> dict:
        return asdict(self)


def pod_node(p: int, plan: KubePlan) -> str:
    return f"node{p % plan.nodes + 1}"


def manifests(plan: KubePlan) -> dict[str, list[dict[str, Any]]]:
    """The scenario's objects as the API server takes them, by creation wave."""
    waves: dict[str, list[dict[str, Any]]] = {"namespaces": [], "accounts": [], "objects": [], "pods": []}
    accounts: set[tuple[str, str]] = set()
    pod_number = 0
    for obj in scenario_cluster(plan.scale):
        kind, meta = obj["kind"], obj["metadata"]
        if kind == "Namespace":
            waves["namespaces"].append(obj)
        elif kind == "Deployment":
            continue  # the waypoint's Deployment: the model reads no Deployment
        elif kind == "Service":
            spec = {k: v for k, v in obj["spec"].items() if k != "clusterIP"}  # allocated by the API server
            waves["objects"].append({**obj, "spec": spec})
        elif kind == "Pod":
            spec = dict(obj["spec"])
            spec["nodeName"] = pod_node(pod_number, plan)
            spec["containers"] = [{**c, "image": "registry.invalid/app:1"} for c in spec["containers"]]
            pod_number += 1
            accounts.add((meta["namespace"], spec["serviceAccountName"]))
            # No ownerReferences: the API server wants the owner's uid, and the garbage collector
            # would delete pods whose ReplicaSet does not exist (workloads are named after the pod).
            meta = {k: v for k, v in meta.items() if k != "ownerReferences"}
            waves["pods"].append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        else:
            if meta.get("namespace") == "istio-system" and not any(
                    n["metadata"]["name"] == "istio-system" for n in waves["namespaces"]):
                waves["namespaces"].append({"apiVersion": "v1", "kind": "Namespace",
                                            "metadata": {"name": "istio-system"}})
            waves["objects"].append(obj)
    waves["accounts"] = [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}
                         for ns, name in sorted(accounts)]
    return waves


_PLURALS = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Service": "services", "Pod": "pods",
            "Gateway": "gateways", "AuthorizationPolicy": "authorizationpolicies",
            "PeerAuthentication": "peerauthentications"}


def collection_path(obj: dict[str, Any]) -> str:
    api_version, kind = obj["apiVersion"], obj["kind"]
    base = "/api/v1" if api_version == "v1" else "/apis/" + api_version
    namespace = obj["metadata"].get("namespace")
    if kind == "Namespace" or not namespace:
        return f"{base}/{_PLURALS[kind]}"
    return f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"


async def _each(client: httpx.AsyncClient, requests: list[tuple[str, str, Any, dict]], concurrency: int) -> None:
    """Send every (method, path, json, headers) with ``concurrency`` in flight; any failure raises."""
    queue = iter(requests)
    failures: list[str] = []

    async def worker() -> None:
        for method, path, body, headers in queue:
            for attempt in range(5):
                response = await client.request(method, path, json=body, headers=headers)
                if response.status_code != 429 and response.status_code < 500:
                    break
                await asyncio.sleep(0.2 * (attempt + 1))  # the API server sheds load: take a breath
            if response.status_code >= 300 and response.status_code != 409:
                failures.append(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
                return

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if failures:
        raise KubeBenchError("the API server refused a write: " + failures[0])


def _client(bed) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=bed.server, verify=bed.ssl_context(), http2=True,
                             timeout=httpx.Timeout(60.0), limits=httpx.Limits(max_connections=4))


async def _populate(bed, plan: KubePlan, progress) -> dict[str, float]:
    waves = manifests(plan)
    seconds = {}
    async with _client(bed) as client:
        for wave, objects in waves.items():
            started = time.monotonic()
            await _each(client, [("POST", collection_path(o), o, {}) for o in objects], plan.concurrency)
            seconds[wave] = time.monotonic() - started
            progress(f"kube: created {len(objects)} {wave} in {seconds[wave]:.1f} s")
    return seconds


async def _count_running(bed, expected: int, timeout: float, progress) -> float:
    """Wait until the kubelet stand-in has every pod Running with an IP; returns the wait."""
    started = time.monotonic()
    async with _client(bed) as client:
        while True:
            running, token = 0, None
            while True:
                params = {"limit": "2000", **({"continue": token} if token else {})}
                body = (await client.get("/api/v1/pods", params=params)).json()
                running += sum(1 for p in body.get("items", ())
                               if p.get("status", {}).get("phase") == "Running" and p["status"].get("podIP"))
                token = body.get("metadata", {}).get("continue")
                if not token:
                    break
            if running >= expected:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise KubeBenchError(f"only {running} of {expected} pods Running after {timeout:.0f} s")
            progress(f"kube: {running} of {expected} pods Running")
            await asyncio.sleep(5)


def _summary_ms(values: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(values, 50), "p90_ms": percentile(values, 90), "p99_ms": percentile(values, 99),
            "max_ms": max(values), "mean_ms": statistics.fmean(values), "count": len(values)}


def run(plan: KubePlan, progress: Callable[[str], None] = print) -> dict[str, Any]:
    from runtime.testbed import build
    from runtime.testbed.cluster import start
    from runtime.testbed.nodes import Nodes

    if plan.scale.pods > plan.nodes * 250:
        raise KubeBenchError(f"{plan.scale.pods} pods need at least {plan.scale.pods // 250 + 1} nodes")
    try:
        binaries = build.installed()
    except build.MissingBinaries as exc:
        raise KubeBenchError(str(exc)) from None
    results: dict[str, Any] = {}
    started = time.monotonic()
    bed = start(binaries, timeout=120)
    try:
        results["testbed_start_s"] = time.monotonic() - started
        nodes = Nodes(bed, plan.nodes, lease_interval=10.0).start()
        try:
            progress(f"kube: test bed up in {results['testbed_start_s']:.1f} s, {plan.nodes} nodes registered")
            bed.kubectl("apply", "--server-side", "-f", str(CRDS))
            bed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(CRDS))
            results["create_s"] = asyncio.run(_populate(bed, plan, progress))
            results["running_wait_s"] = asyncio.run(_count_running(bed, plan.scale.pods, 900, progress))
            progress("kube: every pod Running; starting the operator process")
            results.update(_operator_phase(bed, plan, progress))
        finally:
            nodes.stop()
    finally:
        bed.stop()
    return results


def _operator_phase(bed, plan: KubePlan, progress) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    process = ctx.Process(target=kube_operator.main, args=(child, str(bed.kubeconfig), plan.scale.pods),
                          name="bench-kube-operator", daemon=True)
    t_start = time.monotonic_ns()
    process.start()
    child.close()
    try:
        synced = _receive(conn, process, 300, "the operator to list and publish")
        synced["process_start_to_published_s"] = (synced["t_published"] - t_start) / 1e9
        progress(f"kube: operator listed in {synced['listed_s']:.2f} s and published {synced['workloads']} "
                 f"workloads {synced['published_s']:.2f} s after its source started")
        pods = manifests(plan)["pods"]
        # Spread over namespaces and nodes: every 10th pod.
        step = max(1, len(pods) // plan.burst)
        chosen = [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods[::step][:plan.burst]]
        conn.send({"cmd": "follow", "pods": chosen, "label": CHANGED_LABEL})
        _receive(conn, process, 30, "the operator to take the list of pods")
        key, value = CHANGED_LABEL
        t_burst = time.monotonic_ns()
        sent_at: dict[tuple[str, str], int] = {}
        done_at: dict[tuple[str, str], int] = {}
        ordered: list[tuple[str, str]] = []

        async def burst_stamped() -> None:
            async with _client(bed) as client:
                semaphore = asyncio.Semaphore(plan.concurrency)

                async def one(pod: tuple[str, str]) -> None:
                    async with semaphore:
                        sent_at[pod] = time.monotonic_ns()
                        await _each(client, [("PATCH", f"/api/v1/namespaces/{pod[0]}/pods/{pod[1]}",
                                              {"metadata": {"labels": {key: value}}},
                                              {"Content-Type": "application/merge-patch+json"})], 1)
                        done_at[pod] = time.monotonic_ns()
                        ordered.append(pod)

                await asyncio.gather(*(one(pod) for pod in chosen))

        asyncio.run(burst_stamped())
        t_written = time.monotonic_ns()
        progress(f"kube: {len(chosen)} pod patches answered in {(t_written - t_burst) / 1e9:.2f} s")
        conn.send({"cmd": "report", "timeout": 60.0})
        report = _receive(conn, process, 90, "the operator to publish every change")
        conn.send({"cmd": "stop"})
        published, applied = report["published"], report["applied"]
        published_at = {tuple(p): t for p, t in published}
        missing = [pod for pod in chosen if pod not in published_at]
        applied_at = {tuple(p): t for p, t in applied}
        lags = [(published_at[p] - done_at[p]) / 1e6 for p in ordered if p in published_at]
        lags_sent = [(published_at[p] - sent_at[p]) / 1e6 for p in ordered if p in published_at]
        to_store_sent = [(applied_at[p] - sent_at[p]) / 1e6 for p in ordered if p in applied_at]
        store_to_published = [(published_at[p] - applied_at[p]) / 1e6 for p in ordered
                              if p in published_at and p in applied_at]
        quarter = max(1, len(lags) // 4)
        return {
            "synced": synced,
            "burst": {
                "changes": len(chosen),
                "writes_s": (t_written - t_burst) / 1e9,
                "writes_per_s": len(chosen) / ((t_written - t_burst) / 1e9),
                "missing": len(missing),
                "lag": _summary_ms(lags),
                "lag_from_sent": _summary_ms(lags_sent),
                "patch_sent_to_store": _summary_ms(to_store_sent),
                "lag_first_quarter": _summary_ms(lags[:quarter]),
                "lag_last_quarter": _summary_ms(lags[-quarter:]),
                "store_to_published": _summary_ms(store_to_published),
                "last_published_after_last_write_ms": (max(published_at.values()) - t_written) / 1e6,
                "publications": report["publications"],
                "patches": report["patches"],
                "full_builds": report["full_builds"],
                "rebuild_causes": report["rebuild_causes"],
                "operator_cpu_s": report["cpu_s"],
            },
            "memory": report["memory"],
        }
    finally:
        conn.close()
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()


def _receive(conn: Connection, process, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while not conn.poll(0.5):
        if not process.is_alive():
            raise KubeBenchError(f"the operator process exited ({process.exitcode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise KubeBenchError(f"timed out after {timeout:.0f} s waiting for {what}")
    message = conn.recv()
    if "error" in message:
        raise KubeBenchError(f"operator process: {message['error']}")
    return message


# --- figures -------------------------------------------------------------------------------------

PEAK_RSS_MB = 300.0


def verdicts(results: dict[str, Any]) -> dict[str, bool]:
    """The targets: the operator's peak RSS, and the burst kept up with (every change published,
    the last quarter's lags not grown past twice the first quarter's, or 50 ms)."""
    burst = results["burst"]
    first, last = burst["lag_first_quarter"], burst["lag_last_quarter"]
    return {"peak_rss": results["memory"]["peak_rss_mib"] * 2**20 / 1e6 <= PEAK_RSS_MB,
            "kept_up": burst["missing"] == 0 and last["p50_ms"] <= 2 * max(first["p50_ms"], 50.0)}


def table(results: dict[str, Any], plan: dict[str, Any]) -> str:
    synced, burst, memory_end = results["synced"], results["burst"], results["memory"]
    peak_mb = memory_end["peak_rss_mib"] * 2**20 / 1e6
    lag, first, last = burst["lag"], burst["lag_first_quarter"], burst["lag_last_quarter"]
    verdict = {k: "PASS" if v else "MISS" for k, v in verdicts(results).items()}
    lines = ["| measure | value | target | |", "| --- | ---: | ---: | --- |",
             f"| operator peak RSS (VmHWM) after list and burst | {peak_mb:.0f} MB | ≤ {PEAK_RSS_MB:.0f} MB | "
             f"{verdict['peak_rss']} |",
             f"| burst of {burst['changes']:,} pod changes: every change published, lag not growing | "
             f"missed {burst['missing']}, last-quarter p50 {last['p50_ms']:.0f} ms vs first {first['p50_ms']:.0f} ms | "
             f"kept up | {verdict['kept_up']} |",
             "", "| detail | value |", "| --- | ---: |"]
    create = results["create_s"]
    detail = [
        ("cluster written to the API server", f"{plan['scale']['pods']:,} pods on {plan['nodes']} simulated nodes, "
                                              f"{plan['scale']['services']:,} services, "
                                              f"{plan['scale']['policies']:,} policies; "
                                              + ", ".join(f"{k} {v:.1f} s" for k, v in create.items())
                                              + f"; every pod Running {results['running_wait_s']:.1f} s later"),
        ("operator: every kind listed (paged, 500 a page), from the source's start", f"{synced['listed_s']:.2f} s"),
        ("operator: first model with every workload published, from the source's start",
         f"{synced['published_s']:.2f} s ({synced['workloads']:,} workloads, {synced['services']:,} services, "
         f"{synced['authorizations']:,} authorizations)"),
        ("operator process start (spawn, imports, connect) → published", f"{synced['process_start_to_published_s']:.2f} s"),
        ("operator RSS after the first model (peak so far)",
         f"{synced['memory']['rss_mib']:.0f} ({synced['memory']['peak_rss_mib']:.0f}) MiB"),
        ("burst: pod label patches answered", f"{burst['changes']:,} in {burst['writes_s']:.2f} s "
                                              f"({burst['writes_per_s']:.0f}/s, {plan['concurrency']} in flight)"),
        ("lag, patch answered → published: p50 / p90 / p99 / max",
         f"{lag['p50_ms']:.0f} / {lag['p90_ms']:.0f} / {lag['p99_ms']:.0f} / {lag['max_ms']:.0f} ms"),
        ("lag, patch sent → published: p50 / p90 / p99 / max",
         f"{burst['lag_from_sent']['p50_ms']:.0f} / {burst['lag_from_sent']['p90_ms']:.0f} / "
         f"{burst['lag_from_sent']['p99_ms']:.0f} / {burst['lag_from_sent']['max_ms']:.0f} ms"),
        ("lag, first / last quarter of the burst: p50 / p99",
         f"{first['p50_ms']:.0f} / {first['p99_ms']:.0f} ms; {last['p50_ms']:.0f} / {last['p99_ms']:.0f} ms"),
        ("stage: patch sent → watch event in the store, p50 / p99",
         f"{burst['patch_sent_to_store']['p50_ms']:.0f} / {burst['patch_sent_to_store']['p99_ms']:.0f} ms"),
        ("stage: in the store → published, p50 / p99",
         f"{burst['store_to_published']['p50_ms']:.0f} / {burst['store_to_published']['p99_ms']:.0f} ms"),
        ("last change published after the last patch was answered", f"{burst['last_published_after_last_write_ms']:.0f} ms"),
        ("reconciliations during the burst: publications / patched / full builds",
         f"{burst['publications']} / {burst['patches']} / {burst['full_builds']}"),
        ("full builds by what had changed", ", ".join(f"{k}: {v}" for k, v in burst["rebuild_causes"].items())
         or "none"),
        ("operator CPU during the burst", f"{burst['operator_cpu_s']:.2f} s"),
        ("operator RSS at the end (peak)", f"{memory_end['rss_mib']:.0f} ({memory_end['peak_rss_mib']:.0f}) MiB"),
    ]
    lines += [f"| {k} | {v} |" for k, v in detail]
    return "\n".join(lines)

