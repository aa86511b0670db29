"""Identity attacks on a running ztunnel's inbound (#15 item 7), each a real TLS handshake.

The lab of test_netns.py: ztunnel serves pods `a` (front/client) and `b` (shop/web, the echo app
on 8080); pod `c` (10.77.0.4) is not enrolled and attacks b's HBONE port 15008 directly, over
mutual TLS 1.3 with ALPN h2, then a CONNECT to b's app, as a peer ztunnel would. Pod c is in the
mesh's config as workload shop/intruder-1 (service account `intruder`), so its address has an
identity. Each attack must be refused — no 200, no byte from the app — and the reason must be in
ztunnel's log (captured structlog events) and, where the refusal is ztunnel's own rule, in its
metrics. A control attempt with c's own certificate is answered, so a refusal is never the
harness's doing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import socket
import ssl
from dataclasses import dataclass, field

import hpack
import pytest
import structlog
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from wisp import netns
from wisp.h2 import frames
from wisp.h2.testing import Frame, RawPeer, parse_frames
from wisp.hbone.tls import make_context
from wisp.identity import CertificateAuthority, SpiffeId, bundle_of, generate_key
from wisp.model import Workload

from .test_netns import (  # noqa: F401  (lab is a fixture)
    APP_PORT,
    B_IP,
    BASE,
    C_IP,
    CLIENT,
    NODE,
    WEB,
    connect_from,
    lab,
    read_line,
    running_mesh,
)

pytestmark = pytest.mark.root

INTRUDER = Workload(uid="Kubernetes//Pod/shop/intruder-1", name="intruder-1", namespace="shop", addresses=(C_IP,),
                    service_account="intruder", node=NODE, workload_name="intruder", canonical_name="intruder")
INTRUDER_ID = SpiffeId("cluster.local", "shop", "intruder")


@dataclass
class Outcome:
    """What pod c saw: the CONNECT's :status (0 if none), app bytes, a GOAWAY's debug data, or
    the TLS/socket error that ended it. A refused CONNECT's DATA is ztunnel's reason."""

    status: int = 0
    data: bytes = b""
    goaway: bytes | None = None
    error: str | None = None
    frames: list[Frame] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        # A refusal's body is the reason, never the echo app's first line (the client's IP).
        return self.status != 200 and not self.data.startswith(C_IP.encode())


def attempt(lab, bundle) -> Outcome:
    """From pod c: mutual TLS to b's 15008 with `bundle`, then CONNECT to b's app (blocking)."""
    fd = netns.open_netns(netns.path_of(lab.ns("c")))
    try:
        raw = netns.socket_in_netns(fd, socket.socket)
    finally:
        os.close(fd)
    raw.settimeout(10)
    outcome = Outcome()
    try:
        raw.connect((B_IP, 15008))
        tls = make_context(bundle, server_side=False).wrap_socket(raw)
        peer = RawPeer()
        decoder = hpack.Decoder()
        block = peer.encoder.encode([(b":method", b"CONNECT"), (b":authority", f"{B_IP}:{APP_PORT}".encode())])
        tls.sendall(peer.client_preface() + RawPeer.settings(ack=True)
                    + RawPeer.frame(frames.HEADERS, frames.FLAG_END_HEADERS, 1, block))
        buffer = b""
        while True:
            chunk = tls.recv(65536)
            if not chunk:
                break
            buffer += chunk
            outcome.frames = parse_frames(buffer)
            for frame in outcome.frames:
                if frame.type == frames.GOAWAY:
                    outcome.goaway = frame.payload[8:]
            headers = [f for f in outcome.frames if f.type == frames.HEADERS and f.stream_id == 1]
            data = b"".join(f.payload for f in outcome.frames if f.type == frames.DATA and f.stream_id == 1)
            if headers and not outcome.status:
                outcome.status = int(dict(decoder.decode(headers[0].payload))[":status"])
            outcome.data = data
            if outcome.goaway is not None or data or (headers and headers[0].flags & frames.FLAG_END_STREAM):
                break
    except (OSError, ssl.SSLError) as exc:
        outcome.error = f"{type(exc).__name__}: {exc}"
    finally:
        raw.close()
    return outcome


@pytest.fixture
async def mesh(lab, ca, tmp_path):
    async with running_mesh(lab, ca, tmp_path, [*BASE, INTRUDER]) as running:
        yield running


def server_of_b(mesh):
    return mesh.ztunnel.pods.proxies[WEB.uid].server


async def attack(mesh, bundle) -> tuple[Outcome, list[dict]]:
    """One attempt from pod c, with ztunnel's log events captured while it runs and settles."""
    server = server_of_b(mesh)
    rejected_before = len(server.rejections)
    with structlog.testing.capture_logs() as logs:
        outcome = await trio.to_thread.run_sync(attempt, mesh.lab, bundle)
        # The server logs a refusal when it decides it; the client may see the alert first.
        with trio.move_on_after(5):
            while len(server.rejections) == rejected_before and not [
                    e for e in logs if e["event"].startswith("connection refused")]:
                await trio.sleep(0.01)
    return outcome, list(logs)


def refusal_reasons(logs: list[dict]) -> list[str]:
    return [e.get("reason") or e["event"] for e in logs
            if e["event"] in ("hbone connection rejected",
                              "connection refused: peer certificate is not the source workload's")]


