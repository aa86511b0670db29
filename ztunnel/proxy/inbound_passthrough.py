"""Inbound plaintext (15006): a connection from outside the mesh, redirected by the pod's rules.

Reference §4: original destination → reject ztunnel's own ports → authorize with no identity
(so a STRICT PeerAuthentication, a DENY on `not_principals: presence`, refuses it) → connect
to the app from the client's IP (transparent socket in the pod) → splice.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import structlog

from wisp import sockets
from wisp.engine.splice import Splice, TcpEnd
from wisp.sockets import format_address

from ..config import ILLEGAL_PORTS
from ..metrics import FLAG_CONNECT, FLAG_DENY, UNKNOWN, ConnectionRecord, Peer
from ..state import rbac
from ..state.proxy_state import workload_identity
from . import listeners
from .inputs import PodContext, ProxyInputs

log = structlog.get_logger("ztunnel.inbound_passthrough")

# Self calls refused so far in this process; any pod can send them by the thousand, so only the
# 1st, 2nd, 4th, 8th … is logged.
_self_calls = 0


def serve(inputs: ProxyInputs, pod: PodContext, sock: socket.socket, peer: tuple[str, int],
          release: Callable[[], None]) -> None:
    dst_ip, dst_port = sockets.original_dst(sock)
    if dst_port in ILLEGAL_PORTS:
        global _self_calls
        _self_calls += 1
        if _self_calls & (_self_calls - 1) == 0:
            log.warning("plaintext connection to ztunnel's own port refused", src=format_address(*peer),
                        dst=format_address(dst_ip, dst_port), times=_self_calls)
        sockets.reset(sock)
        release()
        return
    state = inputs.state.state
    workload = state.workload_by_ip(dst_ip) or pod.workload(state)
    if workload is None:
        log.warning("plaintext connection to an unknown workload refused", dst=format_address(dst_ip, dst_port))
        sockets.reset(sock)
        release()
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
        sockets.reset(sock)
        release()
        return
    loop = inputs.engine.loop

    def failed(error: str) -> None:
        log.warning("inbound connect to the app failed", dst=format_address(dst_ip, dst_port), src=peer[0],
                    error=error)
        record.close(FLAG_CONNECT, error)
        sockets.reset(sock)
        release()

    def connected(upstream: socket.socket) -> None:
        tracked = None

        def done(splice: Splice) -> None:
            inputs.tracker.remove(tracked)
            record.close(FLAG_DENY if tracked.denied else None)
            release()

        splice = Splice(TcpEnd(loop, sock, upstream=True), TcpEnd(loop, upstream, upstream=False), on_done=done)
        record.transfer = splice
        tracked = inputs.tracker.add(splice, conn, pod)
        splice.start()

    listeners.connect_in_pod(loop, pod.netns_fd, (dst_ip, dst_port), source=peer[0],
                             on_done=connected, on_error=failed)
