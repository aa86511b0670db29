"""Scratch network namespaces for tests: made with a unique prefix, removed even on failure.

Tests that need a pod's or a node's network namespace make their own (`ip netns add`), name it
from `random_prefix()` so a leftover is easy to find, and never touch the machine's own namespace.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

from wisp import netns as wnetns


def random_prefix() -> str:
    """A unique name prefix for a test's namespaces (`wisp-tcni<hex>`), so leftovers are findable."""
    return f"wisp-tcni{secrets.token_hex(3)}"


@contextlib.contextmanager
def scratch_netns(name: str, *, loopback_up: bool = True) -> Iterator[str]:
    """A fresh network namespace (as `ip netns add` makes it), removed on exit even on failure."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        if loopback_up:  # as in any real pod
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield wnetns.path_of(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def netns_run(path: str, *argv: str) -> str:
    """Run a command in a namespace, synchronously (test assertions)."""
    return subprocess.run(["nsenter", f"--net={path}", *argv], check=True, capture_output=True, text=True).stdout
