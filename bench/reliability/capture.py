"""What crossed the link between the nodes: a tcpdump capture and its audit for plaintext.

`Capture` runs tcpdump on the switch namespace's bridge (every packet between nodes crosses it)
for pod traffic only (`net 10.244.0.0/16`: the control plane's 10.250.0.0/24 is not the data
path), into rotating files. `audit` reads them (classic pcap, Ethernet) and checks every TCP
payload byte:

- it is on a connection with port 15008 at one end (HBONE); any other payload is plaintext;
- on every connection whose SYN was captured, each direction is a sequence of well-formed TLS
  records (type 20-23, version 3.x, length ≤ 2^14 + 256) from its first byte to its last, with the
  stream reassembled by sequence number (retransmissions trimmed); a gap in a stream (a packet the
  capture lost) is counted, and that direction is not parsed further;
- neither the prober's marker nor 64 bytes of the server's body (`x` × 64) appear in any payload.

`audit` is a pure function of the files, so the harness's verdict can be tested on made-up pcaps.
"""

from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HBONE_PORT = 15008
POD_TRAFFIC = "tcp and net 10.244.0.0/16"
TLS_MAX_RECORD = 2 ** 14 + 256
PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",   # µs timestamps
              b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}   # ns timestamps


class CaptureError(RuntimeError):
    """tcpdump did not start or a capture file cannot be read; the message says which."""


@dataclass(slots=True)
class Audit:
    packets: int = 0
    tcp_payload_bytes: int = 0
    plaintext_bytes: int = 0              # payload on a connection without 15008 at either end
    plaintext_flows: set = field(default_factory=set)
    marker_hits: int = 0                  # packets whose payload holds a marker in clear
    flows: int = 0
    flows_from_syn: int = 0
    tls_records: int = 0
    not_tls_bytes: int = 0                # bytes of a from-SYN stream that are not a TLS record
    gaps: int = 0                         # stream directions the capture lost a packet of

    @property
    def clean(self) -> bool:
        return self.plaintext_bytes == 0 and self.marker_hits == 0 and self.not_tls_bytes == 0

    def summary(self) -> dict:
        return {"packets": self.packets, "tcp_payload_bytes": self.tcp_payload_bytes,
                "plaintext_bytes": self.plaintext_bytes, "plaintext_flows": sorted(self.plaintext_flows)[:20],
                "marker_hits": self.marker_hits, "flows": self.flows, "flows_from_syn": self.flows_from_syn,
                "tls_records": self.tls_records, "not_tls_bytes": self.not_tls_bytes, "gaps": self.gaps}


@dataclass(slots=True)
class _Direction:
    next_seq: int | None = None   # None: SYN not seen, stream not parsed
    header: bytes = b""           # a record header split over segments
    skip: int = 0                 # record body bytes still to come
    broken: bool = False


def audit(files: list[Path], markers: tuple[bytes, ...]) -> Audit:
    result = Audit()
    directions: dict[tuple, _Direction] = {}
    for path in files:
        _audit_file(path, markers, result, directions)
    result.flows = len({_flow_key(k) for k in directions})
    result.flows_from_syn = len({_flow_key(k) for k, d in directions.items() if d.next_seq is not None})
    return result


def _flow_key(direction: tuple) -> tuple:
    src, sport, dst, dport = direction
    return tuple(sorted(((src, sport), (dst, dport))))


def _audit_file(path: Path, markers: tuple[bytes, ...], result: Audit, directions: dict) -> None:
    data = path.read_bytes()
    if len(data) < 24:
        return  # tcpdump rotated to a file it had not written yet
    order = PCAP_MAGIC.get(data[:4])
    if order is None:
        raise CaptureError(f"{path} is not a classic pcap file")
    (linktype,) = struct.unpack_from(order + "I", data, 20)
    if linktype != 1:
        raise CaptureError(f"{path}: link type {linktype}, expected Ethernet (1)")
    record = struct.Struct(order + "IIII")
    offset = 24
    while offset + 16 <= len(data):
        _sec, _frac, caplen, wirelen = record.unpack_from(data, offset)
        offset += 16
        frame = data[offset:offset + caplen]
        offset += caplen
        if len(frame) < caplen:
            break  # the last packet of a file tcpdump was still writing
        result.packets += 1
        if caplen < wirelen:
            raise CaptureError(f"{path}: a packet was truncated to {caplen} of {wirelen} bytes (snaplen)")
        _audit_frame(frame, markers, result, directions)


