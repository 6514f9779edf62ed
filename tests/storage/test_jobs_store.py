"""The job store and model catalog against a real Redis: claims, leases, fencing, recovery, cancel."""

from __future__ import annotations

import json
import time

import pytest
import redis
import torch

from backend.nca import NCA, JobSpec, ModelFile, ModelInfo
from backend.nca.modelfile import from_bytes, save, to_bytes
from backend.nca.train import Progress
from backend.storage.connection import connect
from backend.storage.jobs import CHECKPOINT_CHANNEL, JobNotFound, JobStore, job_key, new_job_id
from backend.storage.models import ModelCatalog, ModelNotFound
from backend.storage.workers import WORKERS_KEY, Presence
from backend.worker.losses import LossHistory


@pytest.fixture
def store(redis_url: str, artifacts) -> JobStore:
    """On both artifact backends (a directory, a real S3-protocol server)."""
    client = connect(redis_url)
    client.flushdb()
    return JobStore(client, artifacts=artifacts)


def new_job(store: JobStore, total: int = 100) -> str:
    job_id = new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "square", "experiment": "growing", "iterations": total}),
                 torch.rand(4, 12, 10))
    return job_id


def model_bytes(iterations: int = 5) -> bytes:
    return to_bytes(ModelFile(NCA(), ModelInfo(grid_height=12, grid_width=10, iterations=iterations)))


def test_create_and_read_back(store: JobStore) -> None:
    job_id = new_job(store)
    job = store.get(job_id)
    assert (job.status, job.total, job.grid_height, job.grid_width) == ("queued", 100, 12, 10)
    assert job.model_version == 0 and job.started_at is None
    assert store.target(job_id).shape == (4, 12, 10)
    with pytest.raises(JobNotFound):
        store.get(new_job_id())


def test_list_is_newest_first_and_paginated(store: JobStore) -> None:
    ids = [new_job(store) for _ in range(5)]
    page, total = store.list(offset=1, limit=2)
    assert total == 5
    assert [j.id for j in page] == [ids[3], ids[2]]


