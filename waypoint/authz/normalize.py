"""Request path normalisation, as Istio applies it before routing and authorization.

Istio's mesh option ``pathNormalization`` (default ``BASE``, which waypoints get like every other
proxy) normalises the path once; the normalised path is both what authorization policies are
matched against and what the backend receives. The steps, in the order Istio's reference states
them (istio.io "Authorization Policy Normalization" and the security best-practices page):

1. ``DECODE_AND_MERGE_SLASHES`` only: ``%2F``/``%2f`` become ``/`` and ``%5C``/``%5c`` become ``\\``.
2. ``BASE`` and stricter: percent-escapes of unreserved characters are decoded once (``%2d`` ``-``,
   ``%2e`` ``.``, ``%30``-``%39``, ``%41``-``%5a``, ``%5f`` ``_``, ``%61``-``%7a``, ``%7e`` ``~``;
   either hex case; no double decoding), backslashes become ``/``, and ``.``/``..`` segments are
   resolved as RFC 3986 §5.2.4 says.
3. ``MERGE_SLASHES`` and ``DECODE_AND_MERGE_SLASHES``: runs of ``/`` become one.

A path containing ``%00`` is always rejected (Istio answers 400). The query is left as it was;
matching ignores it (``paths`` never see ``?...``). The target is expected in origin form (the
HTTP shell turns an absolute-form target into its path first); ``*`` (``OPTIONS *``) is returned
as is, and any other path gets the leading ``/`` Envoy's URL canonicaliser would add (after
backslashes became slashes, so ``\\admin`` is ``/admin``). Not done: the escaping of characters
such as space or ``{`` that Envoy's URL canonicaliser also performs; the HTTP parsers refuse those
in a request target.

Every mode is idempotent (decoding yields only unreserved characters, never ``%``), so
normalising an already normalised path is harmless: `authorize` normalises again rather than
trust the caller.
"""

from __future__ import annotations

import enum
import re


class PathNormalization(enum.Enum):
    """MeshConfig.ProxyPathNormalization.NormalizationType, by Istio's names."""

    NONE = "NONE"
    BASE = "BASE"
    MERGE_SLASHES = "MERGE_SLASHES"
    DECODE_AND_MERGE_SLASHES = "DECODE_AND_MERGE_SLASHES"


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_SLASH_ESCAPES = re.compile(r"%(2[Ff]|5[Cc])")
_SLASHES = re.compile(r"//+")


def _decode_unreserved(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    return chr(byte) if byte in _UNRESERVED else match.group(0)


def _decode_slash(match: re.Match[str]) -> str:
    return "/" if match.group(1) in ("2F", "2f") else "\\"


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path: ``/a/./b/../c`` → ``/a/c``; ``..`` stops at the root."""
    out: list[str] = []
    segments = path.split("/")
    # segments[0] is the empty string before the leading "/".
    for i, segment in enumerate(segments[1:], start=1):
        last = i == len(segments) - 1
        if segment == ".":
            if last:
                out.append("")
        elif segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def normalize_path(target: str, mode: PathNormalization = PathNormalization.BASE) -> str | None:
    """The request target with its path normalised as Istio does; None when Istio answers 400."""
    path, question, query = target.partition("?")
    if "%00" in path:
        return None
    if mode is PathNormalization.NONE or path == "*":
        return target
    if mode is PathNormalization.DECODE_AND_MERGE_SLASHES and "%" in path:
        path = _SLASH_ESCAPES.sub(_decode_slash, path)
    if "%" in path:
        path = _ESCAPE.sub(_decode_unreserved, path)
    if "\\" in path:
        path = path.replace("\\", "/")
    if not path.startswith("/"):
        path = "/" + path
    if "/." in path:
        path = remove_dot_segments(path)
    if mode is not PathNormalization.BASE and "//" in path:
        path = _SLASHES.sub("/", path)
    return path + question + query


def match_path(target: str) -> str:
    """The part of a request target that ``paths`` match: no query, no fragment."""
    end = len(target)
    for sep in ("?", "#"):
        at = target.find(sep)
        if 0 <= at < end:
            end = at
    return target[:end]