def _audit_frame(frame: bytes, markers: tuple[bytes, ...], result: Audit, directions: dict) -> None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return  # not IPv4 (ARP, IPv6): the filter only passes TCP of pod addresses anyway
    ip = 14
    ihl = (frame[ip] & 0x0F) * 4
    total = struct.unpack_from("!H", frame, ip + 2)[0]
    if frame[ip + 9] != 6:
        return
    src, dst = frame[ip + 12:ip + 16], frame[ip + 16:ip + 20]
    tcp = ip + ihl
    sport, dport, seq = struct.unpack_from("!HHI", frame, tcp)
    flags = frame[tcp + 13]
    payload = frame[tcp + (frame[tcp + 12] >> 4) * 4:ip + total]
    key = (src, sport, dst, dport)
    direction = directions.get(key)
    if direction is None:
        direction = directions[key] = _Direction()
    if flags & 0x02:  # SYN: the stream starts after it
        direction.next_seq = (seq + 1) & 0xFFFFFFFF
        return
    if not payload:
        return
    result.tcp_payload_bytes += len(payload)
    if any(marker in payload for marker in markers):
        result.marker_hits += 1
    if HBONE_PORT not in (sport, dport):
        result.plaintext_bytes += len(payload)
        result.plaintext_flows.add(f"{_ip(src)}:{sport}>{_ip(dst)}:{dport}")
        return
    if direction.next_seq is None or direction.broken:
        return
    # In sequence order: trim what was seen (a retransmission), stop at a gap (capture loss).
    ahead = (seq - direction.next_seq) & 0xFFFFFFFF
    if ahead >= 2 ** 31:  # starts before next_seq
        behind = 2 ** 32 - ahead
        if behind >= len(payload):
            return
        payload = payload[behind:]
    elif ahead:
        result.gaps += 1
        direction.broken = True
        return
    direction.next_seq = (direction.next_seq + len(payload)) & 0xFFFFFFFF
    _parse_records(payload, direction, result)


def _parse_records(payload: bytes, direction: _Direction, result: Audit) -> None:
    view = memoryview(payload)
    at = 0
    while at < len(view):
        if direction.skip:
            taken = min(direction.skip, len(view) - at)
            direction.skip -= taken
            at += taken
            continue
        need = 5 - len(direction.header)
        direction.header += bytes(view[at:at + need])
        at += need
        if len(direction.header) < 5:
            return
        kind, major, length = direction.header[0], direction.header[1], struct.unpack_from("!H", direction.header, 3)[0]
        direction.header = b""
        if kind not in (20, 21, 22, 23) or major != 3 or length > TLS_MAX_RECORD:
            result.not_tls_bytes += len(view) - at + 5
            direction.broken = True
            return
        result.tls_records += 1
        direction.skip = length


def _ip(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


class Capture:
    """`with Capture(netns, interface) as cap:` tcpdump runs for the block; `cap.files` after it."""

    def __init__(self, netns: str, interface: str, bpf: str = POD_TRAFFIC, file_mb: int = 200) -> None:
        self.netns, self.interface, self.bpf, self.file_mb = netns, interface, bpf, file_mb
        self.directory = Path(tempfile.mkdtemp(prefix=f"{netns}-pcap-"))
        self.files: list[Path] = []
        self.dropped: int | None = None
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Capture:
        self._process = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "tcpdump", "-Z", "root", "-n", "-i", self.interface, "-s", "0",
             "-B", "16384", "-U", "-C", str(self.file_mb), "-w", str(self.directory / "link.pcap"), self.bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # tcpdump prints "listening on" to stderr once the capture is live.
        line = self._process.stderr.readline()
        if "listening on" not in line:
            self._process.kill()
            raise CaptureError(f"tcpdump did not start: {line.strip() or self._process.stderr.read()[:400]}")
        return self

    def __exit__(self, *exc) -> None:
        assert self._process is not None
        time.sleep(0.3)  # the last packets of the window
        self._process.send_signal(signal.SIGINT)
        try:
            _, err = self._process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, err = self._process.communicate()
        # "N packets dropped by kernel": a loss would leave unchecked bytes, so it is reported.
        for line in err.splitlines():
            if "dropped by kernel" in line:
                self.dropped = int(line.split()[0])
        self.files = sorted(self.directory.glob("link.pcap*"), key=_rotation_index)

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _rotation_index(path: Path) -> int:
    suffix = path.name.removeprefix("link.pcap")
    return int(suffix) if suffix.isdigit() else 0
