"""Hostile peers against a running ztunnel (issue 10, part 7), each attack a test.

The lab of test_netns.py with one pod more: `a` (10.77.0.2, enrolled) is a healthy client,
`b` (10.77.0.3, enrolled) runs the echo app on 8080, `c` (10.77.0.4, not enrolled) attacks b's
15006/15008 straight and holds a certificate from the mesh CA for HBONE, `d` (10.77.0.5,
enrolled) floods through its own 15001 capture. ztunnel runs as a process (`python -m
ztunnel.main`, one worker) started with a low file limit and without CAP_SYS_RESOURCE, so its
descriptors and memory are its own to read from /proc; the control plane, the fake node agent
and the echo app run in this process.

Every test checks three things while and after it attacks: the process is alive, its memory
(VmRSS, and VmHWM for the peak) stays bounded, and pod a keeps getting answers through b.
Figures are printed (`pytest -s`) and summarised in docs/hbone.md, "Hostile peers".
"""

from __future__ import annotations

import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import hpack
import pytest
import trio

from wisp import netns
from wisp.h2 import frames
from wisp.h2.testing import Frame, RawPeer
from wisp.hbone.tls import make_context
from wisp.identity import SpiffeId
from wisp.model import ModelSnapshot
from wisp.zds.protocol import SnapshotSent
from wisp_operator.cluster import ClusterState
from wisp.engine.accept import DEFAULT_PER_SOURCE
from ztunnel.main import parse_args

