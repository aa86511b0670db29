"""The waypoint's access log formatted by hand (telemetry.AccessLog): the same JSON lines structlog's
JSONRenderer writes, whatever the request's bytes, written once per loop pass."""

from __future__ import annotations

import io
import json
import sys

import structlog

from waypoint import telemetry
from waypoint.route.parse import RouteRef
from waypoint.telemetry import Party, RequestRecord, Telemetry
from wisp.engine.loop import Loop
from wisp.identity import SpiffeId
from wisp.model import Service

CLIENT = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/client")
SERVER = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/server")
SERVICE = Service("echo", "shop", "echo.shop.svc.cluster.local", ("10.96.0.9",), ())
ROUTE = RouteRef("HTTPRoute", "shop", "echo", 0)


def _finish(telemetry: Telemetry, path: bytes = b"/", **kw) -> None:
    record = RequestRecord(telemetry, Party(None, CLIENT), b"GET", path, b"echo:80", "HTTP/1.1")
    record.request_bytes, record.response_bytes = 12, 1200
    kw.setdefault("destination", Party(None, SERVER))
    record.finish(kw.pop("status", 200), **kw)


def _structlog_line(monkeypatch, **kw) -> dict:
    """The line structlog writes with wisp.log's JSON processors (bound here, not configured
    globally, so no other test's loggers change)."""
    out = io.StringIO()
    logger = structlog.wrap_logger(structlog.PrintLogger(out), processors=[
        structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer()])
    monkeypatch.setattr(telemetry, "log", logger)
    _finish(Telemetry(access_log=True), **kw)
    return json.loads(out.getvalue())


def test_lines_are_the_ones_structlog_writes(monkeypatch) -> None:
    cases = [
        dict(service=SERVICE, upstream="10.0.2.5:8080", route=ROUTE),
        dict(status=503, upstream="10.0.2.5:8080", flags="UF", error='connect "refused"\n'),
        dict(status=403, service=SERVICE, flags="RBAC", detail="rbac_access_denied_matched_policy[ns[shop]]"),
        dict(path='/ü"\\\x00\x7f?q=1'.encode("latin-1", "replace"), grpc_status="14", destination=None),
    ]
    for case in cases:
        expected = _structlog_line(monkeypatch, **dict(case))
        written: list[str] = []
        telemetry = Telemetry(access_log=True, json_lines=True)
        telemetry.lines._write = written.append
        _finish(telemetry, **dict(case))
        assert len(written) == 1 and written[0].endswith("\n") and written[0].count("\n") == 1
        line = json.loads(written[0])
        for stamped in (expected, line):
            assert stamped.pop("timestamp").endswith("Z")
            stamped.pop("duration")
        assert line == expected


def test_a_loop_pass_writes_its_lines_at_once() -> None:
    written: list[str] = []
    telemetry = Telemetry(access_log=True, json_lines=True)
    telemetry.lines._write = written.append
    loop = Loop()
    try:
        telemetry.lines.attach(loop)

        def three() -> None:
            for n in range(3):
                _finish(telemetry, path=b"/%d" % n, service=SERVICE)

        loop.call_soon(three)
        loop.run_once(0)
        assert len(written) == 1
        assert [json.loads(x)["path"] for x in written[0].splitlines()] == ["/0", "/1", "/2"]
        loop.call_soon(lambda: _finish(telemetry, path=b"/3"))
        loop.run_once(0)
        assert len(written) == 2 and json.loads(written[1])["path"] == "/3"
    finally:
        loop.close()


def test_a_failing_stderr_costs_no_request() -> None:
    telemetry = Telemetry(access_log=True, json_lines=True)

    def broken(text: str) -> None:
        raise OSError(28, "No space left on device")

    telemetry.lines._write = broken
    _finish(telemetry)
    assert telemetry.value("istio_requests_total", response_code="200") == 1


def test_off_writes_nothing(capsys) -> None:
    telemetry = Telemetry(access_log=False, json_lines=True)
    assert telemetry.lines is None
    _finish(telemetry)
    assert capsys.readouterr().err == "" and sys.stderr is not None
