"""HTTP/2 without TLS (prior knowledge) for the echo app: echo requests and gRPC calls.

h2 is the protocol; this is the shell. One task serves a connection: it reads, feeds h2, answers
each stream whose request has ended (answers need nothing but the request, so streams need no
tasks of their own), and sends response bodies as far as flow control allows. A protocol error
ends the connection with GOAWAY.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog
import trio

from . import grpc
from .config import READ_SIZE, EchoConfig
from .faults import Plan, grpc_status_for
from .report import FILLER, MAX_BODY, Request, Response, keeps_body, respond, stats, with_plan

log = structlog.get_logger("wisp.echo")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MiB = 1024 * 1024
_STREAM_WINDOW = 4 * MiB
_CONNECTION_WINDOW = 16 * MiB
_MAX_FRAME = 1 * MiB
# DATA queued for the socket before it is written out; bounds memory when the peer's window is huge.
_SEND_BATCH = 1 * MiB


@dataclass(slots=True)
class _Incoming:
    method: str
    path: str
    headers: list[tuple[str, str]]
    is_grpc: bool
    body_limit: int  # bytes of body to keep: 0 when only counting
    body: bytearray = field(default_factory=bytearray)
    body_bytes: int = 0


class _Outgoing:
    """The part of a response body not yet handed to h2, and the trailers to end it with."""

    __slots__ = ("body", "filler", "trailers")

    def __init__(self, body: bytes, filler: int, trailers: list[tuple[str, str]] | None) -> None:
        self.body = memoryview(body)
        self.filler = filler
        self.trailers = trailers

    @property
    def remaining(self) -> int:
        return len(self.body) + self.filler

    def take(self, size: int) -> memoryview:
        if self.body:
            piece, self.body = self.body[:size], self.body[size:]
            return piece
        size = min(size, self.filler, len(FILLER))
        self.filler -= size
        return FILLER[:size]


async def serve_http2(stream: trio.abc.Stream, initial: bytes, peer: str, config: EchoConfig, *,
                      grpc_only: bool) -> None:
    """Serve one HTTP/2 connection whose first bytes (`initial`, preface included) were read.

    With `grpc_only`, requests that are not gRPC get 415, as gRPC servers answer them.
    """
    await _Connection(stream, peer, config, grpc_only).run(initial)


class _Connection:
    def __init__(self, stream: trio.abc.Stream, peer: str, config: EchoConfig, grpc_only: bool):
        self.stream = stream
        self.peer = peer
        self.config = config
        self.grpc_only = grpc_only
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=True))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: _MAX_FRAME,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
        })
        # h2 checks inbound frames against this before our SETTINGS are acknowledged.
        self.h2.max_inbound_frame_size = _MAX_FRAME
        self.incoming: dict[int, _Incoming] = {}
        self.outgoing: dict[int, _Outgoing] = {}
        # Answers held back by a delay switch: (due, stream id) in a heap, the request by stream.
        self.due: list[tuple[float, int]] = []
        self.delayed: dict[int, tuple[_Incoming, Plan]] = {}

    async def run(self, data: bytes) -> None:
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(_CONNECTION_WINDOW - 65535)
        try:
            while True:
                going_on = self._handle(self.h2.receive_data(data)) if data else True
                self._answer_due()
                while self._send_some():
                    await self._flush()
                await self._flush()
                if not going_on:
                    return
                data = b""
                # One task serves every stream, so a delayed answer is a deadline, not a sleep.
                with trio.move_on_at(self.due[0][0] if self.due else math.inf):
                    data = await self.stream.receive_some(READ_SIZE)
                    if not data:
                        return
        except h2.exceptions.ProtocolError as exc:
            log.debug("bad HTTP/2 connection", peer=self.peer, error=repr(exc))
            try:
                self.h2.close_connection(error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
            except h2.exceptions.ProtocolError:
                return  # h2 considers the connection closed already; there is no GOAWAY to send
            await self._flush()

    async def _flush(self) -> None:
        if out := self.h2.data_to_send():
            await self.stream.send_all(out)

    def _handle(self, events: list[h2.events.Event]) -> bool:
        """Act on h2's events; False once the client has ended the connection."""
        for event in events:
            kind = type(event)
            if kind is h2.events.DataReceived:
                request = self.incoming.get(event.stream_id)
                if request is not None:
                    request.body_bytes += len(event.data)
                    if len(request.body) < request.body_limit:
                        request.body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is h2.events.RequestReceived:
                self._begin(event)
            elif kind is h2.events.StreamEnded:
                request = self.incoming.pop(event.stream_id, None)
                if request is not None:
                    plan = self.config.faults.plan(request.headers, request.path.partition("?")[0])
                    if plan.delay_s and not plan.error:
                        self.delayed[event.stream_id] = (request, plan)
                        heapq.heappush(self.due, (trio.current_time() + plan.delay_s,
                                                  event.stream_id))
                    else:
                        self._answer(event.stream_id, request, plan)
            elif kind is h2.events.StreamReset:
                self.incoming.pop(event.stream_id, None)
                self.outgoing.pop(event.stream_id, None)
                self.delayed.pop(event.stream_id, None)
            elif kind is h2.events.ConnectionTerminated:
                return False
        return True

    def _begin(self, event: h2.events.RequestReceived) -> None:
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[str, str]] = []
        for name, value in event.headers:
            if name.startswith(b":"):
                pseudo[name] = value
            else:
                headers.append((name.decode("ascii", "replace"), value.decode("utf-8", "replace")))
        # HTTP/2 carries Host as :authority; report it under one name whatever the protocol.
        if b":authority" in pseudo and not any(name == "host" for name, _ in headers):
            headers.insert(0, ("host", pseudo[b":authority"].decode("utf-8", "replace")))
        path = pseudo.get(b":path", b"").decode("utf-8", "replace")
        is_grpc = any(name == "content-type" and value.startswith(grpc.CONTENT_TYPE)
                      for name, value in headers)
        if is_grpc:
            limit = grpc.MAX_MESSAGE + 5  # one message and its prefix
        else:
            limit = MAX_BODY + 1 if keeps_body(path) and not self.grpc_only else 0
        self.incoming[event.stream_id] = _Incoming(
            method=pseudo.get(b":method", b"").decode("ascii", "replace"), path=path,
            headers=headers, is_grpc=is_grpc, body_limit=limit)

    def _answer_due(self) -> None:
        now = trio.current_time()
        while self.due and self.due[0][0] <= now:
            _, stream_id = heapq.heappop(self.due)
            held = self.delayed.pop(stream_id, None)
            if held is not None:  # else the client reset the stream while it waited
                self._answer(stream_id, *held)

    def _answer(self, stream_id: int, request: _Incoming, plan: Plan) -> None:
        if request.is_grpc:
            self._answer_grpc(stream_id, request, plan)
        elif self.grpc_only:
            self.h2.send_headers(stream_id, [(":status", "415")], end_stream=True)
        else:
            response = respond(Request(
                protocol="HTTP/2", method=request.method, target=request.path,
                headers=tuple(request.headers), peer=self.peer,
                body=bytes(request.body) if len(request.body) <= MAX_BODY else b"",
                body_bytes=request.body_bytes,
            ), self.config.name)
            if response.status == 200 and request.path.partition("?")[0] == "/stats":
                faults = self.config.faults
                response = stats(faults.served, faults.failed, self.config.name)
            self._start_response(stream_id, request, with_plan(response, plan, self.config.name))

    def _start_response(self, stream_id: int, request: _Incoming, response: Response) -> None:
        head = [(":status", str(response.status)), *response.headers]
        if request.method == "HEAD" or response.length == 0:
            self.h2.send_headers(stream_id, head, end_stream=True)
        else:
            self.h2.send_headers(stream_id, head)
            self.outgoing[stream_id] = _Outgoing(response.body, response.filler, None)
        if self.config.log_requests:
            log.info("request", protocol="HTTP/2", method=request.method, path=request.path,
                     status=response.status, peer=self.peer, body_bytes=request.body_bytes)

    def _answer_grpc(self, stream_id: int, request: _Incoming, plan: Plan) -> None:
        if plan.error:
            reply = grpc.Reply(grpc.Status.INVALID_ARGUMENT, plan.error)
        elif code := (plan.grpc_status if plan.grpc_status is not None
                      else grpc_status_for(plan.status) if plan.status is not None else 0):
            reply = grpc.Reply(grpc.Status(code), f"injected by the echo app: {plan.fault}")
        else:
            reply = grpc.call(request.path, bytes(request.body), body_bytes=request.body_bytes,
                              peer=self.peer, hostname=self.config.name)
        head = [(":status", "200"), ("content-type", grpc.CONTENT_TYPE)]
        if plan.fault:
            head.append(("x-echo-fault", plan.fault))
        if reply.status is grpc.Status.OK:
            self.h2.send_headers(stream_id, head)
            self.outgoing[stream_id] = _Outgoing(reply.body, 0, [("grpc-status", "0")])
        else:
            # Trailers-only: an error needs no body, so status goes in the one HEADERS frame.
            head += [("grpc-status", str(int(reply.status))),
                     ("grpc-message", grpc.grpc_message(reply.message))]
            self.h2.send_headers(stream_id, head, end_stream=True)
        if self.config.log_requests:
            log.info("grpc call", method=request.path, status=reply.status.name, peer=self.peer)

    def _send_some(self) -> bool:
        """Hand h2 as much body as flow control allows, up to one batch.

        True when the batch filled up and more could be sent without hearing from the client.
        """
        budget = _SEND_BATCH
        for stream_id in list(self.outgoing):
            out = self.outgoing[stream_id]
            while out.remaining:
                size = min(self.h2.local_flow_control_window(stream_id),
                           self.h2.max_outbound_frame_size, budget)
                if size <= 0:
                    break
                piece = out.take(size)
                budget -= len(piece)
                self.h2.send_data(stream_id, piece,
                                  end_stream=not out.remaining and out.trailers is None)
            if not out.remaining:
                if out.trailers is not None:
                    self.h2.send_headers(stream_id, out.trailers, end_stream=True)
                del self.outgoing[stream_id]
            if budget <= 0:
                return True
        return False
