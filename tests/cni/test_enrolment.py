"""The node agent end to end on one node: views in, rules + ZDS + probe set + annotation out."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import asynccontextmanager

import pytest
import trio

from cni import iptables, plugin
from cni.agent import AgentConfig, NodeAgent
from cni.podnetns import LocalNetnsLocator
from tests.support.fake_ztunnel import FakeZtunnel
from tests.support.netns import netns_run, random_prefix, scratch_netns
from tests.support.pod_source import MemoryPodSource
from tests.support.wait import wait_until
from wisp.zds.protocol import Add, Del, Keep, SnapshotSent, WorkloadInfo

pytestmark = pytest.mark.root

UID = "0b5d7c1e-web"
POD_IP = "10.244.1.5"
INFO = WorkloadInfo("web", "shop", "web-sa")


def namespace(ambient: bool) -> dict:
    labels = {"istio.io/dataplane-mode": "ambient"} if ambient else {}
    return {"metadata": {"name": "shop", "labels": labels}}


def pod(*, annotations: dict | None = None, labels: dict | None = None, name: str = "web", uid: str = UID,
        ip: str = POD_IP) -> dict:
    return {
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels or {},
                     "annotations": annotations or {}},
        "spec": {"nodeName": "node1", "serviceAccountName": "web-sa"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


class Node:
    """One node's worth of scratch state: pod and node netns, sockets, a pod source."""

    def __init__(self, prefix: str, pod_netns: str, node_netns: str, sockdir: str) -> None:
        self.prefix = prefix
        self.pod_netns = pod_netns
        self.node_netns = node_netns
        self.zds_path = os.path.join(sockdir, "node1", "ztunnel.sock")
        self.cni_path = os.path.join(sockdir, "node1", "cni.sock")
        self.source = MemoryPodSource()

    def config(self) -> AgentConfig:
        return AgentConfig(node="node1", zds_socket=self.zds_path, cni_socket=self.cni_path,
                           host_netns=self.node_netns, ack_timeout=1.0, retry_interval=0.1, pod_wait=2.0)

    @asynccontextmanager
    async def agent(self):
        agent = NodeAgent(self.config(), self.source, LocalNetnsLocator(self.prefix))
        async with trio.open_nursery() as nursery:
            with trio.fail_after(5):
                await nursery.start(agent.run)
            try:
                yield agent
            finally:
                nursery.cancel_scope.cancel()

    @asynccontextmanager
    async def ztunnel(self, answer=None):
        fake = FakeZtunnel(self.zds_path, answer)
        async with trio.open_nursery() as nursery:
            await nursery.start(fake.serve)
            try:
                yield fake
            finally:
                fake.close()
                nursery.cancel_scope.cancel()

    def annotation(self) -> str | None:
        return self.source.annotation("shop", "web")

    def rules(self) -> str:
        return iptables.canonical(netns_run(self.pod_netns, "iptables-save"))

    def probe_set(self) -> str:
        return netns_run(self.node_netns, "ipset", "list", "istio-inpod-probes-v4")


@pytest.fixture
def node():
    prefix = random_prefix()
    sockdir = tempfile.mkdtemp(prefix="wisp-tcni")
    try:
        with scratch_netns(f"{prefix}-shop-web") as pod_ns, scratch_netns(f"{prefix}-node1") as node_ns:
            yield Node(prefix, pod_ns, node_ns, sockdir)
    finally:
        shutil.rmtree(sockdir, ignore_errors=True)


def adds(fake: FakeZtunnel) -> list:
    return [r for r in fake.received if isinstance(r.message, Add)]


async def test_labelling_the_namespace_enrols_running_pods(node):
    node.source.show([namespace(False)], [pod()])
    async with node.agent(), node.ztunnel() as fake:
        await fake.wait_for(lambda r: any(isinstance(x.message, SnapshotSent) for x in r))
        assert "ISTIO" not in node.rules()
        node.source.show(namespaces=[namespace(True)])
        await wait_until(lambda: node.annotation() == "enabled")
        assert "-A PREROUTING -j ISTIO_PRERT" in node.rules()
        assert [r.message for r in adds(fake)] == [Add(UID, INFO)]
        st = os.stat(node.pod_netns)
        assert (adds(fake)[0].netns.dev, adds(fake)[0].netns.ino) == (st.st_dev, st.st_ino)
        assert POD_IP in node.probe_set()
        assert node.source.writes == [("shop", "web", "enabled")]


async def test_removing_the_label_takes_pods_out_of_the_mesh(node):
    node.source.show([namespace(True)], [pod()])
    async with node.ztunnel() as fake, node.agent():
        await wait_until(lambda: node.annotation() == "enabled")
        node.source.show(namespaces=[namespace(False)])
        await wait_until(lambda: node.annotation() is None)
        assert fake.messages()[-1] == Del(UID)
        assert node.rules() == ""
        assert netns_run(node.pod_netns, "ip", "rule", "list").count("fwmark") == 0
        assert POD_IP not in node.probe_set()
        # `pending` first when the agent's start-up pass enrols the pod before ztunnel's hello.
        writes = node.source.writes
        assert writes[-2:] == [("shop", "web", "enabled"), ("shop", "web", None)]
        assert writes[:-2] in ([], [("shop", "web", "pending")])


async def test_probe_set_follows_a_pod_ip_reported_after_enrolment(node):
    without_ip = pod()
    without_ip["status"] = {"phase": "Pending"}
    node.source.show([namespace(True)], [without_ip])
    async with node.ztunnel(), node.agent():
        await wait_until(lambda: node.annotation() == "enabled")
        assert POD_IP not in node.probe_set()
        node.source.show(pods=[pod(annotations={"ambient.istio.io/redirection": "enabled"})])
        await wait_until(lambda: POD_IP in node.probe_set())


