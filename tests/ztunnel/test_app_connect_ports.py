"""ztunnel's connections to a pod's app, made from the client's address, do not run the pod out of ports.

Inbound, ztunnel connects to the app from the client's IP (IP_TRANSPARENT) and, forwarding the
client's FIN, is the side that closes first: each connection leaves a TIME_WAIT socket in the
server pod holding its port for 60 s. bench/storm's 2,000 connections/s from one client found
the pod's 28,232 ports gone within the minute (docs/reliability.md). The port must be chosen by
connect, so the pod's `tcp_tw_reuse` applies; bound by bind() it never does. These tests give a
scratch namespace 50 ports to show it in a second.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

import pytest

from tests.support.netns import netns_run, random_prefix, scratch_netns
from wisp import netns as wnetns
from wisp import sockets

pytestmark = pytest.mark.root

APP, CLIENT = "10.9.0.1", "10.9.0.2"
PORTS = 50


@contextlib.contextmanager
def pod_with_app(tw_reuse: int):
    """A namespace with an app address and a client address on lo, PORTS ephemeral ports, and a
    listener on the app's port 8080; yields (netns fd, listener)."""
    with scratch_netns(f"{random_prefix()}-app") as path:
        for address in (APP, CLIENT):
            netns_run(path, "ip", "addr", "add", f"{address}/32", "dev", "lo")
        netns_run(path, "sysctl", "-q", "-w", f"net.ipv4.ip_local_port_range=40000 {40000 + PORTS - 1}",
                  f"net.ipv4.tcp_tw_reuse={tw_reuse}")
        fd = wnetns.open_netns(path)
        try:
            listener = wnetns.socket_in_netns(fd, sockets.listener, (APP, 8080), reuse_port=False)
            listener.setblocking(True)
            with listener:
                yield fd, listener
        finally:
            os.close(fd)


def close_first(fd: int, listener: socket.socket) -> None:
    """One connection as ztunnel makes it to the app (client's address, transparent), which
    closes first: its port goes to TIME_WAIT."""
    sock = wnetns.socket_in_netns(fd, sockets.new_tcp_socket, APP, source=CLIENT, transparent=True)
    with sock:
        sock.setblocking(True)
        sock.connect((APP, 8080))
        app, _ = listener.accept()
        with app:
            sock.shutdown(socket.SHUT_WR)
            assert app.recv(1) == b""
        assert sock.recv(1) == b""


def test_ports_in_time_wait_are_reused_after_a_second_where_the_pod_allows_it():
    with pod_with_app(tw_reuse=1) as (fd, listener):
        for _ in range(PORTS):
            close_first(fd, listener)
        time.sleep(1.1)  # the kernel reuses a TIME_WAIT port once a second has passed
        # With the port bound at bind(), every one of these failed (EADDRINUSE) for 60 s.
        for _ in range(PORTS):
            close_first(fd, listener)


def test_without_reuse_a_pod_out_of_ports_fails_the_connect_and_not_the_process():
    with pod_with_app(tw_reuse=0) as (fd, listener):
        for _ in range(PORTS):
            close_first(fd, listener)
        with pytest.raises(OSError) as refused:
            close_first(fd, listener)
        assert refused.value.errno in (98, 99)  # EADDRINUSE / EADDRNOTAVAIL: an error the caller reports
