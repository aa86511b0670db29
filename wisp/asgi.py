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
