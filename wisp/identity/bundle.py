"""A certificate bundle as a proxy holds it: PEM bytes and the few facts read from the leaf.

This module imports no X.509 library on purpose. The data plane (ztunnel, waypoints) only hands
PEM to OpenSSL through the `ssl` module and needs, of the leaf, its identity and validity to know
when to rotate; `cryptography` costs a proxy 8.7 MB of its 40 MB RSS budget (docs/architecture.md,
"A data plane without cryptography"). Bundles are made by the CA side (`certs.bundle_of`, with
`cryptography`) or by the data plane (`openssl.request_bundle`, with the `openssl` command).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

from .spiffe import SpiffeId


@dataclass(slots=True, frozen=True)
class CertBundle:
    """One identity's key and certificates.

    `chain_pem` is the leaf then its intermediates (what a TLS endpoint presents), `roots_pem`
    the trust bundle. `identity`, `serial` and the validity are the leaf's.
    """

    key_pem: bytes
    chain_pem: bytes
    roots_pem: bytes
    identity: SpiffeId
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime

    @property
    def rotation_time(self) -> dt.datetime:
        """Half of the lifetime, as Istio's proxies rotate."""
        return self.not_before + (self.not_after - self.not_before) / 2

    def needs_rotation(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) >= self.rotation_time

    def is_expired(self, now: dt.datetime | None = None) -> bool:
        return (now or _now()) >= self.not_after

    @contextlib.contextmanager
    def pem_file(self) -> Iterator[str]:
        """A private file (mode 0600, on tmpfs when there is one) holding the key then the
        chain, for the moment of handing it to something that loads only files (the ssl
        module, hypercorn); removed on exit."""
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        with tempfile.TemporaryDirectory(prefix="wisp-key-", dir=base) as directory:
            path = os.path.join(directory, "bundle.pem")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(self.key_pem + self.chain_pem)
            yield path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)
