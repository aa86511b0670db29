"""Inbound HBONE (15008): a CONNECT from a peer proxy, checked and spliced to the local app.

Order as in ztunnel's inbound.rs (reference §2): the HBONE server already did TLS, CONNECT
and the authority syntax; here the authority must name the pod the listener belongs to (400),
the pod must be known (wait ≤5 s, else 503), the port must not be ztunnel's own (503), L4
authorization must allow it (401), and the app must accept a connection made from the peer's
IP (10 s, else 503). Then 200 and splice.
"""

from __future__ import annotations

import structlog
import trio

from wisp.hbone import ConnectRequest
from wisp.sockets import format_address

from ..config import ILLEGAL_PORTS
from ..metrics import FLAG_CONNECT, FLAG_DENY, MUTUAL_TLS, ConnectionRecord, Peer
from ..state import rbac
from ..state.proxy_state import workload_identity
from . import listeners
from .inputs import PodContext, ProxyInputs
from .splice import reset, splice, tcp_stream

log = structlog.get_logger("ztunnel.inbound")

WORKLOAD_WAIT = 5.0


async def handle(inputs: ProxyInputs, pod: PodContext, request: ConnectRequest) -> None:
    local_ip = request.local_address[0]
    peer_ip, peer_port = request.peer_address
    target_ip, port = str(request.authority.ip), request.authority.port
    if target_ip != local_ip:
        request.reject(400, f"authority {request.authority} is not this pod ({local_ip})")
        return
    # Config naming the pod may still be on its way.
    workload = await inputs.state.wait_for_workload(local_ip, WORKLOAD_WAIT)
    if workload is None:
        request.reject(503, f"no workload with address {local_ip} is known to this ztunnel")
        return
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
    record = ConnectionRecord(
        inputs.metrics, direction="inbound",
        source=Peer(state.workload_by_ip(peer_ip), request.peer_identity, peer_ip),
        destination=Peer(workload, workload_identity(workload)),
        service=service, security=MUTUAL_TLS,
        src_addr=format_address(peer_ip, peer_port), dst_addr=format_address(local_ip, port),
        hbone_addr=str(request.authority),
    )
    if not decision.allowed:
        log.info("connection denied by policy", src_identity=str(request.peer_identity),
                 src=format_address(peer_ip, peer_port), dst=format_address(local_ip, port), policy=decision.policy,
                 reason=decision.reason)
        request.reject(401, f"denied by authorization policy ({decision.reason})")
        record.close(FLAG_DENY)
        return
    try:
        upstream_sock = await listeners.connect_in_pod(pod.netns_fd, (local_ip, port), source=peer_ip,
                                                       timeout=listeners.CONNECT_TIMEOUT)
    except (OSError, trio.TooSlowError) as exc:
        error = str(exc) or "connect timed out"
        log.warning("inbound connect to the app failed", dst=format_address(local_ip, port), src=peer_ip, error=error)
        request.reject(503, f"connection to {format_address(local_ip, port)} failed: {error}")
        record.close(FLAG_CONNECT, error)
        return
    upstream = tcp_stream(upstream_sock)
    stream = request.accept()
    flags = None
    try:
        with inputs.tracker.track(conn) as tracked:
            with tracked.scope:
                await splice(stream, upstream, record.transfer)
        if tracked.denied:
            flags = FLAG_DENY
            reset(upstream)
    finally:
        stream.close()
        with trio.CancelScope(shield=True):
            await upstream.aclose()
        record.close(flags)
