"""HTTP/1.1 messages as bytes in, events out, and heads out as bytes: sans-IO, both directions.

`Parser(request=True)` reads requests (the waypoint's server side), `Parser(request=False)`
responses (its client side). `receive(data)` returns events — `(HEAD, Head)`, `(DATA, view)`,
`(END, trailers)` — and raises `ParseError(status, reason)` for what RFC 9112 says to refuse.
After END the parser holds further bytes (a pipelined request, or bytes a server should not
have sent) until `next_message()`; `eof()` says what the peer's close means (None: a clean close
between messages). DATA values are views of `data` (or of the parser's own buffer): valid until
the next call, so the caller writes or copies them at once — bodies are never copied here.

What is refused (the status is what a server answers; on a response the waypoint answers 502):
- a head over `max_head` bytes (64 KiB by default, as Istio's `max_request_headers_kb`) or over
  100 fields (Envoy's `max_headers_count`): 431;
- a request line that is not `method SP target SP HTTP/1.x`, a method that is not a token, a
  target with controls or spaces: 400; another HTTP version: 505;
- a bare CR or LF, a NUL, or an obs-fold (a line starting with SP/HTAB) anywhere in the head —
  which is how a CR/LF smuggled into a header value shows up: 400 (RFC 9112 §2.2, §5.2);
- a field name that is not a token or has whitespace before the colon: 400 (§5.1);
- `Content-Length` that is not digits or differs between fields; `Transfer-Encoding` with
  `Content-Length`; a request whose last transfer coding is not `chunked`: 400 (§6.1, §6.3);
- an HTTP/1.1 request without exactly one `Host`: 400 (RFC 9112 §3.2);
- invalid chunked framing (a size that is not hex or over 2^60, a missing CRLF after chunk data,
  malformed trailers): 400.
Leading empty lines before a request line are skipped (§2.2). Bodies: requests carry one only
with `Content-Length` or chunked; responses to HEAD, 1xx, 204 and 304 carry none, then chunked,
`Content-Length`, or everything until the connection closes. Interim 1xx responses (other than
101) are skipped.

Encoding: `encode_request_head`, `encode_response_head`, `encode_chunk`, `encode_last_chunk`.
`hop_by_hop(headers)` drops the fields RFC 9110 §7.6.1 says a proxy must not forward
(Connection and the fields it names, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding,
Upgrade) plus the message framing (`Content-Length`), which the proxy sets itself.
"""

from __future__ import annotations

HEAD = 0
DATA = 1
END = 2

MAX_HEAD = 64 * 1024
MAX_FIELDS = 100
_MAX_CHUNK_LINE = 1024
_MAX_CHUNK_SIZE = 1 << 60

# Body framing
NO_BODY = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3

# Parser states
_S_HEAD = 0
_S_LENGTH = 1
_S_CHUNK_SIZE = 2
_S_CHUNK_DATA = 3
_S_CHUNK_CRLF = 4
_S_TRAILERS = 5
_S_UNTIL_CLOSE = 6
_S_DONE = 7

_TOKEN = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_VISIBLE = bytes(range(0x21, 0x7F))
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"

HOP_BY_HOP = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"te", b"transfer-encoding",
                        b"upgrade", b"content-length"})

REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 204: b"No Content", 206: b"Partial Content",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request", 401: b"Unauthorized",
    403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed", 408: b"Request Timeout",
    413: b"Content Too Large", 417: b"Expectation Failed", 431: b"Request Header Fields Too Large",
    500: b"Internal Server Error", 501: b"Not Implemented", 502: b"Bad Gateway",
    503: b"Service Unavailable", 504: b"Gateway Timeout", 505: b"HTTP Version Not Supported",
}


