"""HTTP/2 SETTINGS of one side of a connection (RFC 9113 §6.5.2).

`Settings()` holds RFC 9113's initial values except ENABLE_PUSH, which wisp always sends as 0.
A Connection is given its local Settings and keeps the peer's in another instance, updated as
the peer's SETTINGS frames arrive. `None` for a limit means "not advertised": unlimited as far
as the peer is told (the codec still bounds what it buffers, see wisp.h2.connection).
"""

from __future__ import annotations

from dataclasses import dataclass

from . import frames


@dataclass(slots=True)
class Settings:
    header_table_size: int = 4096
    enable_push: int = 0
    max_concurrent_streams: int | None = None
    initial_window_size: int = frames.DEFAULT_WINDOW
    max_frame_size: int = frames.DEFAULT_MAX_FRAME_SIZE
    max_header_list_size: int | None = None

    def __post_init__(self) -> None:
        problem = check(frames.SETTINGS_HEADER_TABLE_SIZE, self.header_table_size) or check(
            frames.SETTINGS_ENABLE_PUSH, self.enable_push
        ) or check(frames.SETTINGS_INITIAL_WINDOW_SIZE, self.initial_window_size) or check(
            frames.SETTINGS_MAX_FRAME_SIZE, self.max_frame_size
        )
        if problem is None and self.max_concurrent_streams is not None:
            problem = check(frames.SETTINGS_MAX_CONCURRENT_STREAMS, self.max_concurrent_streams)
        if problem is None and self.max_header_list_size is not None:
            problem = check(frames.SETTINGS_MAX_HEADER_LIST_SIZE, self.max_header_list_size)
        if problem is not None:
            raise ValueError(f"invalid HTTP/2 settings: {problem[1]}")

    def to_wire(self) -> dict[int, int]:
        """The identifiers and values to announce: ENABLE_PUSH always, others when not the default."""
        wire = {frames.SETTINGS_ENABLE_PUSH: self.enable_push}
        if self.header_table_size != 4096:
            wire[frames.SETTINGS_HEADER_TABLE_SIZE] = self.header_table_size
        if self.max_concurrent_streams is not None:
            wire[frames.SETTINGS_MAX_CONCURRENT_STREAMS] = self.max_concurrent_streams
        if self.initial_window_size != frames.DEFAULT_WINDOW:
            wire[frames.SETTINGS_INITIAL_WINDOW_SIZE] = self.initial_window_size
        if self.max_frame_size != frames.DEFAULT_MAX_FRAME_SIZE:
            wire[frames.SETTINGS_MAX_FRAME_SIZE] = self.max_frame_size
        if self.max_header_list_size is not None:
            wire[frames.SETTINGS_MAX_HEADER_LIST_SIZE] = self.max_header_list_size
        return wire

    def set(self, ident: int, value: int) -> None:
        """Record one received value (already checked); unknown identifiers are ignored (§6.5.2)."""
        name = _FIELDS.get(ident)
        if name is not None:
            setattr(self, name, value)


_FIELDS = {
    frames.SETTINGS_HEADER_TABLE_SIZE: "header_table_size",
    frames.SETTINGS_ENABLE_PUSH: "enable_push",
    frames.SETTINGS_MAX_CONCURRENT_STREAMS: "max_concurrent_streams",
    frames.SETTINGS_INITIAL_WINDOW_SIZE: "initial_window_size",
    frames.SETTINGS_MAX_FRAME_SIZE: "max_frame_size",
    frames.SETTINGS_MAX_HEADER_LIST_SIZE: "max_header_list_size",
}


def check(ident: int, value: int) -> tuple[int, str] | None:
    """(error code, reason) when `value` is not allowed for setting `ident` (§6.5.2), else None."""
    if not 0 <= value <= 0xFFFFFFFF:
        return frames.PROTOCOL_ERROR, f"setting 0x{ident:x} = {value} is not a 32-bit unsigned value"
    if ident == frames.SETTINGS_ENABLE_PUSH and value > 1:
        return frames.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH must be 0 or 1, got {value}"
    if ident == frames.SETTINGS_INITIAL_WINDOW_SIZE and value > frames.MAX_WINDOW:
        return frames.FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value} exceeds 2^31-1"
    if ident == frames.SETTINGS_MAX_FRAME_SIZE and not (
        frames.DEFAULT_MAX_FRAME_SIZE <= value <= frames.MAX_MAX_FRAME_SIZE
    ):
        return frames.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} is outside 16384..16777215"
    return None
