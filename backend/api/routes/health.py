"""Is the service usable: Redis reachable, which workers are alive (their presence keys)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.storage.connection import REDIS_DOWN_ERRORS

from ..deps import SettingsDep, StorageDep
from ..schemas import Health, RedisHealth

router = APIRouter(prefix="/api", tags=["health"])


def redacted(url: str) -> str:
    """The Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


@router.get("/health", response_model=Health, summary="Redis and worker status",
            responses={503: {"model": Health, "description": "Redis is unreachable"}})
def health(storage: StorageDep, settings: SettingsDep):
    """200 `ok` (Redis and at least one worker), 200 `degraded` (no worker: jobs wait), 503 (no Redis)."""
    url = redacted(settings.redis_url)
    try:
        storage.ping()
        workers = storage.workers.live()
        queued = storage.queue.waiting()
    except REDIS_DOWN_ERRORS as exc:
        body = Health(status="unavailable", redis=RedisHealth(ok=False, url=url, error=str(exc)), workers=[])
        return JSONResponse(body.model_dump(), status_code=503)
    return Health(status="ok" if workers else "degraded", redis=RedisHealth(ok=True, url=url), workers=workers,
                  queued_messages=queued)
