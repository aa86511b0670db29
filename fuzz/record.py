"""Seed corpora recorded from real peers: `python -m fuzz record [TARGET ...]` rewrites fuzz/corpus/.

Most seeds are bytes a real counterpart produced: the HTTP/2 client and server codecs exchanging
HBONE CONNECT streams (wisp.h2 on both sides, and python-hyper's h2 as the interop peer the tests
use), h11 writing HTTP/1.1 requests and responses, the ZDS encoder, the control plane's snapshot
and delta encoder over the model the operator builds from the benchmark's cluster generator, the
bodies ztunnel's CA client sends (its openssl-made CSR), the example manifests themselves. Laid
out here by hand, in the shape the real producer uses: the CNI invocations (a container
runtime's network configuration; libcni is not run here), the AdmissionReviews around the
example manifests and one service-account token (random signature bytes). For those three,
fuzz/record_live.py adds what libcni and a real kube-apiserver sent and issued (`live-*` files,
which a re-recording here keeps). Files are named by content hash, so re-recording changes only what
changed; each is under 8 KiB.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from .record_live import LIVE_PREFIX
from .targets import frame_pieces

REPO = Path(__file__).resolve().parent.parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_SEED = 8192


def _take(conn) -> bytes:
    data = bytes(conn.out)
    del conn.out[:]
    return data


# -- HTTP/2 --------------------------------------------------------------------------------------
def _hbone_exchanges() -> tuple[list[bytes], list[bytes]]:
    """(what clients sent a server, what servers sent a client), as `pieces`-framed reads."""
    from wisp.engine.hbone import CONNECTION_WINDOW, client_settings, server_settings
    from wisp.h2.connection import Connection
    from wisp.h2.events import DataReceived, HeadersReceived
    from wisp.hbone.headers import connect_headers, parse_authority

    to_server: list[bytes] = []
    to_client: list[bytes] = []
    scenarios = [
        ("accept", 200, b""), ("refuse", 401, b"identity spiffe://cluster.local/ns/a/sa/b may not connect"),
        ("bulk", 200, b""), ("trailers", 200, b""),
    ]
    for name, status, reason in scenarios:
        client = Connection(client=True, local=client_settings(), connection_window=CONNECTION_WINDOW)
        server = Connection(client=False, local=server_settings(), connection_window=CONNECTION_WINDOW)
        client.initiate()
        server.initiate()
        c_reads: list[bytes] = []
        s_reads: list[bytes] = []
        headers = connect_headers(parse_authority("10.244.1.7:8080" if name != "bulk" else "[fd00::7]:80"),
                                  baggage_values={"k8s.namespace.name": "shop", "k8s.deployment.name": "cart"},
                                  client=("10.244.1.5", 41234), service_host="cart.shop.svc.cluster.local",
                                  traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
        sids = [client.open_stream(headers) for _ in range(1 if name != "bulk" else 3)]
        for _round in range(4):
            data = _take(client)
            if data:
                c_reads.append(data)
            for event in server.receive(data):
                if isinstance(event, HeadersReceived) and event.headers[0][1] == "CONNECT":
                    answer = [(b":status", str(status).encode())]
                    if reason:
                        server.send_headers(event.stream_id, answer + [(b"content-type", b"text/plain")])
                        server.send_data(event.stream_id, reason, end_stream=True)
                    else:
                        server.send_headers(event.stream_id, answer)
                        server.send_data(event.stream_id, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                elif isinstance(event, DataReceived):
                    server.consumed(event.stream_id, event.flow_controlled_length)
            data = _take(server)
            if data:
                s_reads.append(data)
            for event in client.receive(data):
                if isinstance(event, HeadersReceived) and _round == 0:
                    for sid in sids:
                        if client.stream_state(sid) == "open":
                            client.send_data(sid, b"GET / HTTP/1.1\r\nhost: cart\r\n\r\n" * (20 if name == "bulk" else 1))
                    if name == "trailers":
                        client.send_headers(sids[0], [(b"x-trailer", b"1")], end_stream=True)
                elif isinstance(event, DataReceived):
                    client.consumed(event.stream_id, event.flow_controlled_length)
        client.ping(b"wispping")
        client.goaway()
        c_reads.append(_take(client))
        server.goaway()
        s_reads.append(_take(server))
        # The server target prepends the preface to the first read itself.
        c_reads[0] = c_reads[0][len(PREFACE):]
        to_server.append(frame_pieces(c_reads))
        to_client.append(frame_pieces(s_reads))
    return to_server, to_client


def _hyper_h2_requests() -> list[bytes]:
    """Requests as python-hyper's h2 client writes them (preface stripped; the targets add it)."""
    import h2.config
    import h2.connection

    seeds = []
    requests = [
        ([(":method", "GET"), (":path", "/items?id=7"), (":scheme", "http"), (":authority", "cart.shop:8080"),
          ("user-agent", "curl/8.5"), ("accept", "*/*")], None),
        ([(":method", "POST"), (":path", "/shop.Cart/Add"), (":scheme", "http"), (":authority", "cart:50051"),
          ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S")], b"\0\0\0\0\3abc"),
        ([(":method", "CONNECT"), (":authority", "10.244.1.7:8080")], None),
        ([(":method", "PUT"), (":path", "/"), (":scheme", "https"), ("host", "cart"), ("cookie", "a=1"),
          ("cookie", "b=2")], b"x" * 300),
    ]
    for headers, body in requests:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=body is None)
        if body is not None:
            conn.send_data(1, body, end_stream=True)
        seeds.append(frame_pieces([conn.data_to_send()[len(PREFACE):]]))
    return seeds


# -- HTTP/1.1 ------------------------------------------------------------------------------------
def _h11_messages() -> tuple[list[bytes], list[bytes]]:
    import h11

    requests = []
    for method, target, headers, body in [
        ("GET", "/", [("Host", "cart.shop"), ("User-Agent", "curl/8.5"), ("Accept", "*/*")], None),
        ("POST", "/orders?x=1", [("Host", "cart"), ("Content-Length", "11")], [b"hello world"]),
        ("PUT", "/upload", [("Host", "cart"), ("Transfer-Encoding", "chunked")], [b"chunk one", b"two"]),
        ("OPTIONS", "*", [("Host", "cart"), ("Connection", "close")], None),
    ]:
        conn = h11.Connection(h11.CLIENT)
        out = conn.send(h11.Request(method=method, target=target, headers=headers))
        reads = [out]
        for part in body or []:
            reads.append(conn.send(h11.Data(data=part)))
        if body is not None:
            reads.append(conn.send(h11.EndOfMessage(headers=[("X-Sum", "1")] if method == "PUT" else [])))
        requests.append(frame_pieces(reads))
    # Two requests pipelined in one read.
    a = h11.Connection(h11.CLIENT)
    pipelined = a.send(h11.Request(method="GET", target="/a", headers=[("Host", "x")])) + a.send(h11.EndOfMessage())
    requests.append(frame_pieces([pipelined + pipelined.replace(b"/a", b"/b")]))

    responses = []
    for status, headers, body, method in [
        (200, [("Content-Length", "2")], [b"ok"], b"\x00"),
        (404, [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked")], [b"not ", b"found"], b"\x00"),
        (204, [], [], b"\x00"),
        (200, [("Content-Length", "10")], [], b"\x01"),   # an answer to HEAD
        (503, [("Connection", "close")], [b"upstream connect error"], b"\x00"),
    ]:
        server = h11.Connection(h11.SERVER)
        server.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" if method == b"\x00" else b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        server.next_event()
        reads = [server.send(h11.Response(status_code=status, headers=headers))]
        for part in body:
            reads.append(server.send(h11.Data(data=part)))
        reads.append(server.send(h11.EndOfMessage()) or b"")
        responses.append(method + frame_pieces(reads))
    return requests, responses


# -- CNI -----------------------------------------------------------------------------------------
def _cni_invocations() -> list[bytes]:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
            "ips": [{"address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    args = b"IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-7d4b9c8f6d-x2x9z;K8S_POD_INFRA_CONTAINER_ID=c0ffee"
    seeds = []
    for command, version in ((0, "1.0.0"), (0, "0.4.0"), (1, "0.3.1"), (2, "1.0.0"), (3, "0.4.0")):
        conf = {"cniVersion": version, "name": "k8s-pod-network", "type": "wisp-cni",
                "agent_socket": "/var/run/wisp/cni.sock", "log_level": "info", "prevResult": prev}
        seeds.append(bytes([command]) + args + b"\0" + json.dumps(conf).encode())
    return seeds


# -- ZDS -----------------------------------------------------------------------------------------
def _zds_sessions() -> list[bytes]:
    from wisp.zds import protocol
    from wisp.zds.protocol import Ack, Add, Del, Hello, Keep, SnapshotSent, WorkloadInfo

    info = WorkloadInfo("cart-7d4b9c8f6d-x2x9z", "shop", "cart")
    enc = protocol.encode
    return [
        frame_pieces([enc(Hello()), enc(Add("0b0e6d7c-1f2a-4c3b-9d8e-7f6a5b4c3d2e", info)), enc(Ack("")),
                      enc(SnapshotSent()), enc(Ack(""))]),
        frame_pieces([enc(Hello()), enc(Keep("0b0e6d7c-1f2a-4c3b-9d8e-7f6a5b4c3d2e")), enc(Ack("netns gone")),
                      enc(Del("0b0e6d7c-1f2a-4c3b-9d8e-7f6a5b4c3d2e"))]),
    ]


# -- the config stream ---------------------------------------------------------------------------
def _config_lines() -> list[bytes]:
    from bench.controlplane.scenario import Scale, cluster
    from wisp.controlplane.protocol import encode_close, encode_delta, encode_resource, encode_snapshot
    from wisp_operator.cluster import ClusterState
    from wisp_operator.reconcile import reconcile

    model = reconcile(ClusterState.of(cluster(Scale(pods=4, services=2, policies=2, namespaces=1, nodes=2)))).model
    resources = [encode_resource(r) for r in model.resources()]
    seeds = []
    for resource in resources:
        line = encode_snapshot("e1-1", [resource])
        if len(line) < MAX_SEED:
            seeds.append(line)
    first = resources[0]
    delta = encode_delta("e1-2", "e1-1", [first], [])
    removal = encode_delta("e1-3", "e1-2", [], [_key(first)])
    seeds.append(encode_snapshot("e1-1", resources[:2]) + delta + removal + b'{"type":"ping"}\n'
                 + encode_close("acks overdue"))
    return [s for s in seeds if len(s) < MAX_SEED]


def _key(resource: dict):
    from wisp.model import ResourceKey

    return ResourceKey(resource["kind"], resource["key"])


# -- the CA --------------------------------------------------------------------------------------
def _ca_requests() -> list[bytes]:
    """The bodies ztunnel's CA client sends (wisp/controlplane/client.py fetch_certificate): its
    key and CSR from `openssl req`, with and without a lifetime, captured where post_json would
    put them on the wire (its compact JSON encoding)."""
    import trio

    from wisp.controlplane import client
    from wisp.identity import SpiffeId

    bodies: list[bytes] = []

    async def capture(endpoint, path, document, **_):
        bodies.append(json.dumps(document, separators=(",", ":")).encode())
        return 503, b'{"error": "recorded, not sent"}'

    endpoint = client.Endpoint("127.0.0.1:15012", b"", "token")
    real, client.post_json = client.post_json, capture
    try:
        for identity, lifetime in ((SpiffeId("cluster.local", "shop", "cart"), None),
                                   (SpiffeId("cluster.local", "wisp-system", "ztunnel"), 3600)):
            try:
                trio.run(client.fetch_certificate, endpoint, identity, lifetime)
            except client.ControlPlaneError:
                pass  # the 503 above: the body is what was wanted
    finally:
        client.post_json = real
    return bodies


# -- manifests -----------------------------------------------------------------------------------
def _manifests() -> list[bytes]:
    return [p.read_bytes() for p in sorted((REPO / "examples").rglob("*.yaml")) if p.stat().st_size < MAX_SEED]


def _admission_reviews() -> list[bytes]:
    import yaml

    seeds = []
    for text in _manifests():
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict):
                review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                          "request": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "operation": "CREATE",
                                      "object": doc}}
                seeds.append(json.dumps(review).encode())
    return seeds


def _tokens() -> list[bytes]:
    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()

    header = {"alg": "RS256", "kid": "9tTu0gqNbDVnbPmgJbNFgbmKEqLjQ_nO8mRmw0gYj0w"}
    claims = {"aud": ["wisp-operator"], "exp": 1764892800, "iat": 1764889200, "iss": "https://kubernetes.default.svc",
              "kubernetes.io": {"namespace": "wisp-system", "pod": {"name": "ztunnel-x2x9z", "uid": "c0ffee"},
                                "serviceaccount": {"name": "ztunnel", "uid": "beef"}},
              "nbf": 1764889200, "sub": "system:serviceaccount:wisp-system:ztunnel"}
    sig = base64.urlsafe_b64encode(hashlib.sha512(b"not a signature").digest() * 4).rstrip(b"=").decode()
    return [f"{b64(header)}.{b64(claims)}.{sig}".encode()]


def _jwt_requests() -> list[bytes]:
    """Tokens PyJWT signed with keys made here, each with the JWKS that verifies it (or not)."""
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from jwt.algorithms import ECAlgorithm, RSAAlgorithm

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    document = json.dumps({"keys": [
        {**RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True), "kid": "rsa-1", "alg": "RS256"},
        {**ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec-1", "alg": "ES256"}]}).encode()
    now = int(time.time())
    claims = {"iss": "https://issuer.example/foo", "sub": "alice", "aud": ["shop-api"], "iat": now,
              "exp": now + 10 * 365 * 86400, "org": {"team": "blue"}, "scope": "read write"}
    tokens = [
        jwt.encode(claims, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
        jwt.encode(claims, ec_key, algorithm="ES256", headers={"kid": "ec-1"}),
        jwt.encode({**claims, "exp": now - 3600}, rsa_key, algorithm="RS256", headers={"kid": "rsa-1"}),
        jwt.encode(claims, b"s" * 32, algorithm="HS256", headers={"kid": "rsa-1"}),
    ]
    return [frame_pieces([token.encode(), document]) for token in tokens] + [frame_pieces([b"not.a.token", b"{}"])]


def _header_values() -> list[bytes]:
    from wisp.hbone.headers import connect_headers, parse_authority

    headers = connect_headers(parse_authority("[fd00::7]:8080"), baggage_values={"k8s.namespace.name": "shop"},
                              client=("10.244.1.5", 41234), service_host="cart.shop.svc.cluster.local")
    return [value for _, value in headers[1:]] + [b"10.244.1.7:15008"]


def _write(directory: Path, seeds: Iterable[bytes]) -> int:
    # Seeds captured from a live API server (fuzz/record_live.py) stay: only that recorder
    # rewrites them.
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.iterdir():
        if not old.name.startswith(LIVE_PREFIX):
            old.unlink()
    count = 0
    for seed in seeds:
        (directory / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
        count += 1
    return count


def record_all(corpus: Path, names: Iterable[str] = ()) -> None:
    """Re-record the corpora of `names` (every target's when empty)."""
    # One exchange gives both sides' seeds: recorded once, so the two corpora are the two halves
    # of the same conversations.
    hbone, h11 = functools.cache(_hbone_exchanges), functools.cache(_h11_messages)
    recorders = {
        "hbone_server": lambda: hbone()[0],
        "hbone_client": lambda: hbone()[1],
        "hbone_headers": _header_values,
        "waypoint_h2": _hyper_h2_requests,
        "http1_request": lambda: h11()[0],
        "http1_response": lambda: h11()[1],
        "cni": _cni_invocations,
        "zds": _zds_sessions,
        "config_stream": _config_lines,
        "ca_csr": _ca_requests,
        "manifests": _manifests,
        "admission": _admission_reviews,
        "jwt": _tokens,
        "waypoint_jwt": _jwt_requests,
    }
    unknown = sorted(set(names) - set(recorders))
    if unknown:
        raise SystemExit(f"no recorder for {', '.join(unknown)}; `python -m fuzz list` names the targets")
    for name in names or recorders:
        print(f"{name}: {_write(corpus / name, recorders[name]())} seeds")
