"""wisp.h2.trio: the trio shell around the codec, over a plain socketpair (the TLS transport is
tested with HBONE in tests/test_hbone.py)."""

from __future__ import annotations

import socket

import pytest
import trio

from wisp.h2 import frames
from wisp.h2.errors import ConnectionClosed, StreamReset
from wisp.h2.trio import H2Connection, H2Settings, H2Stream

CONNECT = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]


class SocketTransport:
    """What H2Connection needs of a transport, over a non-blocking plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.socket = sock
        self._closed = False

    def peer_address(self) -> tuple[str, int]:
        return ("peer", 0)

    def local_address(self) -> tuple[str, int]:
        return ("local", 0)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while True:
            if self._closed:
                raise trio.ClosedResourceError("closed")
            try:
                return self.socket.recv(max_bytes or 65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.socket)
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from None

    async def send_all(self, data) -> None:
        with memoryview(data) as view:
            while view:
                if self._closed:
                    raise trio.ClosedResourceError("closed")
                try:
                    view = view[self.socket.send(view):]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.socket)
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from None
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()


SMALL = H2Settings(stream_window=65535, connection_window=65535, max_frame_size=16384,
                   max_concurrent_streams=10, ping_interval=30)


async def serve(nursery: trio.Nursery, handler, settings: H2Settings = SMALL) -> tuple[H2Connection, H2Connection]:
    a, b = socket.socketpair()
    server = H2Connection(SocketTransport(a), client_side=False, settings=settings, on_request=handler)
    client = H2Connection(SocketTransport(b), client_side=True, settings=settings)
    nursery.start_soon(server.run)
    await nursery.start(client.run)
    return client, server


async def echo(stream: H2Stream, headers: dict[str, str]) -> None:
    """Everything the client sent, once it ended its side (no deadlock on full windows)."""
    stream.conn.send_headers(stream, [(":status", "200")])
    got = b""
    while data := await stream.receive_some():
        got += data
    await stream.send_all(got)
    await stream.send_eof()


async def test_request_response_and_half_close():
    with trio.fail_after(10):
        await request_response_and_half_close()


async def request_response_and_half_close():
    async with trio.open_nursery() as nursery:
        client, _ = await serve(nursery, echo)
        stream = client.open_stream(CONNECT)
        assert await client.wait_response(stream) == 200
        await stream.send_all(b"x" * 200_000)   # beyond both windows: flow control must turn
        await stream.send_eof()
        got = b""
        while data := await stream.receive_some():
            got += data
        assert got == b"x" * 200_000
        assert stream.finished
        nursery.cancel_scope.cancel()


async def test_graceful_goaway_fails_streams_above_last_and_lets_earlier_ones_finish():
    async def hold(stream: H2Stream, headers: dict[str, str]) -> None:
        stream.conn.send_headers(stream, [(":status", "200")])
        await stream.receive_some()
        await stream.send_all(b"done")
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        client, server = await serve(nursery, hold)
        first = client.open_stream(CONNECT)
        assert await client.wait_response(first) == 200
        server.shutdown("draining")
        late = client.open_stream(CONNECT)   # crosses the GOAWAY on the wire
        with trio.fail_after(5):
            with pytest.raises(ConnectionClosed, match="not processed before GOAWAY"):
                await client.wait_response(late)
        assert client.goaway_received and not client.accepting_streams
        await first.send_all(b"go")
        assert await first.receive_some() == b"done"
        nursery.cancel_scope.cancel()


async def test_closing_an_unfinished_stream_resets_it_on_the_peer():
    reset = trio.Event()
    errors: list[BaseException] = []

    async def wait(stream: H2Stream, headers: dict[str, str]) -> None:
        stream.conn.send_headers(stream, [(":status", "200")])
        try:
            await stream.receive_some()
        except trio.BrokenResourceError as exc:
            errors.append(exc.__cause__)
            reset.set()

    async with trio.open_nursery() as nursery:
        client, _ = await serve(nursery, wait)
        stream = client.open_stream(CONNECT)
        await client.wait_response(stream)
        stream.close()
        with trio.fail_after(5):
            await reset.wait()
        assert isinstance(errors[0], StreamReset) and errors[0].error_code == frames.CANCEL
        nursery.cancel_scope.cancel()


async def test_sender_waits_while_the_peer_does_not_read():
    release = trio.Event()

    async def slow(stream: H2Stream, headers: dict[str, str]) -> None:
        stream.conn.send_headers(stream, [(":status", "200")])
        await release.wait()
        while await stream.receive_some():
            pass

    async with trio.open_nursery() as nursery:
        client, _ = await serve(nursery, slow)
        stream = client.open_stream(CONNECT)
        await client.wait_response(stream)
        with trio.move_on_after(0.5) as waited:
            await stream.send_all(b"y" * 100_000)   # more than the 65535-byte windows
        assert waited.cancelled_caught
        assert len(client._out) == 0   # what was sent fit the window; the rest never queued
        release.set()
        with trio.fail_after(5):
            await stream.send_all(b"z" * 100_000)
        nursery.cancel_scope.cancel()


async def test_sender_waits_once_two_mib_are_queued_for_a_peer_that_does_not_read():
    a, b = socket.socketpair()
    big = H2Settings(stream_window=1 << 24, connection_window=1 << 24, ping_interval=30)
    client = H2Connection(SocketTransport(b), client_side=True, settings=big)
    # The peer announces huge windows, then never reads a byte.
    settings = bytearray()
    frames.append_settings(settings, {frames.SETTINGS_INITIAL_WINDOW_SIZE: 1 << 30})
    frames.append_window_update(settings, 0, (1 << 30) - 65535)
    a.sendall(bytes(settings))
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        stream = client.open_stream(CONNECT)
        with trio.move_on_after(1) as waited:
            await stream.send_all(b"q" * (8 << 20))
        assert waited.cancelled_caught
        assert 2 << 20 < len(client._out) <= (2 << 20) + (256 << 10) + 1000
        nursery.cancel_scope.cancel()
    a.close()
