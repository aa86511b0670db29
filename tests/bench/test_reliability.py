"""bench/reliability's own verdicts: the capture audit on made-up pcaps and the prober's outcomes
against loopback servers that answer, close (FIN), reset (RST) or are not there. The scenarios
themselves are benchmarks (minutes each), run by `python -m bench.reliability`."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest

from bench.reliability.capture import audit
from bench.reliability.probe import attempt

MARKERS = (b"wisp-reliability-plaintext-marker-5c1e", b"x" * 64)
A, B = bytes([10, 244, 1, 5]), bytes([10, 244, 2, 7])


def _frame(src: bytes, sport: int, dst: bytes, dport: int, seq: int, payload: bytes = b"", syn: bool = False) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02 if syn else 0x18, 65535, 0, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), 0, 0, 64, 6, 0, src, dst)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def _pcap(path: Path, frames: list[bytes]) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    path.write_bytes(out)
    return path


def _record(kind: int, body: bytes) -> bytes:
    return bytes([kind, 3, 3]) + struct.pack("!H", len(body)) + body


def test_hbone_records_split_over_segments_and_a_retransmission_are_clean(tmp_path):
    stream = _record(22, b"h" * 300) + _record(23, b"\x8f" * 5000) + _record(23, b"\x11" * 10)
    frames = [_frame(A, 40000, B, 15008, 99, syn=True)]
    at = 100
    for cut in (3, 700, 2000):  # a record header cut in two, then bodies over segments
        frames.append(_frame(A, 40000, B, 15008, at, stream[at - 100:cut]))
        at = 100 + cut
    frames.append(_frame(A, 40000, B, 15008, 100 + 700, stream[700:2000]))  # retransmitted
    frames.append(_frame(A, 40000, B, 15008, at, stream[at - 100:]))
    result = audit([_pcap(tmp_path / "a.pcap", frames)], MARKERS)
    assert result.clean and result.gaps == 0
    assert (result.tls_records, result.flows_from_syn, result.plaintext_bytes) == (3, 1, 0)


def test_payload_off_15008_is_plaintext_and_the_marker_is_found(tmp_path):
    request = b"GET /wisp-reliability-plaintext-marker-5c1e HTTP/1.1\r\n\r\n"
    frames = [_frame(A, 40001, B, 8080, 1, syn=True), _frame(A, 40001, B, 8080, 2, request)]
    result = audit([_pcap(tmp_path / "a.pcap", frames)], MARKERS)
    assert not result.clean
    assert (result.plaintext_bytes, result.marker_hits) == (len(request), 1)
    assert result.plaintext_flows == {"10.244.1.5:40001>10.244.2.7:8080"}


def test_bytes_on_15008_that_are_not_tls_records_are_counted(tmp_path):
    frames = [_frame(B, 15008, A, 40002, 7, syn=True), _frame(B, 15008, A, 40002, 8, b"HTTP/1.1 200 OK\r\n\r\n")]
    result = audit([_pcap(tmp_path / "a.pcap", frames)], MARKERS)
    assert not result.clean and result.not_tls_bytes > 0


def test_a_lost_segment_is_a_gap_and_the_body_in_clear_is_found_without_a_syn(tmp_path):
    frames = [_frame(A, 40003, B, 15008, 1, syn=True), _frame(A, 40003, B, 15008, 500, _record(23, b"z" * 10)),
              _frame(B, 15008, A, 40004, 1, b"x" * 64)]
    result = audit([_pcap(tmp_path / "a.pcap", frames)], MARKERS)
    assert result.gaps == 1 and result.marker_hits == 1 and result.flows == 2 and result.flows_from_syn == 1


# -- the prober's outcomes ---------------------------------------------------------------------------------
def _server(behaviour: str) -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(4096)
        if behaviour == "ok":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody")
        elif behaviour == "status":
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
        elif behaviour == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # "fin": an orderly close before any answer

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


@pytest.mark.parametrize(("behaviour", "outcome"), [("ok", "ok"), ("status", "status:503"), ("fin", "eof"),
                                                    ("reset", "reset")])
def test_the_prober_tells_an_answer_a_fin_and_a_reset_apart(behaviour, outcome):
    listener, port = _server(behaviour)
    try:
        assert attempt("127.0.0.1", port, "/x", 5) == outcome
    finally:
        listener.close()


def test_nothing_listening_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert attempt("127.0.0.1", port, "/x", 5) == "refused"


def test_the_prober_ends_on_sigterm_even_where_sigint_is_ignored():
    """A shell's background job inherits SIGINT ignored, so the harness stops it with SIGTERM."""
    import signal
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "bench.reliability.probe", f"127.0.0.1:{port}", "--interval",
                                "0.05"], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert '"outcome": "refused"' in process.stdout.readline()
        time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(5) == 0
    finally:
        process.kill()
        process.wait()
