"""`model=<job id>@<iteration>`: the stream plays any checkpoint of a job's history, as a fixed snapshot;
a reference that is malformed or names no checkpoint gets an error event and its documented close."""

from __future__ import annotations

import asyncio

import pytest

from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo
from backend.storage.embedded_redis import EmbeddedRedis
from backend.storage.jobs import new_job_id
from backend.stream import protocol
from tests.stream.client import watch
from tests.stream.conftest import RANDOM, StreamServer
from tests.stream.jobs import HEART, TrainingJob, as_checkpoint

GROWN = 0.15  # share of the 36 x 36 grid the heart covers once grown (about 0.3 at step 80)


def untrained(iteration: int) -> ModelFile:
    """An early checkpoint: the update network's last layer is still zero, so the seed never grows."""
    return ModelFile(NCA(), ModelInfo(grid_height=36, grid_width=36, iterations=iteration, final_loss=0.5))


@pytest.fixture
def job(redis_server: EmbeddedRedis):
    job = TrainingJob(redis_server.url, name="timeline")
    job.checkpoint(untrained(100))
    job.checkpoint(as_checkpoint(HEART, 200, 0.004))
    yield job
    job.close()


def test_an_early_and_a_late_checkpoint_play_differently(server: StreamServer, job: TrainingJob) -> None:
    job.finish("succeeded")

    async def grown_share(iteration: int) -> tuple[dict, float]:
        async with watch(server.url(f"{job.id}@{iteration}", fps=60, steps_per_frame=4)) as v:
            model = await v.event("model")
            return model, (await v.frame_at_step(80)).coverage

    async def scenario() -> None:
        (early, early_share), (late, late_share) = await asyncio.gather(grown_share(100), grown_share(200))
        assert (early["id"], early["iteration"], early["version"]) == (f"{job.id}@100", 100, 1)
        assert (late["id"], late["iteration"], late["version"]) == (f"{job.id}@200", 200, 2)
        assert early["snapshot"] is late["snapshot"] is True and early["status"] == "succeeded"
        assert early["loss"] == pytest.approx(0.5) and late["loss"] == pytest.approx(0.004)
        assert early_share < 0.01 < GROWN < late_share  # the seed alone, then the grown heart

    asyncio.run(scenario())


def test_a_snapshot_is_never_swapped_while_the_live_model_is(server: StreamServer, job: TrainingJob) -> None:
    async def scenario() -> None:
        async with watch(server.url(f"{job.id}@0100", fps=30)) as snapshot, watch(server.url(job.id)) as live:
            model = await snapshot.event("model")
            assert (model["id"], model["iteration"], model["snapshot"]) == (f"{job.id}@100", 100, True)
            assert (await live.event("model"))["snapshot"] is False
            await snapshot.frame_at_step(5)
            await asyncio.to_thread(job.checkpoint, as_checkpoint(HEART, 300, 0.003))
            assert (await live.event("reloaded"))["iteration"] == 300
            await asyncio.to_thread(job.finish, "succeeded")
            assert (await live.event("status"))["status"] == "succeeded"
            frames = await snapshot.quiet(0.5)
            assert frames and frames[0].step > 5  # played on, not regrown
            assert not [e for e in snapshot.events if e["type"] in ("reloaded", "status")]

    asyncio.run(scenario())


async def refused(url: str) -> tuple[str, int, str]:
    """The error event and the close frame (never a dropped connection) a refused stream gets."""
    async with watch(url) as v:
        error = await v.event("error")
        close = await v.closed()
    return error["message"], close.code, close.reason


def test_a_checkpoint_the_history_does_not_have_is_closed_with_4404(server: StreamServer, job: TrainingJob) -> None:
    message, code, reason = asyncio.run(refused(server.url(f"{job.id}@150")))
    assert code == protocol.CLOSE_UNKNOWN_MODEL
    assert message == reason == f"no checkpoint at iteration 150: GET /api/jobs/{job.id}/checkpoints lists them"
    message, code, _ = asyncio.run(refused(server.url(f"{RANDOM}@3")))
    assert code == protocol.CLOSE_UNKNOWN_MODEL and "has no training history" in message
    message, code, _ = asyncio.run(refused(server.url(f"{new_job_id()}@100")))
    assert code == protocol.CLOSE_UNKNOWN_MODEL and message.startswith("unknown model")


@pytest.mark.parametrize("ref", ["@100", "JOB@", "JOB@latest", "JOB@-100", "JOB@1.5", "JOB@100@200"])
def test_a_malformed_reference_is_closed_with_4400(server: StreamServer, job: TrainingJob, ref: str) -> None:
    message, code, reason = asyncio.run(refused(server.url(ref.replace("JOB", job.id))))
    assert code == protocol.CLOSE_BAD_REQUEST
    assert message.startswith("malformed model reference") and reason == message[:len(reason)]
