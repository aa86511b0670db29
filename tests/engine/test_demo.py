"""`wisp demo --tunnel-only` runs its tunnel on the engine, in both shapes, and checks what crossed."""

from __future__ import annotations

import pytest

from wisp.demo import run_demo


@pytest.mark.parametrize("shape", ["epoll", "trio-epoll"])
def test_the_tunnel_demo_moves_bytes_through_the_engine_and_the_digest_matches(shape, monkeypatch, capsys):
    monkeypatch.setenv("WISP_ENGINE", shape)
    assert run_demo(3 * 1024 * 1024 + 7) == 0
    out = capsys.readouterr().out
    assert f"(engine shape {shape})" in out
    assert "CONNECT 10.244.1.7:8080 from spiffe://cluster.local/ns/shop/sa/frontend: accepted (200)" in out
    assert "says: 3145735 bytes from spiffe://cluster.local/ns/shop/sa/frontend" in out
    assert "sha256 matches" in out


def test_an_unknown_engine_shape_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("WISP_ENGINE", "uvloop")
    assert run_demo(1) == 2
    assert "WISP_ENGINE='uvloop' is not an engine shape" in capsys.readouterr().err
