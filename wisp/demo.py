"""`wisp demo`: one HBONE tunnel between two workload identities, shown step by step.

The most complete thing wisp can run until the local mesh (`wisp up`) exists: a CA, a server
holding one SPIFFE identity, a client holding another, mutual TLS, an HTTP/2 CONNECT, bytes both
ways with SHA-256 checked at the far end.
"""

from __future__ import annotations

import hashlib
import time

import trio

from wisp import sockets
from wisp.hbone import HbonePool, HboneServer, PoolKey, connect_headers
from wisp.identity import CertificateAuthority, SpiffeId

_CHUNK = 256 * 1024


def run_demo(total: int) -> int:
    return trio.run(_demo, total)


async def _demo(total: int) -> int:
    ca = CertificateAuthority.generate("cluster.local")
    server_id = SpiffeId("cluster.local", "shop", "checkout")
    client_id = SpiffeId("cluster.local", "shop", "frontend")
    server_bundle, client_bundle = ca.issue(server_id), ca.issue(client_id)
    print(f"CA      root {ca.cert.subject.rfc4514_string()}")
    print(f"server  {server_id}  certificate valid until {server_bundle.not_after:%Y-%m-%d %H:%M} UTC,"
          f" rotates at {server_bundle.rotation_time:%H:%M}")
    print(f"client  {client_id}")
    seen = {}

    async def handler(request):
        seen["peer"] = request.peer_identity
        seen["authority"] = str(request.authority)
        stream = request.accept()
        digest = hashlib.sha256()
        received = 0
        while chunk := await stream.receive_some():
            digest.update(chunk)
            received += len(chunk)
        reply = f"{received} bytes from {request.peer_identity}, sha256 {digest.hexdigest()}"
        await stream.send_all(reply.encode())
        await stream.send_eof()

    listener = sockets.listener(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    async def server_certs():
        return server_bundle

    async def client_certs(identity):
        return client_bundle

    async with HboneServer(handler) as server:
        await server.listen(listener, server_certs)
        print(f"server  HBONE listening on 127.0.0.1:{port} (TLS 1.3, ALPN h2, client certificate required)")
        async with HbonePool(client_certs) as pool:
            key = PoolKey(client_id, frozenset([server_id]), ("127.0.0.1", port))
            stream = await pool.connect(key, connect_headers("10.244.1.7:8080"))
            conn = pool.connections(key)[0]
            print(f"client  connected; server proved identity {conn.peer_identity}")
            block = bytes(range(256)) * (_CHUNK // 256)
            digest = hashlib.sha256()
            start = time.perf_counter()
            sent = 0
            while sent < total:
                piece = block[: min(_CHUNK, total - sent)]
                await stream.send_all(piece)
                digest.update(piece)
                sent += len(piece)
            await stream.send_eof()
            reply = b""
            while chunk := await stream.receive_some():
                reply += chunk
            elapsed = time.perf_counter() - start
            stream.close()
    print(f"server  CONNECT {seen['authority']} from {seen['peer']}: accepted (200)")
    print(f"server  says: {reply.decode()}")
    ok = digest.hexdigest() in reply.decode()
    print(f"client  sent {sent} bytes in {elapsed:.2f} s ({sent * 8 / elapsed / 1e9:.2f} Gb/s), "
          f"sha256 {'matches' if ok else 'DIFFERS'}")
    return 0 if ok else 1
