"""A job still training replays its growth: each viewer regrows from the seed every `loop_steps` CA steps
(stream_loop_multiple times the job's longest training run), unless it turned the loop off; a finished
job's model plays on."""

from __future__ import annotations

import asyncio

import pytest

from backend.storage.embedded_redis import EmbeddedRedis
from tests.stream.client import Viewer, watch
from tests.stream.conftest import StreamServer
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint

LOOP = 3 * 48  # the default multiple times the heart's max_steps (its train_config)


@pytest.fixture
def job(redis_server: EmbeddedRedis):
    job = TrainingJob(redis_server.url, name="loop")
    job.checkpoint(as_checkpoint(HEART, 200, 0.08))
    yield job
    job.close()


async def steps_seen(v: Viewer, until: int, timeout: float = 30.0) -> list[int]:
    """The CA steps of the frames received until one at `until` or later, or a step that went back."""
    steps: list[int] = []
    while not steps or (steps[-1] < until and (len(steps) < 2 or steps[-1] >= steps[-2])):
        steps.append((await v.frame(timeout)).step)
    return steps


def test_a_training_jobs_stream_goes_back_to_the_seed_at_the_loop_length(server: StreamServer,
                                                                          job: TrainingJob) -> None:
    async def scenario() -> None:
        async with watch(server.url(job.id, fps=60, steps_per_frame=4)) as v:
            model = await v.event("model")
            assert model["loop_steps"] == LOOP
            assert (await v.event("state"))["loop"] is True
            steps = await steps_seen(v, LOOP + 40)
            back = next(i for i in range(1, len(steps)) if steps[i] < steps[i - 1])
            assert steps[back - 1] >= LOOP - 4 and steps[back] <= 4, steps  # near 0 at the loop length
            assert max(steps) < LOOP + 4
            # The viewer turns it off: the count goes on past the loop length.
            await v.send(cmd="loop", on=False)
            assert (await v.event("state"))["loop"] is False
            past = await v.frame_at_step(LOOP + 40)
            assert past.step >= LOOP + 40

    asyncio.run(scenario())


def test_loop_off_in_the_query_and_a_finished_job_play_on(server: StreamServer, job: TrainingJob) -> None:
    async def scenario() -> None:
        async with watch(server.url(job.id, fps=60, steps_per_frame=4, loop="off")) as v:
            assert (await v.event("state"))["loop"] is False
            steps = await steps_seen(v, LOOP + 40)
            assert steps == sorted(steps) and steps[-1] >= LOOP + 40
        await asyncio.to_thread(job.finish, "succeeded")
        async with watch(server.url(job.id, fps=60, steps_per_frame=4)) as v:
            assert (await v.event("model"))["loop_steps"] is None
            steps = await steps_seen(v, LOOP + 40)
            assert steps == sorted(steps) and steps[-1] >= LOOP + 40

    asyncio.run(scenario())


def test_a_bad_loop_choice_is_refused_with_what_to_send(server: StreamServer, job: TrainingJob) -> None:
    async def scenario() -> None:
        async with watch(server.url(job.id)) as v:
            await v.send(cmd="loop", on="yes")
            assert "true or false" in (await v.event("error"))["message"]
        async with watch(server.url(job.id, loop="maybe")) as v:
            assert "loop must be one of on, off" in (await v.event("error"))["message"]
            assert (await v.closed()).code == 4400

    asyncio.run(scenario())


def test_a_paused_viewer_past_the_loop_length_keeps_its_picture_until_it_steps(server: StreamServer,
                                                                              job: TrainingJob) -> None:
    async def scenario() -> None:
        async with watch(server.url(job.id, fps=60, steps_per_frame=8, loop="off")) as v, \
                watch(server.url(job.id, fps=60)) as other:  # plays all along: the ticks go on
            past = await v.frame_at_step(LOOP + 20)
            await v.send(cmd="pause")
            await v.event("state")
            await v.send(cmd="loop", on=True)
            assert (await v.event("state"))["loop"] is True
            held = await v.quiet(0.8)  # at most the frames of ticks planned before the pause
            assert all(f.step > LOOP for f in held), [f.step for f in held]
            assert await v.quiet(0.5) == []  # paused past the loop length: no regrow, no frame
            await v.send(cmd="step")
            seed = await v.frame()  # the step starts over: the seed first, then the step asked for
            assert seed.step == 0 and seed.coverage < 0.01, (past.step, seed.step, seed.coverage)
            assert (await v.frame()).step == 1
            assert (await other.frame()).step >= 0

    asyncio.run(scenario())
