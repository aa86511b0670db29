"""Leader election between two operator instances on the real API server's Lease.

Shortened timings (lease 3 s, renew deadline 2 s, retry 0.5 s) keep the test quick; the
production defaults are client-go's 15/10/2 s. Both instances watch and reconcile; only the
leader writes status.
"""

from __future__ import annotations

import time
from typing import Any

from runtime.testbed.cluster import Cluster

from .conftest import wait_for
from .operator_harness import RunningOperator
from .test_operator_source import AP_PATH, install_crds, policy
from .test_operator_writer import kubectl_condition

LEASE = 3.0
RETRY = 0.5


def elect(namespace: str, identity: str) -> dict[str, object]:
    return {"namespace": namespace, "name": "wisp-operator", "identity": identity,
            "lease_duration": LEASE, "renew_deadline": 2.0, "retry_period": RETRY}


def holder(cluster: Cluster, namespace: str) -> str:
    with cluster.client() as client:
        response = client.get("/apis/coordination.k8s.io/v1/namespaces/%s/leases/wisp-operator" % namespace)
        return (response.json().get("spec") or {}).get("holderIdentity") or "" if response.status_code == 200 else ""


def _hand_over(cluster: Cluster, namespace: str, release: bool) -> float:
    install_crds(cluster)
    first = RunningOperator(cluster, elect=elect(namespace, "first"), release_on_stop=release).start()
    second: RunningOperator | None = None
    try:
        wait_for(lambda: first.elector.is_leader(), "the first instance to lead")
        second = RunningOperator(cluster, elect=elect(namespace, "second")).start()
        wait_for(second.source.synced.is_set, "the second instance's initial list")
        with cluster.client() as client:
            assert client.post(AP_PATH % namespace, json=policy("one")).status_code == 201
        wait_for(lambda: kubectl_condition(cluster, "authorizationpolicy", namespace, "one", "ZtunnelAccepted"),
                 "the leader's status write")
        # The follower reconciled the same objects but wrote nothing.
        wait_for(lambda: second.on_loop(lambda: second.store.get("AuthorizationPolicy", namespace, "one")),
                 "the follower to see the policy")
        assert not second.elector.is_leader() and second.writer.status_writes == 0
        assert holder(cluster, namespace) == "first"

        stopped = time.monotonic()
        first.stop()
        wait_for(second.elector.is_leader, "the second instance to take over", timeout=LEASE * 4)
        took = time.monotonic() - stopped
        assert holder(cluster, namespace) == "second"
        with cluster.client() as client:
            assert client.post(AP_PATH % namespace, json=policy("two")).status_code == 201
        wait_for(lambda: kubectl_condition(cluster, "authorizationpolicy", namespace, "two", "ZtunnelAccepted"),
                 "the new leader's status write")
        return took
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_leader_hands_over_at_once_when_the_leader_releases(cluster: Cluster, namespace: str, capsys: Any) -> None:
    took = _hand_over(cluster, namespace, release=True)
    with capsys.disabled():
        print("\nhand-over after a release: %.2f s (lease %.0f s, retry %.1f s)" % (took, LEASE, RETRY))
    # Released: the follower takes it at its next retry, without waiting out the lease.
    assert took < LEASE, took


def test_leader_hands_over_within_the_lease_time_when_the_leader_dies(cluster: Cluster, namespace: str,
                                                                      capsys: Any) -> None:
    took = _hand_over(cluster, namespace, release=False)
    with capsys.disabled():
        print("\nhand-over after a leader stopped without releasing: %.2f s" % took)
    # Not released: the follower waits until the record has not changed for a lease duration.
    assert LEASE - 1.0 < took < LEASE + 2 * RETRY + 1.0, took
