"""SPIFFE IDs as the mesh uses them: spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.

Parsing is strict (the SPIFFE ID standard plus the mesh's fixed path shape) because the ID is what
authorization decisions compare; a lenient parser would let two spellings of one identity differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidSpiffeId

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"
_MAX_ID_LENGTH = 2048
_MAX_TRUST_DOMAIN_LENGTH = 255
# SPIFFE standard §2.1 and §2.2: trust domains are lower case; path segments allow mixed case.
_TRUST_DOMAIN_RE = re.compile(r"[a-z0-9._-]+")
_SEGMENT_RE = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(slots=True, frozen=True, order=True)
class SpiffeId:
    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        _check_trust_domain(self.trust_domain, str(self))
        for what, value in (("namespace", self.namespace), ("service account", self.service_account)):
            _check_segment(value, what, str(self))

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Parse `spiffe://<td>/ns/<ns>/sa/<sa>`; raise InvalidSpiffeId saying what is wrong."""
        if not isinstance(text, str):
            raise InvalidSpiffeId(f"SPIFFE ID must be a string, got {type(text).__name__}")
        if len(text) > _MAX_ID_LENGTH:
            raise InvalidSpiffeId(f"SPIFFE ID is {len(text)} characters, the limit is {_MAX_ID_LENGTH}")
        if not text.startswith(SCHEME):
            raise InvalidSpiffeId(f"{text!r} does not start with {SCHEME!r}")
        rest = text[len(SCHEME):]
        for char, what in (("?", "a query"), ("#", "a fragment")):
            if char in rest:
                raise InvalidSpiffeId(f"{text!r} has {what}; SPIFFE IDs have none")
        trust_domain, slash, path = rest.partition("/")
        if "@" in trust_domain:
            raise InvalidSpiffeId(f"{text!r} has user info; SPIFFE IDs have none")
        if ":" in trust_domain:
            raise InvalidSpiffeId(f"{text!r} has a port; SPIFFE trust domains have none")
        _check_trust_domain(trust_domain, text)
        if not slash:
            raise InvalidSpiffeId(f"{text!r} has no path; expected /ns/<namespace>/sa/<service-account>")
        segments = path.split("/")
        if len(segments) != 4 or segments[0] != "ns" or segments[2] != "sa":
            raise InvalidSpiffeId(
                f"{text!r} has path /{path}; expected /ns/<namespace>/sa/<service-account>"
            )
        return cls(trust_domain, segments[1], segments[3])

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The form authorization policies compare: the ID without `spiffe://`."""
        return str(self)[len(SCHEME):]


def _check_trust_domain(trust_domain: str, text: str) -> None:
    if not isinstance(trust_domain, str):
        raise InvalidSpiffeId(f"trust domain must be a string, got {type(trust_domain).__name__}")
    if not trust_domain:
        raise InvalidSpiffeId(f"{text!r} has an empty trust domain")
    if len(trust_domain) > _MAX_TRUST_DOMAIN_LENGTH:
        raise InvalidSpiffeId(f"{text!r} has a trust domain longer than {_MAX_TRUST_DOMAIN_LENGTH}")
    if not _TRUST_DOMAIN_RE.fullmatch(trust_domain):
        raise InvalidSpiffeId(
            f"{text!r} has trust domain {trust_domain!r}; only a-z, 0-9, '.', '-' and '_' are allowed"
        )


def _check_segment(value: str, what: str, text: str) -> None:
    if not isinstance(value, str):
        raise InvalidSpiffeId(f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidSpiffeId(f"{text!r} has an empty {what}")
    if value in (".", ".."):
        raise InvalidSpiffeId(f"{text!r} has {what} {value!r}; '.' and '..' are not allowed")
    if not _SEGMENT_RE.fullmatch(value):
        raise InvalidSpiffeId(
            f"{text!r} has {what} {value!r}; only letters, digits, '.', '-' and '_' are allowed"
        )
