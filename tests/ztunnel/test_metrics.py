"""Istio's istio_tcp_* labels and the access log for one connection record; the exposition, and the
sum with a worker process's counters; no prometheus-client in ztunnel."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import structlog
import trio

from wisp.identity import SpiffeId
from wisp.metrics import METRICS_DIR_ENV
from wisp.model import Service, Workload
from ztunnel.metrics import CONTENT_TYPE, LABELS, ConnectionRecord, Metrics, Peer, connection_labels

ROOT = str(Path(__file__).resolve().parents[2])

SRC = Workload(uid="u1", name="client-1", namespace="shop", workload_name="client", canonical_name="client",
               canonical_revision="v1", cluster_id="Kubernetes")
DST = Workload(uid="u2", name="web-1", namespace="shop", workload_name="web", canonical_name="web")
SVC = Service(name="web", namespace="shop", hostname="web.shop.svc.cluster.local")
SRC_ID = SpiffeId("cluster.local", "shop", "client")
DST_ID = SpiffeId("cluster.local", "shop", "web")


def test_labels_follow_istio_names_and_fill_unknown():
    labels = connection_labels("source", Peer(SRC, SRC_ID), Peer(None, None), None, "unknown")
    assert tuple(labels) == LABELS
    assert labels["source_workload"] == "client"
    assert labels["source_principal"] == "spiffe://cluster.local/ns/shop/sa/client"
    assert labels["source_app"] == "client" and labels["source_version"] == "v1"
    assert labels["destination_workload"] == "unknown"
    assert labels["destination_service"] == "unknown"
    assert labels["request_protocol"] == "tcp" and labels["response_flags"] == "-"


def test_destination_service_labels_come_from_the_service():
    labels = connection_labels("destination", Peer(SRC, SRC_ID), Peer(DST, DST_ID), SVC, "mutual_tls")
    assert labels["destination_service"] == "web.shop.svc.cluster.local"
    assert labels["destination_service_name"] == "web"
    assert labels["destination_service_namespace"] == "shop"
    assert labels["connection_security_policy"] == "mutual_tls"
    assert labels["reporter"] == "destination"


async def test_record_counts_open_close_and_bytes_and_logs_the_connection():
    metrics = Metrics()
    with structlog.testing.capture_logs() as logs:
        record = ConnectionRecord(metrics, direction="outbound", source=Peer(SRC, SRC_ID),
                                  destination=Peer(DST, DST_ID), service=SVC, security="mutual_tls",
                                  src_addr="10.0.0.1:5555", dst_addr="10.96.0.1:80", hbone_addr="10.0.0.2:8080")
        assert metrics.value("istio_tcp_connections_opened_total", reporter="source") == 1
        record.transfer.upstream, record.transfer.downstream = 100, 7
        metrics.flush()  # a long connection reports its bytes before it ends
        assert metrics.value("istio_tcp_received_bytes_total") == 100
        record.transfer.upstream = 150
        await trio.sleep(0)
        record.close()
    assert metrics.value("istio_tcp_connections_closed_total", reporter="source", response_flags="-") == 1
    assert metrics.value("istio_tcp_received_bytes_total") == 150
    assert metrics.value("istio_tcp_sent_bytes_total") == 7
    (entry,) = [e for e in logs if e["event"] == "connection complete"]
    assert entry["src.addr"] == "10.0.0.1:5555" and entry["dst.hbone_addr"] == "10.0.0.2:8080"
    assert entry["src.identity"] == str(SRC_ID) and entry["dst.service"] == SVC.hostname
    assert entry["direction"] == "outbound" and entry["bytes_sent"] == 150 and entry["bytes_recv"] == 7
    assert entry["duration"].endswith("ms")
    assert b"istio_tcp_connections_opened_total{" in metrics.exposition()


async def test_denied_close_carries_the_deny_flag():
    metrics = Metrics()
    record = ConnectionRecord(metrics, direction="inbound", source=Peer(None, None), destination=Peer(DST, DST_ID),
                              service=None, security="unknown", src_addr="a", dst_addr="b")
    record.close("DENY")
    record.close()  # idempotent
    assert metrics.value("istio_tcp_connections_closed_total", reporter="destination", response_flags="DENY") == 1
    assert metrics.value("istio_tcp_connections_closed_total") == 1
    assert not metrics.live


def test_importing_ztunnel_does_not_load_prometheus_client():
    # It cost 2.5 MB of RSS per process (docs/architecture.md, "Metrics without prometheus-client").
    code = "import sys, ztunnel.main; print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_exposition_has_istios_counter_names_and_no_created_samples():
    metrics = Metrics()
    ConnectionRecord(metrics, direction="inbound", source=Peer(None, None), destination=Peer(DST, DST_ID),
                     service=SVC, security="mutual_tls", src_addr="a", dst_addr="b").close()
    text = (await metrics.scrape()).decode()
    assert text == metrics.exposition().decode()
    assert text.startswith("# HELP istio_tcp_connections_opened_total Connections opened by the proxy\n"
                           "# TYPE istio_tcp_connections_opened_total counter\n"
                           'istio_tcp_connections_opened_total{connection_security_policy="mutual_tls",')
    assert [line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")] == [
        "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total", "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total", "wisp_inbound_identity_mismatch_total"]
    assert "_created" not in text and CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


async def test_a_worker_process_writes_its_counters_for_the_main_process_to_sum(monkeypatch):
    directory = tempfile.mkdtemp(prefix="wm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        main, worker = Metrics(), Metrics()
        for metrics in (main, worker):
            ConnectionRecord(metrics, direction="outbound", source=Peer(SRC, SRC_ID), destination=Peer(DST, DST_ID),
                             service=SVC, security="mutual_tls", src_addr="a", dst_addr="b")
        (live,) = worker.live
        monkeypatch.setenv(METRICS_DIR_ENV, directory)  # what the supervisor gives a worker
        async with trio.open_nursery() as nursery:
            nursery.start_soon(worker.flush_periodically, 3600)
            with trio.fail_after(5):
                while not any(name.endswith(".json") for name in os.listdir(directory)):
                    await trio.sleep(0.01)
            live.transfer.upstream = 1000  # the scrape has the worker count this before it writes
            text = (await main.scrape(directory)).decode()
            nursery.cancel_scope.cancel()
        assert re.search(r'^istio_tcp_connections_opened_total\{[^}]*reporter="source"[^}]*\} 2\.0$', text, re.M)
        assert re.search(r'^istio_tcp_received_bytes_total\{[^}]*\} 1000\.0$', text, re.M)
        assert main.value("istio_tcp_connections_opened_total") == 1  # value() is this process's only
    finally:
        shutil.rmtree(directory, ignore_errors=True)
