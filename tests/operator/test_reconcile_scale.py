"""The benchmark's cluster (10,000 pods, 1,000 services, 500 policies) builds completely.

How fast it builds is bench/controlplane's business (docs/performance.md); this checks that the
same scenario yields every workload, service and policy with no errors.
"""

from __future__ import annotations

import pytest

from bench.controlplane.scenario import cluster
from wisp_operator.cluster import ClusterState
from wisp_operator.reconcile import reconcile

pytestmark = pytest.mark.slow


def test_benchmark_cluster_builds_every_workload_service_and_policy() -> None:
    result = reconcile(ClusterState.of(cluster()))
    assert result.errors == ()
    assert len(result.model.workloads) == 10_000
    assert len(result.model.services) == 1_000 + 5  # and five waypoints
    assert len(result.model.authorizations) == 500 + 1  # and the mesh-wide STRICT
    assert all(w.services for w in result.model.workloads.values())
