"""A job's stream follows its training: a new checkpoint in Redis + `nca:checkpoints` -> `reloaded`,
after which each viewer regrows from the seed with it (or, with `on_checkpoint=keep`, carries on);
a job that finishes tells its viewers with a `status` event.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from backend.nca.modelfile import to_bytes
from backend.storage.embedded_redis import EmbeddedRedis
from backend.storage.jobs import job_key
from backend.stream.app import _on_checkpoint
from backend.stream.engine import Engine
from backend.stream.protocol import StreamParams
from tests.stream.client import Frame, Viewer, watch
from tests.stream.conftest import StreamServer, random_model
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint, publish

GROWN = 0.15  # share of the 36 x 36 grid alive once the heart has grown (about 0.3 at step 80)


@pytest.fixture
def job(redis_server: EmbeddedRedis):
    job = TrainingJob(redis_server.url)
    yield job
    job.close()


def alive_cells(frame: Frame) -> set[tuple[int, int]]:
    """(x, y) of every cell with some alpha."""
    ys, xs = np.nonzero(frame.rgba[..., 3])
    return set(zip(xs.tolist(), ys.tolist(), strict=True))


def test_each_checkpoint_regrows_the_viewers_from_the_seed_unless_they_keep_their_cells(
        server: StreamServer, job: TrainingJob) -> None:
    job.checkpoint(as_checkpoint(HEART, 200, 0.08))

    async def regrows(v: Viewer) -> None:
        model = await v.event("model")
        assert (model["status"], model["on_checkpoint"], model["iterations"]) == ("running", "regrow", 200)
        assert (await v.frame_at_step(80)).coverage > GROWN
        await asyncio.to_thread(job.checkpoint, as_checkpoint(HEART, 400, 0.03))
        reloaded = await v.event("reloaded")
        assert reloaded["version"] == 2 and reloaded["iteration"] == 400 and reloaded["loss"] == pytest.approx(0.03)
        assert reloaded["status"] == "running" and reloaded["regrown"] is True and reloaded["replanted"] == 0
        first = await v.frame()  # every frame after `reloaded` is the new checkpoint's, from the seed
        assert first.step <= 2 and first.coverage < 0.02, (first.step, first.coverage)
        assert (await v.frame_at_step(80)).coverage > GROWN  # and it grows again

    async def keeps(v: Viewer) -> None:
        assert (await v.event("model"))["on_checkpoint"] == "keep"
        grown = await v.frame_at_step(80)
        reloaded = await v.event("reloaded", timeout=20)
        assert reloaded["version"] == 2 and reloaded["regrown"] is False
        after = await v.frame()
        assert after.step > grown.step and after.coverage > GROWN  # the state carried on

    async def scenario() -> None:
        async with watch(server.url(job.id, fps=30, steps_per_frame=2)) as a, \
                watch(server.url(job.id, fps=30, steps_per_frame=2, on_checkpoint="keep")) as b:
            await asyncio.gather(regrows(a), keeps(b))  # both read all along: neither stalls

    asyncio.run(scenario())


def test_a_regrow_plants_the_viewers_own_seeds_again(server: StreamServer, job: TrainingJob) -> None:
    """The cells planted with `seed` since the last reset come back with the seed; a reset forgets them."""
    job.checkpoint(as_checkpoint(HEART, 200, 0.08))
    centre, planted = (18, 18), (6, 30)

    async def scenario() -> None:
        async with watch(server.url(job.id, fps=30)) as v:
            await v.frame_at_step(20)
            await v.send(cmd="pause")
            await v.send(cmd="seed", x=planted[0], y=planted[1])
            await v.send(cmd="seed", x=planted[0], y=planted[1])  # the same cell twice is one cell
            await asyncio.to_thread(job.checkpoint, as_checkpoint(HEART, 300, 0.05))
            assert (await v.event("reloaded"))["replanted"] == 1
            regrown = await v.frame()  # paused: shown at once, without a step
            assert regrown.step == 0 and alive_cells(regrown) == {centre, planted}
            await v.send(cmd="reset")
            assert alive_cells(await v.frame()) == {centre}
            await asyncio.to_thread(job.checkpoint, as_checkpoint(HEART, 400, 0.03))
            assert (await v.event("reloaded"))["replanted"] == 0
            assert alive_cells(await v.frame()) == {centre}

    asyncio.run(scenario())


def test_a_finished_job_tells_its_viewers(server: StreamServer, job: TrainingJob) -> None:
    job.checkpoint(as_checkpoint(HEART, 200, 0.08))

    async def scenario() -> None:
        async with watch(server.url(job.id, fps=30)) as v:
            assert (await v.event("model"))["status"] == "running"
            await v.frame_at_step(5)
            await asyncio.to_thread(job.finish, "succeeded")
            status = await v.event("status")
            assert (status["status"], status["version"], status["iteration"]) == ("succeeded", 1, 200)
            assert not [e for e in v.events if e["type"] == "reloaded"]  # the same checkpoint plays on
            playing = (await v.frame()).step
            assert playing > 5  # not regrown: no new weights
            await asyncio.to_thread(publish, job.client, job.id, 1, 200, "succeeded")  # said again
            await asyncio.to_thread(publish, job.client, job.id, 1, 200, "running")  # stale
            await v.quiet(0.5)
            assert not [e for e in v.events if e["type"] in ("status", "reloaded")]
        async with watch(server.url(job.id)) as late:  # a viewer who comes now learns it at once
            assert (await late.event("model"))["status"] == "succeeded"

    asyncio.run(scenario())


def test_the_state_is_kept_with_keep_and_another_grid_starts_over(server: StreamServer,
                                                                  redis_server: EmbeddedRedis) -> None:
    job = TrainingJob(redis_server.url, height=32, width=36, experiment="growing")

    def checkpoint(seed: int, iteration: int, height: int = 32, width: int = 36) -> int:
        return job.checkpoint(random_model(seed, height=height, width=width, iterations=iteration))

    assert checkpoint(1, 100) == 1

    async def scenario() -> None:
        async with watch(server.url(job.id, fps=30, on_checkpoint="keep")) as v:
            model = await v.event("model")
            assert (model["id"], model["version"], model["iterations"]) == (job.id, 1, 100)
            assert (model["width"], model["height"]) == (36, 32)
            before = await v.frame_at_step(10)
            await asyncio.to_thread(checkpoint, 2, 200)
            reloaded = await v.event("reloaded")
            assert reloaded["version"] == 2 and reloaded["iteration"] == 200 and reloaded["status"] == "running"
            assert reloaded["model"] == job.id and reloaded["iterations"] == 200 and reloaded["regrown"] is False
            after = await v.frame()
            assert after.step > before.step  # the state carried on: no reset to the seed
            assert not np.array_equal(after.rgba, before.rgba)
            # An old or repeated announcement changes nothing.
            await asyncio.to_thread(publish, job.client, job.id, 2, 200, "running")
            await v.quiet(0.5)
            assert not [e for e in v.events if e["type"] == "reloaded"]
            # A checkpoint with another grid cannot keep the state: the stream starts over on the new grid.
            await asyncio.to_thread(checkpoint, 3, 300, 20, 24)
            reloaded = await v.event("reloaded")
            assert reloaded["version"] == 3 and reloaded["regrown"] is True
            resized = await v.frame()  # no frame of the old grid after `reloaded`
            assert (resized.width, resized.height) == (24, 20) and resized.step <= 1
            await v.send(cmd="seed", x=23, y=19)  # commands are checked against the new grid
            await v.send(cmd="seed", x=30, y=0)
            assert "x must be between 0 and 23" in (await v.event("error"))["message"]
        for _ in range(100):  # unloaded with its last viewer
            if job.id not in server.health()["models"]:
                break
            await asyncio.sleep(0.05)
        assert job.id not in server.health()["models"]

    try:
        asyncio.run(scenario())
    finally:
        job.close()


def test_a_checkpoint_that_cannot_be_read_does_not_stop_the_hot_swap(server: StreamServer,
                                                                       redis_server: EmbeddedRedis) -> None:
    job = TrainingJob(redis_server.url, name="bad version", height=32, width=36, experiment="growing")

    def checkpoint(seed: int, iteration: int) -> int:
        return job.checkpoint(random_model(seed, height=32, width=36, iterations=iteration))

    def garbled() -> None:
        """A version the catalog cannot parse: reading the checkpoint fails with an unexpected error."""
        job.client.hset(job_key(job.id), "model_version", "garbled")
        publish(job.client, job.id, 99, 150, "running")

    checkpoint(1, 100)

    async def scenario() -> None:
        async with watch(server.url(job.id, fps=30)) as v:
            await v.event("model")
            await asyncio.to_thread(garbled)
            await v.quiet(0.5)
            await asyncio.to_thread(job.client.hset, job_key(job.id), "model_version", "1")
            assert await asyncio.to_thread(checkpoint, 2, 200) == 2
            assert (await v.event("reloaded"))["version"] == 2  # still following the channel

    try:
        asyncio.run(scenario())
    finally:
        job.close()


def test_malformed_checkpoint_messages_are_ignored() -> None:
    """Bad messages on the channel neither stop the stream nor the following: it plays on, the next good
    message still swaps the checkpoint in."""
    versions = {"m": 1}
    engine = Engine(lambda model_id: (to_bytes(random_model(versions[model_id], height=12, width=12)),
                                      versions[model_id], "running"), torch.device("cpu"), max_sessions=1)

    async def frames(session, count: int) -> list[bytes]:
        got: list[bytes] = []
        while len(got) < count:
            message = await asyncio.wait_for(session.next_message(), timeout=5)
            if isinstance(message, bytes):
                got.append(message)
        return got

    async def scenario() -> None:
        session = await engine.open(StreamParams("m", fps=60))
        ticker = asyncio.create_task(engine.run())
        try:
            await frames(session, 2)
            for data in (b"not json", b"[1]", b'{"model_id": "m"}', b'{"model_id": "m", "version": "two"}',
                         b'{"model_id": "m", "version": 1e999}'):
                await _on_checkpoint(engine, data)  # no exception: the follower would die with it
            assert engine.models["m"].version == 1 and session in engine.sessions and not session.closed
            steps_before = session.step
            assert len(set(await frames(session, 3))) == 3 and session.step > steps_before  # still playing
            versions["m"] = 2
            await _on_checkpoint(engine, b'{"model_id": "m", "version": 2, "status": "running"}')
            assert engine.models["m"].version == 2  # and still following the channel
        finally:
            engine.close(session)
            while not ticker.done():  # Python 3.11's wait_for can swallow a cancel that races its timeout
                ticker.cancel()
                await asyncio.wait({ticker}, timeout=0.1)

    asyncio.run(scenario())
