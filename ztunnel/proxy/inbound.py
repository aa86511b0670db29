"""Inbound HBONE (15008): a CONNECT from a peer proxy, checked and spliced to the local app.

Order as in ztunnel's inbound.rs (reference §2): the HBONE server already did TLS, CONNECT
and the authority syntax; here the authority must name the pod the listener belongs to (400),
the pod must be known (wait ≤5 s, else 503), the port must not be ztunnel's own (503), a peer
whose address is a known workload must present that workload's identity (401: a certificate
used from another pod's address; counted in `wisp_inbound_identity_mismatch_total`, and
telemetry names the certificate's identity, never the address's workload), L4 authorization
must allow it (401), and the app must accept a connection made from the peer's
IP (10 s, else 503). Then 200 and splice. A stream the peer reset meanwhile is never connected
upstream.
"""

from __future__ import annotations

import socket

import structlog

from wisp.engine.hbone import ConnectRequest
from wisp.engine.splice import Splice, TcpEnd
from wisp.model import Workload
from wisp.sockets import format_address

from ..config import ILLEGAL_PORTS
from ..metrics import FLAG_CONNECT, FLAG_DENY, MUTUAL_TLS, ConnectionRecord, Peer
from ..state import rbac
from ..state.proxy_state import workload_identity
from . import listeners
from .inputs import PodContext, ProxyInputs

log = structlog.get_logger("ztunnel.inbound")

WORKLOAD_WAIT = 5.0


def handle(inputs: ProxyInputs, pod: PodContext, request: ConnectRequest) -> None:
    local_ip = request.local_address[0]
    target_ip = request.authority.ip
    if target_ip != local_ip:
        request.reject(400, f"authority {request.authority} is not this pod ({local_ip})")
        return
    workload = inputs.state.state.workload_by_ip(local_ip)
    if workload is None:
        # Config naming the pod may still be on its way: wait for it on trio's side.
        inputs.engine.spawn(_wait_for_workload, inputs, pod, request)
        return
    _checked(inputs, pod, request, workload)


async def _wait_for_workload(inputs: ProxyInputs, pod: PodContext, request: ConnectRequest) -> None:
    local_ip = request.local_address[0]
    workload = await inputs.state.wait_for_workload(local_ip, WORKLOAD_WAIT)
    if request.stream.closed:
        return
    if workload is None:
        request.reject(503, f"no workload with address {local_ip} is known to this ztunnel")
        return
    _checked(inputs, pod, request, workload)


def _identity_mismatch(inputs: ProxyInputs, request: ConnectRequest, workload: Workload, source: Workload,
                       service) -> None:
    local_ip = request.local_address[0]
    peer_ip, peer_port = request.peer_address
    port = request.authority.port
    inputs.metrics.identity_mismatch.inc()
    log.warning("connection refused: peer certificate is not the source workload's",
                src_identity=str(request.peer_identity), src=format_address(peer_ip, peer_port),
                src_workload=f"{source.namespace}/{source.name}", src_workload_identity=source.identity(),
                dst=format_address(local_ip, port))
    request.reject(401, f"peer identity {request.peer_identity} is not that of the workload at {peer_ip} "
                        f"({source.namespace}/{source.name}, {source.identity()})")
    ConnectionRecord(
        inputs.metrics, direction="inbound", source=Peer(None, request.peer_identity, peer_ip),
        destination=Peer(workload, workload_identity(workload)), service=service, security=MUTUAL_TLS,
        src_addr=format_address(peer_ip, peer_port), dst_addr=format_address(local_ip, port),
        hbone_addr=str(request.authority),
    ).close(FLAG_DENY)


def _checked(inputs: ProxyInputs, pod: PodContext, request: ConnectRequest, workload: Workload) -> None:
    local_ip = request.local_address[0]
    peer_ip, peer_port = request.peer_address
    port = request.authority.port
    if port in ILLEGAL_PORTS:
        request.reject(503, f"port {port} is ztunnel's own; refusing a self call")
        return
    state = inputs.state.state
    conn = rbac.Connection(request.peer_identity, peer_ip, local_ip, port)
    decision = rbac.authorize(state.policies_for(workload), conn)
    service = None
    host = request.forwarded_host
    if host:
        service = state.service_by_host(host, workload.namespace)
    source_workload = state.workload_by_ip(peer_ip)
    if source_workload is not None and workload_identity(source_workload) != request.peer_identity:
        # The certificate is not the one of the pod at that address: a certificate used from
        # another pod (stolen), or an address reused before our config caught up. Telemetry
        # names the certificate's identity only, and the connection is refused either way.
        _identity_mismatch(inputs, request, workload, source_workload, service)
        return
    record = ConnectionRecord(
        inputs.metrics, direction="inbound",
        source=Peer(source_workload, request.peer_identity, peer_ip),
        destination=Peer(workload, workload_identity(workload)),
        service=service, security=MUTUAL_TLS,
        src_addr=format_address(peer_ip, peer_port), dst_addr=format_address(local_ip, port),
        hbone_addr=str(request.authority),
    )
    if not decision.allowed:
        log.info("connection denied by policy", src_identity=str(request.peer_identity),
                 src=format_address(peer_ip, peer_port), dst=format_address(local_ip, port),
                 policy=decision.policy, reason=decision.reason)
        request.reject(401, f"denied by authorization policy ({decision.reason})")
        record.close(FLAG_DENY)
        return
    loop = inputs.engine.loop

    def failed(error: str) -> None:
        log.warning("inbound connect to the app failed", dst=format_address(local_ip, port), src=peer_ip,
                    error=error)
        if not request.stream.closed:
            request.reject(503, f"connection to {format_address(local_ip, port)} failed: {error}")
        record.close(FLAG_CONNECT, error)

    def connected(sock: socket.socket) -> None:
        if request.stream.closed:  # the peer gave up (or reset) while we connected
            sock.close()
            record.close(FLAG_CONNECT, "the peer reset the stream")
            return
        tracked = None

        def done(splice: Splice) -> None:
            inputs.tracker.remove(tracked)
            record.close(FLAG_DENY if tracked.denied else None)

        splice = Splice(request.accept(), TcpEnd(loop, sock, upstream=False), on_done=done)
        record.transfer = splice
        tracked = inputs.tracker.add(splice, conn, pod)
        splice.start()

    if request.stream.closed:
        record.close(FLAG_CONNECT, "the peer reset the stream")
        return
    listeners.connect_in_pod(loop, pod.netns_fd, (local_ip, port), source=peer_ip,
                             on_done=connected, on_error=failed)
