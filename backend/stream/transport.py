"""The TCP connection under a stream, for the things ASGI cannot say (uvicorn only, best effort).

1. A small kernel send buffer. Linux grows a socket's send buffer up to 4 MiB; for a client
   that reads slowly that is seconds of stale frames queued where "latest frame only" cannot
   drop them, and a stalled client is noticed only once they are all written. A fixed buffer
   (`stream_send_buffer`) bounds both.
2. Aborting a stalled client: a close frame cannot reach a client that reads nothing, so after
   trying to close politely the connection is dropped instead of lingering.
3. uvicorn's log: a text message that is not UTF-8 never reaches the app (uvicorn closes the
   connection with 1007 itself, rightly) but uvicorn logs it as an ERROR with a traceback, so any
   client could fill the log. `quiet_invalid_text` makes that one info line.

Under a server other than uvicorn, or a uvicorn whose internals differ, neither applies (nothing
fails: the transport is simply not found) and the stream still works, only laxer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

T = TypeVar("T")

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


class _InvalidTextFilter(logging.Filter):
    """uvicorn's "Invalid UTF-8 sequence received from client." ERROR + traceback -> one INFO line."""

    MESSAGE = "Invalid UTF-8 sequence received from client."

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != self.MESSAGE:
            return True
        record.msg, record.args = "a client sent a text message that is not UTF-8: closed with 1007", ()
        record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


_INVALID_TEXT_FILTER = _InvalidTextFilter()
UVICORN_ERROR_LOG = "uvicorn.error"  # the logger uvicorn's websocket protocols write to


def quiet_invalid_text() -> None:
    """Install the filter on uvicorn's error log (once: adding the same filter again does nothing)."""
    logging.getLogger(UVICORN_ERROR_LOG).addFilter(_INVALID_TEXT_FILTER)


async def first_to_end(*coroutines: Coroutine[Any, Any, T]) -> T:
    """Run a connection's receiver and sender together until one ends (the client left, a close is due);
    the others are cancelled and awaited. The result of the one that ended."""
    tasks = {asyncio.create_task(c) for c in coroutines}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return next(iter(done)).result()
