"""The TCP connection under a stream, for the two things ASGI cannot say (uvicorn only, best effort).

1. A small kernel send buffer. Linux grows a socket's send buffer up to 4 MiB; for a client
   that reads slowly that is seconds of stale frames queued where "latest frame only" cannot
   drop them, and a stalled client is noticed only once they are all written. A fixed buffer
   (`stream_send_buffer`) bounds both.
2. Aborting a stalled client: a close frame cannot reach a client that reads nothing, so after
   trying to close politely the connection is dropped instead of lingering.

Under a server other than uvicorn, or a uvicorn whose internals differ, neither applies (nothing
fails: the transport is simply not found) and the stream still works, only laxer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from starlette.types import ASGIApp, Receive, Scope, Send

SCOPE_KEY = "nca.transport"


class ExposeTransport:
    """ASGI middleware: put uvicorn's transport into each websocket scope and size its send buffer."""

    def __init__(self, app: ASGIApp, send_buffer: int) -> None:
        self.app, self.send_buffer = app, send_buffer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and (transport := _transport(send)) is not None:
            scope[SCOPE_KEY] = transport
            if self.send_buffer > 0:
                _set_send_buffer(transport, self.send_buffer)
        await self.app(scope, receive, send)


def _transport(send: Send) -> asyncio.BaseTransport | None:
    """uvicorn's `send` is a method of its protocol object, which holds the asyncio (or uvloop) transport."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    return transport if hasattr(transport, "get_extra_info") and hasattr(transport, "abort") else None


def _set_send_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    setsockopt = getattr(transport.get_extra_info("socket"), "setsockopt", None)
    if setsockopt is not None:
        with contextlib.suppress(OSError):
            setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def abort(scope: Scope) -> None:
    """Drop the connection now, discarding whatever is still buffered for it."""
    transport = scope.get(SCOPE_KEY)
    if transport is not None:
        transport.abort()
