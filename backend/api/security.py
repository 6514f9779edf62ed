"""Access and quotas for the HTTP API: the optional bearer token and the cap on active jobs.

- `NCA_ACCESS_TOKEN` set: creating and cancelling jobs need `Authorization: Bearer <token>` (401
  otherwise); everything else stays open, a job being found by its unguessable id. Unset: open.
- Active (queued or running) jobs are capped overall and per client; over a cap an upload gets 429
  with `Retry-After` before its body is even read. A client is the remote address (uvicorn takes
  it from `X-Forwarded-For` when the proxy is trusted: `--forwarded-allow-ips`).

The cap is kept in Redis (backend.storage.quota), so every API process shares it.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.quota import QuotaExceeded

from .deps import SettingsDep, StorageDep
from .schemas import ErrorOut

RETRY_AFTER_SECONDS = 30  # a queued job of a few hundred iterations is usually running by then


def client_id(request: Request) -> str:
    """Who asks, for the per-client cap: the remote address.

    Not the bearer token: on an open server any made-up token would be a fresh identity, and the
    one shared access token would make the per-client cap the overall one.
    """
    return request.client.host if request.client else "unknown"


def bearer_token(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def require_token(request: Request, settings: SettingsDep) -> None:
    """401 unless the server is open or the request carries the access token."""
    expected = settings.access_token
    if not expected:
        return
    given = bearer_token(request)
    if given is None:
        message = "this server requires an access token: send the header 'Authorization: Bearer <token>'"
    elif not hmac.compare_digest(given.encode(), expected.encode()):
        message = "the access token is not valid; ask the server's operator for the current one"
    else:
        return
    raise HTTPException(401, message, headers={"WWW-Authenticate": 'Bearer realm="nca"'})


async def job_slot(request: Request, response: Response, storage: StorageDep) -> AsyncIterator[None]:
    """Dependency of job creation: a slot under both caps (backend.storage.quota) for the duration of the request.

    Over a cap: 429 with Retry-After. The route's `Location` header names the created job; without it
    (bad upload) the slot is freed.
    """
    quota, who = storage.quota, client_id(request)
    try:
        reservation = await run_in_threadpool(quota.reserve, who, time.time())
    except QuotaExceeded as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None
    job_id = None
    try:
        yield
        job_id = response.headers.get("location", "").rsplit("/", 1)[-1] or None
    finally:
        with contextlib.suppress(*REDIS_DOWN_ERRORS):  # Redis gone meanwhile: the reservation expires by itself
            await run_in_threadpool(quota.settle, reservation, who, job_id)


TOKEN = Depends(require_token)
JOB_SLOT = Depends(job_slot)
# For the OpenAPI description of the routes that use them.
TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "no or wrong access token"}}
QUOTA_RESPONSES: dict[int | str, dict[str, Any]] = {429: {"model": ErrorOut, "description": "too many active jobs"}}
