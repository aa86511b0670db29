"""Istio's istio_tcp_* labels and the access log, for one connection record."""

from __future__ import annotations

import structlog
import trio

from wisp.identity import SpiffeId
from wisp.model import Service, Workload
from ztunnel.metrics import LABELS, ConnectionRecord, Metrics, Peer, connection_labels

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
