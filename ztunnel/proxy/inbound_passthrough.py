"""Inbound plaintext (15006): a connection from outside the mesh, redirected by the pod's rules.

Reference §4: original destination → reject ztunnel's own ports → authorize with no identity
(so a STRICT PeerAuthentication, a DENY on `not_principals: presence`, refuses it) → connect
to the app from the client's IP (transparent socket in the pod) → splice.
"""

from __future__ import annotations

import socket

import structlog
import trio

from wisp import sockets
from wisp.sockets import format_address

from ..config import ILLEGAL_PORTS
from ..metrics import FLAG_CONNECT, FLAG_DENY, UNKNOWN, ConnectionRecord, Peer
from ..state import rbac
from ..state.proxy_state import workload_identity
from . import listeners
from .inputs import PodContext, ProxyInputs
from .splice import reset, splice, tcp_stream

log = structlog.get_logger("ztunnel.inbound_passthrough")


async def serve(inputs: ProxyInputs, pod: PodContext, sock: socket.socket, peer: tuple[str, int]) -> None:
    dst_ip, dst_port = sockets.original_dst(sock)
    if dst_port in ILLEGAL_PORTS:
        log.warning("plaintext connection to ztunnel's own port refused", src=format_address(*peer),
                    dst=format_address(dst_ip, dst_port))
        reset(sock)
        return
    state = inputs.state.state
    workload = state.workload_by_ip(dst_ip) or pod.workload(state)
    if workload is None:
        log.warning("plaintext connection to an unknown workload refused", dst=format_address(dst_ip, dst_port))
        reset(sock)
        return
    conn = rbac.Connection(None, peer[0], dst_ip, dst_port)
    decision = rbac.authorize(state.policies_for(workload), conn)
    record = ConnectionRecord(
        inputs.metrics, direction="inbound",
        source=Peer(state.workload_by_ip(peer[0]), None, peer[0]),
        destination=Peer(workload, workload_identity(workload)),
        service=None, security=UNKNOWN,
        src_addr=format_address(*peer), dst_addr=format_address(dst_ip, dst_port),
    )
    if not decision.allowed:
        log.info("connection denied by policy", src=format_address(*peer), dst=format_address(dst_ip, dst_port),
                 policy=decision.policy, reason=decision.reason)
        record.close(FLAG_DENY)
        reset(sock)
        return
    try:
        upstream_sock = await listeners.connect_in_pod(pod.netns_fd, (dst_ip, dst_port), source=peer[0],
                                                       timeout=listeners.CONNECT_TIMEOUT)
    except (OSError, trio.TooSlowError) as exc:
        error = str(exc) or "connect timed out"
        log.warning("inbound connect to the app failed", dst=format_address(dst_ip, dst_port), src=peer[0], error=error)
        record.close(FLAG_CONNECT, error)
        reset(sock)
        return
    client, upstream = tcp_stream(sock), tcp_stream(upstream_sock)
    flags = None
    try:
        with inputs.tracker.track(conn) as tracked:
            with tracked.scope:
                await splice(client, upstream, record.transfer)
        if tracked.denied:
            flags = FLAG_DENY
            reset(client)
            reset(upstream)
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
            await upstream.aclose()
        record.close(flags)
