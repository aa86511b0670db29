"""TCP pass-through: a connection that is not HTTP, authorized at L4 and spliced to one endpoint.

Order: the L4 form of the policies that apply to the dialled Service (`for_service(..., tcp=True)`;
HTTP-only fields are unavailable, as in Istio) — denied: the stream is reset; then an endpoint
of the dialled Service (a HEALTHY workload at its target port), or the dialled pod itself — none:
reset; then a stream to it (`Pipeline.open_upstream`), and the client's stream is joined to it in
a plain `Splice`, the bytes read while detecting written first. Client bytes that arrive while
the upstream is being opened are held (reading paused beyond `MAX_HELD`). Counted as
`istio_tcp_*` with `reporter="waypoint"`.
"""

from __future__ import annotations

import structlog

from wisp.engine.splice import Splice

from .channel import Channel
from .config import WaypointConfig
from .detect import authorize_tcp
from .pipeline import ClientContext, Pipeline, pod_endpoint
from .telemetry import Party, Telemetry

log = structlog.get_logger("waypoint.tcp")

MAX_HELD = 256 * 1024


class _Holding:
    """The client's reader while the upstream is opened: keeps what arrives."""

    __slots__ = ("held", "gone")

    def __init__(self, initial: bytes) -> None:
        self.held = bytearray(initial)
        self.gone: str | None = None

    def data_received(self, data: memoryview | bytes) -> bool:
        self.held += data
        return len(self.held) < MAX_HELD

    def eof_received(self) -> None:
        pass

    def writable(self) -> None:
        pass

    def closed(self, reason: str | None) -> None:
        self.gone = reason or "closed"


def serve(pipeline: Pipeline, telemetry: Telemetry, channel: Channel, ctx: ClientContext, initial: bytes,
          choose) -> None:
    config: WaypointConfig = pipeline.current()
    decision, service = authorize_tcp(config, ctx)
    source = Party(config.workload_at(ctx.source_ip), ctx.identity)
    if not decision.allowed:
        log.info("connection denied by policy", src_identity=str(ctx.identity), dst=ctx.destination,
                 policy=decision.policy, reason=decision.reason)
        channel.abort("denied by authorization policy")
        return
    if service is not None:
        # The client's address: a DestinationRule's consistentHash useSourceIp and the Service's
        # PreferClose apply to TCP too (waypoint.balance).
        endpoint = choose(config, service, ctx.dest_port, source_ip=ctx.source_ip)
    else:
        endpoint = pod_endpoint(config, ctx.dest_ip, ctx.dest_port)
    if endpoint is None:
        log.warning("no endpoint for a TCP connection", dst=ctx.destination, src_identity=str(ctx.identity))
        channel.abort("no healthy upstream")
        return
    holding = _Holding(initial)
    channel.reader = holding
    destination = Party(endpoint.workload, endpoint.identity)
    opened, closed, received, sent, _ = telemetry.tcp_series(source, destination, service)

    def connected(end: object | None, error: str | None) -> None:
        if holding.gone is not None or channel.done:
            if end is not None:
                end.abort("the client went away")
            return
        if end is None:
            log.warning("TCP pass-through connect failed", dst=str(endpoint), error=error)
            channel.abort(f"upstream connect failed: {error}")
            return
        opened.inc()
        client_done = channel.read_done
        held = bytes(holding.held)

        def done(splice: Splice) -> None:
            closed.inc()
            received.inc(splice.upstream)
            sent.inc(splice.downstream)
            if splice.error:
                log.info("TCP pass-through ended", dst=str(endpoint), error=splice.error)

        splice = channel.handover(end, done)
        splice.upstream += len(held)
        splice.start()
        if held:
            end.write(held)
        if client_done:
            end.write_eof()
        channel.end.resume_reading()

    pipeline.open_upstream(endpoint, connected)
