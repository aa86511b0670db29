"""What every wisp ASGI app (operator, node agent) answers the same way."""

from __future__ import annotations


async def lifespan(receive, send) -> None:
    """Acknowledge the server's start-up and shut-down; wisp apps hold no per-app resources."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive, send, limit: int, respond) -> bytes | None:
    """A request's whole body; None once the client left or the body passed `limit` bytes,
    which gets `respond(send, 413, {"error": ...})`."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if len(body) > limit:
            await respond(send, 413, {"error": f"request body over {limit} bytes"})
            return None
        if not message.get("more_body"):
            return bytes(body)
