"""ZDS: how the node agent hands pod network namespaces to ztunnel (Istio's zds.proto, on the wire).

Messages are protobuf, byte-compatible with istio/ztunnel's `proto/zds.proto`, so a wisp node
agent can serve Istio's ztunnel and the reverse.

One message per SOCK_SEQPACKET datagram; an Add carries exactly one netns fd in SCM_RIGHTS.
Sequence: ztunnel connects and sends ZdsHello; the agent sends one Add (with fd) or Keep
(known pod, no fd) per enrolled pod, each acked; then SnapshotSent, after which ztunnel drops
pods it was not told about and acks; then Add/Del as pods come and go.

This module is sans-IO: messages, their encoding and the per-message rules, with errors as
ZdsError. Datagrams are `transport.py`'s; each side's session and shell are `node.py` (the node
agent) and `workload.py` (ztunnel). The wire format pieces are wisp.protobuf's.
"""

from __future__ import annotations

from dataclasses import dataclass

from wisp import protobuf

DEFAULT_SOCKET_PATH = "/var/run/ztunnel/ztunnel.sock"
VERSION_V1 = 1
# Generous for any real message (uids and names are short); larger datagrams are refused.
MAX_MESSAGE = 64 * 1024
ACK_TIMEOUT = 5.0


class ZdsError(ValueError):
    """A datagram that is not a valid ZDS message, or a message that breaks the protocol."""


@dataclass(slots=True, frozen=True)
class WorkloadInfo:
    name: str = ""
    namespace: str = ""
    service_account: str = ""


@dataclass(slots=True, frozen=True)
class Hello:
    version: int = VERSION_V1


@dataclass(slots=True, frozen=True)
class Add:
    uid: str
    info: WorkloadInfo = WorkloadInfo()


@dataclass(slots=True, frozen=True)
class Keep:
    uid: str


@dataclass(slots=True, frozen=True)
class Del:
    uid: str


@dataclass(slots=True, frozen=True)
class SnapshotSent:
    pass


@dataclass(slots=True, frozen=True)
class Ack:
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


Request = Add | Keep | Del | SnapshotSent

# WorkloadRequest oneof field numbers (zds.proto).
_ADD, _DEL, _SNAPSHOT_SENT, _NO_SNAPSHOT, _KEEP = 1, 2, 3, 4, 5


# -- protobuf, with errors as ZdsError ----------------------------------------------------------
def _fields(data: bytes) -> dict[int, bytes | int]:
    try:
        return protobuf.parse(data)
    except protobuf.ProtobufError as exc:
        raise ZdsError(str(exc)) from None


def _text(fields: dict, number: int, what: str) -> str:
    try:
        return protobuf.text(fields, number, what)
    except protobuf.ProtobufError as exc:
        raise ZdsError(str(exc)) from None


def _sub(fields: dict, number: int, what: str) -> dict:
    value = fields.get(number, b"")
    if not isinstance(value, bytes):
        raise ZdsError(f"{what} must be a message")
    return _fields(value)


# -- encoding ----------------------------------------------------------------------------------
def encode(message: Hello | Request | Ack) -> bytes:
    if isinstance(message, Hello):
        return protobuf.varint(1, message.version)
    if isinstance(message, Ack):
        return protobuf.length_delimited(1, protobuf.string(1, message.error))
    if isinstance(message, Add):
        info = message.info
        body = protobuf.string(1, message.uid) + protobuf.length_delimited(
            2, protobuf.string(1, info.name) + protobuf.string(2, info.namespace)
            + protobuf.string(3, info.service_account)
        )
        return protobuf.length_delimited(_ADD, body)
    if isinstance(message, Keep):
        return protobuf.length_delimited(_KEEP, protobuf.string(1, message.uid))
    if isinstance(message, Del):
        return protobuf.length_delimited(_DEL, protobuf.string(2, message.uid))
    if isinstance(message, SnapshotSent):
        return protobuf.length_delimited(_SNAPSHOT_SENT, b"")
    raise TypeError(f"not a ZDS message: {type(message).__name__}")


# -- decoding ----------------------------------------------------------------------------------
def decode_hello(data: bytes) -> Hello:
    fields = _fields(data)
    version = fields.get(1, 0)
    if not isinstance(version, int):
        raise ZdsError("ZdsHello.version must be a varint")
    if version != VERSION_V1:
        raise ZdsError(f"unsupported ZDS version {version}; this agent speaks V1")
    return Hello(version)


def decode_request(data: bytes) -> Request:
    """A WorkloadRequest (agent → ztunnel)."""
    fields = _fields(data)
    present = [n for n in (_ADD, _DEL, _SNAPSHOT_SENT, _NO_SNAPSHOT, _KEEP) if n in fields]
    if len(present) != 1:
        raise ZdsError(f"WorkloadRequest must carry exactly one payload, found {len(present)}")
    (which,) = present
    if which == _ADD:
        add = _sub(fields, _ADD, "add")
        uid = _text(add, 1, "add.uid")
        info = _sub(add, 2, "add.workload_info")
        if not uid:
            raise ZdsError("add without a uid")
        return Add(uid, WorkloadInfo(_text(info, 1, "name"), _text(info, 2, "namespace"),
                                     _text(info, 3, "service_account")))
    if which == _KEEP:
        uid = _text(_sub(fields, _KEEP, "keep"), 1, "keep.uid")
        if not uid:
            raise ZdsError("keep without a uid")
        return Keep(uid)
    if which == _DEL:
        uid = _text(_sub(fields, _DEL, "del"), 2, "del.uid")
        if not uid:
            raise ZdsError("del without a uid")
        return Del(uid)
    if which == _SNAPSHOT_SENT:
        return SnapshotSent()
    raise ZdsError("NoSnapshotPresent is not supported; the agent always sends a snapshot")


def decode_response(data: bytes) -> Ack:
    """A WorkloadResponse (ztunnel → agent)."""
    fields = _fields(data)
    if 1 not in fields:
        raise ZdsError("WorkloadResponse without an ack")
    return Ack(_text(_sub(fields, 1, "ack"), 1, "ack.error"))


def check_fds(message: Request, fds: list[int]) -> None:
    """An Add carries exactly one netns fd; nothing else carries any (zds.proto's rule)."""
    if isinstance(message, Add):
        if len(fds) != 1:
            raise ZdsError(f"add for {message.uid} carries {len(fds)} file descriptors; exactly one (the netns) is required")
    elif fds:
        raise ZdsError(f"{type(message).__name__} must not carry file descriptors")
