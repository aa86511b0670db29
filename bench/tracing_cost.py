"""What tracing costs the waypoint per request, sampled and not (issue 12, docs/tracing.md).

Times the two places tracing touches a request on the engine's loop:

- the pipeline's forwarding step (`waypoint.pipeline.forwarded`: x-forwarded-*, x-request-id and
  the trace headers) for a request with 11 header fields and a `traceparent` — sampled (flag 01,
  export on: a `Span` is made) and unsampled (flag 00: headers only), and, as the floor, with
  export off;
- `RequestRecord.finish` for the same request, without a span and with one, the latter through
  `waypoint.tracing.Exporter.end` (the SDK's `ReadableSpan` built and queued on a
  `BatchSpanProcessor`) with an exporter that drops the batch, so only the loop's share is
  timed: the OTLP encoding and the gRPC call happen on the processor's thread.

Run: `.venv/bin/python -m bench.tracing_cost` (under the benchmark lock); prints µs per request,
best of 7 × 20,000.
"""

from __future__ import annotations

import random
import timeit

from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from waypoint.pipeline import ClientContext, forwarded
from waypoint.telemetry import Party, RequestRecord, Telemetry
from waypoint.tracing import Exporter, Identity
from wisp.identity import SpiffeId

HOST = "echo.shop.svc.cluster.local"
HEADERS = [
    (b"user-agent", b"curl/8.5.0"), (b"accept", b"application/json"), (b"accept-encoding", b"gzip, deflate"),
    (b"content-type", b"application/json"), (b"x-request-id", b"8a4f2b6e-1c3d-4e5f-9a8b-7c6d5e4f3a2b"),
    (b"x-custom-a", b"1"), (b"x-custom-b", b"2"), (b"x-custom-c", b"3"), (b"cookie", b"session=abc"),
    (b"content-length", b"0"),
]
SAMPLED = HEADERS + [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
UNSAMPLED = HEADERS + [(b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")]
CLIENT = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/client")
SERVER = Party(None, SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/echo"))
ROUNDS, NUMBER = 7, 20_000


class Discard(SpanExporter):
    def export(self, spans):  # noqa: ANN001 - the SDK's signature
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def best_us(stmt) -> float:
    return min(timeit.repeat(stmt, number=NUMBER, repeat=ROUNDS)) / NUMBER * 1e6


def main() -> None:
    rng = random.Random(1)
    ctx = ClientContext(CLIENT, "10.244.2.9", 40000, "10.96.0.10", 80)
    exporter = Exporter(("127.0.0.1", 4317), Identity("shop", "waypoint", "cluster.local", "waypoint-0", "10.0.0.1"),
                        span_exporter=Discard(), schedule_delay_ms=50)
    traced = Telemetry(access_log=False)
    traced.tracer = exporter
    plain = Telemetry(access_log=False)
    _, span = forwarded(list(SAMPLED), ctx, rng, 1.0, True, HOST, 80, True)

    def finish(telemetry, trace):
        record = RequestRecord(telemetry, Party(None, CLIENT), b"GET", b"/hello", HOST.encode(), "HTTP/1.1")
        record.trace = trace
        record.finish(200, destination=SERVER, upstream="10.244.1.9:8080")

    rows = [
        ("forwarding step, no export configured", lambda: forwarded(list(SAMPLED), ctx, rng, 1.0, False, HOST, 80, True)),
        ("forwarding step, unsampled (flag 00)", lambda: forwarded(list(UNSAMPLED), ctx, rng, 1.0, True, HOST, 80, True)),
        ("forwarding step, sampled (flag 01)", lambda: forwarded(list(SAMPLED), ctx, rng, 1.0, True, HOST, 80, True)),
        ("RequestRecord.finish, no span", lambda: finish(plain, None)),
        ("RequestRecord.finish, span exported", lambda: finish(traced, span)),
    ]
    results = {}
    for name, stmt in rows:
        results[name] = best_us(stmt)
        print("%-40s %7.2f µs" % (name, results[name]))
    exporter.close()
    extra = (results["forwarding step, sampled (flag 01)"] - results["forwarding step, unsampled (flag 00)"]
             + results["RequestRecord.finish, span exported"] - results["RequestRecord.finish, no span"])
    print("%-40s %7.2f µs" % ("a sampled request costs more by", extra))


if __name__ == "__main__":
    main()
