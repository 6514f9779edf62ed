"""Access and quotas for the HTTP API: the optional bearer token and the cap on active jobs.

- `NCA_ACCESS_TOKEN` set: creating and cancelling jobs, and previewing an upload's target, need
  `Authorization: Bearer <token>` (401 otherwise); everything else stays open, a job being found by its
  unguessable id. Unset: open.
- Active (queued or running) jobs are capped overall and per client; over a cap an upload gets 429
  with `Retry-After` before its body is even read. A client is the remote address (uvicorn takes
  it from `X-Forwarded-For` when the proxy is trusted: `--forwarded-allow-ips`).

The cap is kept in Redis, so every API process shares it: `nca:quota:active` (sorted set: job id or
pending reservation -> expiry) and `nca:quota:owner` (hash: member -> client). A Lua script counts
and reserves in one step, so concurrent uploads cannot overshoot; finished jobs drop out lazily.
"""

from __future__ import annotations

import contextlib
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.jobs import job_key

from .deps import RedisDep, SettingsDep
from .schemas import ErrorOut

ACTIVE_KEY = "nca:quota:active"
OWNER_KEY = "nca:quota:owner"
RESERVATION_SECONDS = 120  # an upload being processed holds its slot this long at most
JOB_SCORE = 1e18  # the score of a member that is a job (it stays until the job finishes)
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


# KEYS: active, owner. ARGV: now, client, max total, max per client, reservation id, its expiry,
# JOB_SCORE, the job key prefix.
# Returns {'ok'|'total'|'client', count}. Job members are alive while their status is queued or running.
_RESERVE = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total, mine = 0, 0
for i = 1, #members, 2 do
  local member, score = members[i], tonumber(members[i + 1])
  local alive
  if score < tonumber(ARGV[7]) then
    alive = score > tonumber(ARGV[1])
  else
    local st = redis.call('HGET', ARGV[8] .. member, 'status')
    alive = st == 'queued' or st == 'running'
  end
  if alive then
    total = total + 1
    if redis.call('HGET', KEYS[2], member) == ARGV[2] then mine = mine + 1 end
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
  end
end
if total >= tonumber(ARGV[3]) then return {'total', total} end
if mine >= tonumber(ARGV[4]) then return {'client', mine} end
redis.call('ZADD', KEYS[1], ARGV[6], ARGV[5])
redis.call('HSET', KEYS[2], ARGV[5], ARGV[2])
return {'ok', total}
"""


class JobQuota:
    """Reserve a slot before an upload is read; it becomes the job's, or is given back."""

    def __init__(self, client: redis.Redis, max_total: int, max_per_client: int):
        self.client, self.max_total, self.max_per_client = client, max_total, max_per_client
        self._reserve = client.register_script(_RESERVE)

    def reserve(self, client: str, now: float) -> str:
        """A reservation id, or HTTPException 429 saying which cap is reached."""
        reservation = "reservation:" + uuid.uuid4().hex
        args = [now, client, self.max_total, self.max_per_client, reservation, now + RESERVATION_SECONDS, JOB_SCORE,
                job_key("")]
        outcome, count = self._reserve(keys=[ACTIVE_KEY, OWNER_KEY], args=args)
        if outcome == b"ok":
            return reservation
        if outcome == b"total":
            message = f"the server already has {count} queued or running jobs (at most {self.max_total}); try later"
        else:
            message = (f"you already have {count} queued or running jobs (at most {self.max_per_client}); "
                       "wait for one to finish or cancel one")
        raise HTTPException(429, message, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def settle(self, reservation: str, client: str, job_id: str | None) -> None:
        """The reservation becomes the job's slot (it counts until the job finishes), or is dropped."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.zrem(ACTIVE_KEY, reservation)
            pipe.hdel(OWNER_KEY, reservation)
            if job_id is not None:
                pipe.zadd(ACTIVE_KEY, {job_id: JOB_SCORE})
                pipe.hset(OWNER_KEY, job_id, client)
            pipe.execute()


async def job_slot(request: Request, response: Response, settings: SettingsDep, client: RedisDep
                   ) -> AsyncIterator[None]:
    """Dependency of job creation: a slot under both caps for the duration of the request.

    The route's `Location` header names the created job; without it (bad upload) the slot is freed.
    """
    quota = JobQuota(client, settings.max_active_jobs, settings.max_active_jobs_per_client)
    who = client_id(request)
    reservation = await run_in_threadpool(quota.reserve, who, time.time())
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