from tests.controlplane.test_service import control_plane
from .test_netns import (
    APP_PORT,
    IN_POD_RULES,
    Agent,
    Lab,
    connect_from,
    echo_app,
    pod,
    read_line,
    receive_exactly,
    sh,
    workload,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

NODE = "node-1"
A_IP, B_IP, C_IP, D_IP = "10.77.0.2", "10.77.0.3", "10.77.0.4", "10.77.0.5"
PODS = {"a": A_IP, "b": B_IP, "c": C_IP, "d": D_IP}
ENROLLED = ("a", "b", "d")
CLIENT = workload("client-1", "front", A_IP, "client")
WEB = workload("web-1", "shop", B_IP, "web")
MALLORY = workload("mallory-1", "mallory", D_IP, "mallory")
CLUSTER = ClusterState.of([pod("front", "client-1", "client", A_IP), pod("shop", "web-1", "web", B_IP),
                           pod("mallory", "mallory-1", "mallory", D_IP)])

# ztunnel's file limit: it starts at SOFT and raises itself to HARD (without CAP_SYS_RESOURCE it
# can go no further), and a per-source bound well under it, as a node would set both.
SOFT_FILES, HARD_FILES = 1024, 2048
PER_SOURCE = 200
FLOOD = 10_500
# Memory a test may add to ztunnel's peak RSS. The floods of the issue took it up by 900 MB.
RSS_SLACK_KB = 40 * 1024


@pytest.fixture(scope="module")
def lab():
    lab = Lab(f"wisp-thp{os.urandom(3).hex()}")
    made: list[str] = []
    try:
        for name in ("br", *PODS):
            sh("ip", "netns", "add", lab.ns(name))
            made.append(lab.ns(name))
        br = lab.ns("br")
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        for name, ip in PODS.items():
            ns = lab.ns(name)
            sh("ip", "-n", br, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", br, "link", "set", f"v{name}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "dev", "eth0")
        for name in ENROLLED:
            ns = lab.ns(name)
            sh("ip", "netns", "exec", ns, "iptables-restore", "--noflush", stdin=IN_POD_RULES)
            sh("ip", "-n", ns, "rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
            sh("ip", "-n", ns, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        yield lab
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# -- the node: ztunnel as a process ------------------------------------------------------------------
@dataclass
class Node:
    lab: Lab
    proc: subprocess.Popen
    log_path: str
    app_peers: list
    ca: object

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status_kb(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss_kb(self) -> int:
        return self.status_kb("VmRSS")

    def peak_kb(self) -> int:
        return self.status_kb("VmHWM")

    def descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def file_limit(self) -> tuple[int, int]:
        with open(f"/proc/{self.pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft, hard = line.split()[3:5]
                    return int(soft), int(hard)
        raise KeyError("Max open files")

    def log_size(self) -> int:
        return os.path.getsize(self.log_path)

    def log_lines(self, since: int = 0, *, exclude: str | None = None) -> list[bytes]:
        """Lines logged after offset `since`, without those containing `exclude`."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            lines = f.read().splitlines()
        return [line for line in lines if exclude is None or exclude.encode() not in line]

    def netns_fd(self, name: str) -> int:
        return netns.open_netns(netns.path_of(self.lab.ns(name)))


def ztunnel_command(tmp_path, plane_address: str, *extra: str) -> list[str]:
    # prlimit sets the starting limit; setpriv drops CAP_SYS_RESOURCE so the hard limit holds,
    # as in a container that was not given it.
    return [
        "prlimit", f"--nofile={SOFT_FILES}:{HARD_FILES}", "--",
        "setpriv", "--bounding-set", "-sys_resource", "--",
        sys.executable, "-m", "ztunnel.main", "--node", NODE, "--workers", "1",
        "--zds-socket", str(tmp_path / "ztunnel.sock"), "--control-plane", plane_address,
        "--state-dir", str(tmp_path), "--admin-address", "127.0.0.1:0", "--metrics-address", "127.0.0.1:0",
        "--readiness-address", "127.0.0.1:0", "--drain-seconds", "0.5", "--log-json",
        "--max-connections-per-source", str(PER_SOURCE), *extra,
    ]


@asynccontextmanager
async def running_node(lab: Lab, ca, tmp_path):
    async with control_plane(ca, CLUSTER) as plane:
        plane.publish(ModelSnapshot.of([CLIENT, WEB, MALLORY]))
        (tmp_path / "tokens").mkdir()
        (tmp_path / "tokens" / f"ztunnel-{NODE}").write_text(plane.credentials.issue_ztunnel(NODE))
        (tmp_path / "root-cert.pem").write_bytes(plane.roots)
        agent = Agent(str(tmp_path / "ztunnel.sock"))
        log_path = str(tmp_path / "ztunnel.log")
        peers: list = []
        proc = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(echo_app, lab, peers)
                with open(log_path, "wb") as log_file:
                    proc = subprocess.Popen(ztunnel_command(tmp_path, plane.address), stdout=log_file,
                                            stderr=log_file)
                await agent.accept()
                for name, w in (("a", CLIENT), ("b", WEB), ("d", MALLORY)):
                    assert (await agent.add(lab, name, w)).ok
                assert (await agent.request(SnapshotSent())).ok
                node = Node(lab, proc, log_path, peers, ca)
                with trio.fail_after(30):
                    while True:  # certificates are fetched on first use
                        try:
                            await healthy_exchange(lab)
                            break
                        except (OSError, EOFError, trio.TooSlowError):
                            assert node.alive(), "ztunnel exited while starting"
                            await trio.sleep(0.1)
                yield node
                nursery.cancel_scope.cancel()
        finally:
            agent.close()
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await trio.to_thread.run_sync(proc.wait, 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
async def node(lab, ca, tmp_path):
    async with running_node(lab, ca, tmp_path) as running:
        yield running


# -- the healthy client -------------------------------------------------------------------------------
async def healthy_exchange(lab: Lab) -> None:
    """One new connection from pod a to b's app through both proxies: the app's line, an echo."""
    stream = await connect_from(lab, "a", (B_IP, APP_PORT))
    try:
        with trio.fail_after(5):
            line = await read_line(stream)
            assert line == A_IP, f"the app saw the connection come from {line!r}"
            await stream.send_all(b"still served")
            assert await receive_exactly(stream, 12) == b"still served"
    finally:
        await stream.aclose()


@dataclass
class Healthy:
    """Pod a connecting to b again and again while an attack runs; every failure is kept."""

    lab: Lab
    answered: int = 0
    failures: list[str] = field(default_factory=list)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            try:
                await healthy_exchange(self.lab)
                self.answered += 1
            except (OSError, EOFError, trio.TooSlowError, trio.BrokenResourceError, AssertionError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            await trio.sleep(0.02)


@asynccontextmanager
async def healthy_client_during(node: Node, *, minimum: int = 3):
    """Runs a healthy client for the duration of the block, then requires that it was always served."""
    healthy = Healthy(node.lab)
    async with trio.open_nursery() as nursery:
        await nursery.start(healthy.run)
        yield healthy
        while healthy.answered < minimum and not healthy.failures:
            await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert healthy.failures == [], f"the healthy client was not served: {healthy.failures[:5]}"
    assert node.alive(), "ztunnel exited"
    await healthy_exchange(node.lab)  # and after


# -- the HBONE attacker ---------------------------------------------------------------------------------
class Attacker:
    """Mutual TLS from pod c to b's 15008 with a mesh certificate; writes whatever frames it is
    told (wisp.h2.testing.RawPeer) and reads the server's frames back, decoding its headers."""

    def __init__(self, tls: ssl.SSLSocket) -> None:
        self.tls = tls
        self.peer = RawPeer()
        self.decoder = hpack.Decoder()
        self._buffer = b""
        self.closed = False
        self.broken = False

    @classmethod
    def open(cls, node: Node, context: ssl.SSLContext) -> Attacker:
        fd = node.netns_fd("c")
        try:
            raw = netns.socket_in_netns(fd, socket.socket)
        finally:
            os.close(fd)
        raw.settimeout(10)
        raw.connect((B_IP, 15008))
        attacker = cls(context.wrap_socket(raw))
        attacker.send(attacker.peer.client_preface())
        attacker.read_until(lambda f: f.type == frames.SETTINGS and not f.flags & frames.FLAG_ACK)
        attacker.send(RawPeer.settings(ack=True))
        return attacker

    def send(self, data: bytes) -> bool:
        """False when the server has closed or reset the connection."""
        try:
            self.tls.sendall(data)
            return True
        except (OSError, ssl.SSLError):
            self.broken = True
            return False

    def read_until(self, done: Callable[[Frame], bool], timeout: float = 10) -> list[Frame]:
        """Frames until one satisfies `done`, or the connection ends, or `timeout` passes."""
        seen: list[Frame] = []
        deadline = time.monotonic() + timeout
        while not self.closed:
            while len(self._buffer) >= 9:
                hi, lo, ftype, flags, sid = frames.unpack_header(self._buffer, 0)
                length = hi << 8 | lo
                if len(self._buffer) < 9 + length:
                    break
                frame = Frame(ftype, flags, sid & frames.MAX_STREAM_ID, self._buffer[9:9 + length])
                self._buffer = self._buffer[9 + length:]
                seen.append(frame)
                if done(frame):
                    return seen
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.tls.settimeout(left)
            try:
                data = self.tls.recv(1 << 20)
            except TimeoutError:
                break
            except (OSError, ssl.SSLError):
                data = b""
            if not data:
                self.closed = True
            self._buffer += data
        return seen

    def status(self, frame: Frame) -> int:
        """The :status of a HEADERS frame from the server (every one must be decoded, in order)."""
        return int(dict(self.decoder.decode(frame.payload))[":status"])

    def goaway(self, timeout: float = 10) -> Frame | None:
        found = self.read_until(lambda f: f.type == frames.GOAWAY, timeout)
        return found[-1] if found and found[-1].type == frames.GOAWAY else None

    def close(self) -> None:
        try:
            self.tls.close()
        except OSError:
            pass


def mesh_context(node: Node) -> ssl.SSLContext:
    return make_context(node.ca.issue(SpiffeId("cluster.local", "outside", "mallory")), server_side=False)


def connect(peer: RawPeer, sid: int, authority: str | bytes) -> bytes:
    value = authority if isinstance(authority, bytes) else authority.encode()
    block = peer.encoder.encode([(b":method", b"CONNECT"), (b":authority", value)])
    return RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, sid, block)


def report(title: str, **figures) -> None:
    print(f"\n[hostile peers] {title}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


# -- 1. idle connection floods --------------------------------------------------------------------------
def open_flood(node: Node, pod: str, target: tuple[str, int], count: int,
               sources: tuple[str, ...] = ()) -> list[socket.socket]:
    """`count` non-blocking connects from `pod` (spread over `sources`), left idle."""
    def make() -> list[socket.socket]:
        made = []
        try:
            for i in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                made.append(sock)
                if sources:
                    sock.bind((sources[i % len(sources)], 0))
                sock.connect_ex(target)
        except BaseException:
            close_all(made)
            raise
        return made

    fd = node.netns_fd(pod)
    try:
        return netns.in_netns(fd, make)
    finally:
        os.close(fd)


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


@dataclass
class Settled:
    """Outcomes as the attacker's sockets see them. A few may look held that ztunnel never
    accepted: when the flood overflows the listener's queues the kernel answers with SYN
    cookies, and a client whose last ACK was dropped believes it is connected and, idle, never
    finds out. So what ztunnel holds is read from its descriptors."""

    held: int       # connected and not reset
    reset: int      # refused by ztunnel (RST) once accepted
    pending: int    # still in the handshake


def settle(socks: list[socket.socket], timeout: float = 20) -> Settled:
    """Waits until every connect has an outcome and the counts stay put for a moment."""
    poller = select.poll()
    for sock in socks:
        poller.register(sock, select.POLLOUT | select.POLLERR | select.POLLHUP)
    deadline = time.monotonic() + timeout
    seen: list[Settled] = []
    while True:
        reset = connected = 0
        for _, events in poller.poll(0):
            if events & (select.POLLERR | select.POLLHUP):
                reset += 1
            else:
                connected += 1
        seen.append(Settled(connected, reset, len(socks) - reset - connected))
        if (len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3] and not seen[-1].pending) \
                or time.monotonic() > deadline:
            return seen[-1]
        time.sleep(0.25)


async def test_one_pods_connection_flood_is_bounded_per_source_and_the_node_keeps_serving(node):
    # The limit ztunnel raised itself to at start (from SOFT_FILES).
    assert node.file_limit() == (HARD_FILES, HARD_FILES)
    log_before = node.log_size()
    # Descriptors ztunnel may hold for each connection it keeps: the client's and the app's (its
    # HBONE connections are shared); a connection waiting for its TLS handshake has one.
    floods = (
        ("15001 capture", "d", (B_IP, APP_PORT), PER_SOURCE, 2),
        ("15006 capture", "c", (B_IP, APP_PORT), PER_SOURCE, 2),
        ("15006 straight", "c", (B_IP, 15006), 0, 0),  # a self call: refused once accepted
        ("15008 straight", "c", (B_IP, 15008), PER_SOURCE, 1),  # held until the handshake times out
    )
    for name, pod, target, holds, each in floods:
        rss_before, descriptors_before = node.rss_kb(), node.descriptors()
        socks = await trio.to_thread.run_sync(open_flood, node, pod, target, FLOOD)
        try:
            async with healthy_client_during(node):
                settled = await trio.to_thread.run_sync(settle, socks)
                descriptors = node.descriptors()
        finally:
            close_all(socks)
        report(f"{FLOOD} idle connections from pod {pod}, {name}", held=settled.held, reset=settled.reset,
               pending=settled.pending, ztunnel_descriptors=descriptors, rss_growth_kb=node.rss_kb() - rss_before)
        assert descriptors - descriptors_before <= holds * each + 20
        assert settled.reset >= FLOOD - holds - FLOOD // 20
        assert node.rss_kb() - rss_before < RSS_SLACK_KB // 2
    assert node.alive()
    lines = node.log_lines(log_before, exclude=f'"src.addr": "{A_IP}:')
    refusals = [line for line in lines if b"too many from one source" in line]
    report("logs of the floods", lines=len(lines), bytes=sum(map(len, lines)), per_source_refusal_lines=len(refusals))
    assert refusals and len(refusals) < 100  # logged at powers of two, not once per connection
    # What is logged per connection is logged for those ztunnel served (the held ones: access
    # logs, handshakes that never came; and connections the kernel completes late from a SYN
    # cookie when the attacker closes them), not for the tens of thousands it refused.
    assert len(lines) < FLOOD // 5
    assert not [line for line in lines if b"lack of resources" in line or b"exception" in line]


async def test_running_out_of_descriptors_backs_off_and_the_process_survives(node):
    # Many sources, each within its bound, together hold more than the file limit allows.
    sources = tuple(f"10.77.0.{100 + i}" for i in range(HARD_FILES // PER_SOURCE + 2))
    for ip in sources:
        sh("ip", "-n", node.lab.ns("c"), "addr", "add", f"{ip}/24", "dev", "eth0")
    live = await connect_from(node.lab, "a", (B_IP, APP_PORT))
    socks: list[socket.socket] = []
    try:
        assert await read_line(live) == A_IP
        log_before, rss_before = node.log_size(), node.rss_kb()
        socks = await trio.to_thread.run_sync(open_flood, node, "c", (B_IP, 15008), PER_SOURCE * len(sources),
                                              sources)
        with trio.fail_after(15):
            while not [line for line in node.log_lines(log_before) if b"lack of resources" in line]:
                await trio.sleep(0.1)
        descriptors = node.descriptors()
        # A connection made before keeps flowing, and the process lives.
        for _ in range(5):
            await live.send_all(b"during")
            assert await receive_exactly(live, 6) == b"during"
            await trio.sleep(0.1)
        assert node.alive()
        rss_during = node.rss_kb()
    finally:
        close_all(socks)
        for ip in sources:
            subprocess.run(["ip", "-n", node.lab.ns("c"), "addr", "del", f"{ip}/24", "dev", "eth0"],
                           capture_output=True)
    # Once the attacker lets go, new connections are served again.
    started = time.monotonic()
    with trio.fail_after(15):
        while True:
            try:
                await healthy_exchange(node.lab)
                break
            except (OSError, EOFError, trio.TooSlowError, AssertionError):
                await trio.sleep(0.1)
    recovered = time.monotonic() - started
    await live.send_all(b"after")
    assert await receive_exactly(live, 5) == b"after"
    await live.aclose()
    lines = node.log_lines(log_before)
    backoffs = [line for line in lines if b"lack of resources" in line]
    report("descriptor exhaustion", sources=len(sources), connections=PER_SOURCE * len(sources),
           ztunnel_descriptors=descriptors, limit=HARD_FILES, rss_before_kb=rss_before, rss_during_kb=rss_during,
           backoff_log_lines=len(backoffs), recovered_after_s=round(recovered, 2))
    assert node.alive()
    assert descriptors >= HARD_FILES - 8
    assert len(backoffs) < 30  # logged at powers of two
    assert not [line for line in lines if b"exception" in line]
    assert rss_during - rss_before < RSS_SLACK_KB


def test_the_per_source_bound_is_a_flag():
    assert parse_args(["--node", "n1"]).max_connections_per_source == DEFAULT_PER_SOURCE
    assert parse_args(["--node", "n1", "--max-connections-per-source", "200"]).max_connections_per_source == 200
    for bad in ("0", "-5", "²", "many"):
        with pytest.raises(SystemExit):
            parse_args(["--node", "n1", "--max-connections-per-source", bad])


# -- 2. CONTINUATION flood ------------------------------------------------------------------------------
FLOOD_CONNECTIONS = 20
CONTINUATIONS = 16
MiB = 1 << 20


def continuation_flood(node: Node, context: ssl.SSLContext) -> Frame | None:
    """A header block that never ends: HEADERS without END_HEADERS, then CONTINUATION frames of
    1 MiB (the frame size the server advertises), each written on its own; what ends it."""
    attacker = Attacker.open(node, context)
    try:
        block = attacker.peer.block([(":method", "CONNECT"), (":authority", f"{B_IP}:{APP_PORT}")])
        filler = os.urandom(MiB)
        if attacker.send(RawPeer.frame(frames.HEADERS, 0, 1, block + filler[:16 * 1024])):
            for _ in range(CONTINUATIONS):
                if not attacker.send(RawPeer.frame(frames.CONTINUATION, 0, 1, filler)):
                    break
        return attacker.goaway(timeout=5)
    finally:
        attacker.close()


async def test_continuation_flood_ends_with_goaway_and_memory_stays_bounded(node):
    context = mesh_context(node)
    rss_before, peak_before = node.rss_kb(), node.peak_kb()
    async with healthy_client_during(node):
        async with trio.open_nursery() as nursery:
            ends: list[Frame | None] = []

            async def one() -> None:
                ends.append(await trio.to_thread.run_sync(continuation_flood, node, context))

            for _ in range(FLOOD_CONNECTIONS):
                nursery.start_soon(one)
    rss_after, peak_after = node.rss_kb(), node.peak_kb()
    report("CONTINUATION flood", connections=FLOOD_CONNECTIONS, offered_mib_each=CONTINUATIONS,
           rss_before_kb=rss_before, rss_after_kb=rss_after, peak_before_kb=peak_before, peak_after_kb=peak_after)
    assert [e.error_code if e else None for e in ends] == [frames.ENHANCE_YOUR_CALM] * FLOOD_CONNECTIONS
    assert peak_after - peak_before < RSS_SLACK_KB
    assert rss_after - rss_before < RSS_SLACK_KB


# -- 3. rapid reset -----------------------------------------------------------------------------------
RESET_PAIRS = 5000


def reset_pairs(peer: RawPeer, first_sid: int, count: int) -> bytes:
    return b"".join(connect(peer, sid, f"{B_IP}:{APP_PORT}") + RawPeer.rst(sid)
                    for sid in range(first_sid, first_sid + 2 * count, 2))


async def test_rapid_reset_never_reaches_the_app_and_ends_with_enhance_your_calm(node):
    def in_one_write() -> Frame | None:
        attacker = Attacker.open(node, mesh_context(node))
        try:
            attacker.send(reset_pairs(attacker.peer, 1, RESET_PAIRS))
            return attacker.goaway()
        finally:
            attacker.close()

    def pair_by_pair() -> tuple[int, Frame | None]:
        """Each pair in its own write, so a CONNECT is read before its reset arrives."""
        attacker = Attacker.open(node, mesh_context(node))
        try:
            sent = 0
            for sid in range(1, 2 * RESET_PAIRS, 2):
                if not attacker.send(reset_pairs(attacker.peer, sid, 1)):
                    break
                sent += 1
            return sent, attacker.goaway()
        finally:
            attacker.close()

    log_before = node.log_size()
    async with healthy_client_during(node):
        goaway = await trio.to_thread.run_sync(in_one_write)
        await trio.sleep(0.5)  # for any connection to the app still on its way
        app_one_write = node.app_peers.count(C_IP)
        sent, goaway_paced = await trio.to_thread.run_sync(pair_by_pair)
        await trio.sleep(0.5)
    app_paced = node.app_peers.count(C_IP) - app_one_write
    attack_lines = node.log_lines(log_before, exclude=f'"src.addr": "{A_IP}:')  # not the healthy client's
    report("rapid reset", pairs=RESET_PAIRS, app_connections_one_write=app_one_write, paced_pairs_sent=sent,
           app_connections_paced=app_paced, attack_log_lines=len(attack_lines),
           attack_log_bytes=sum(map(len, attack_lines)))
    assert goaway is not None and goaway.error_code == frames.ENHANCE_YOUR_CALM
    assert app_one_write == 0
    assert goaway_paced is not None and goaway_paced.error_code == frames.ENHANCE_YOUR_CALM
    # The connection is cut off after the reset budget (200 a second); a paced CONNECT may reach
    # the app before its reset does, never more of them than that budget.
    assert app_paced <= 250
    assert not [line for line in attack_lines if b"exception" in line or b"Traceback" in line]
    assert len(attack_lines) < 20, attack_lines[:5]


# -- 4. a port in non-ASCII digits ------------------------------------------------------------------
async def test_authority_port_in_non_ascii_digits_gets_400_and_the_connection_lives_on(node):
    def attack() -> tuple[int, list[Frame], int, bytes]:
        attacker = Attacker.open(node, mesh_context(node))
        try:
            # Byte 0xB2 reads as '²' in latin-1: str.isdigit() says yes, int() raises.
            attacker.send(connect(attacker.peer, 1, f"{B_IP}:".encode() + b"\xb2"))
            first = attacker.read_until(lambda f: f.stream_id == 1 and f.flags & frames.FLAG_END_STREAM)
            refused = [attacker.status(f) for f in first if f.type == frames.HEADERS and f.stream_id == 1]
            attacker.send(connect(attacker.peer, 3, f"{B_IP}:{APP_PORT}"))
            second = attacker.read_until(lambda f: f.type == frames.DATA and f.stream_id == 3)
            answer = [attacker.status(f) for f in second if f.type == frames.HEADERS and f.stream_id == 3]
            data = b"".join(f.payload for f in second if f.type == frames.DATA and f.stream_id == 3)
            return refused[0] if refused else 0, first + second, answer[0] if answer else 0, data
        finally:
            attacker.close()

    async with healthy_client_during(node):
        refused, seen, answered, data = await trio.to_thread.run_sync(attack)
    assert refused == 400
    assert not [f for f in seen if f.type == frames.GOAWAY]
    assert (answered, data) == (200, f"{C_IP}\n".encode())


# -- 5. more streams than the server allows -----------------------------------------------------------
async def test_stream_beyond_two_hundred_is_refused_and_the_others_live_on(node):
    def attack() -> dict:
        attacker = Attacker.open(node, mesh_context(node))
        try:
            wire = b"".join(connect(attacker.peer, 2 * i + 1, f"{B_IP}:{APP_PORT}") for i in range(201))
            attacker.send(wire)
            answered: dict[int, int] = {}
            resets: dict[int, int] = {}

            def settled(frame: Frame) -> bool:
                if frame.type == frames.HEADERS:
                    answered[frame.stream_id] = attacker.status(frame)
                elif frame.type == frames.RST_STREAM:
                    resets[frame.stream_id] = frame.error_code
                return len(answered) + len(resets) >= 201

            seen = attacker.read_until(settled)
            # Every open stream still carries bytes: the first and the last admitted echo.
            attacker.send(RawPeer.data(1, b"first") + RawPeer.data(399, b"last"))
            echoes = {1: b"", 399: b""}  # through two app connections: in either order

            def both_echoed(frame: Frame) -> bool:
                if frame.type == frames.DATA and frame.stream_id in echoes:
                    echoes[frame.stream_id] += frame.payload
                return echoes[1].endswith(b"first") and echoes[399].endswith(b"last")

            echoed = attacker.read_until(both_echoed)
            # A stream that ends makes room for a new one on the same connection.
            attacker.send(RawPeer.rst(3) + connect(attacker.peer, 403, f"{B_IP}:{APP_PORT}"))
            later = attacker.read_until(lambda f: f.type == frames.HEADERS and f.stream_id == 403)
            return {"answered": answered, "resets": resets, "frames": seen + echoed + later,
                    "echoes": echoes,
                    "new": [attacker.status(f) for f in later if f.type == frames.HEADERS and f.stream_id == 403]}
        finally:
            attacker.close()

    async with healthy_client_during(node):
        result = await trio.to_thread.run_sync(attack)
    assert result["resets"] == {401: frames.REFUSED_STREAM}
    assert set(result["answered"].values()) == {200} and len(result["answered"]) == 200
    assert result["echoes"] == {1: f"{C_IP}\nfirst".encode(), 399: f"{C_IP}\nlast".encode()}
    assert result["new"] == [200]
    assert not [f for f in result["frames"] if f.type == frames.GOAWAY]