async def test_pod_label_none_beats_the_namespace_label(node):
    node.source.show([namespace(True)], [pod(labels={"istio.io/dataplane-mode": "none"})])
    async with node.ztunnel() as fake, node.agent() as agent:
        await agent.enroller.reconcile(node.source.view)
        assert adds(fake) == [] and node.rules() == "" and node.annotation() is None


async def test_pod_stays_pending_until_ztunnel_acks(node):
    answers = iter(["proxy failed to start"])
    node.source.show([namespace(True)], [pod()])
    async with node.ztunnel(answer=lambda m: next(answers, "") if isinstance(m, Add) else "") as fake, node.agent():
        await wait_until(lambda: node.annotation() == "enabled")
        assert node.source.writes == [("shop", "web", "pending"), ("shop", "web", "enabled")]
        assert len(adds(fake)) == 2


async def test_deleted_pod_leaves_ztunnel(node):
    node.source.show([namespace(True)], [pod()])
    async with node.ztunnel() as fake, node.agent() as agent:
        await wait_until(lambda: node.annotation() == "enabled")
        node.source.show(pods=[])
        await wait_until(lambda: fake.messages()[-1] == Del(UID))
        await wait_until(lambda: agent.enroller.enrolled == {})
        assert node.rules() == ""


async def test_restarted_agent_keeps_pods_enrolled_without_duplicating_rules(node):
    node.source.show([namespace(True)], [pod()])
    async with node.ztunnel(), node.agent():
        await wait_until(lambda: node.annotation() == "enabled")
    before = (node.rules(), netns_run(node.pod_netns, "ip", "rule", "list"),
              iptables.canonical(netns_run(node.node_netns, "iptables-save")))
    writes = list(node.source.writes)
    async with node.agent(), node.ztunnel() as fake:
        await fake.wait_for(lambda r: any(isinstance(x.message, SnapshotSent) for x in r))
        # The pod is in the new ztunnel's snapshot, before SnapshotSent.
        assert [r.message for r in fake.received] == [Add(UID, INFO), SnapshotSent()]
        after = (node.rules(), netns_run(node.pod_netns, "ip", "rule", "list"),
                 iptables.canonical(netns_run(node.node_netns, "iptables-save")))
        assert after == before
        assert POD_IP in node.probe_set()
        assert node.annotation() == "enabled"
        assert node.source.writes == writes  # nothing rewritten, nothing removed


async def test_restarted_agent_tells_ztunnel_to_keep_pods_whose_netns_it_cannot_find(node):
    gone = pod(name="old", uid="uid-old", ip="10.244.1.9", annotations={"ambient.istio.io/redirection": "enabled"})
    node.source.show([namespace(True)], [gone])
    async with node.agent(), node.ztunnel() as fake:
        await fake.wait_for(lambda r: any(isinstance(x.message, SnapshotSent) for x in r))
        assert fake.messages()[0] == Keep("uid-old")


async def _plugin_add(node: Node, name: str = "web") -> tuple[int, dict]:
    config = json.dumps({"cniVersion": "1.0.0", "name": "wisp", "type": "wisp-cni",
                         "agent_socket": node.cni_path,
                         "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": f"{POD_IP}/24"}]}}).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c0ffee", "CNI_NETNS": node.pod_netns, "CNI_IFNAME": "eth0",
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME={name}"}
    outcome = await trio.to_thread.run_sync(plugin.run, env, config)
    return outcome.exit_code, json.loads(outcome.stdout)


async def test_cni_add_enrols_a_new_pod_before_answering(node):
    node.source.show([namespace(True)], [])
    async with node.ztunnel() as fake, node.agent() as agent:
        async with trio.open_nursery() as nursery:
            result = {}

            async def add():
                result["add"] = await _plugin_add(node)

            # The runtime calls CNI before the pod source shows the pod: the add waits for the
            # next view, next to follow_views, which always does (cni/enrolment.py).
            nursery.start_soon(add)
            await wait_until(lambda: agent.enroller._view_changed.statistics().tasks_waiting >= 2,
                             what="the CNI add waiting for the pod")
            node.source.show(pods=[pod()])
        code, out = result["add"]
        assert code == 0, out
        assert out["ips"] == [{"address": f"{POD_IP}/24"}]
        assert "-A PREROUTING -j ISTIO_PRERT" in node.rules()
        assert Add(UID, INFO) in fake.messages()
        assert node.annotation() == "enabled"


async def test_cni_add_for_a_pod_outside_the_mesh_installs_nothing(node):
    node.source.show([namespace(False)], [pod()])
    async with node.ztunnel() as fake, node.agent():
        code, _ = await _plugin_add(node)
        assert code == 0
        assert node.rules() == "" and adds(fake) == [] and node.annotation() is None


async def test_cni_add_fails_until_ztunnel_takes_the_pod(node):
    node.source.show([namespace(True)], [pod()])
    async with node.agent():
        code, out = await _plugin_add(node)
        assert code != 0 and out["code"] == 999
        assert "ztunnel" in out["msg"]
        assert node.annotation() == "pending"
        assert "-A PREROUTING -j ISTIO_PRERT" in node.rules()
        async with node.ztunnel() as fake:
            await wait_until(lambda: node.annotation() == "enabled")
            assert fake.messages()[0] == Add(UID, INFO)
            code, _ = await _plugin_add(node)  # the runtime's retry now succeeds
            assert code == 0


async def test_cni_add_for_an_unknown_pod_fails_so_the_runtime_retries(node):
    node.source.show([namespace(True)], [])
    async with node.ztunnel(), node.agent():
        code, out = await _plugin_add(node, name="nobody")
        assert code != 0 and "not known" in out["msg"]
