"""wisp.netns: a socket made for a pod is made in the pod's namespace, and the thread comes home."""

from __future__ import annotations

import errno
import os
import socket
import subprocess

import pytest

from tests.support.netns import random_prefix, scratch_netns
from wisp import netns

pytestmark = pytest.mark.root

POD_ONLY = "192.0.2.77"  # exists only inside the test's namespace


def _here() -> netns.NetnsId:
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        return netns.identity(fd)
    finally:
        os.close(fd)


def _bound(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, 0))
    except BaseException:
        sock.close()
        raise
    return sock


@pytest.fixture
def pod_fd():
    name = random_prefix()
    with scratch_netns(name) as path:
        subprocess.run(["ip", "-n", name, "addr", "add", f"{POD_ONLY}/32", "dev", "lo"], check=True,
                       capture_output=True)
        fd = netns.open_netns(path)
        try:
            yield fd
        finally:
            os.close(fd)


def test_socket_in_netns_makes_the_socket_in_the_pods_namespace(pod_fd):
    with pytest.raises(OSError) as outside:
        _bound(POD_ONLY).close()
    assert outside.value.errno == errno.EADDRNOTAVAIL
    sock = netns.socket_in_netns(pod_fd, _bound, POD_ONLY)
    with sock:
        assert sock.getsockname()[0] == POD_ONLY


def test_socket_in_netns_returns_the_thread_home(pod_fd):
    home = _here()
    netns.socket_in_netns(pod_fd, _bound, POD_ONLY).close()
    assert _here() == home


def test_socket_in_netns_returns_home_when_the_call_fails(pod_fd):
    home = _here()
    with pytest.raises(OSError):
        netns.socket_in_netns(pod_fd, _bound, "198.51.100.1")  # in neither namespace
    assert _here() == home


def test_socket_in_netns_refuses_a_bad_namespace_fd_and_stays_home():
    home = _here()
    not_a_netns = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(OSError):
            netns.socket_in_netns(not_a_netns, _bound, "127.0.0.1")
    finally:
        os.close(not_a_netns)
    assert _here() == home


class _Exited(BaseException):
    pass


def test_a_thread_that_cannot_return_home_stops_the_process(monkeypatch):
    entered = []

    def setns(fd: int, nstype: int = netns.CLONE_NEWNET) -> None:
        # Pretend: the first call (into the pod) works, the way home fails. Nothing really moves.
        if entered:
            raise netns.NetnsError(errno.EINVAL, "setns failed: Invalid argument")
        entered.append(fd)

    def exit_(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(netns, "setns", setns)
    monkeypatch.setattr(netns.os, "_exit", exit_)
    with pytest.raises(_Exited) as stopped:
        netns.socket_in_netns(12345, lambda: "made")
    assert stopped.value.args == (70,) and entered == [12345]
