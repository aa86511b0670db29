"""HTTPRoute filters: header modifiers, redirects, rewrites, mirrors (apis/v1/httproute_types.go)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from tests.waypoint.route_objects import (
    WEB_VIP,
    backend,
    decide,
    http_route,
    path,
    request,
    rule,
    service,
    table,
)
from waypoint.route import Forward, Redirect, apply_header_modifiers, compile_table, replace_prefix
from waypoint.route.filters import HeaderModifier


def header_filter(kind: str = "RequestHeaderModifier", **actions) -> dict:
    key = kind[0].lower() + kind[1:]
    spec = {}
    for action, items in actions.items():
        spec[action] = items if action == "remove" else [{"name": n, "value": v} for n, v in items]
    return {"type": kind, key: spec}


# --- header modifiers -------------------------------------------------------------------------


def test_set_overwrites_the_header():
    # The spec's example: my-header: foo with set my-header: bar gives my-header: bar.
    out = apply_header_modifiers([(b"my-header", b"foo")], [HeaderModifier(set=((b"my-header", b"bar"),))])
    assert out == [(b"my-header", b"bar")]


def test_set_replaces_every_occurrence_whatever_its_case():
    headers = [(b"My-Header", b"a"), (b"other", b"x"), (b"my-header", b"b")]
    out = apply_header_modifiers(headers, [HeaderModifier(set=((b"my-header", b"c"),))])
    assert out == [(b"my-header", b"c"), (b"other", b"x")]


def test_set_adds_an_absent_header():
    assert apply_header_modifiers([], [HeaderModifier(set=((b"a", b"1"),))]) == [(b"a", b"1")]


def test_add_appends_to_existing_values():
    # The spec's example: my-header: foo, add my-header: bar,baz → my-header: foo,bar,baz.
    out = apply_header_modifiers([(b"my-header", b"foo")], [HeaderModifier(add=((b"my-header", b"bar,baz"),))])
    assert out == [(b"my-header", b"foo"), (b"my-header", b"bar,baz")]


def test_remove_drops_every_occurrence():
    headers = [(b"my-header1", b"foo"), (b"my-header2", b"bar"), (b"My-Header3", b"baz"), (b"my-header1", b"x")]
    out = apply_header_modifiers(headers, [HeaderModifier(remove=(b"my-header1", b"my-header3"))])
    assert out == [(b"my-header2", b"bar")]


def test_route_header_modifier_names_are_lower_cased_and_first_entry_wins():
    t = table(http_route("r", rule(filters=[header_filter(set=[("X-Tag", "one"), ("x-tag", "two")],
                                                           remove=["X-Drop"])])))
    decision = decide(t, request())
    assert decision.request_headers == (HeaderModifier(set=((b"x-tag", b"one"),), remove=(b"x-drop",)),)


def test_backend_filters_apply_after_the_rules_and_only_for_that_backend():
    t = table(http_route("r", rule(
        filters=[header_filter(set=[("x-backend", "rule")]),
                 header_filter("ResponseHeaderModifier", add=[("x-resp", "rule")])],
        backends=[
            backend("web", weight=1, filters=[header_filter(set=[("x-backend", "web")])]),
            backend("web-v2", weight=1, filters=[header_filter("ResponseHeaderModifier", add=[("x-resp", "v2")])]),
        ],
    )))
    seen = {}
    rng = random.Random(3)
    for _ in range(50):
        decision = t.route(request(), WEB_VIP, 80, "shop", rng)
        sent = apply_header_modifiers([(b"x-backend", b"client")], decision.request_headers)
        answered = apply_header_modifiers([], decision.response_headers)
        seen[decision.backend.name] = (sent, answered)
    assert seen["web"] == ([(b"x-backend", b"web")], [(b"x-resp", b"rule")])
    assert seen["web-v2"] == ([(b"x-backend", b"rule")], [(b"x-resp", b"rule"), (b"x-resp", b"v2")])


# --- redirects --------------------------------------------------------------------------------


def redirect_route(*rules_: dict) -> object:
    return table(http_route("redirect", *rules_))


def redirect(match_path: str, **spec) -> dict:
    return rule(path("Exact", match_path), backends=[], filters=[{"type": "RequestRedirect", "requestRedirect": spec}])


PORT_AND_SCHEME = redirect_route(
    redirect("/scheme-nil-and-port-nil", hostname="example.org"),
    redirect("/scheme-nil-and-port-80", hostname="example.org", port=80),
    redirect("/scheme-nil-and-port-8080", hostname="example.org", port=8080),
    redirect("/scheme-nil-and-port-443", hostname="example.org", port=443),
    redirect("/scheme-nil-and-port-8443", hostname="example.org", port=8443),
    redirect("/scheme-https-and-port-nil", hostname="example.org", scheme="https"),
    redirect("/scheme-https-and-port-443", hostname="example.org", scheme="https", port=443),
    redirect("/scheme-https-and-port-8443", hostname="example.org", scheme="https", port=8443),
    redirect("/scheme-http-and-port-nil", hostname="example.org", scheme="http"),
    redirect("/scheme-http-and-port-80", hostname="example.org", scheme="http", port=80),
    redirect("/scheme-http-and-port-8080", hostname="example.org", scheme="http", port=8080),
)


def location(t, target: bytes, port: int = 80, scheme: bytes = b"http", authority: bytes = b"web.shop") -> bytes:
    req = request(target, authority=authority)
    req = type(req)(req.method, req.target, req.headers, req.authority, scheme)
    decision = decide(t, req, port=port)
    assert isinstance(decision, Redirect), decision
    return decision.location


@pytest.mark.parametrize("target,expected", [
    # conformance/tests/httproute-redirect-port-and-scheme.go, listener on port 80.
    (b"/scheme-nil-and-port-nil", b"http://example.org/scheme-nil-and-port-nil"),
    (b"/scheme-nil-and-port-80", b"http://example.org/scheme-nil-and-port-80"),
    (b"/scheme-nil-and-port-8080", b"http://example.org:8080/scheme-nil-and-port-8080"),
    (b"/scheme-https-and-port-nil", b"https://example.org/scheme-https-and-port-nil"),
    (b"/scheme-https-and-port-443", b"https://example.org/scheme-https-and-port-443"),
    (b"/scheme-https-and-port-8443", b"https://example.org:8443/scheme-https-and-port-8443"),
])
def test_redirect_port_and_scheme_on_port_80(target, expected):
    assert location(PORT_AND_SCHEME, target, port=80) == expected


@pytest.mark.parametrize("target,expected", [
    # The same test, listener on port 8080: without a port or scheme the dialled port is kept.
    (b"/scheme-nil-and-port-nil", b"http://example.org:8080/scheme-nil-and-port-nil"),
    (b"/scheme-nil-and-port-80", b"http://example.org/scheme-nil-and-port-80"),
    (b"/scheme-https-and-port-nil", b"https://example.org/scheme-https-and-port-nil"),
])
def test_redirect_port_and_scheme_on_port_8080(target, expected):
    assert location(PORT_AND_SCHEME, target, port=8080) == expected


def test_redirect_from_an_https_request_on_443():
    # The same test's https listener on 443: the request's scheme and the dialled port are kept.
    t = compile_table([http_route("redirect", redirect("/scheme-nil-and-port-nil", hostname="example.org"),
                                  redirect("/scheme-http-and-port-nil", hostname="example.org", scheme="http"),
                                  redirect("/scheme-http-and-port-8080", hostname="example.org", scheme="http",
                                           port=8080),
                                  redirect("/scheme-nil-and-port-8443", hostname="example.org", port=8443))],
                      [service("web", WEB_VIP, ports=(443,))])
    assert location(t, b"/scheme-nil-and-port-nil", 443, b"https") == b"https://example.org/scheme-nil-and-port-nil"
    assert location(t, b"/scheme-http-and-port-nil", 443, b"https") == b"http://example.org/scheme-http-and-port-nil"
    assert location(t, b"/scheme-http-and-port-8080", 443, b"https") == \
        b"http://example.org:8080/scheme-http-and-port-8080"
    assert location(t, b"/scheme-nil-and-port-8443", 443, b"https") == \
        b"https://example.org:8443/scheme-nil-and-port-8443"


def test_redirect_keeps_the_request_host_without_its_port():
    t = redirect_route(redirect("/r", port=8080))
    assert location(t, b"/r", authority=b"web.shop:80") == b"http://web.shop:8080/r"
    assert location(t, b"/r", authority=b"[fd00::1]:80") == b"http://[fd00::1]:8080/r"


def test_redirect_without_host_header_uses_the_services_name():
    t = redirect_route(redirect("/r"))
    assert location(t, b"/r", authority=b"") == b"http://web.shop.svc.cluster.local/r"


def test_redirect_keeps_the_query_string():
    t = redirect_route(redirect("/r", hostname="example.org"))
    assert location(t, b"/r?a=1&b=2") == b"http://example.org/r?a=1&b=2"


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_status_code(code):
    t = redirect_route(redirect("/r", statusCode=code))
    assert decide(t, request(b"/r")).status == code


def test_redirect_status_defaults_to_302():
    assert decide(redirect_route(redirect("/r")), request(b"/r")).status == 302


def prefix_redirect(prefix: str, **spec) -> dict:
    return rule(path("PathPrefix", prefix), backends=[], filters=[{"type": "RequestRedirect", "requestRedirect": spec}])


def test_conformance_redirect_paths():
    # conformance/tests/httproute-redirect-path.go with its manifest's filters.
    t = redirect_route(
        prefix_redirect("/original-prefix", path={"type": "ReplacePrefixMatch", "replacePrefixMatch":
                                                  "/replacement-prefix"}),
        prefix_redirect("/full", path={"type": "ReplaceFullPath", "replaceFullPath": "/full-path-replacement"}),
        prefix_redirect("/path-and-host", hostname="example.org",
                        path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"}),
        prefix_redirect("/path-and-status", statusCode=301,
                        path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/replacement-prefix"}),
        prefix_redirect("/full-path-and-host", hostname="example.org",
                        path={"type": "ReplaceFullPath", "replaceFullPath": "/replacement-full"}),
        prefix_redirect("/full-path-and-status", statusCode=301,
                        path={"type": "ReplaceFullPath", "replaceFullPath": "/replacement-full"}),
    )
    assert location(t, b"/original-prefix/lemon") == b"http://web.shop/replacement-prefix/lemon"
    assert location(t, b"/full/path/original") == b"http://web.shop/full-path-replacement"
    assert location(t, b"/path-and-host") == b"http://example.org/replacement-prefix"
    assert decide(t, request(b"/path-and-status")).status == 301
    assert location(t, b"/path-and-status") == b"http://web.shop/replacement-prefix"
    assert location(t, b"/full-path-and-host") == b"http://example.org/replacement-full"
    assert location(t, b"/full-path-and-status") == b"http://web.shop/replacement-full"


# --- rewrites ---------------------------------------------------------------------------------


@pytest.mark.parametrize("request_path,prefix,replacement,expected", [
    # HTTPPathModifier.ReplacePrefixMatch's table, row by row.
    (b"/foo/bar", b"/foo", b"/xyz", b"/xyz/bar"),
    (b"/foo/bar", b"/foo", b"/xyz/", b"/xyz/bar"),
    (b"/foo/bar", b"/foo/", b"/xyz", b"/xyz/bar"),
    (b"/foo/bar", b"/foo/", b"/xyz/", b"/xyz/bar"),
    (b"/foo", b"/foo", b"/xyz", b"/xyz"),
    (b"/foo/", b"/foo", b"/xyz", b"/xyz/"),
    (b"/foo/bar", b"/foo", b"", b"/bar"),
    (b"/foo/", b"/foo", b"", b"/"),
    (b"/foo", b"/foo", b"", b"/"),
    (b"/foo/", b"/foo", b"/", b"/"),
    (b"/foo", b"/foo", b"/", b"/"),
    # Segment-aware: / in place of /foo on /foo/bar is /bar; /bar in its place is /bar/bar.
    (b"/foo/bar", b"/foo", b"/", b"/bar"),
    (b"/foo/bar", b"/foo", b"/bar", b"/bar/bar"),
    # The root prefix.
    (b"/foo", b"/", b"/xyz", b"/xyz/foo"),
])
def test_replace_prefix_match_table(request_path, prefix, replacement, expected):
    assert replace_prefix(request_path, prefix, replacement) == expected


def rewrite_route(prefix: str, **spec) -> object:
    return table(http_route("rewrite", rule(path("PathPrefix", prefix), filters=[{"type": "URLRewrite",
                                                                                  "urlRewrite": spec}])))


def test_url_rewrite_prefix_through_the_table():
    t = rewrite_route("/foo/", path={"type": "ReplacePrefixMatch", "replacePrefixMatch": "/xyz"})
    assert decide(t, request(b"/foo/bar?x=1")).target == b"/xyz/bar?x=1"
    assert decide(t, request(b"/foo")).target == b"/xyz"


def test_url_rewrite_full_path_keeps_the_query():
    t = rewrite_route("/", path={"type": "ReplaceFullPath", "replaceFullPath": "/one"})
    assert decide(t, request(b"/a/b?x=1")).target == b"/one?x=1"


def test_url_rewrite_hostname_sets_the_authority_and_leaves_the_path():
    decision = decide(rewrite_route("/", hostname="elsewhere.example"), request(b"/a"))
    assert isinstance(decision, Forward)
    assert (decision.authority, decision.target) == (b"elsewhere.example", None)


def test_backend_url_rewrite_applies_when_that_backend_is_chosen():
    rewrite = {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/v2"}}}
    t = table(http_route("r", rule(path("PathPrefix", "/"), backends=[backend("web-v2", filters=[rewrite])])))
    assert decide(t, request(b"/v1")).target == b"/v2"


# --- mirrors ----------------------------------------------------------------------------------


def mirror(**extra) -> dict:
    return {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "mirror", "port": 80}, **extra}}


def test_mirror_names_its_backend():
    decision = decide(table(http_route("r", rule(filters=[mirror()]))), request())
    assert [(m.namespace, m.name, m.port, m.fraction) for m in decision.mirrors] == [("shop", "mirror", 80, 1.0)]


def test_mirror_percent_mirrors_that_share():
    t = table(http_route("r", rule(filters=[mirror(percent=25)])))
    rng = random.Random(11)
    counts = Counter(bool(t.route(request(), WEB_VIP, 80, "shop", rng).mirrors) for _ in range(1000))
    assert abs(counts[True] - 250) <= 50


def test_mirror_fraction_mirrors_that_share():
    t = table(http_route("r", rule(filters=[mirror(fraction={"numerator": 1, "denominator": 4})])))
    rng = random.Random(5)
    counts = Counter(bool(t.route(request(), WEB_VIP, 80, "shop", rng).mirrors) for _ in range(1000))
    assert abs(counts[True] - 250) <= 50


def test_mirror_percent_0_never_mirrors():
    t = table(http_route("r", rule(filters=[mirror(percent=0)])))
    assert not any(decide(t, request(), seed=s).mirrors for s in range(20))


def test_mirror_to_a_missing_service_is_dropped_and_reported():
    spec = {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 80}}}
    t = table(http_route("r", rule(filters=[spec])))
    assert decide(t, request()).mirrors == ()
    assert [p.reason for p in t.problems("HTTPRoute", "shop", "r")] == ["BackendNotFound"]


def test_the_example_in_docs_routing_md_does_what_the_page_says():
    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "routing.md").read_text()
    example = text.split("# Routing (GAMMA)")[1].split("```yaml")[1].split("```")[0]
    route = yaml.safe_load(example)
    route["metadata"]["creationTimestamp"] = "2024-01-01T00:00:00Z"
    echo = service("echo", "10.96.5.1", ports=(80, 8080))
    t = compile_table([route], [echo, service("echo-v2", "10.96.5.2", ports=(80,))])

    def send(target: bytes, headers=None, port: int = 80, ip: str = "10.96.5.1", seed: int = 0):
        return t.route(request(target, headers=headers, authority=b"echo"), ip, port, "shop", random.Random(seed))

    assert send(b"/", [(b"x-canary", b"yes")]).backend.name == "echo-v2"
    redirect_ = send(b"/old/a?x=1")
    assert (redirect_.status, redirect_.location) == (301, b"http://echo/new/a?x=1")
    rng = random.Random(2)
    split = Counter(t.route(request(b"/"), "10.96.5.1", 80, "shop", rng).backend.name for _ in range(1000))
    assert abs(split["echo"] - 700) <= 50
    assert type(send(b"/", port=8080)).__name__ == "DefaultService"
    assert type(send(b"/", ip="10.244.0.9")).__name__ == "DefaultService"
