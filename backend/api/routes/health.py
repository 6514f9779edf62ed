"""Is the service usable: Redis reachable, which workers are alive (their presence keys)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from backend.storage.connection import REDIS_DOWN_ERRORS

from ..deps import SettingsDep, StorageDep
from ..schemas import ArtifactsHealth, Health, RedisHealth

MEMORY_DEGRADED = 0.9  # above this share of Redis's maxmemory, health says degraded (writes will soon be refused)

router = APIRouter(prefix="/api", tags=["health"])


def redacted(url: str) -> str:
    """The Redis URL without its password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


@router.get("/health", response_model=Health, summary="Redis and worker status",
            responses={503: {"model": Health, "description": "Redis is unreachable"}})
def health(storage: StorageDep, settings: SettingsDep):
    """200 `ok`; 200 `degraded` (no worker: jobs wait; Redis above 90 % of maxmemory; the artifact store
    unreachable), `reasons` says which; 503 (no Redis)."""
    url = redacted(settings.redis_url)
    try:
        storage.ping()
        workers = storage.workers.live()
        queued = storage.queue.waiting()
        used, limit = storage.memory()
    except REDIS_DOWN_ERRORS as exc:
        body = Health(status="unavailable", redis=RedisHealth(ok=False, url=url, error=str(exc)), workers=[])
        return JSONResponse(body.model_dump(), status_code=503)
    full = limit > 0 and used > MEMORY_DEGRADED * limit
    artifacts = ArtifactsHealth(ok=True, store=storage.artifacts.description)
    artifacts.error = storage.artifacts_error()
    artifacts.ok = artifacts.error is None
    reasons = [*([] if workers else ["no worker is running: jobs wait"]),
               *([f"Redis uses {used / limit:.0%} of its maxmemory"] if full else []),
               *([] if artifacts.ok else ["the artifact store is unreachable"])]
    return Health(status="degraded" if reasons else "ok", reasons=reasons,
                  redis=RedisHealth(ok=True, url=url, used_memory=used, maxmemory=limit or None),
                  artifacts=artifacts, workers=workers, queued_messages=queued)
