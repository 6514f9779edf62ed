"""Jobs whose files live in the artifact store, on both backends: Redis keeps a finished job small,
reads verify the SHA-256, a crash between object and record leaves an orphan the sweep removes, and
jobs stored by the previous version (blobs in Redis) are read through and moved."""

from __future__ import annotations

import json
import random
import time

import pytest
import redis
import torch

from backend.nca import NCA, JobSpec, ModelFile, ModelInfo
from backend.nca.modelfile import from_bytes, to_bytes
from backend.nca.train import Progress
from backend.storage.artifacts import ArtifactCorrupt, ArtifactMissing, sha256
from backend.storage.jobs import JobStore, job_key, new_job_id
from backend.storage.tensors import tensor_to_bytes
from backend.worker.losses import LossHistory


@pytest.fixture
def store(client: redis.Redis, artifacts) -> JobStore:
    return JobStore(client, history_cap=50, artifacts=artifacts)


def model_file(iteration: int, optimizer: bool = False) -> bytes:
    return to_bytes(ModelFile(NCA(), ModelInfo(grid_height=72, grid_width=72, iterations=iteration)))


def redis_bytes(client: redis.Redis, job_id: str) -> int:
    """What a job costs Redis: the summed MEMORY USAGE of its keys."""
    return sum(client.memory_usage(key) or 0 for key in client.scan_iter(match=job_key(job_id) + "*"))


def finished_job(store: JobStore, checkpoints: int, every: int = 100) -> str:
    job_id = new_job_id()
    spec = JobSpec.from_options({"name": "lizard", "experiment": "growing", "iterations": checkpoints * every})
    store.create(job_id, spec, torch.rand(4, 72, 72), upload=b"\x89PNG" + b"u" * 500_000)
    assert store.claim(job_id, "t", 60, "cpu", "w") == "ok"
    losses = LossHistory()
    for iteration in range(1, checkpoints * every + 1):
        losses.add(iteration, 0.1 / iteration ** 0.5 + random.random() * 1e-4)  # as a real run's, full precision
        if iteration % every == 0:
            store.store_checkpoint(job_id, "t", model_file(iteration), iteration, 1 / iteration)
            store.progress(job_id, "t", Progress(iteration=iteration, total=checkpoints * every,
                                                 loss=losses.points[-1][1], trained_seconds=iteration / 10,
                                                 iterations_per_second=10.0), losses)
    assert store.finish(job_id, "t", "succeeded")
    return job_id


def test_a_finished_job_keeps_under_20_kb_in_redis(store: JobStore, client: redis.Redis) -> None:
    """The issue's server defaults: 72 x 72, a checkpoint every 100 of 8000 iterations, a history of 50."""
    job_id = finished_job(store, checkpoints=80)
    used = redis_bytes(client, job_id)
    print(f"redis bytes of a finished job: {used}")
    assert used <= 20_000, used
    assert len(store.history(job_id)) == 50
    objects = [key for key, _ in store.artifacts.objects(job_id + "/")]
    assert len([k for k in objects if "/history/" in k]) == 50  # thinned ones deleted with their entries
    assert len([k for k in objects if "/model/" in k]) == 1  # only the latest checkpoint's model file
    assert from_bytes(store.checkpoint(job_id)).info.iterations == 8000
    assert store.target(job_id).shape == (4, 72, 72)


def test_a_damaged_or_lost_object_is_a_clear_error(store: JobStore) -> None:
    job_id = finished_job(store, checkpoints=2)
    store.artifacts.put(f"{job_id}/target", b"not the target")
    with pytest.raises(ArtifactCorrupt, match="checksum"):
        store.target(job_id)
    latest = store.history(job_id)[-1]
    store.artifacts.delete_job(job_id)
    with pytest.raises(ArtifactMissing, match="missing"):
        store.history_weights(job_id, latest.iteration)


def test_a_crash_between_object_and_record_leaves_an_orphan_the_sweep_removes(store: JobStore) -> None:
    """The object is written first: a worker killed before the record's script ran leaves an object no
    record points at (never a record pointing at nothing); the sweep deletes it once past its grace."""
    job_id = finished_job(store, checkpoints=2)
    store.artifacts.put(f"{job_id}/model/300-deadbeef0000", model_file(300))  # the crashed worker's write
    store.artifacts.put(f"{new_job_id()}/target", b"a job whose create never ran")
    assert store.sweep_orphans(grace_seconds=3600) == 0  # too young: it may be a write in progress
    time.sleep(1.1)
    assert store.sweep_orphans(grace_seconds=1) == 2
    left = sorted(key for key, _ in store.artifacts.objects())
    assert left == sorted([f"{job_id}/target", f"{job_id}/upload", store._pointers(job_id, "model_key")[0],
                           *(key for key, _ in store.artifacts.objects(f"{job_id}/history/"))])
    assert from_bytes(store.checkpoint(job_id)).info.iterations == 200


