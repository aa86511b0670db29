"""Fixtures for the HTTP/2 codec tests: connections with HBONE's settings, already past the handshake."""

from __future__ import annotations

import pytest

from wisp.h2.connection import Connection
from wisp.h2.settings import Settings
from wisp.h2.testing import RawPeer, handshake, take

MiB = 1024 * 1024
CLIENT = Settings(initial_window_size=4 * MiB, max_frame_size=1 * MiB, max_header_list_size=16 * 1024)
SERVER = Settings(initial_window_size=4 * MiB, max_frame_size=1 * MiB, max_concurrent_streams=200,
                  max_header_list_size=64 * 1024)


@pytest.fixture
def pair() -> tuple[Connection, Connection]:
    client = Connection(client=True, local=CLIENT, connection_window=16 * MiB)
    server = Connection(client=False, local=SERVER, connection_window=16 * MiB)
    handshake(client, server)
    return client, server


@pytest.fixture
def peer() -> RawPeer:
    return RawPeer()


@pytest.fixture
def server(peer: RawPeer) -> Connection:
    """A server whose client is a RawPeer that has sent its preface and empty SETTINGS."""
    conn = Connection(client=False, local=Settings(max_concurrent_streams=10))
    conn.initiate()
    conn.receive(peer.client_preface())
    take(conn)
    return conn


@pytest.fixture
def client(peer: RawPeer) -> Connection:
    """A client whose server is a RawPeer that has sent its empty SETTINGS."""
    conn = Connection(client=True, local=Settings())
    conn.initiate()
    conn.receive(peer.settings())
    take(conn)
    return conn
