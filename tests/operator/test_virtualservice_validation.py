"""VirtualService and DestinationRule admission: every served version, and istiod's webhook checks.

Istio serves both kinds at v1, v1beta1 and v1alpha3 with one schema; the local store admits them
all. What istiod's webhook refuses (pkg/config/validation/validation.go) is refused with its words.
"""

from __future__ import annotations

from typing import Any

import pytest

from wisp_operator.validation import admit
from wisp_operator.validation.errors import BAD_REQUEST


def vs(http: list[dict[str, Any]], api: str = "v1", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"networking.istio.io/{api}", "kind": "VirtualService",
            "metadata": {"name": "reviews", "namespace": "shop"}, "spec": {"hosts": ["reviews"], "http": http, **spec}}


ROUTE = {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}


@pytest.mark.parametrize("api", ["v1", "v1beta1", "v1alpha3"])
def test_both_kinds_are_admitted_at_every_served_version(api: str) -> None:
    assert admit(vs([ROUTE], api)).admitted
    rule = {"apiVersion": f"networking.istio.io/{api}", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}
    assert admit(rule).admitted


@pytest.mark.parametrize(("http", "spec", "words"), [
    ([ROUTE], {"hosts": []}, "virtual service must have at least one host"),
    ([ROUTE], {"hosts": ["*"]}, "wildcard host * is not allowed for virtual services bound to the mesh gateway"),
    ([], {}, "http, tcp or tls must be provided in virtual service"),
    ([{**ROUTE, "redirect": {"uri": "/x"}}], {}, "HTTP route cannot contain both route and redirect"),
    ([{"match": [{"uri": {"prefix": "/"}}]}], {}, "HTTP route, redirect or direct response is required"),
    ([{"redirect": {"redirectCode": 301}}], {}, "redirect must specify URI, authority, scheme, or port"),
    ([{**ROUTE, "fault": {}}], {}, "HTTP fault injection must have an abort and/or a delay"),
    ([{**ROUTE, "match": [{"uri": {"regex": "(a"}}]}], {}, "'uri': invalid regular expression"),
    ([{"route": [{"destination": {"host": "reviews", "subset": "V_1"}}]}], {}, "subset name is invalid: V_1"),
    ([{"delegate": {"name": "x"}}], {}, "http delegate only applies to gateway"),
])
def test_what_istiods_webhook_refuses_is_refused(http: list[dict[str, Any]], spec: dict[str, Any], words: str) -> None:
    verdict = admit(vs(http, **spec))
    assert verdict.refusal is not None and verdict.refusal.reason == BAD_REQUEST
    assert words in verdict.refusal.message


def test_destination_rule_subset_names_must_be_unique() -> None:
    rule = {"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews", "namespace": "shop"},
            "spec": {"host": "reviews", "subsets": [{"name": "v1"}, {"name": "v1"}]}}
    verdict = admit(rule)
    assert verdict.refusal is not None and "duplicate subset names: v1" in verdict.refusal.message
