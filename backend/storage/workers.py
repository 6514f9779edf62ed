"""Worker presence: each worker keeps a key with a short TTL alive; /api/health lists the live ones.

(`celery inspect` would wait on a solo worker busy training; a key in Redis answers at once.)
The set `nca:workers` indexes the keys, so listing them does not scan the whole keyspace; a member
whose key expired (its worker was killed) is dropped the next time the list is read.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from . import keys
from .connection import text

WORKER_PREFIX = keys.WORKER.prefix
WORKERS_KEY = keys.WORKERS.pattern


class Presence:
    def __init__(self, client: redis.Redis):
        self._client = client

    def beat(self, worker_id: str, info: dict[str, Any], ttl_seconds: float) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.set(WORKER_PREFIX + worker_id, json.dumps(info), px=int(ttl_seconds * 1000))
            pipe.sadd(WORKERS_KEY, worker_id)
            pipe.execute()

    def forget(self, worker_id: str) -> None:
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(WORKER_PREFIX + worker_id)
            pipe.srem(WORKERS_KEY, worker_id)
            pipe.execute()

    def live(self) -> list[dict[str, Any]]:
        """The presence of every live worker, by id."""
        ids = sorted(text(i) for i in self._client.smembers(WORKERS_KEY))
        values = self._client.mget([WORKER_PREFIX + i for i in ids]) if ids else []
        gone = [i for i, v in zip(ids, values, strict=True) if v is None]
        if gone:
            self._client.srem(WORKERS_KEY, *gone)
        return [json.loads(v) for v in values if v is not None]
