"""A job's stream follows its training: a new checkpoint in Redis + `nca:checkpoints` -> `reloaded`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import numpy as np
import torch

from backend.nca import JobSpec, modelfile
from backend.storage.connection import connect
from backend.storage.embedded_redis import EmbeddedRedis
from backend.storage.jobs import CHECKPOINT_CHANNEL, JobStore, job_key
from backend.stream.app import _on_checkpoint
from backend.stream.engine import Engine
from tests.stream.client import watch
from tests.stream.conftest import StreamServer, random_model


def publish(client, job_id: str, version: int, iteration: int, status: str) -> None:
    """An announcement on the channel by hand (an old, repeated or garbled one)."""
    message = {"model_id": job_id, "version": version, "iteration": iteration, "status": status}
    client.publish(CHECKPOINT_CHANNEL, json.dumps(message))


def training_job(client, name: str) -> tuple[Callable[..., int], str]:
    """A job claimed by a pretend worker, and what that worker does at a checkpoint: store the model file
    (version += 1), which the store announces on the channel."""
    jobs = JobStore(client)
    job_id, token = uuid.uuid4().hex, "lease-token"
    jobs.create(job_id, JobSpec.from_options({"name": name, "experiment": "growing", "iterations": 1000}),
                torch.zeros(4, 32, 36))
    assert jobs.claim(job_id, token, 60, "cpu", "test") == "ok"

    def checkpoint(seed: int, iteration: int, height: int = 32, width: int = 36) -> int:
        data = modelfile.to_bytes(random_model(seed, height=height, width=width, iterations=iteration))
        return jobs.store_checkpoint(job_id, token, data, iteration, 0.5)

    return checkpoint, job_id


def test_new_checkpoint_is_swapped_in_and_the_state_kept(server: StreamServer, redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url)
    checkpoint, job_id = training_job(client, "hot swap")

    assert checkpoint(1, 100) == 1

    async def scenario() -> None:
        async with watch(server.url(job_id, fps=30)) as v:
            model = await v.event("model")
            assert (model["id"], model["version"], model["iterations"]) == (job_id, 1, 100)
            assert (model["width"], model["height"]) == (36, 32)
            before = await v.frame_at_step(10)
            await asyncio.to_thread(checkpoint, 2, 200)
            reloaded = await v.event("reloaded")
            assert reloaded["version"] == 2 and reloaded["iteration"] == 200 and reloaded["status"] == "running"
            assert reloaded["model"] == job_id and reloaded["iterations"] == 200
            after = await v.frame()
            assert after.step > before.step  # the state carried on: no reset to the seed
            assert not np.array_equal(after.rgba, before.rgba)
            # An old or repeated announcement changes nothing.
            await asyncio.to_thread(publish, client, job_id, 2, 200, "running")
            await v.quiet(0.5)
            assert not [e for e in v.events if e["type"] == "reloaded"]
            # A checkpoint with another grid cannot keep the state: the stream starts over on the new grid.
            await asyncio.to_thread(checkpoint, 3, 300, 20, 24)
            assert (await v.event("reloaded"))["version"] == 3
            while (resized := await v.frame()).width != 24:  # frames computed before the swap
                pass
            assert resized.height == 20 and resized.step <= 1
            await v.send(cmd="seed", x=23, y=19)  # commands are checked against the new grid
            await v.send(cmd="seed", x=30, y=0)
            assert "x must be between 0 and 23" in (await v.event("error"))["message"]
        for _ in range(100):  # unloaded with its last viewer
            if job_id not in server.health()["models"]:
                break
            await asyncio.sleep(0.05)
        assert job_id not in server.health()["models"]

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_a_checkpoint_that_cannot_be_read_does_not_stop_the_hot_swap(server: StreamServer,
                                                                       redis_server: EmbeddedRedis) -> None:
    client = connect(redis_server.url)
    checkpoint, job_id = training_job(client, "bad version")

    def garbled() -> None:
        """A version the catalog cannot parse: reading the checkpoint fails with an unexpected error."""
        client.hset(job_key(job_id), "model_version", "garbled")
        publish(client, job_id, 99, 150, "running")

    checkpoint(1, 100)

    async def scenario() -> None:
        async with watch(server.url(job_id, fps=30)) as v:
            await v.event("model")
            await asyncio.to_thread(garbled)
            await v.quiet(0.5)
            await asyncio.to_thread(client.hset, job_key(job_id), "model_version", "1")
            assert await asyncio.to_thread(checkpoint, 2, 200) == 2
            assert (await v.event("reloaded"))["version"] == 2  # still following the channel

    try:
        asyncio.run(scenario())
    finally:
        client.close()


def test_malformed_checkpoint_messages_are_ignored() -> None:
    engine = Engine(lambda model_id: (b"", 1), torch.device("cpu"), max_sessions=1)
    for data in (b"not json", b"[1]", b'{"model_id": "m"}', b'{"model_id": "m", "version": "two"}',
                 b'{"model_id": "m", "version": 1e999}'):
        asyncio.run(_on_checkpoint(engine, data))  # no exception: the follower would die with it