def test_one_owner_at_a_time_and_writes_are_fenced(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.claim(job_id, "a", 5, "cpu", "w1") == "ok"
    assert store.claim(job_id, "b", 5, "cpu", "w2") == "busy"  # a duplicate delivery is dropped
    assert store.store_checkpoint(job_id, "a", model_bytes(), 5, 0.1) == 1
    assert store.store_checkpoint(job_id, "b", model_bytes(), 6, 0.1) == -1  # not the owner: refused
    assert store.get(job_id).model_version == 1
    assert store.finish(job_id, "b", "failed", "nope") is False
    assert store.finish(job_id, "a", "succeeded") is True
    assert store.claim(job_id, "c", 5, "cpu", "w3") == "succeeded"  # a finished job is never run again
    job = store.get(job_id)
    assert (job.status, job.attempts, job.checkpoint_iteration) == ("succeeded", 1, 5)


def test_expired_lease_is_recovered_once(store: JobStore) -> None:
    job_id = new_job(store)
    assert store.claim(job_id, "a", 0.3, "cpu", "w1") == "ok"
    assert store.recover_orphans() == []  # the lease is alive
    time.sleep(0.4)
    assert store.recover_orphans() == [job_id]
    assert store.recover_orphans() == []  # only one recoverer re-sends it
    job = store.get(job_id)
    assert (job.status, job.workers_lost, job.interrupted_by) == ("queued", 1, "worker_lost")
    assert store.claim(job_id, "b", 5, "cpu", "w2") == "ok"
    assert store.refresh_lease(job_id, "b", 5) and not store.refresh_lease(job_id, "a", 5)


def test_suspended_job_is_resent_by_recovery(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim(job_id, "a", 5, "cpu", "w1")
    assert store.suspend(job_id, "a")
    assert store.get(job_id).status == "queued"
    assert store.recover_orphans() == [job_id]
    job = store.get(job_id)
    assert job.workers_lost == 0  # a shutdown is not a lost worker (it never fails the job)
    assert job.interrupted_by == "stop"  # what the job card says ("resumed ... after a stop")


def test_cancel_queued_running_and_finished(store: JobStore) -> None:
    queued, running = new_job(store), new_job(store)
    assert store.cancel(queued) == "cancelled"
    assert store.get(queued).status == "cancelled" and store.get(queued).finished_at is not None
    assert store.claim(queued, "a", 5, "cpu", "w") == "cancelled"  # the worker skips it
    store.claim(running, "b", 5, "cpu", "w")
    assert store.cancel(running) == "requested"
    assert store.cancel_requested(running) and store.get(running).status == "running"
    store.finish(running, "b", "cancelled")
    assert store.cancel(running) == "finished"
    with pytest.raises(JobNotFound):
        store.cancel(new_job_id())


def test_loss_history_stays_small_and_even() -> None:
    history = LossHistory(max_points=200)
    for i in range(1, 5001):
        history.add(i, 1.0 / i)
    assert len(history.points) <= 200
    assert history.points[-1][0] > 4800 and all(it % history.every == 0 for it, _ in history.points)
    history.truncate(1000)
    assert history.points[-1][0] <= 1000


def test_catalog_lists_examples_and_jobs_with_checkpoints(store: JobStore, tmp_path) -> None:
    save(ModelFile(NCA(), ModelInfo(grid_height=20, grid_width=30, iterations=7, name="Lizard",
                                    experiment="regenerating")), tmp_path / "lizard.safetensors")
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    without, with_model = new_job(store), new_job(store)
    store.claim(with_model, "a", 5, "cpu", "w")
    store.store_checkpoint(with_model, "a", model_bytes(40), 40, 0.25)
    catalog = ModelCatalog(store, tmp_path)
    entries = {e.id: e for e in catalog.examples() + catalog.job_models([without, with_model])}
    assert set(entries) == {"example-lizard", with_model}
    example, job = entries["example-lizard"], entries[with_model]
    assert (example.source, example.status, example.name, example.grid_width, example.iterations) == \
        ("example", "ready", "Lizard", 30, 7)
    assert (job.source, job.status, job.iterations, job.loss, job.version) == ("job", "running", 40, 0.25, 1)
    assert (job.name, job.grid_height, job.grid_width, job.experiment) == ("square", 12, 10, "growing")
    assert job.updated_at == store.get(with_model).checkpoint_at
    assert catalog.get_entry(with_model) == job and catalog.get_entry("example-lizard") == example
    assert from_bytes(catalog.get_model_bytes(with_model)).info.iterations == 40
    assert from_bytes(catalog.get_model_bytes("example-lizard")).info.name == "Lizard"
    assert catalog.get_model_version(with_model) == 1
    for missing in (without, new_job_id(), "example-nope", "example-../lizard", "nonsense"):
        with pytest.raises(ModelNotFound):
            catalog.get_model_bytes(missing)
        with pytest.raises(KeyError):  # ModelNotFound is a KeyError
            catalog.get_model_version(missing)
        with pytest.raises(ModelNotFound):
            catalog.get_entry(missing)


def test_transitions_of_a_job_with_a_model_are_announced(store: JobStore, redis_url: str) -> None:
    """Each transition publishes its own message, in the same step: no caller has to remember to."""
    pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHECKPOINT_CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    job_id = new_job(store)
    store.claim(job_id, "a", 5, "cpu", "w")  # no model yet: nothing to announce
    assert store.store_checkpoint(job_id, "a", model_bytes(60), 60, 0.1) == 1
    store.suspend(job_id, "a")
    store.claim(job_id, "b", 5, "cpu", "w")
    store.finish(job_id, "b", "succeeded")
    messages = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        messages.append(json.loads(message["data"]))
    pubsub.close()
    assert [(m["status"], m["version"], m["iteration"]) for m in messages] == [
        ("running", 1, 60), ("queued", 1, 60), ("running", 1, 60), ("succeeded", 1, 60)]
    assert {m["model_id"] for m in messages} == {job_id}


def test_worker_presence_is_listed_without_a_keyspace_scan(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    presence = Presence(client)
    presence.beat("w-long", {"id": "w-long"}, ttl_seconds=30)
    presence.beat("w-short", {"id": "w-short"}, ttl_seconds=0.05)
    assert [w["id"] for w in presence.live()] == ["w-long", "w-short"]
    time.sleep(0.1)  # w-short was killed: its key expires
    assert [w["id"] for w in presence.live()] == ["w-long"]
    assert client.smembers(WORKERS_KEY) == {b"w-long"}  # the expired one left the index too
    presence.forget("w-long")  # a worker that shuts down
    assert presence.live() == [] and not client.exists(WORKERS_KEY)


def test_progress_and_queue_failed_are_fenced(store: JobStore) -> None:
    job_id = new_job(store)
    assert not store.progress(job_id, "a", Progress(5, 100, 0.5), LossHistory([(5, 0.5)]))  # nobody claimed it
    assert store.claim(job_id, "a", 5, "cpu", "w1") == "ok"
    assert not store.queue_failed(job_id, "could not send")  # a worker has it: not failed behind its back
    assert store.progress(job_id, "a", Progress(7, 100, 0.4, iterations_per_second=2.0, trained_seconds=3.5),
                          LossHistory([(5, 0.5), (7, 0.4)], every=1), resumed_from=[])
    assert not store.progress(job_id, "b", Progress(9, 100, None), LossHistory())  # not the owner
    job = store.get(job_id)
    assert (job.iteration, job.loss, job.loss_history, job.eta_seconds) == (7, 0.4, [(5, 0.5), (7, 0.4)], 46.5)
    assert (job.trained_seconds, job.iterations_per_second, job.finished_early) == (3.5, 2.0, None)
    assert store.progress(job_id, "a", Progress(8, 100, None, finished_early="the loss stopped improving"),
                          LossHistory([(5, 0.5), (7, 0.4)]))
    job = store.get(job_id)  # no loss, no rate: those stay as they were
    assert (job.iteration, job.loss, job.eta_seconds) == (8, 0.4, 46.5)
    assert job.finished_early == "the loss stopped improving"
    unsent = new_job(store)
    assert store.queue_failed(unsent, "could not send")
    assert (store.get(unsent).status, store.get(unsent).error) == ("failed", "could not send")


def test_an_expired_lease_comes_back_to_its_owner_unless_the_job_was_taken_over(store: JobStore) -> None:
    """Redis down for longer than the lease: the lease is gone, but nobody else has the job."""
    kept, taken = new_job(store), new_job(store)
    for job_id in (kept, taken):
        assert store.claim(job_id, "a", 0.2, "cpu", "w1") == "ok"
    time.sleep(0.3)
    assert store.store_checkpoint(kept, "a", model_bytes(10), 10, 0.2) == 1  # taken back, not "lost"
    assert store.refresh_lease(kept, "a", 5)
    assert store.recover_orphans() == [taken]  # the other one was really orphaned
    assert not store.refresh_lease(taken, "a", 5)  # re-queued: the old owner cannot take it back
    assert store.claim(taken, "b", 5, "cpu", "w2") == "ok"
    assert store.store_checkpoint(taken, "a", model_bytes(10), 10, 0.2) == -1
    assert (store.get(kept).workers_lost, store.get(taken).workers_lost) == (0, 1)


def test_recovery_waits_a_lease_after_a_redis_restart(tmp_path) -> None:
    """Every lease has expired when Redis comes back; live owners get the time to take theirs back."""
    from backend.storage.embedded_redis import start_redis

    server = start_redis(data_dir=tmp_path)  # just started: its uptime is under a second
    try:
        client = connect(server.url)
        store = JobStore(client)
        job_id = new_job(store)
        assert store.claim(job_id, "a", 2.5, "cpu", "w1") == "ok"
        client.pexpire(job_key(job_id, "lease"), 1)  # as if it expired while Redis was down
        time.sleep(0.05)
        assert store.recover_orphans() == []  # too soon after the (re)start to call the owner lost
        assert store.refresh_lease(job_id, "a", 2.5)  # the owner is back and takes its lease again
        assert store.get(job_id).workers_lost == 0
    finally:
        server.stop()


def test_a_record_in_the_old_format_is_read_with_its_spec_migrated(store: JobStore, redis_url: str) -> None:
    job_id = new_job_id()
    old = {"id": job_id, "name": "old", "status": "succeeded", "iteration": 300, "total": 300, "created_at": 1.0,
           "options": json.dumps({"name": "old", "experiment": "growing", "iterations": 300, "target_size": 24,
                                  "padding": 6, "seed": 5, "checkpoint_every": 100}),
           "grid_height": 36, "grid_width": 36, "model_version": 0, "loss_history": "[]", "loss_every": 1,
           "resumed_from": "[]"}  # what the API stored before job specs (no spec_version)
    redis.Redis.from_url(redis_url).hset(job_key(job_id), mapping=old)
    job = store.get(job_id)
    assert (job.spec.train.experiment, job.spec.train.seed, job.spec.target.size) == ("growing", 5, 24)
    assert job.spec.train.fire_rate == 0.5 and job.spec.name == "old"  # filled with the defaults


def test_a_record_stored_by_the_code_before_this_one_reads_back_as_it_was(store: JobStore, redis_url: str) -> None:
    """Spec version 4 (before early_stop_patience), written as that code wrote it: the same spec, the new
    option at its default (off); the record holds the JobSpec itself, no flat twin beside it."""
    job_id = new_job_id()
    options = {**{k: v for k, v in JobSpec().options().items() if k != "early_stop_patience"},
               "name": "v4", "minutes": 5.0, "iterations": 20000, "checkpoint_every": 100}
    record = {"id": job_id, "name": "v4", "status": "queued", "iteration": 0, "total": 20000, "created_at": 1.0,
              "options": json.dumps(options), "spec_version": 4, "grid_height": 72, "grid_width": 72,
              "model_version": 0, "loss_history": "[]", "loss_every": 1, "resumed_from": "[]", "warning": "",
              "plan": ""}
    redis.Redis.from_url(redis_url).hset(job_key(job_id), mapping=record)
    job = store.get(job_id)
    assert isinstance(job.spec, JobSpec) and not hasattr(job, "options")
    assert job.spec == JobSpec.from_options({**options, "early_stop_patience": None})
    assert job.spec.train.early_stop_patience is None and job.spec.train.minutes == 5.0
    assert job.model_dump(by_alias=True)["options"] == job.spec.options()  # what the API answers
    again = store.create(new_job_id(), job.spec, torch.rand(4, 12, 10))  # stored as it is, read back as it is
    assert again.spec == job.spec
