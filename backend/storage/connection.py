"""One way to open a Redis client, so every service fails fast (and recovers) the same way."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

# Raised by redis-py when the server cannot be reached; the API answers 503 for these.
REDIS_DOWN_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def connect(url: str) -> redis.Redis:
    """A bytes client (model files are binary): one quick retry, short timeouts, reconnects on its own.

    The default redis-py retry policy waits seconds before giving up; an API request should
    answer 503 at once when Redis is down, and simply work again once it is back.
    """
    return redis.Redis.from_url(
        url, socket_connect_timeout=2.0, socket_timeout=10.0, health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), retries=1),
    )


def is_storage_full(exc: BaseException) -> bool:
    """Whether Redis refused a write for memory (maxmemory with noeviction): a plain command raises
    OutOfMemoryError, a Lua script a ResponseError that quotes the OOM reply."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or (
        isinstance(exc, redis.exceptions.ResponseError) and "OOM command not allowed" in str(exc))


def text(value: bytes | str | None) -> str | None:
    """Redis replies are bytes for a default client, str for a decode_responses client."""
    return value.decode() if isinstance(value, bytes) else value
