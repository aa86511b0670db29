"""HTTP/1.1 for the echo app: h11 is the protocol, this is the shell that moves the bytes.

Connections are kept alive between requests unless the client (or HTTP/1.0) says otherwise.
A request h11 cannot parse gets a 400 and the connection is closed.
"""

from __future__ import annotations

from http import HTTPStatus

import h11
import structlog
import trio

from .config import READ_SIZE, EchoConfig
from .report import MAX_BODY, Request, Response, keeps_body, respond, stats, with_plan

log = structlog.get_logger("wisp.echo")

# Largest request line plus headers we accept.
_MAX_HEAD = 64 * 1024
# Bodies this small go out in the same write as the response head.
_SMALL_BODY = 64 * 1024
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


async def serve_http1(stream: trio.abc.Stream, initial: bytes, peer: str,
                      config: EchoConfig) -> None:
    """Serve requests on one connection until either side closes it. `initial` was read already."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD)
    conn.receive_data(initial)
    try:
        while True:
            event = await _next_event(conn, stream)
            if type(event) is not h11.Request:
                return  # the client closed between requests
            request = await _read_request(conn, stream, event, peer)
            faults = config.faults
            if request.path == "/stats":
                response = stats(faults.served, faults.failed, config.name)
            else:
                plan = faults.plan(request.headers, request.path)
                if plan.delay_s and not plan.error:
                    await trio.sleep(plan.delay_s)
                response = with_plan(respond(request, config.name), plan, config.name)
            await _send_response(conn, stream, response, head_only=request.method == "HEAD")
            if config.log_requests:
                log.info("request", protocol=request.protocol, method=request.method,
                         path=request.target, status=response.status, peer=peer,
                         body_bytes=request.body_bytes)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return  # Connection: close, HTTP/1.0, or a client that closed its side
            conn.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        log.debug("bad HTTP/1.1 request", peer=peer, error=str(exc))
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f"bad request: {exc}\n".encode()
            status = exc.error_status_hint
            head = h11.Response(status_code=status, reason=_REASONS.get(status, b""), headers=[
                ("content-type", "text/plain; charset=utf-8"),
                ("content-length", str(len(body))), ("connection", "close")])
            await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body))
                                  + conn.send(h11.EndOfMessage()))


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream):
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
        conn.receive_data(await stream.receive_some(READ_SIZE))


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream, head: h11.Request,
                        peer: str) -> Request:
    target = head.target.decode("utf-8", "replace")
    keep = keeps_body(target)
    body = bytearray()
    body_bytes = 0
    while True:
        event = await _next_event(conn, stream)
        if type(event) is h11.Data:
            body_bytes += len(event.data)
            if keep and len(body) <= MAX_BODY:
                body += event.data
        elif type(event) is h11.EndOfMessage:
            break
    return Request(
        protocol=f"HTTP/{head.http_version.decode()}",
        method=head.method.decode("ascii", "replace"),
        target=target,
        headers=tuple((name.decode("ascii", "replace"), value.decode("utf-8", "replace"))
                      for name, value in head.headers),
        peer=peer,
        body=bytes(body) if len(body) <= MAX_BODY else b"",  # too much to echo: respond says so
        body_bytes=body_bytes,
    )


async def _send_response(conn: h11.Connection, stream: trio.abc.Stream, response: Response, *,
                         head_only: bool) -> None:
    out = conn.send(h11.Response(status_code=response.status, headers=list(response.headers),
                                 reason=_REASONS.get(response.status, b"")))
    if head_only or response.length == 0:
        await stream.send_all(out + conn.send(h11.EndOfMessage()))
        return
    if response.length <= _SMALL_BODY:
        body = b"".join(response.chunks())
        await stream.send_all(out + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        return
    await stream.send_all(out)
    for chunk in response.chunks():
        # Passthrough hands back our own buffer, so a large body is never copied into one string.
        for piece in conn.send_with_data_passthrough(h11.Data(data=chunk)):
            await stream.send_all(piece)
    await stream.send_all(conn.send(h11.EndOfMessage()))
