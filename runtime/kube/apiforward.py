"""The API server forwarder: the control plane's address on the mesh's node network.

The test bed's kube-apiserver listens on 127.0.0.1 of the machine's own network namespace, which
no node or pod can reach. The forwarder listens at `10.250.0.1:6443` inside the switch namespace
(`<prefix>-net`, where the node network's bridge has 10.250.0.1) and relays every connection to
the API server's loopback port. Pods reach it as the `kubernetes` Service, 10.96.0.1:443, through
the DNAT the kube-proxy (`proxy.py`) programs on every node; TLS passes through untouched (the
API server's certificate names 10.96.0.1 and kubernetes.default.svc).

Contract:
- `ApiForwarder(netns, listen, upstream).run(task_status=...)` creates the listener in `netns`
  (the calling thread enters the namespace for the socket() and bind() calls only, then returns:
  `wisp.netns.socket_in_netns`), reports the bound `(host, port)` through `task_status`, and
  serves until cancelled. The upstream is dialled from the machine's own namespace.
- Each connection is two chunked copies (64 KiB reads, never per byte); an EOF on one side is
  passed on as a half-close of the other (`send_eof`), and the connection ends when both
  directions have, or at once when either side fails (reset, refused upstream): then both are
  closed. A failing connection is logged once and never ends the listener.
- `connections` counts accepted connections; `active` those being relayed.
"""

from __future__ import annotations

import errno
import os

import structlog
import trio

from wisp import netns as wnetns
from wisp import sockets

log = structlog.get_logger("runtime.kube.apiforward")

API_FORWARD_PORT = 6443
CHUNK = 65536


class ApiForwarder:
    def __init__(self, netns: str, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.netns = netns
        self.listen = listen
        self.upstream = upstream
        self.connections = 0
        self.active = 0

    def _listener(self) -> trio.SocketListener:
        fd = wnetns.open_netns(wnetns.path_of(self.netns))
        try:
            sock = wnetns.socket_in_netns(fd, sockets.listener, self.listen, reuse_port=False, backlog=256)
        finally:
            os.close(fd)
        return trio.SocketListener(trio.socket.from_stdlib_socket(sock))

    async def run(self, *, task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED) -> None:
        listener = self._listener()
        async with listener:
            bound = listener.socket.getsockname()[:2]
            log.info("api forwarder listening", netns=self.netns, address=f"{bound[0]}:{bound[1]}",
                     upstream=f"{self.upstream[0]}:{self.upstream[1]}")
            task_status.started(bound)
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        # Out of fds or a transient accept error: wait, never end the listener.
                        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                            raise
                        log.warning("api forwarder accept failed", error=str(exc))
                        await trio.sleep(0.1)
                        continue
                    self.connections += 1
                    nursery.start_soon(self._relay, stream)

    async def _relay(self, downstream: trio.SocketStream) -> None:
        self.active += 1
        try:
            async with downstream:
                try:
                    upstream = await trio.open_tcp_stream(*self.upstream)
                except OSError as exc:
                    log.warning("api forwarder cannot reach the API server",
                                upstream=f"{self.upstream[0]}:{self.upstream[1]}", error=str(exc))
                    return
                async with upstream, trio.open_nursery() as nursery:
                    nursery.start_soon(_copy, downstream, upstream, nursery.cancel_scope)
                    nursery.start_soon(_copy, upstream, downstream, nursery.cancel_scope)
        finally:
            self.active -= 1


async def _copy(source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Chunks from `source` to `sink`; EOF becomes a half-close. A failure ends both directions."""
    try:
        while True:
            chunk = await source.receive_some(CHUNK)
            if not chunk:
                break
            await sink.send_all(chunk)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        # Both directions fail together (the cancel ends the other): the first one alone says why.
        if not scope.cancel_called:
            log.info("api forwarder connection failed", error=str(exc) or type(exc).__name__)
        scope.cancel()
