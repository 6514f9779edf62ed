"""The TCP connection under a stream, for the two things ASGI cannot say (uvicorn only, best effort).

1. A small kernel send buffer. Linux grows a socket's send buffer up to 4 MiB; for a client
   that reads slowly that is seconds of stale frames queued where "latest frame only" cannot
   drop them, and a stalled client is noticed only once they are all written. A fixed buffer
   (`stream_send_buffer`) bounds both.
2. Aborting a stalled client: a close frame cannot reach a client that reads nothing, so after
   trying to close politely the connection is dropped instead of lingering.

Under a server other than uvicorn neither applies and the stream still works, only laxer.
"""

from __future__ import annotations

import contextlib
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "nca.transport"


class ExposeTransport:
    """ASGI middleware: put uvicorn's transport into each websocket scope and size its send buffer."""

    def __init__(self, app: ASGIApp, send_buffer: int) -> None:
        self.app, self.send_buffer = app, send_buffer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if hasattr(transport, "get_extra_info") and hasattr(transport, "abort"):  # asyncio's or uvloop's
                scope[SCOPE_KEY] = transport
                sock = transport.get_extra_info("socket")
                if self.send_buffer > 0 and sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        await self.app(scope, receive, send)


def abort(scope: Scope) -> None:
    """Drop the connection now, discarding whatever is still buffered for it."""
    transport = scope.get(SCOPE_KEY)
    if transport is not None:
        transport.abort()