class ParseError(Exception):
    """A message this side must refuse; `status` is the answer a server gives."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Head:
    """A parsed request or response head. Header names are lower-case; values as sent, trimmed."""

    __slots__ = ("method", "target", "version", "status", "reason", "headers", "authority", "framing",
                 "length", "keep_alive", "expect_continue", "connection")

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.version = b"HTTP/1.1"
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.authority = b""
        self.framing = NO_BODY
        self.length = 0
        self.keep_alive = True
        self.expect_continue = False
        self.connection: tuple[bytes, ...] = ()

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def __repr__(self) -> str:
        if self.status:
            return f"<Head {self.version!r} {self.status}>"
        return f"<Head {self.method!r} {self.target!r} {self.version!r}>"


class Parser:
    """One direction of one HTTP/1.1 connection (see the module docstring)."""

    __slots__ = ("request", "max_head", "_state", "_buf", "_left", "head", "_head_request", "_trailers",
                 "messages", "_scan")

    def __init__(self, *, request: bool, max_head: int = MAX_HEAD) -> None:
        self.request = request
        self.max_head = max_head
        self._state = _S_HEAD
        self._buf = bytearray()
        self._left = 0
        self.head: Head | None = None
        # Response side: whether the request this response answers was HEAD (no body follows).
        self._head_request = False
        self._trailers: list[tuple[bytes, bytes]] = []
        self.messages = 0
        self._scan = 0

    # -- control -------------------------------------------------------------------------------
    def expect_response_to(self, method: bytes) -> None:
        """Response side: the next response answers a `method` request (HEAD: no body)."""
        self._head_request = method == b"HEAD"

    @property
    def done(self) -> bool:
        """The current message ended; further bytes wait for `next_message`."""
        return self._state == _S_DONE

    @property
    def idle(self) -> bool:
        """Between messages with nothing buffered."""
        return self._state == _S_HEAD and not self._buf

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def next_message(self) -> list:
        """Start the next message; returns the events of what was already buffered."""
        self._state = _S_HEAD
        self.head = None
        self._scan = 0
        if not self._buf:
            return []
        data, self._buf = self._buf, bytearray()
        return self._run(data)

    def receive(self, data: bytes | memoryview) -> list:
        if self._state == _S_DONE:
            self._buf += data
            return []
        if self._buf:
            self._buf += data
            if not self._complete():
                return []
            data, self._buf = self._buf, bytearray()
        return self._run(data)

    def _complete(self) -> bool:
        """Whether the buffered line or block is whole; searched from where the last search
        stopped, so a head trickling in byte by byte costs linear time, not quadratic."""
        state = self._state
        buf = self._buf
        if state == _S_HEAD or state == _S_TRAILERS:
            if state == _S_TRAILERS and buf.startswith(b"\r\n"):
                return True
            found = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
            limit = self.max_head + 64
        elif state == _S_CHUNK_SIZE:
            found = buf.find(b"\r\n", max(0, self._scan - 1))
            limit = _MAX_CHUNK_LINE
        else:
            return True
        if found >= 0:
            self._scan = 0
            return True
        self._scan = len(buf)
        if len(buf) > limit:
            if state == _S_CHUNK_SIZE:
                raise ParseError(400, "invalid chunked encoding: chunk size line too long")
            raise ParseError(431 if self.request else 502, "head or trailers over %d KiB" % (self.max_head // 1024))
        return False

    def eof(self) -> list:
        """The peer closed: the events that ends with (a close-delimited body's END), [] for a
        close between messages; ParseError(400) when a message was cut short."""
        state = self._state
        if state == _S_UNTIL_CLOSE:
            self._state = _S_DONE
            self.messages += 1
            return [(END, [])]
        if state == _S_DONE or (state == _S_HEAD and not self._buf.strip(b"\r\n")):
            return []
        raise ParseError(400, "the connection closed in the middle of a message")

    # -- parsing -------------------------------------------------------------------------------
    def _run(self, data: bytes | bytearray | memoryview) -> list:
        events: list = []
        view = memoryview(data)
        pos = 0
        end = len(view)
        while pos < end:
            state = self._state
            if state == _S_LENGTH:
                take = min(self._left, end - pos)
                events.append((DATA, view[pos:pos + take]))
                pos += take
                self._left -= take
                if not self._left:
                    self._finish(events, [])
            elif state == _S_HEAD:
                pos = self._parse_head(view, pos, end, events)
                if pos < 0:
                    return events
            elif state == _S_CHUNK_DATA:
                take = min(self._left, end - pos)
                events.append((DATA, view[pos:pos + take]))
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _S_CHUNK_CRLF
            elif state == _S_CHUNK_SIZE:
                window = bytes(view[pos:pos + _MAX_CHUNK_LINE + 2])
                line_end = window.find(b"\r\n")
                if line_end < 0:
                    if len(window) > _MAX_CHUNK_LINE:
                        raise ParseError(400, "invalid chunked encoding: chunk size line too long")
                    self._buf += window
                    return events
                self._left = _chunk_size(window[:line_end])
                pos += line_end + 2
                self._state = _S_CHUNK_DATA if self._left else _S_TRAILERS
            elif state == _S_CHUNK_CRLF:
                if end - pos < 2:
                    if view[pos:end] != b"\r":
                        raise ParseError(400, "invalid chunked encoding: no CRLF after chunk data")
                    self._buf += view[pos:end]
                    return events
                if view[pos:pos + 2] != b"\r\n":
                    raise ParseError(400, "invalid chunked encoding: no CRLF after chunk data")
                pos += 2
                self._state = _S_CHUNK_SIZE
            elif state == _S_TRAILERS:
                window = bytes(view[pos:pos + self.max_head + 4])
                if window.startswith(b"\r\n"):
                    pos += 2
                    self._finish(events, [])
                    continue
                block_end = window.find(b"\r\n\r\n")
                if block_end < 0:
                    if len(window) > self.max_head:
                        raise ParseError(431, f"trailers over {self.max_head} bytes")
                    self._buf += window
                    return events
                trailers = _fields(window[:block_end], 0)
                pos += block_end + 4
                self._finish(events, trailers)
            elif state == _S_UNTIL_CLOSE:
                events.append((DATA, view[pos:end]))
                pos = end
            else:  # _S_DONE: keep the rest for the next message
                self._buf += view[pos:end]
                return events
        return events

    def _finish(self, events: list, trailers: list) -> None:
        events.append((END, trailers))
        self._state = _S_DONE
        self.messages += 1

    def _parse_head(self, view: memoryview, pos: int, end: int, events: list) -> int:
        """Parse a head at `pos`; the new position, or -1 when it is incomplete (buffered)."""
        limit = self.max_head
        window = bytes(view[pos:pos + limit + 4 + 64])
        truncated = end - pos > len(window)
        # Empty lines before a request line are ignored (RFC 9112 §2.2); so are they before a
        # status line, where a server's stray CRLF after a body would otherwise break the stream.
        start = 0
        while window.startswith(b"\r\n", start):
            start += 2
        head_end = window.find(b"\r\n\r\n", start)
        if head_end < 0:
            if truncated or len(window) - start > limit:
                raise ParseError(431 if self.request else 502,
                                 f"request head over {limit // 1024} KiB" if self.request
                                 else f"response head over {limit // 1024} KiB")
            self._buf += window[start:]
            return -1
        if head_end - start > limit:
            raise ParseError(431 if self.request else 502, f"request head over {limit // 1024} KiB" if self.request
                             else f"response head over {limit // 1024} KiB")
        block = window[start:head_end]
        head = self._head(block)
        pos += head_end + 4
        if not self.request and 100 <= head.status < 200:
            if head.status == 101:
                raise ParseError(502, "the upstream switched protocols (101), which this waypoint does not relay")
            return pos  # an interim response: the final one follows
        self.head = head
        events.append((HEAD, head))
        framing = head.framing
        if framing == NO_BODY:
            self._finish(events, [])
        elif framing == LENGTH:
            if head.length:
                self._left = head.length
                self._state = _S_LENGTH
            else:
                self._finish(events, [])
        elif framing == CHUNKED:
            self._state = _S_CHUNK_SIZE
        else:
            self._state = _S_UNTIL_CLOSE
        return pos

    def _head(self, block: bytes) -> Head:
        lines = block.split(b"\r\n")
        crlf = len(lines) - 1
        if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
            raise ParseError(400, "bare CR or LF in the head (a header value may not contain CR or LF)")
        if b"\x00" in block:
            raise ParseError(400, "NUL in the head")
        if len(lines) - 1 > MAX_FIELDS:
            raise ParseError(431, f"more than {MAX_FIELDS} header fields")
        head = Head()
        first = lines[0]
        if self.request:
            parts = first.split(b" ")
            if len(parts) != 3:
                raise ParseError(400, "malformed request line")
            method, target, version = parts
            if not method or method.translate(None, _TOKEN):
                raise ParseError(400, "malformed request line: the method is not a token")
            if not target or target.translate(None, _VISIBLE):
                raise ParseError(400, "malformed request line: invalid request target")
            if version != b"HTTP/1.1" and version != b"HTTP/1.0":
                if version.startswith(b"HTTP/") and len(version) == 8 and version[5:6].isdigit() \
                        and version[6:7] == b"." and version[7:8].isdigit():
                    raise ParseError(505, f"HTTP version {version.decode('ascii')} is not supported")
                raise ParseError(400, "malformed request line: no HTTP version")
            head.method, head.target, head.version = method, target, version
        else:
            version, _, rest = first.partition(b" ")
            code, _, reason = rest.partition(b" ")
            if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or code.translate(None, _DIGITS):
                raise ParseError(502, "malformed status line from the upstream")
            head.version, head.status, head.reason = version, int(code), reason
        special: list[tuple[bytes, bytes]] = []
        head.headers = _fields(block, len(first) + 2, special) if len(lines) > 1 else []
        self._framing(head, special)
        return head

    def _framing(self, head: Head, headers: list[tuple[bytes, bytes]]) -> None:
        length: bytes | None = None
        codings: list[bytes] = []
        hosts = 0
        connection: list[bytes] = []
        for name, value in headers:
            if name == b"content-length":
                for item in value.split(b","):
                    item = item.strip(b" \t")
                    if not item or item.translate(None, _DIGITS) or len(item) > 18:
                        raise ParseError(400 if self.request else 502, "invalid Content-Length")
                    if length is not None and item != length:
                        raise ParseError(400 if self.request else 502, "conflicting Content-Length values")
                    length = item
            elif name == b"transfer-encoding":
                codings.extend(c.strip(b" \t").lower() for c in value.split(b",") if c.strip(b" \t"))
            elif name == b"host":
                hosts += 1
                head.authority = value
            elif name == b"connection":
                connection.extend(c.strip(b" \t").lower() for c in value.split(b",") if c.strip(b" \t"))
            elif name == b"expect" and self.request:
                if value.lower() == b"100-continue":
                    head.expect_continue = True
                else:
                    raise ParseError(417, "only Expect: 100-continue is supported")
        head.connection = tuple(connection)
        if head.version == b"HTTP/1.1":
            head.keep_alive = b"close" not in connection
        else:
            head.keep_alive = b"keep-alive" in connection and b"close" not in connection
        bad = 400 if self.request else 502
        if codings and length is not None:
            raise ParseError(bad, "both Transfer-Encoding and Content-Length")
        if self.request:
            if head.version == b"HTTP/1.1" and hosts != 1:
                raise ParseError(400, "an HTTP/1.1 request needs exactly one Host header")
            if hosts > 1:
                raise ParseError(400, "more than one Host header")
            if codings:
                if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
                    raise ParseError(400, "the request's last transfer coding is not chunked")
                if head.version != b"HTTP/1.1":
                    raise ParseError(400, "Transfer-Encoding in an HTTP/1.0 request")
                head.framing = CHUNKED
            elif length is not None:
                head.framing, head.length = LENGTH, int(length)
            else:
                head.framing = NO_BODY
            return
        status = head.status
        if self._head_request or status < 200 or status in (204, 304):
            head.framing = NO_BODY
        elif codings:
            if codings[-1] == b"chunked":
                if codings.count(b"chunked") != 1:
                    raise ParseError(502, "chunked applied twice")
                head.framing = CHUNKED
            else:
                head.framing, head.keep_alive = UNTIL_CLOSE, False
        elif length is not None:
            head.framing, head.length = LENGTH, int(length)
        else:
            head.framing, head.keep_alive = UNTIL_CLOSE, False


_SPECIAL = frozenset({b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"})


def _fields(block: bytes, start: int, special: list | None = None) -> list[tuple[bytes, bytes]]:
    """Header (or trailer) fields of `block` from `start`, names lower-cased, values trimmed;
    those that decide framing are also appended to `special`. Folding and the names' token
    syntax are checked over the whole block or all names at once (one C call each): per-field
    Python work is what this parser's cost is made of (bench/http1_parse.py)."""
    text = block[start:]
    if not text:
        return []
    if text[:1] in (b" ", b"\t") or b"\r\n " in text or b"\r\n\t" in text:
        raise ParseError(400, "obsolete line folding in a header field")
    fields = []
    names = []
    for line in text.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep or not name:
            raise ParseError(400, "malformed header field")
        names.append(name)
        name = name.lower()
        value = value.strip(b" \t")
        fields.append((name, value))
        if special is not None and name in _SPECIAL:
            special.append((name, value))
    if len(fields) > MAX_FIELDS:
        raise ParseError(431, f"more than {MAX_FIELDS} header fields")
    if b"".join(names).translate(None, _TOKEN):
        raise ParseError(400, "malformed header field: the name is not a token")
    return fields


def _chunk_size(line: bytes) -> int:
    size = line.partition(b";")[0].rstrip(b" \t")
    if not size or size.translate(None, _HEX) or len(size) > 15:
        raise ParseError(400, "invalid chunked encoding: bad chunk size")
    value = int(size, 16)
    if value > _MAX_CHUNK_SIZE:
        raise ParseError(400, "invalid chunked encoding: chunk too large")
    return value


# -- encoding ------------------------------------------------------------------------------------
def hop_by_hop(headers: list[tuple[bytes, bytes]], connection: tuple[bytes, ...] = ()) -> list[tuple[bytes, bytes]]:
    """`headers` without hop-by-hop fields and framing (RFC 9110 §7.6.1), nor those `connection` names."""
    drop = HOP_BY_HOP.union(connection) if connection else HOP_BY_HOP
    return [pair for pair in headers if pair[0] not in drop]


def has_bad_value(headers: list[tuple[bytes, bytes]]) -> bool:
    """True if a value holds CR, LF or NUL (a shell translating from HTTP/2 must refuse it)."""
    for _, value in headers:
        if b"\r" in value or b"\n" in value or b"\x00" in value:
            return True
    return False


def encode_request_head(method: bytes, target: bytes, authority: bytes, headers: list[tuple[bytes, bytes]],
                        framing: int, length: int = 0, *, close: bool = False) -> bytes:
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", authority, b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if framing == LENGTH:
        parts.append(b"content-length: %d\r\n" % length)
    elif framing == CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_response_head(status: int, headers: list[tuple[bytes, bytes]], framing: int, length: int = 0, *,
                         close: bool = False, reason: bytes | None = None) -> bytes:
    parts = [b"HTTP/1.1 %d " % status, reason if reason is not None else REASONS.get(status, b""), b"\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if framing == LENGTH:
        parts.append(b"content-length: %d\r\n" % length)
    elif framing == CHUNKED:
        parts.append(b"transfer-encoding: chunked\r\n")
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_response(status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None, *,
                    close: bool = False, head_only: bool = False) -> bytes:
    """A whole response with a Content-Length body (the waypoint's own answers)."""
    head = encode_response_head(status, headers or [], LENGTH, len(body), close=close)
    return head if head_only else head + body


_CHUNK_COPY_LIMIT = 16 * 1024


def encode_chunk(data: bytes | memoryview) -> list[bytes | memoryview]:
    """One chunk as the pieces to write: one piece (a copy) when small, three when large."""
    size = len(data)
    if size < _CHUNK_COPY_LIMIT:
        return [b"%x\r\n%b\r\n" % (size, data)]
    return [b"%x\r\n" % size, data, b"\r\n"]


def encode_last_chunk(trailers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    if not trailers:
        return b"0\r\n\r\n"
    return b"0\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in trailers) + b"\r\n"
