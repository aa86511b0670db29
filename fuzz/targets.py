"""The fuzz targets: one function per parser that takes bytes from outside, and what counts as a bug.

Each target takes one input (`bytes`) and returns normally whatever the bytes are. A parser may
refuse the input only with the error its contract documents (ParseError, ZdsError,
StreamProtocolError, a CNI error object, a 4xx answer, a manifest error); any other exception
escapes, and the fuzzer records it as a crash. Where a parser promises more than "does not raise"
(the h2 codec never raises at all; the CNI plugin never answers with its internal-error object;
the CA never answers 5xx to a malformed request), the target asserts it.

Inputs that carry several messages (datagrams, header blocks split across reads) are cut by the
`pieces` framing: a 2-byte big-endian length then that many bytes, repeated; the corpus records
real messages in that framing (fuzz/record.py).

Targets import what they fuzz lazily, inside `setup()`, so the entry point can import them under
atheris's instrumentation; `run(data)` is then the per-input function.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

# The largest input the fuzzer generates for each target (libFuzzer's -max_len): a header
# block, a CNI config or a manifest is well inside it; deep nesting needs a few thousand bytes.
DEFAULT_MAX_LEN = 8192
# Packages whose code atheris instruments for coverage by default: ours and the parsers ours
# delegate to (hpack under the HTTP/2 codec, yaml and json under the control plane's readers).
DEFAULT_INSTRUMENTED = ("wisp", "waypoint", "cni", "wisp_operator", "hpack", "yaml", "json")


@dataclass(slots=True, frozen=True)
class Target:
    name: str
    description: str
    setup: Callable[[], Callable[[bytes], None]]
    max_len: int = DEFAULT_MAX_LEN
    instrumented: tuple[str, ...] = DEFAULT_INSTRUMENTED
    # Inputs in the test suite's smoke run (tests/fuzz/test_fuzz_smoke.py): YAML and the schema
    # validation behind it run ~150 inputs/s instrumented, the codecs thousands.
    smoke_runs: int = 2000


def pieces(data: bytes, limit: int = 64) -> Iterator[bytes]:
    """Split `data` into the length-prefixed pieces it encodes (the rest is the last piece)."""
    pos = 0
    count = 0
    while pos < len(data) and count < limit:
        if pos + 2 > len(data):
            yield data[pos:]
            return
        size = int.from_bytes(data[pos:pos + 2], "big")
        yield data[pos + 2:pos + 2 + size]
        pos += 2 + size
        count += 1


def frame_pieces(messages: list[bytes]) -> bytes:
    """The inverse of `pieces`, for the recorder and the tests."""
    return b"".join(len(m).to_bytes(2, "big") + m for m in messages)


# -- HBONE / HTTP/2 ------------------------------------------------------------------------------
class _Loop:
    """The engine loop's interface, doing nothing: the target calls the connection's read path
    directly, and nothing here needs a timer to fire or a socket to be polled."""

    class _Timer:
        def cancel(self) -> None:
            pass

    def register(self, fd: int, handler: object, events: int) -> None:
        pass

    def want(self, fd: int, events: int) -> None:
        pass

    def unregister(self, fd: int) -> None:
        pass

    def call_later(self, delay: float, callback: object) -> _Loop._Timer:
        return _Loop._Timer()

    def mark_dirty(self, conn: object) -> None:
        pass


class _Transport:
    """The engine's TLS transport (wisp.engine.tls.TlsTransport) with nothing on the wire: every
    write is taken and dropped; the target feeds the codec's read path directly."""

    class _Tls:
        def read(self, n: int, buffer) -> int:
            raise AssertionError("the fuzz target never reads through TLS")

    def __init__(self) -> None:
        self.sock = None
        self.fd = -1
        self.tls = self._Tls()
        self.incoming = self.outgoing = ssl.MemoryBIO()
        self.backlog = 0
        self.blocked = False
        self.queue: list = []

    def encrypt(self, data) -> None:
        pass

    def send(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _hbone_server() -> Callable[[bytes], None]:
    from wisp.engine.hbone import ConnectRequest, ServerConnection
    from wisp.h2 import frames

    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    loop, transport = _Loop(), _Transport()

    def on_request(request: ConnectRequest) -> None:
        # What ztunnel's inbound reads of a request before deciding (ztunnel/proxy/inbound.py).
        _ = request.baggage, request.forwarded_host
        if request.authority.port % 2:
            request.reject(401, "refused by the fuzz target")
        else:
            stream = request.accept()
            stream.write(b"reply")
            stream.write_eof()

    def run(data: bytes) -> None:
        conn = ServerConnection(loop, transport, on_request=on_request, local=("10.0.0.2", 15008),
                                peer=("10.0.0.1", 40000), peer_identity=None)
        # Most inputs start with the preface, as every real one does; a leading 0xff tests its check.
        raw = data[:1] == b"\xff"
        for i, piece in enumerate(pieces(data[1:] if raw else data, 256)):
            if conn.closed:
                break
            conn._receive(memoryview(piece if raw or i else preface + piece))
        if not conn.closed:
            conn.goaway(frames.NO_ERROR, "fuzz done")
            conn.close("fuzz done")

    return run


def _hbone_client() -> Callable[[bytes], None]:
    from wisp.engine.hbone import ClientConnection
    from wisp.hbone.headers import connect_headers, parse_authority

    loop, transport = _Loop(), _Transport()
    headers = connect_headers(parse_authority("10.0.0.3:8080"), baggage_values={"k8s.namespace.name": "shop"},
                              client=("10.0.0.1", 40000), traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-00")

    def on_response(stream, status: int, reason: str) -> None:
        if status == 200:
            stream.write(b"request bytes")

    def run(data: bytes) -> None:
        conn = ClientConnection(loop, transport, local=("10.0.0.1", 40000), peer=("10.0.0.3", 15008), peer_identity=None)
        for _ in range(3):      # streams 1, 3, 5: responses may name any of them
            conn.open_stream(list(headers), on_response)
        for piece in pieces(data, 256):
            if conn.closed:
                break
            conn._receive(memoryview(piece))
        conn.close("fuzz done")

    return run


def _waypoint_h2() -> Callable[[bytes], None]:
    """The waypoint's HTTP/2 server side: the codec with the waypoint's settings, then the pure
    request handling of every header block it accepts (waypoint/http2/messages.py)."""
    from waypoint.http2 import messages
    from waypoint.http2.downstream import server_settings
    from waypoint.pipeline import Respond
    from wisp.h2.connection import Connection
    from wisp.h2.events import DataReceived, HeadersReceived

    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def run(data: bytes) -> None:
        conn = Connection(client=False, local=server_settings())
        conn.initiate()
        for i, piece in enumerate(pieces(data, 256)):
            for event in conn.receive(piece if i else preface + piece):
                # As the waypoint's exchange does: nothing is answered on a connection that
                # ended in an error (waypoint/http2/exchange.py).
                if conn.is_closed:
                    break
                if isinstance(event, HeadersReceived):
                    fields = event.headers
                    # An upstream's answer goes through the same header handling in reverse.
                    response = messages.response_fields(fields)
                    messages.clean_response(response)
                    messages.status_of(response)
                    messages.grpc_status_of(response)
                    try:
                        head = messages.request_head(fields)
                    except messages.RequestProblem as exc:
                        respond = Respond(exc.status, str(exc).encode())
                        grpc = False
                    else:
                        messages.upstream_request(head)
                        respond = Respond(403, b"RBAC: access denied")
                        grpc = messages.is_grpc(head.header(b"content-type"))
                    answer, body = messages.local_reply(respond, grpc)
                    # Trailers, or a request the peer already ended: the waypoint answers neither.
                    if conn.stream_state(event.stream_id) not in ("open", "half-closed (remote)"):
                        continue
                    conn.send_headers(event.stream_id, answer, end_stream=not body)
                    if body:
                        conn.send_data(event.stream_id, body[:conn.send_window(event.stream_id)], end_stream=True)
                elif isinstance(event, DataReceived) and event.flow_controlled_length:
                    conn.consumed(event.stream_id, event.flow_controlled_length)
            if conn.is_closed:
                break

    return run


# -- HTTP/1.1 ------------------------------------------------------------------------------------
def _http1(request: bool) -> Callable[[], Callable[[bytes], None]]:
    def setup() -> Callable[[bytes], None]:
        from waypoint.http1.codec import HEAD, ParseError, Parser, has_bad_value, hop_by_hop

        methods = (b"GET", b"HEAD", b"POST", b"CONNECT")

        def run(data: bytes) -> None:
            parser = Parser(request=request, max_head=4096)
            # The first byte picks what the response answers (HEAD: no body) and nothing else.
            if not request and data:
                parser.expect_response_to(methods[data[0] % len(methods)])
                data = data[1:]
            try:
                for piece in pieces(data, 256):
                    events = parser.receive(piece)
                    while True:
                        for kind, value in events:
                            if kind == HEAD:
                                hop_by_hop(value.headers, value.connection)
                                has_bad_value(value.headers)
                        if not parser.done:
                            break
                        # A pipelined message waits in the parser until the shell asks for it.
                        events = parser.next_message()
                parser.eof()
            except ParseError as exc:
                if not 400 <= exc.status <= 599:
                    raise AssertionError(f"ParseError with status {exc.status}") from exc

        return run

    return setup


# -- CNI stdin -----------------------------------------------------------------------------------
def _cni() -> Callable[[bytes], None]:
    from cni import plugin

    commands = ("ADD", "DEL", "CHECK", "VERSION")

    def run(data: bytes) -> None:
        # First byte: the command; then CNI_ARGS up to a NUL; the rest is stdin.
        command = commands[data[0] % len(commands)] if data else "ADD"
        cni_args, _, stdin = data[1:].partition(b"\0")
        environ = {"CNI_COMMAND": command, "CNI_NETNS": "/var/run/netns/fuzz", "CNI_CONTAINERID": "c0ffee",
                   "CNI_ARGS": cni_args.decode("utf-8", "replace")}
        if command == "ADD":
            # ADD's own parsing without the agent call (an HTTP round trip per input): what `add`
            # reads from the environment and the config, in its order.
            try:
                config = plugin._config(stdin)
                version = plugin._version(config)
                args = plugin.parse_cni_args(environ["CNI_ARGS"])
                _ = args.get("K8S_POD_NAME"), args.get("K8S_POD_NAMESPACE")
                plugin.pod_ips(config.get("prevResult"))
                json.loads(plugin._result(config, version))
            except plugin.CniError:
                pass
            return
        outcome = plugin.run(environ, stdin)
        answer = json.loads(outcome.stdout) if outcome.stdout else None
        if isinstance(answer, dict) and answer.get("msg") == "internal error in wisp-cni":
            raise AssertionError(f"wisp-cni answered an internal error: {answer.get('details')}")

    return run


# -- ZDS -----------------------------------------------------------------------------------------
def _zds() -> Callable[[bytes], None]:
    from wisp.zds import protocol
    from wisp.zds.node import NodeSession
    from wisp.zds.protocol import Add, ZdsError
    from wisp.zds.workload import WorkloadSession

    def run(data: bytes) -> None:
        # The same datagrams read by both sides: ztunnel's session (requests from the agent)
        # and the node agent's (hello then acks from ztunnel).
        workload = WorkloadSession()
        node = NodeSession()
        for datagram in pieces(data):
            try:
                request = workload.receive(datagram, [3] if datagram[:1] == b"\x12" else [])
            except ZdsError:
                pass
            else:
                if protocol.decode_request(protocol.encode(request)) != request:
                    raise AssertionError(f"{request!r} does not survive encode/decode")
                if isinstance(request, Add):
                    _ = request.info.name, request.info.namespace
            try:
                if node.hello is not None and node.outstanding is None:
                    node.outstanding = protocol.SnapshotSent()
                node.receive(datagram, [])
            except ZdsError:
                pass

    return run


# -- the config stream ---------------------------------------------------------------------------
def _config_stream() -> Callable[[bytes], None]:
    from wisp.controlplane.protocol import ConfigView, StreamProtocolError, decode, error_text
    from wisp.model import ModelError

    def run(data: bytes) -> None:
        view = ConfigView()
        error_text(data)
        for line in data.split(b"\n")[:32]:
            try:
                message = decode(line)
                view.apply(message)
            except (StreamProtocolError, ModelError):
                pass

    return run


# -- the CA's CSR endpoint -----------------------------------------------------------------------
def _ca_csr() -> Callable[[bytes], None]:
    from wisp.identity import CertificateAuthority
    from wisp_operator.auth import Caller
    from wisp_operator.ca_service import CaService
    from wisp_operator.cluster import ClusterState
    from wisp_operator.distributor import ROLE_ZTUNNEL

    ca = CertificateAuthority.generate("cluster.local")
    # Every identity authorised: the body's parsing and the CSR's checks are what is fuzzed.
    service = CaService(ca, authorizer=lambda caller, identity, state, trust_domain: None)
    caller = Caller(ROLE_ZTUNNEL, node="node1")
    state = ClusterState.of([])

    def run(data: bytes) -> None:
        response = service.sign(caller, data, state)
        response.encode()
        if response.status not in (200, 400, 403):
            raise AssertionError(f"the CA answered {response.status}: {response.body}")

    return run


# -- manifests -----------------------------------------------------------------------------------
def _manifests() -> Callable[[bytes], None]:
    from wisp_operator.local_source import parse_manifests
    from wisp_operator.validation import admission_response, load_resources

    resources = load_resources()

    def run(data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        objects, errors = parse_manifests(text, "fuzz.yaml", resources)
        for error in errors:
            str(error)
        # The same objects as a webhook's AdmissionReview (operator/validation/admission.py).
        for mo in objects[:4]:
            admission_response({"request": {"uid": "u", "operation": "CREATE", "object": mo.obj}}, resources)

    return run


def _admission() -> Callable[[bytes], None]:
    from wisp_operator.validation import admission_response, load_resources

    resources = load_resources()

    def run(data: bytes) -> None:
        try:
            review = json.loads(data)
        except ValueError:
            return
        if isinstance(review, dict):
            admission_response(review, resources)

    return run


# -- JWTs ----------------------------------------------------------------------------------------
def _jwt() -> Callable[[bytes], None]:
    from wisp_operator.kube_auth import token_expiry

    def run(data: bytes) -> None:
        expiry = token_expiry(data.decode("utf-8", "replace"))
        if expiry is not None and not isinstance(expiry, float):
            raise AssertionError(f"token_expiry returned {expiry!r}")

    return run


def _waypoint_jwt() -> Callable[[bytes], None]:
    """A request through the waypoint's authn stage: pieces are the token (sent in the Authorization
    header and the access_token parameter) and the JWKS document its rule verifies with."""
    import time
    from urllib.parse import quote_from_bytes

    from waypoint.authn import Authenticated, Rejected, authenticate, compile_authn
    from waypoint.authz import WaypointRef

    waypoint = WaypointRef("shop", "waypoint")
    target = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}

    def run(data: bytes) -> None:
        parts = list(pieces(data, 2)) + [b"", b""]
        token, document = parts[0], parts[1]
        rule = {"issuer": "https://issuer.example/foo", "jwks": document.decode("utf-8", "replace"),
                "outputPayloadToHeader": "x-jwt-payload",
                "outputClaimToHeaders": [{"header": "x-sub", "claim": "sub"}, {"header": "x-team", "claim": "org.team"}]}
        policy = {"metadata": {"namespace": "shop", "name": "jwt"}, "spec": {"targetRefs": [target], "jwtRules": [rule]}}
        rules = compile_authn([policy], waypoint).default
        for headers, path in (([(b"authorization", b"Bearer " + token)], b"/"),
                              ([], b"/p?access_token=" + quote_from_bytes(token).encode())):
            result = authenticate(rules, b"GET", path, b"echo.shop", headers, None, time.time())
            if type(result) is Rejected:
                if result.status not in (401, 403) or not result.message:
                    raise AssertionError(f"rejected without Envoy's answer: {result}")
            elif type(result) is not Authenticated:
                raise AssertionError(f"authenticate returned {result!r}")

    return run


# -- HBONE header values -------------------------------------------------------------------------
def _hbone_headers() -> Callable[[bytes], None]:
    from wisp.hbone.headers import InvalidAuthority, forwarded_host, parse_authority, parse_baggage

    def run(data: bytes) -> None:
        text = data.decode("latin-1")
        try:
            authority = parse_authority(text)
        except InvalidAuthority:
            pass
        else:
            if parse_authority(str(authority)) != authority:
                raise AssertionError(f"{text!r} parses to {authority}, which parses differently")
        parse_baggage(text)
        forwarded_host(text)

    return run


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("hbone_server", "HBONE CONNECT server: wisp.h2 server codec + ServerConnection's request handling",
           _hbone_server, 16384),
    Target("hbone_client", "HBONE client: wisp.h2 client codec + ClientConnection's response handling",
           _hbone_client, 16384),
    Target("hbone_headers", "CONNECT header values: :authority, baggage, forwarded (wisp/hbone/headers.py)",
           _hbone_headers, 1024),
    Target("waypoint_h2", "waypoint HTTP/2 server codec + request_head/local_reply (waypoint/http2/messages.py)",
           _waypoint_h2, 16384),
    Target("http1_request", "waypoint HTTP/1.1 request parser (waypoint/http1/codec.py)", _http1(True)),
    Target("http1_response", "waypoint HTTP/1.1 response parser (waypoint/http1/codec.py)", _http1(False)),
    Target("cni", "wisp-cni: CNI_ARGS and the network configuration on stdin (cni/plugin.py)", _cni),
    Target("zds", "ZDS datagrams, both sessions (wisp/zds/protocol.py, node.py, workload.py)", _zds, 4096),
    Target("config_stream", "config stream lines into a ConfigView (wisp/controlplane/protocol.py)", _config_stream),
    Target("ca_csr", "the CA endpoint's request body and CSR (operator/ca_service.py, wisp/identity)", _ca_csr),
    # Not PyYAML: instrumenting its pure-Python scanner made every input ~5x slower (55 against
    # 270 inputs/s, 1,000,000 inputs ~5 h instead of ~1 h) and steered the fuzzer through YAML's
    # syntax rather than through our checks; the same bytes still go through the same parser.
    Target("manifests", "YAML manifests through validation (operator/local_source.py, operator/validation)",
           _manifests, smoke_runs=500, instrumented=("wisp", "wisp_operator")),
    Target("admission", "AdmissionReview JSON (operator/validation/admission.py)", _admission, smoke_runs=1000),
    Target("jwt", "service-account token expiry (operator/kube_auth.py token_expiry)", _jwt, 2048),
    Target("waypoint_jwt", "RequestAuthentication: token and JWKS through waypoint/authn (parse, keys, verify)",
           _waypoint_jwt, 8192, smoke_runs=1000),
)}
