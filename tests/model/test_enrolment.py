"""Enrolment: which pods the ambient mesh captures (ambient-api §1)."""

from __future__ import annotations

from typing import Any

import pytest

from wisp.enrolment import Enrolment, InvalidObject, enrolment
from wisp_operator.errors import InvalidObject as OperatorInvalidObject


def pod(labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        host_network: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "labels": labels or {},
                     "annotations": annotations or {}},
        "spec": {"hostNetwork": host_network, "containers": [{"name": "app"}]},
    }


def namespace(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": labels or {}}}


AMBIENT = {"istio.io/dataplane-mode": "ambient"}
NONE = {"istio.io/dataplane-mode": "none"}


@pytest.mark.parametrize(
    "the_pod, the_namespace, expected",
    [
        (pod(), namespace(AMBIENT), Enrolment(True, "namespace labelled ambient")),
        (pod(AMBIENT), namespace(), Enrolment(True, "pod labelled ambient")),
        (pod(AMBIENT), None, Enrolment(True, "pod labelled ambient")),
        (pod(NONE), namespace(AMBIENT), Enrolment(False, "pod labelled none")),
        (pod(AMBIENT), namespace(NONE), Enrolment(True, "pod labelled ambient")),
        (pod(), namespace(NONE), Enrolment(False, "namespace labelled none")),
        (pod(), namespace(), Enrolment(False, "not labelled for ambient")),
        (pod(), None, Enrolment(False, "not labelled for ambient")),
        (pod({"istio.io/dataplane-mode": "sidecar"}), namespace(AMBIENT), Enrolment(True, "namespace labelled ambient")),
    ],
    ids=[
        "unlabelled-pod-in-ambient-namespace",
        "ambient-pod-in-unlabelled-namespace",
        "ambient-pod-namespace-unknown",
        "none-pod-in-ambient-namespace",
        "ambient-pod-in-none-namespace",
        "unlabelled-pod-in-none-namespace",
        "nothing-labelled",
        "nothing-labelled-namespace-unknown",
        "unknown-pod-value-falls-back-to-namespace",
    ],
)
def test_pod_label_beats_namespace_label(the_pod: dict[str, Any], the_namespace: dict[str, Any] | None,
                                         expected: Enrolment) -> None:
    assert enrolment(the_pod, the_namespace) == expected


def test_host_network_pods_are_never_enrolled() -> None:
    assert enrolment(pod(AMBIENT, host_network=True), namespace(AMBIENT)) == Enrolment(
        False, "pod uses the host network"
    )


def test_pods_with_a_sidecar_are_never_enrolled() -> None:
    annotations = {"sidecar.istio.io/status": '{"containers":["istio-proxy"]}'}
    assert enrolment(pod(AMBIENT, annotations), namespace(AMBIENT)) == Enrolment(False, "pod has a sidecar")


@pytest.mark.parametrize(
    "the_pod, the_namespace",
    [
        ("not a pod", None),
        ({"kind": "Pod", "metadata": "web-1"}, None),
        ({"kind": "Pod", "metadata": {"name": "web-1", "labels": ["app=web"]}}, None),
        ({"kind": "Pod", "metadata": {"name": "web-1", "labels": {"app": 1}}}, None),
        ({"kind": "Pod", "metadata": {"name": "web-1"}, "spec": {"hostNetwork": "yes"}}, None),
        (pod(), {"kind": "Namespace", "metadata": {"name": "shop", "labels": "ambient"}}),
    ],
)
def test_malformed_objects_raise_invalid_object(the_pod: Any, the_namespace: Any) -> None:
    with pytest.raises(InvalidObject) as info:
        enrolment(the_pod, the_namespace)
    assert info.value.problem


def test_operator_invalid_object_is_catchable_as_the_shared_one() -> None:
    assert issubclass(OperatorInvalidObject, InvalidObject)
