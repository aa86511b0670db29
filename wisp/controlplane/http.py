"""An httpx client for the control plane's HTTPS API, for the node agent, the CLI and tests.

Proxies do not use it: `client.py` speaks to the control plane on wisp's own HTTP/2 connection,
so that httpx (2.2 MB of RSS) stays out of the data plane.
"""

from __future__ import annotations

import ssl

import httpx


def make_client(address: str, roots_pem: bytes, token: str, *, timeout: float = 10.0) -> httpx.AsyncClient:
    """An HTTP/2 client for `https://<address>`, trusting only the mesh's roots."""
    ctx = ssl.create_default_context(cadata=roots_pem.decode("ascii"))
    return httpx.AsyncClient(
        base_url=f"https://{address}", http2=True, verify=ctx, timeout=timeout,
        headers={"authorization": f"Bearer {token}"},
    )
