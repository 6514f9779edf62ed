"""Refuse request bodies over the upload cap while they stream in, before they are all read.

A declared Content-Length over the cap is answered 413 at once; otherwise the bytes are counted as
the app receives them, and the request fails with 413 as soon as the count passes the cap.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class UploadLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes

    def too_large(self) -> str:
        return f"request body is larger than {self.max_body_bytes:,} bytes; upload a smaller image"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await JSONResponse({"detail": self.too_large()}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, self.too_large())  # answered by the app's exception handler
            return message

        await self.app(scope, counting_receive, send)
