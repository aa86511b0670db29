"""Internals of wisp.hbone that are easy to get subtly wrong."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from hyperframe.frame import DataFrame

from wisp.hbone import connection


@given(st.binary(max_size=64))
def test_cheap_frame_repr_matches_hyperframes_own(data):
    assert connection._raw_data_repr(data) == connection._hex_all_then_truncate(data)
    assert connection._raw_data_repr(memoryview(data)) == connection._hex_all_then_truncate(data)


def test_data_frame_repr_uses_the_cheap_form():
    frame = DataFrame(1, data=b"\x00" * (1 << 20))
    assert "<hex:00000000000000000000...>" in repr(frame)
