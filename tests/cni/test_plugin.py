"""The wisp-cni plugin: CNI commands against a fake node agent on a unix socket, and bad input."""

from __future__ import annotations

import json
import os
import socketserver
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
import trio

from cni import plugin
from cni.cni_endpoint import serve_endpoint
from cni.errors import EnrolmentFailed

PREV_RESULT = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
}
POD_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c0ffee",
    "CNI_NETNS": "/var/run/netns/wisp-tcni-shop-web",
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=c0ffee",
}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.server.requests.append((self.path, json.loads(body)))
        if self.server.delay:
            time.sleep(self.server.delay)
        status, payload = self.server.reply
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


class FakeAgent(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str) -> None:
        self.requests: list[tuple[str, dict]] = []
        self.reply: tuple[int, dict] = (200, {"enrolled": True, "redirection": "enabled"})
        self.delay = 0.0
        super().__init__(path, _Handler)


@pytest.fixture
def sockdir():
    with tempfile.TemporaryDirectory(prefix="wisp-tcni") as d:
        yield d


@pytest.fixture
def agent(sockdir):
    server = FakeAgent(os.path.join(sockdir, "cni.sock"))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def config(sock: str, version: str = "1.0.0", prev: dict | None = PREV_RESULT) -> bytes:
    conf = {"cniVersion": version, "name": "wisp", "type": "wisp-cni", "agent_socket": sock}
    if prev is not None:
        conf["prevResult"] = prev
    return json.dumps(conf).encode()


def invoke(stdin: bytes, **env) -> tuple[int, dict | None]:
    outcome = plugin.run({**POD_ENV, **env}, stdin)
    return outcome.exit_code, json.loads(outcome.stdout) if outcome.stdout else None


def test_add_passes_prev_result_through(agent):
    code, out = invoke(config(agent.server_address))
    assert code == 0
    assert out == PREV_RESULT


def test_add_sends_pod_netns_ips_and_container_to_agent(agent):
    invoke(config(agent.server_address))
    assert agent.requests == [("/v1/cni/add", {
        "netns": "/var/run/netns/wisp-tcni-shop-web", "pod_name": "web", "pod_namespace": "shop",
        "pod_ips": ["10.244.1.5"], "container_id": "c0ffee",
    })]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_add_answers_in_the_requested_version(agent, version):
    prev = {"cniVersion": version, "ips": [{"version": "4", "address": "10.244.1.5/24"}]}
    code, out = invoke(config(agent.server_address, version, prev))
    assert code == 0
    assert out == prev


def test_add_without_prev_result_answers_an_empty_result(agent):
    code, out = invoke(config(agent.server_address, "0.4.0", prev=None))
    assert (code, out) == (0, {"cniVersion": "0.4.0"})
    assert agent.requests[0][1]["pod_ips"] == []


def test_add_succeeds_for_a_pod_the_agent_leaves_out_of_the_mesh(agent):
    agent.reply = (200, {"enrolled": False, "reason": "not labelled for ambient"})
    code, out = invoke(config(agent.server_address))
    assert (code, out) == (0, PREV_RESULT)


def test_add_fails_with_the_agents_message_when_it_refuses(agent):
    agent.reply = (503, {"error": "ztunnel has not taken the pod yet"})
    code, out = invoke(config(agent.server_address))
    assert code != 0
    assert out["code"] == 999
    assert "ztunnel has not taken the pod yet" in out["msg"]
    assert out["cniVersion"] == "1.0.0"


def test_add_asks_to_try_again_when_the_agent_is_down(sockdir):
    code, out = invoke(config(os.path.join(sockdir, "nobody.sock")))
    assert code != 0
    assert out["code"] == 11


def test_add_asks_to_try_again_when_the_agent_is_too_slow(agent, monkeypatch):
    monkeypatch.setattr(plugin, "AGENT_TIMEOUT", 0.2)
    agent.delay = 1.0
    code, out = invoke(config(agent.server_address))
    assert code != 0
    assert out["code"] == 11


