"""Access and quotas for the HTTP API: the optional bearer token and the caps on active jobs.

- `NCA_ACCESS_TOKEN` set: creating and cancelling jobs, and previewing an upload's target, need
  `Authorization: Bearer <token>` (401 otherwise). Unset: open. Who may see and change which job is
  the owner's business (backend/api/identity.py), on a gated server as on an open one.
- Active (queued or running) jobs are capped overall, per owner and (coarsely) per client address, and
  what an owner stores is capped too; over a cap an upload gets 429 with `Retry-After` before its
  body is even read. A client address is the remote address (uvicorn takes it from
  `X-Forwarded-For` when the proxy is trusted: `--forwarded-allow-ips`).

The cap is kept in Redis (backend.storage.quota), so every API process shares it.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.quota import RETRY_ACTIVE as RETRY_AFTER_SECONDS  # noqa: F401 (tests read it here)
from backend.storage.quota import QuotaExceeded
from backend.storage.shared import Storage

from .deps import SettingsDep
from .schemas import ErrorOut


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


class Slot:
    """A reserved job slot; the submission names the job it became (`job_id`)."""

    job_id: str | None = None


@contextlib.asynccontextmanager
async def job_slot(request: Request, storage: Storage, owner: str | None) -> AsyncIterator[Slot]:
    """A slot under every active-job cap and the owner's byte quota (backend.storage.quota) while a job is
    created; over one: 429 with Retry-After. The slot becomes the job's once the submission sets
    `slot.job_id`; otherwise (a refused upload) it is freed."""
    quota, who = storage.quota, client_id(request)
    try:
        reservation = await run_in_threadpool(quota.reserve, who, time.time(), owner)
    except QuotaExceeded as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    slot = Slot()
    try:
        yield slot
    finally:
        with contextlib.suppress(*REDIS_DOWN_ERRORS):  # Redis gone meanwhile: the reservation expires by itself
            await run_in_threadpool(quota.settle, reservation, slot.job_id)


TOKEN = Depends(require_token)
# For the OpenAPI description of the routes that use them.
TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {401: {"model": ErrorOut, "description": "no or wrong access token"}}
QUOTA_RESPONSES: dict[int | str, dict[str, Any]] = {429: {"model": ErrorOut, "description": "over a quota: "
                                                           "active jobs, stored bytes or new owners"}}