def write_as_previous_version(client: redis.Redis, job_id: str, target: torch.Tensor) -> None:
    """A finished job exactly as the previous version's JobStore stored it (keys, fields and the history's
    JSON from its `create` and `checkpoint` scripts): blobs in Redis."""
    spec = JobSpec.from_options({"name": "old", "experiment": "growing", "iterations": 200})
    record = {"id": job_id, "name": "old", "status": "succeeded", "iteration": 200, "total": 200,
              "created_at": 1.0, "options": json.dumps(spec.options()), "spec_version": spec.options and 2,
              "grid_height": 72, "grid_width": 72, "model_version": 2, "loss_history": "[]", "loss_every": 1,
              "resumed_from": "[]", "checkpoint_iteration": 200, "checkpoint_loss": 0.005,
              "checkpoint_at": 2.0, "finished_at": 3.0, "attempts": 1, "owner": "t", "lease_ms": 60000}
    from backend.nca.jobspec import SPEC_VERSION

    record["spec_version"] = SPEC_VERSION
    client.hset(job_key(job_id), mapping=record)
    client.zadd("nca:jobs", {job_id: 1.0})
    client.set(job_key(job_id, "target"), tensor_to_bytes(target))
    client.set(job_key(job_id, "upload"), b"\x89PNG old upload")
    client.set(job_key(job_id, "model"), model_file(200))
    for version, iteration in enumerate((100, 200), start=1):
        client.zadd(job_key(job_id, "history"), {
            f'{{"iteration":{iteration},"loss":{1 / iteration},"at":2.0,"version":{version}}}': iteration})
        client.hset(job_key(job_id, "history:weights"), str(iteration), model_file(iteration))


def test_jobs_stored_by_the_previous_version_are_read_through_then_moved(store: JobStore,
                                                                        client: redis.Redis) -> None:
    job_id, target = new_job_id(), torch.rand(4, 72, 72)
    write_as_previous_version(client, job_id, target)
    before = redis_bytes(client, job_id)
    # read through, before any migration
    assert torch.equal(store.target(job_id), target)
    assert from_bytes(store.checkpoint(job_id)).info.iterations == 200
    assert from_bytes(store.history_weights(job_id, 100)).info.iterations == 100
    assert store.get(job_id).status == "succeeded"
    # moved at start
    assert store.migrate_all() == 1
    assert store.migrate_all() == 0  # once
    assert torch.equal(store.target(job_id), target)
    assert from_bytes(store.checkpoint(job_id)).info.iterations == 200
    assert from_bytes(store.history_weights(job_id, 100)).info.iterations == 100
    assert [c.iteration for c in store.history(job_id)] == [100, 200]
    assert not client.exists(job_key(job_id, "target"), job_key(job_id, "model"), job_key(job_id, "upload"),
                             job_key(job_id, "history:weights"))
    after = redis_bytes(client, job_id)
    assert after <= 20_000 < before, (before, after)
    assert store.sweep_orphans(grace_seconds=0) == 0  # the moved objects are all pointed at


def test_a_jobs_model_digests_are_its_files_sha256_before_and_after_the_move(store: JobStore,
                                                                           client: redis.Redis) -> None:
    """What the render cache knows a job's files by (deleting a job forgets them; the sweep keeps their renders):
    read from the record, or hashed from the blobs of a job not moved yet; the same set either way."""
    job_id = new_job_id()
    write_as_previous_version(client, job_id, torch.rand(4, 72, 72))
    files = [store.checkpoint(job_id), store.history_weights(job_id, 100), store.history_weights(job_id, 200)]
    expected = {sha256(data) for data in files}
    assert len(expected) == 3
    assert store.model_digests(job_id) == expected
    store.migrate_all()
    assert store.model_digests(job_id) == expected
    assert store.model_digests(new_job_id()) == set()


def test_a_legacy_job_resumed_by_a_new_worker_drops_its_old_blobs(store: JobStore, client: redis.Redis) -> None:
    job_id = new_job_id()
    write_as_previous_version(client, job_id, torch.rand(4, 72, 72))
    client.hset(job_key(job_id), mapping={"status": "queued", "total": 400})
    assert store.claim(job_id, "t2", 60, "cpu", "w") == "ok"
    assert store.store_checkpoint(job_id, "t2", model_file(300), 300, 0.001) == 3
    assert not client.exists(job_key(job_id, "model"))
    assert from_bytes(store.checkpoint(job_id)).info.iterations == 300
    assert from_bytes(store.history_weights(job_id, 100)).info.iterations == 100  # still read through


def test_one_process_is_elected_for_a_chore(store: JobStore) -> None:
    assert store.elect("orphan-sweep", "w1", 5)
    assert not store.elect("orphan-sweep", "w2", 5)
    assert store.elect("orphan-sweep", "w1", 5)  # the holder renews