@pytest.mark.parametrize("command", ["DEL", "CHECK"])
def test_del_and_check_succeed_without_asking_the_agent(sockdir, command):
    code, out = invoke(config(os.path.join(sockdir, "nobody.sock")), CNI_COMMAND=command)
    assert (code, out) == (0, None)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_version_lists_supported_versions(version):
    code, out = invoke(json.dumps({"cniVersion": version}).encode(), CNI_COMMAND="VERSION")
    assert code == 0
    assert out == {"cniVersion": version, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}


def test_cni_args_parse_key_value_pairs():
    assert plugin.parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=a=b;;K8S_POD_NAMESPACE=ns") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "a=b", "K8S_POD_NAMESPACE": "ns"}


# -- bad input ---------------------------------------------------------------------------------
BAD_INPUTS = [
    # (name, env changes (None = unset), stdin or None for the good one, expected code)
    # Codes from the CNI spec: 1 incompatible version, 4 invalid environment variables,
    # 6 failed to decode content, 7 invalid network configuration.
    ("malformed stdin", {}, b'{"cniVersion": "1.0.0", ', 6),
    ("stdin not an object", {}, b'["1.0.0"]', 7),
    ("missing CNI_ARGS", {"CNI_ARGS": None}, None, 4),
    ("CNI_ARGS without pod name", {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop"}, None, 4),
    ("CNI_ARGS not key=value", {"CNI_ARGS": "K8S_POD_NAME"}, None, 4),
    ("missing CNI_COMMAND", {"CNI_COMMAND": None}, None, 4),
    ("missing CNI_NETNS", {"CNI_NETNS": None}, None, 4),
    ("unsupported version", {}, b'{"cniVersion": "0.2.0", "agent_socket": "/x"}', 1),
    ("missing agent_socket", {}, b'{"cniVersion": "1.0.0"}', 7),
    ("unknown command", {"CNI_COMMAND": "FROB"}, None, 4),
]


@pytest.mark.parametrize(("name", "env", "stdin", "expected"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_cni_error(agent, name, env, stdin, expected):
    full = {k: v for k, v in {**POD_ENV, **env}.items() if v is not None}
    outcome = plugin.run(full, stdin if stdin is not None else config(agent.server_address))
    assert outcome.exit_code != 0
    error = json.loads(outcome.stdout)
    assert error["code"] == expected
    assert error["msg"]
    assert agent.requests == []


async def _run_plugin(env: dict[str, str | None], stdin: bytes) -> tuple[int, str, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    for key, value in {**POD_ENV, **env}.items():
        if value is not None:
            full[key] = value
    result = await trio.run_process([sys.executable, "-m", "cni.plugin"], stdin=stdin, env=full,
                                    capture_stdout=True, capture_stderr=True, check=False,
                                    cwd=os.path.dirname(os.path.dirname(plugin.__file__)))
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_plugin_executable_answers_bad_input_and_the_agent_keeps_answering(sockdir):
    sock = os.path.join(sockdir, "cni.sock")
    calls = []

    async def add(request):
        calls.append(request)
        if request.pod_name == "refused":
            raise EnrolmentFailed("rules could not be installed")
        return {"enrolled": True, "redirection": "enabled"}

    ready = trio.Event()
    ready.set()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_endpoint, sock, add, ready)
        # The executable itself: bad input answers in CNI's terms, with no traceback.
        results = {}

        async def one(name, env, stdin):
            results[name] = await _run_plugin(env, stdin if stdin is not None else config(sock))

        async with trio.open_nursery() as runs:
            for name, env, stdin, expected in BAD_INPUTS[:2] + BAD_INPUTS[5:6] + BAD_INPUTS[-1:]:
                runs.start_soon(one, name, env, stdin)
        for name, (code, out, err) in results.items():
            assert code != 0, name
            assert "Traceback" not in err, name
            assert json.loads(out)["msg"], name
        code, out, err = await _run_plugin({}, config(sock))
        assert (code, json.loads(out)) == (0, PREV_RESULT)
        assert [c.pod_name for c in calls] == ["web"]
        code, out, err = await _run_plugin({"CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=refused"}, config(sock))
        assert code != 0 and "Traceback" not in err
        assert json.loads(out)["code"] == 999
        assert "rules could not be installed" in json.loads(out)["msg"]
        nursery.cancel_scope.cancel()
    assert not os.path.exists(sock)
