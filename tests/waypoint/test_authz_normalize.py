"""Path normalisation before authorization, per Istio's "Authorization Policy Normalization"."""

from __future__ import annotations

import posixpath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from waypoint.authz import PathNormalization, normalize_path
from waypoint.authz.normalize import match_path, remove_dot_segments

BASE = PathNormalization.BASE
MERGE = PathNormalization.MERGE_SLASHES
DECODE = PathNormalization.DECODE_AND_MERGE_SLASHES


@pytest.mark.parametrize("raw, normalized", [
    ("/some%2fdata/%61%62%63", "/some%2fdata/abc"),  # Istio's example, %2f kept under BASE
    ("/%2D%2e%5F%7e%30%39%41%5A", "/-._~09AZ"),
    ("/%2e%2e/secret", "/secret"),
    ("/a/%2E/b", "/a/b"),
    ("/%25%41", "/%25A"),  # one pass: %25 stays, so no double decoding
    ("/%3f%20", "/%3f%20"),  # reserved and other characters stay escaped
    ("/some\\data", "/some/data"),
    ("/public/./data/abc/../xyz", "/public/data/xyz"),
    ("/a/b/..", "/a/"),
    ("/..", "/"),
    ("/../../etc", "/etc"),
    ("/some//data///abc", "/some//data///abc"),  # BASE does not merge slashes
    ("/a/../b?x=/../y", "/b?x=/../y"),  # the query is left alone
    ("/.well-known/x", "/.well-known/x"),
    ("*", "*"),
    ("admin", "/admin"),
    ("\\admin", "/admin"),
])
def test_base(raw, normalized):
    assert normalize_path(raw, BASE) == normalized


def test_base_is_the_default():
    assert normalize_path("/a/../b") == "/b"


def test_merge_slashes_after_base():
    assert normalize_path("/some//data///abc", MERGE) == "/some/data/abc"
    assert normalize_path("/a//..//b", MERGE) == "/a/b"
    assert normalize_path("/a%2fb", MERGE) == "/a%2fb"


def test_decode_and_merge_slashes_decodes_slashes_and_backslashes_first():
    assert normalize_path("/a%2fb", DECODE) == "/a/b"
    assert normalize_path("/a%2F%2Fb", DECODE) == "/a/b"
    assert normalize_path("/a%5Cb%5c..%5cc", DECODE) == "/a/c"
    assert normalize_path("/admin%2f..%2fpublic", DECODE) == "/public"


def test_none_leaves_the_path_alone():
    assert normalize_path("/a/../b\\c", PathNormalization.NONE) == "/a/../b\\c"


@pytest.mark.parametrize("mode", list(PathNormalization))
def test_a_nul_escape_is_always_rejected(mode):
    assert normalize_path("/a%00b", mode) is None


def test_match_path_drops_query_and_fragment():
    assert match_path("/a?b#c") == "/a"
    assert match_path("/a#c?d") == "/a"
    assert match_path("/a") == "/a"


_segment = st.sampled_from(["a", "b", ".", "..", "", "%2e", "%2E%2e", "x%41", "c\\d", "%2f", "%5c", "%00"])
_paths = st.lists(_segment, max_size=8).map(lambda segments: "/" + "/".join(segments))


@settings(max_examples=500, deadline=None)
@given(path=_paths, mode=st.sampled_from(list(PathNormalization)))
def test_normalisation_is_idempotent(path, mode):
    once = normalize_path(path, mode)
    if once is not None:
        assert normalize_path(once, mode) == once


@settings(max_examples=500, deadline=None)
@given(path=_paths)
def test_a_base_normalised_path_has_no_dot_segments_or_backslashes(path):
    normalized = normalize_path(path, BASE)
    if normalized is None:
        assert "%00" in path
        return
    assert "\\" not in normalized
    assert normalized.startswith("/")
    segments = normalized.split("/")
    assert "." not in segments and ".." not in segments


@settings(max_examples=500, deadline=None)
@given(segments=st.lists(st.sampled_from(["a", "b", "c", ".", ".."]), min_size=1, max_size=8))
def test_dot_segments_resolve_like_posixpath_for_plain_segments(segments):
    path = "/" + "/".join(segments)
    expected = posixpath.normpath(path)
    resolved = remove_dot_segments(path)
    # RFC 3986 keeps the trailing "/" that a final "." or ".." leaves; normpath drops it.
    assert resolved.rstrip("/") == expected.rstrip("/") or (resolved == "/" and expected == "/")
