"""Inbound HBONE (15008): a client ztunnel's CONNECT, accepted and handed to protocol detection.

The HBONE server (wisp.engine.server.HboneServer) already did TLS 1.3 with a client certificate
from the mesh's roots and trust domain, the CONNECT method and the authority's syntax. Here:

- the client is the SPIFFE identity of that certificate (`ConnectRequest.peer_identity`) and the
  address the connection came from (the client pod's, as its ztunnel dials from the pod);
- the CONNECT authority is what the client dialled: a Service VIP and port, or a pod IP and port
  (ztunnel keeps the original destination, reference §3);
- the stream is accepted (200) and its bytes go to `detect.Detector`, or straight to TCP
  pass-through when the Service port declares a non-HTTP `appProtocol`.

A CONNECT to one of the waypoint's own ports (15008, 15020, 15021) would loop: 400. While the
waypoint drains, the HBONE server sends GOAWAY and refuses new streams itself.
"""

from __future__ import annotations

from collections.abc import Callable

from wisp.engine.hbone import ConnectRequest
from wisp.engine.loop import Loop

from .channel import Channel
from .config import MESH_PORT, METRICS_PORT, READINESS_PORT, WaypointConfig
from .detect import DETECT_TIMEOUT, TCP, TCP_APP_PROTOCOLS, Detector
from .pipeline import ClientContext

OWN_PORTS = frozenset({MESH_PORT, METRICS_PORT, READINESS_PORT})

Dispatch = Callable[[str, Channel, ClientContext, bytes], None]


def declared_tcp(config: WaypointConfig, ip: str, port: int) -> bool:
    """Whether the dialled Service port declares a protocol that is not HTTP."""
    service = config.service_at(ip)
    if service is None:
        return False
    for mapping in service.ports:
        if mapping.service_port == port:
            return mapping.app_protocol.lower() in TCP_APP_PROTOCOLS
    return False


def handle(loop: Loop, current: Callable[[], WaypointConfig], dispatch: Dispatch, request: ConnectRequest) -> None:
    authority = request.authority
    if authority.port in OWN_PORTS and request.local_address[0] == authority.ip:
        request.reject(400, f"authority {authority} is this waypoint's own port")
        return
    peer_ip, peer_port = request.peer_address
    ctx = ClientContext(request.peer_identity, peer_ip, peer_port, authority.ip, authority.port,
                        dict(request.headers))
    channel = Channel(request.accept())
    if declared_tcp(current(), authority.ip, authority.port):
        dispatch(TCP, channel, ctx, b"")
        channel.start()
        return
    detector = Detector(channel, ctx, dispatch, None)
    channel.reader = detector
    detector.timer = loop.call_later(DETECT_TIMEOUT, detector.timed_out)
    channel.start()
