"""The training queue's contract against a real Redis: messages, and the deliveries a lost worker leaves."""

from __future__ import annotations

import json
import time

import redis

from backend.config import Settings
from backend.storage.queue import QUEUE, UNACKED_INDEX_KEY, UNACKED_KEY, TrainingQueue, make_sender


def deliver(client: redis.Redis) -> str:
    """What kombu's Redis transport does when a worker receives a message (QoS.append): it keeps it, unacked."""
    payload = json.loads(client.rpop(QUEUE))
    tag = payload["properties"]["delivery_tag"]
    client.zadd(UNACKED_INDEX_KEY, {tag: time.time()})
    client.hset(UNACKED_KEY, tag, json.dumps([payload, "", QUEUE]))
    return tag


def test_a_lost_workers_delivery_is_forgotten_and_nothing_else(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    queue = TrainingQueue(client, make_sender(Settings(redis_url=redis_url)))
    lost, other = "a" * 32, "b" * 32
    queue.send(lost)
    queue.send(other)
    assert queue.waiting() == 2
    deliver(client)
    kept = deliver(client)  # both received by workers; the first one's worker is then killed
    client.hset(UNACKED_KEY, "not-ours", json.dumps([{"headers": {"task": "other.task"}, "body": ""}, "", "x"]))
    assert queue.forget_deliveries(lost) == 1
    assert set(client.hkeys(UNACKED_KEY)) == {kept.encode(), b"not-ours"}
    assert client.zrange(UNACKED_INDEX_KEY, 0, -1) == [kept.encode()]
    assert queue.forget_deliveries(lost) == 0 and queue.waiting() == 0
