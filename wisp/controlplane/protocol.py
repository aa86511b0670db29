"""The config stream's wire format, sans-IO: encode on the server, decode and apply on the client.

A subscriber POSTs to `/v1/config` and reads newline-delimited JSON, one message per line:
- `{"type": "snapshot", "version": V, "resources": [R, ...]}` — the whole view, replacing any;
- `{"type": "delta", "version": V, "since": U, "upserts": [R, ...], "removals": [K, ...]}` —
  applies only on top of version U;
- `{"type": "ping"}` — keeps an idle stream alive and lets the client notice a dead one;
- `{"type": "close", "reason": "..."}` — the control plane ends the stream (a NACK, acks
  overdue, a bad ack): the client ends its side and reconnects.
R is `{"kind", "key", "value"}` with the model's JSON (kind `workload`, `service`,
`authorization`, or `object` for a ConfigObject, which only waypoints receive); K is `{"kind", "key"}`. Versions are
opaque strings `<epoch>-<n>`: a restarted control plane has a new epoch, so a client resuming
with an old version gets a snapshot. The client acknowledges what it applied (or reports the
error) in its request body on the same stream, one line each: `{"version": V}` or
`{"version": V, "error": "..."}`; an ack covers every version before it. Simple clients (curl)
may instead GET `/v1/config` and POST `{"subscriber", "version", "error"}` to `/v1/config/ack`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

from wisp.model import (
    KIND_AUTHORIZATION,
    KIND_CONFIG_OBJECT,
    KIND_SERVICE,
    KIND_WORKLOAD,
    Delta,
    ModelError,
    ModelSnapshot,
    Resource,
    ResourceKey,
    apply,
    from_json,
    resource_key,
    to_json,
)

STREAM_PATH = "/v1/config"
ACK_PATH = "/v1/config/ack"
CERTIFICATE_PATH = "/v1/certificates"
CONTENT_TYPE = "application/x-ndjson"
# Largest message a subscriber accepts: a snapshot of 10,000 workloads is about 7 MiB.
MAX_MESSAGE = 256 * 1024 * 1024


def error_text(body: bytes, fallback: str = "no reason given") -> str:
    """What a control plane refusal says: its JSON `error`, else the body as text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text or fallback
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)


class StreamProtocolError(ValueError):
    """A config-stream message that cannot be decoded or does not apply to what we hold."""


def _dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode() + b"\n"


def encode_resource(obj: Resource) -> dict:
    rk = resource_key(obj)
    return {"kind": rk.kind, "key": rk.key, "value": to_json(obj)}


def encode_snapshot(version: str, resources: Iterable[dict]) -> bytes:
    """`resources` are already-encoded resource dicts (see encode_resource), so servers can cache."""
    return _dumps({"type": "snapshot", "version": version, "resources": list(resources)})


def encode_delta(version: str, since: str, upserts: Iterable[dict], removals: Iterable[ResourceKey]) -> bytes:
    return _dumps({
        "type": "delta", "version": version, "since": since, "upserts": list(upserts),
        "removals": [{"kind": k.kind, "key": k.key} for k in removals],
    })


PING = _dumps({"type": "ping"})


def encode_close(reason: str) -> bytes:
    return _dumps({"type": "close", "reason": reason})


def encode_ack(version: str, error: str | None) -> bytes:
    """One line of a subscriber's acks: it applied `version` (and all before), or `error`."""
    return _dumps({"version": version} if error is None else {"version": version, "error": error})


@dataclass(slots=True, frozen=True)
class Message:
    type: str
    version: str | None = None
    since: str | None = None
    snapshot: ModelSnapshot | None = None
    delta: Delta | None = None
    reason: str | None = None


def decode(line: bytes | str) -> Message:
    """One line of the stream; StreamProtocolError says what is wrong with it."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StreamProtocolError(f"config message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StreamProtocolError(f"config message must be an object, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "ping":
        return Message("ping")
    if kind == "close":
        reason = data.get("reason")
        return Message("close", reason=reason if isinstance(reason, str) else "no reason given")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise StreamProtocolError(f"{kind} message has no version")
    if kind == "snapshot":
        resources = [_decode_resource(r) for r in _list(data, "resources")]
        # Persistent maps, so the deltas that follow patch it rather than copy it.
        return Message("snapshot", version, snapshot=ModelSnapshot.of(resources).persistent())
    if kind == "delta":
        since = data.get("since")
        if not isinstance(since, str):
            raise StreamProtocolError("delta message has no 'since' version")
        upserts = tuple(_decode_resource(r) for r in _list(data, "upserts"))
        removals = tuple(_decode_key(k) for k in _list(data, "removals"))
        return Message("delta", version, since, delta=Delta(upserts, removals))
    raise StreamProtocolError(f"unknown config message type {kind!r}")


def _list(data: dict, field: str) -> list:
    value = data.get(field, [])
    if not isinstance(value, list):
        raise StreamProtocolError(f"'{field}' must be a list")
    return value


def _decode_resource(item) -> Resource:
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str):
        raise StreamProtocolError(f"resource entry must be an object with a kind: {str(item)[:80]}")
    try:
        obj = from_json(item["kind"], item.get("value"))
    except (ModelError, KeyError, TypeError, ValueError) as exc:
        raise StreamProtocolError(f"bad {item['kind']} {item.get('key')!r}: {exc}") from None
    return obj


# The kinds a removal may name (wisp.model's); any other made `apply` raise KeyError, which no
# subscriber catches (found by fuzzing: a removal of kind "woriload").
_KINDS = frozenset((KIND_WORKLOAD, KIND_SERVICE, KIND_AUTHORIZATION, KIND_CONFIG_OBJECT))


def _decode_key(item) -> ResourceKey:
    if not isinstance(item, dict) or not isinstance(item.get("kind"), str) or not isinstance(item.get("key"), str):
        raise StreamProtocolError(f"removal must be {{kind, key}}: {str(item)[:80]}")
    if item["kind"] not in _KINDS:
        raise StreamProtocolError(f"removal of unknown kind {item['kind'][:40]!r}; known: {', '.join(sorted(_KINDS))}")
    return ResourceKey(item["kind"], item["key"])


class ConfigView:
    """What a subscriber holds: the last good snapshot and its version."""

    def __init__(self) -> None:
        self.snapshot = ModelSnapshot()
        self.version: str | None = None

    def apply(self, message: Message) -> bool:
        """Apply a snapshot or delta; False for anything else. The view is unchanged if this raises."""
        if message.type == "snapshot":
            self.snapshot, self.version = message.snapshot, message.version
            return True
        if message.type == "delta":
            if message.since != self.version:
                raise StreamProtocolError(
                    f"delta {message.version} applies on {message.since}, but we hold {self.version}"
                )
            self.snapshot, self.version = apply(self.snapshot, message.delta), message.version
            return True
        return False
