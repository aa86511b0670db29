"""Microbenchmark: wisp.h2 against the h2 library, framing and parsing what HBONE sends most.

`python -m bench.hbone.codec` prints µs per operation (median of 7 repeats, each timing a batch):
- frame / parse one 1 KiB DATA frame (parse includes returning the window: `consumed`);
- parse 16 such frames arriving in one read (per frame), as a busy connection's reads do;
- frame / parse one CONNECT HEADERS (Istio's headers, a fresh traceparent each, on connections
  carrying 100 streams each). wisp.h2 sends plain literals by default, h2 Huffman-codes; the
  Huffman row has wisp.h2 parse Huffman-coded blocks as an Istio peer sends them.
Both codecs get HBONE's settings; h2's windows are opened wide so neither waits on flow control.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import h2.config
import h2.connection
import h2.settings
import hpack

from wisp.h2.connection import Connection
from wisp.h2.settings import Settings
from wisp.h2.testing import RawPeer, take

MAX = 2**31 - 1
PAYLOAD = b"x" * 1024
BATCH = 100


def connect_headers(i: int) -> list[tuple[str, str]]:
    return [
        (":method", "CONNECT"),
        (":authority", f"10.244.1.{i % 8 + 10}:8080"),
        ("baggage", "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=cart,"
                    "service.name=cart,service.version=v1"),
        ("forwarded", f'for="10.244.0.{i % 200}:{40000 + i % 20000}";host=cart.shop.svc.cluster.local'),
        ("traceparent", f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-00"),
    ]


# -- wisp.h2 -----------------------------------------------------------------------------------
def wisp_pair(huffman: bool = False) -> tuple[Connection, Connection]:
    settings = Settings(initial_window_size=MAX, max_frame_size=1 << 20)
    client = Connection(client=True, local=settings, connection_window=MAX, huffman=huffman)
    server = Connection(client=False, local=settings, connection_window=MAX)
    client.initiate()
    server.receive(take(client))
    client.receive(take(server))
    server.receive(take(client))
    return client, server


def wisp_frame_data(n: int) -> float:
    client, _ = wisp_pair()
    sid = client.open_stream(connect_headers(0))
    take(client)
    out = client.out
    start = time.perf_counter()
    for _ in range(n):
        client.send_data(sid, PAYLOAD)
        del out[:]
    return time.perf_counter() - start


def wisp_parse_data(n: int, per_read: int) -> float:
    _, server = wisp_pair()
    server.receive(RawPeer().request(1))
    wire = RawPeer.data(1, PAYLOAD) * per_read
    take(server)
    receive, consumed, out = server.receive, server.consumed, server.out
    start = time.perf_counter()
    for _ in range(n // per_read):
        for event in receive(wire):
            consumed(1, len(event.data))
        if out:
            del out[:]
    return time.perf_counter() - start


def never_indexed(headers: list[tuple[str, str]]) -> list[tuple]:
    """traceparent and forwarded are unique per connection: never index them."""
    return [(k, v, True) if k in ("traceparent", "forwarded") else (k, v) for k, v in headers]


def wisp_frame_headers(n: int, hint: bool = False) -> float:
    total = 0.0
    headers = [never_indexed(connect_headers(i)) if hint else connect_headers(i) for i in range(n)]
    for b in range(0, n, BATCH):
        client, _ = wisp_pair()
        out = client.out
        start = time.perf_counter()
        for h in headers[b:b + BATCH]:
            client.open_stream(h)
            del out[:]
        total += time.perf_counter() - start
    return total


def wisp_parse_headers(n: int, huffman: bool = False) -> float:
    total = 0.0
    for _ in range(0, n, BATCH):
        client, server = wisp_pair(huffman)
        wire = []
        for i in range(BATCH):
            client.open_stream(connect_headers(i))
            wire.append(take(client))
        receive = server.receive
        start = time.perf_counter()
        for frame in wire:
            receive(frame)
        total += time.perf_counter() - start
    return total


# -- h2 ----------------------------------------------------------------------------------------
def h2_conn(client_side: bool) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    conn.local_settings = h2.settings.Settings(client=client_side, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MAX,
        h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 20,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
    })
    conn.max_inbound_frame_size = 1 << 20
    conn.initiate_connection()
    conn.increment_flow_control_window(MAX - 65535)
    return conn


def h2_pair() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    client, server = h2_conn(True), h2_conn(False)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.data_to_send()
    return client, server


def h2_frame_data(n: int) -> float:
    client, server = h2_pair()
    client.send_headers(1, connect_headers(0))
    client.data_to_send()
    stream = client._get_stream_by_id(1)
    start = time.perf_counter()
    for _ in range(n):
        client.send_data(1, PAYLOAD)
        client.data_to_send()
    elapsed = time.perf_counter() - start
    assert stream.outbound_flow_control_window > 0
    return elapsed


def h2_parse_data(n: int, per_read: int) -> float:
    client, server = h2_pair()
    client.send_headers(1, connect_headers(0))
    server.receive_data(client.data_to_send())
    server.data_to_send()
    wire = RawPeer.data(1, PAYLOAD) * per_read
    receive, ack = server.receive_data, server.acknowledge_received_data
    start = time.perf_counter()
    for _ in range(n // per_read):
        for event in receive(wire):
            ack(event.flow_controlled_length, 1)
        server.data_to_send()
    return time.perf_counter() - start


def h2_frame_headers(n: int, hint: bool = False) -> float:
    total = 0.0
    headers = [connect_headers(i) for i in range(n)]
    if hint:
        headers = [[hpack.NeverIndexedHeaderTuple(k, v) if k in ("traceparent", "forwarded")
                    else hpack.HeaderTuple(k, v) for k, v in h] for h in headers]
    for b in range(0, n, BATCH):
        client, _ = h2_pair()
        start = time.perf_counter()
        for h in headers[b:b + BATCH]:
            client.send_headers(client.get_next_available_stream_id(), h)
            client.data_to_send()
        total += time.perf_counter() - start
    return total


def h2_parse_headers(n: int, huffman: bool = True) -> float:
    total = 0.0
    for _ in range(0, n, BATCH):
        client, server = h2_pair()
        wire = []
        for i in range(BATCH):
            client.send_headers(client.get_next_available_stream_id(), connect_headers(i))
            wire.append(client.data_to_send())
        receive = server.receive_data
        start = time.perf_counter()
        for frame in wire:
            receive(frame)
        total += time.perf_counter() - start
    return total


CASES = [
    ("frame 1 KiB DATA", wisp_frame_data, h2_frame_data, 20000, ()),
    ("parse 1 KiB DATA (one per read)", wisp_parse_data, h2_parse_data, 20000, (1,)),
    ("parse 1 KiB DATA (16 per read)", wisp_parse_data, h2_parse_data, 20000 // 16 * 16, (16,)),
    ("frame CONNECT HEADERS", wisp_frame_headers, h2_frame_headers, 2000, ()),
    ("frame CONNECT HEADERS, traceparent/forwarded never indexed", wisp_frame_headers, h2_frame_headers,
     2000, (True,)),
    ("parse CONNECT HEADERS (each side's own encoding)", wisp_parse_headers, h2_parse_headers, 2000, ()),
    ("parse CONNECT HEADERS, Huffman-coded (as Istio sends)", wisp_parse_headers, h2_parse_headers, 2000,
     (True,)),
]


def measure(fn, n: int, args: tuple, repeats: int) -> float:
    fn(n // 10, *args)   # warm up
    return statistics.median(fn(n, *args) for _ in range(repeats)) / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hbone.codec", description=__doc__)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    print("| operation | wisp.h2 µs | h2 µs | h2 / wisp.h2 |")
    print("|---|---|---|---|")
    for name, ours, theirs, n, extra in CASES:
        a = measure(ours, n, extra, args.repeats)
        b = measure(theirs, n, extra, args.repeats)
        print(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.1f}× |")


if __name__ == "__main__":
    main()
