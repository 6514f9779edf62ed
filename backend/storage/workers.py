"""Worker presence: each worker keeps a key with a short TTL alive; /api/health lists the live ones.

(`celery inspect` would wait on a solo worker busy training; a key in Redis answers at once.)
"""

from __future__ import annotations

import json
from typing import Any

import redis

WORKER_PREFIX = "nca:worker:"


def beat(client: redis.Redis, worker_id: str, info: dict[str, Any], ttl_seconds: float) -> None:
    client.set(WORKER_PREFIX + worker_id, json.dumps(info), px=int(ttl_seconds * 1000))


def forget(client: redis.Redis, worker_id: str) -> None:
    client.delete(WORKER_PREFIX + worker_id)


def live_workers(client: redis.Redis) -> list[dict[str, Any]]:
    keys = sorted(client.scan_iter(match=WORKER_PREFIX + "*", count=100))
    values = client.mget(keys) if keys else []
    return [json.loads(v) for v in values if v is not None]