async def still_healthy(mesh) -> None:
    """Pod a still reaches b through the mesh after the attack."""
    stream = await connect_from(mesh.lab, "a", (B_IP, APP_PORT))
    assert await read_line(stream) == "10.77.0.2"
    await stream.aclose()


def with_mesh_roots(bundle, ca):
    """The attacker trusts the mesh's server; what it presents is the attack."""
    return dataclasses.replace(bundle, roots_pem=ca.roots_pem())


# -- the control: c's own certificate works, so each refusal below is the attack's --------------
async def test_control_the_intruders_own_certificate_is_answered(mesh, ca):
    outcome, logs = await attack(mesh, ca.issue(INTRUDER_ID))
    assert (outcome.status, outcome.data) == (200, f"{C_IP}\n".encode()), outcome
    assert refusal_reasons(logs) == []


# -- the attacks -----------------------------------------------------------------------------------
async def test_forged_san_signed_by_a_key_posing_as_the_mesh_ca_is_refused(mesh, ca):
    """A leaf naming shop/web (b's own identity) whose issuer and key identifier are copied from
    the mesh CA, signed with the attacker's key."""
    victim = SpiffeId("cluster.local", "shop", "web")
    attacker_key, leaf_key = generate_key(), generate_key()
    now = dt.datetime.now(dt.timezone.utc)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(victim))]), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.cert.public_key()), critical=False)
        .sign(attacker_key, hashes.SHA256())
    )
    outcome, logs = await attack(mesh, bundle_of(leaf_key, leaf, [], ca.roots))
    assert outcome.refused, outcome
    assert any("certificate verify failed" in r and "signature" in r for r in refusal_reasons(logs)), logs
    await still_healthy(mesh)


async def test_expired_certificate_is_refused(mesh, ca):
    expired = ca.issue(CLIENT_ID_OF_A, dt.timedelta(hours=1), now=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3))
    outcome, logs = await attack(mesh, expired)
    assert outcome.refused, outcome
    assert any("certificate has expired" in r for r in refusal_reasons(logs)), logs
    await still_healthy(mesh)


async def test_not_yet_valid_certificate_is_refused(mesh, ca):
    future = ca.issue(INTRUDER_ID, dt.timedelta(hours=1), now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2))
    outcome, logs = await attack(mesh, future)
    assert outcome.refused, outcome
    assert any("certificate is not yet valid" in r for r in refusal_reasons(logs)), logs
    await still_healthy(mesh)


async def test_certificate_from_a_foreign_ca_is_refused(mesh, ca, other_ca):
    outcome, logs = await attack(mesh, with_mesh_roots(other_ca.issue(INTRUDER_ID), ca))
    assert outcome.refused, outcome
    assert any("certificate verify failed" in r for r in refusal_reasons(logs)), logs
    await still_healthy(mesh)


async def test_certificate_of_another_trust_domain_is_refused_with_a_goaway_that_says_why(mesh, ca):
    """Signed by the mesh's own CA key (so the chain verifies), for spiffe://evil.local/…"""
    evil = CertificateAuthority(ca.key, ca.cert, ca.intermediates, ca.roots, trust_domain="evil.local")
    outcome, logs = await attack(mesh, evil.issue(SpiffeId("evil.local", "shop", "intruder")))
    assert outcome.refused, outcome
    reason = "client identity spiffe://evil.local/ns/shop/sa/intruder is not in trust domain 'cluster.local'"
    assert outcome.goaway == reason.encode(), outcome
    assert reason in refusal_reasons(logs), logs
    await still_healthy(mesh)


async def test_stolen_certificate_used_from_another_pods_ip_is_refused_and_counted(mesh, ca):
    """Pod a's certificate (front/client), presented from pod c's address, whose workload is
    shop/intruder: the certificate is valid, only the address betrays it."""
    mismatches = mesh.metric("wisp_inbound_identity_mismatch_total")
    outcome, logs = await attack(mesh, ca.issue(CLIENT_ID_OF_A))
    assert outcome.refused and outcome.status == 401, outcome
    assert outcome.data == (b"peer identity spiffe://cluster.local/ns/front/sa/client is not that of the workload "
                            b"at 10.77.0.4 (shop/intruder-1, spiffe://cluster.local/ns/shop/sa/intruder)")
    events = [e for e in logs if e["event"] == "connection refused: peer certificate is not the source workload's"]
    assert len(events) == 1, logs
    assert events[0]["src_identity"] == "spiffe://cluster.local/ns/front/sa/client"
    assert events[0]["src_workload"] == "shop/intruder-1"
    assert mesh.metric("wisp_inbound_identity_mismatch_total") == mismatches + 1
    # Telemetry names the certificate's identity, never the workload at the address.
    denied = dict(reporter="destination", response_flags="DENY",
                  source_principal="spiffe://cluster.local/ns/front/sa/client")
    assert mesh.metric("istio_tcp_connections_closed_total", **denied, source_workload="unknown") == 1
    assert mesh.metric("istio_tcp_connections_opened_total", source_workload="intruder") == 0
    assert mesh.metric("istio_tcp_connections_opened_total", source_workload="client",
                       source_principal="spiffe://cluster.local/ns/front/sa/client") == 0
    await still_healthy(mesh)


CLIENT_ID_OF_A = SpiffeId("cluster.local", CLIENT.namespace, CLIENT.service_account)
