"""A job's training history against a real Redis: every checkpoint up to the cap, thinned evenly past
it, one consistent line after a resume, and the catalog's `<job id>@<iteration>` references."""

from __future__ import annotations

import pytest
import redis
import torch

from backend.nca import NCA, JobSpec, ModelFile, ModelInfo
from backend.nca.modelfile import from_bytes, to_bytes
from backend.storage.jobs import JobStore, new_job_id
from backend.storage.models import (
    BadReference,
    CheckpointNotFound,
    ModelCatalog,
    ModelNotFound,
    parse_reference,
    reference,
)

CAP = 6


@pytest.fixture
def store(client: redis.Redis, artifacts) -> JobStore:
    """On both artifact backends (a directory, a real S3-protocol server)."""
    return JobStore(client, history_cap=CAP, artifacts=artifacts)


def claimed_job(store: JobStore, token: str = "a") -> str:
    job_id = new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "square", "experiment": "growing", "iterations": 10_000}),
                 torch.rand(4, 12, 10))
    assert store.claim(job_id, token, 60, "cpu", "w") == "ok"
    return job_id


def weights(iteration: int) -> bytes:
    """A weights-only model file whose bias says which checkpoint it is."""
    net = NCA()
    with torch.no_grad():
        net.hidden_to_update.bias.fill_(iteration / 10_000)
    return to_bytes(ModelFile(net, ModelInfo(grid_height=12, grid_width=10, iterations=iteration)))


def checkpoint(store: JobStore, job_id: str, iteration: int, token: str = "a") -> int:
    data = weights(iteration)
    return store.store_checkpoint(job_id, token, data, iteration, 1.0 / iteration, data)


def iterations(store: JobStore, job_id: str) -> list[int]:
    return [c.iteration for c in store.history(job_id)]


def stored_weights(store: JobStore, job_id: str) -> set[int]:
    """The iterations whose weights are in the artifact store (none are left behind for dropped points)."""
    return {int(key.rsplit("/", 1)[1].split("-")[0]) for key, _ in store.artifacts.objects(f"{job_id}/history/")}


def test_every_checkpoint_up_to_the_cap_is_listed_with_its_weights(store: JobStore, client: redis.Redis) -> None:
    job_id = claimed_job(store)
    assert store.history(job_id) == []
    for n, iteration in enumerate((20, 40, 60), start=1):
        assert checkpoint(store, job_id, iteration) == n
    history = store.history(job_id)
    assert [(c.iteration, c.version) for c in history] == [(20, 1), (40, 2), (60, 3)]
    assert history[1].loss == pytest.approx(1 / 40) and history[0].at <= history[2].at
    assert store.history_entry(job_id, 40) == history[1]
    assert store.history_entry(job_id, 50) is None and store.history_weights(job_id, 50) is None
    assert from_bytes(store.history_weights(job_id, 40)).info.iterations == 40
    assert stored_weights(store, job_id) == {20, 40, 60}
    job = store.get(job_id)  # the record and the history are one step: they agree
    assert (job.checkpoint_iteration, job.model_version) == (history[-1].iteration, history[-1].version)


def test_past_the_cap_the_history_is_thinned_evenly_keeping_the_first_and_the_latest(
        store: JobStore, client: redis.Redis) -> None:
    job_id = claimed_job(store)
    for iteration in range(10, 1001, 10):
        checkpoint(store, job_id, iteration)
        kept = iterations(store, job_id)
        assert len(kept) == min(iteration // 10, CAP)
        assert kept[0] == 10 and kept[-1] == iteration  # the first and the latest are always there
        assert stored_weights(store, job_id) == set(kept)  # no weights left behind for dropped points
    gaps = [b - a for a, b in zip(kept, kept[1:], strict=False)][:-1]  # the newest gap is whatever it is
    assert max(gaps) <= 2 * min(gaps), kept  # spread over the run, not bunched at either end
    assert kept[1] > 100 and kept[-2] > 500, kept


def test_a_lower_cap_thins_at_the_next_checkpoint(store: JobStore, client: redis.Redis) -> None:
    job_id = claimed_job(store)
    for iteration in range(100, 601, 100):
        checkpoint(store, job_id, iteration)
    assert iterations(store, job_id) == [100, 200, 300, 400, 500, 600]
    smaller = JobStore(client, history_cap=3, artifacts=store.artifacts)
    checkpoint(smaller, job_id, 700)
    kept = iterations(smaller, job_id)
    assert len(kept) == 3 and kept[0] == 100 and kept[-1] == 700
    assert stored_weights(store, job_id) == set(kept)
    with pytest.raises(ValueError, match="at least 2"):
        JobStore(client, history_cap=1)


def test_the_byte_cap_keeps_the_history_within_its_bytes(store: JobStore, client: redis.Redis) -> None:
    """NCA_CHECKPOINT_HISTORY_BYTES: the history keeps at most that many bytes of weights per job, whichever
    of it and the count cap is smaller, and never fewer than the first and the latest."""
    size = len(weights(10))
    by_bytes = JobStore(client, history_cap=CAP, artifacts=store.artifacts, history_bytes=4 * size + size // 2)
    job_id = claimed_job(by_bytes)
    for iteration in range(10, 201, 10):
        checkpoint(by_bytes, job_id, iteration)
        kept = iterations(by_bytes, job_id)
        assert len(kept) == min(iteration // 10, 4) and kept[0] == 10 and kept[-1] == iteration
        stored = sum(len(by_bytes.history_weights(job_id, i)) for i in kept)
        assert stored <= by_bytes.history_bytes, (stored, kept)
        assert stored_weights(by_bytes, job_id) == set(kept)  # the dropped points' objects are gone too
    tiny = JobStore(client, history_cap=CAP, artifacts=store.artifacts, history_bytes=1)
    checkpoint(tiny, job_id, 210)
    assert iterations(tiny, job_id) == [10, 210]  # below two files' worth: still the first and the latest
    assert (tiny.history_cap_for(size), by_bytes.history_cap_for(size), store.history_cap_for(size)) == (2, 4, CAP)


def test_a_resumed_run_replaces_what_was_trained_after_its_checkpoint(store: JobStore,
                                                                     client: redis.Redis) -> None:
    """The history is always one line of training ending at the latest checkpoint: a checkpoint at
    iteration i (a run resumed from an earlier point trains i again) drops the entries at i and after."""
    job_id = claimed_job(store)
    for iteration in (20, 40, 60):
        checkpoint(store, job_id, iteration)
    store.recover_orphans()  # nothing to recover: the lease is alive
    assert checkpoint(store, job_id, 40) == 4  # e.g. a run that restarted from 20 reached 40 again
    history = store.history(job_id)
    assert [(c.iteration, c.version) for c in history] == [(20, 1), (40, 4)]
    assert stored_weights(store, job_id) == {20, 40}
    assert checkpoint(store, job_id, 40) == 5  # the same iteration again: one entry, the newest
    assert [(c.iteration, c.version) for c in store.history(job_id)] == [(20, 1), (40, 5)]


def test_only_the_owner_adds_to_the_history(store: JobStore) -> None:
    job_id = claimed_job(store)
    checkpoint(store, job_id, 20)
    assert checkpoint(store, job_id, 40, token="not the owner") == -1
    assert checkpoint(store, job_id, 10, token="not the owner") == -1  # nor drops anything
    assert iterations(store, job_id) == [20]


@pytest.mark.parametrize(("ref", "expected"), [
    ("example-heart", ("example-heart", None)),
    ("0" * 32 + "@500", ("0" * 32, 500)),
    ("0" * 32 + "@0", ("0" * 32, 0)),
])
def test_references_name_a_model_or_one_checkpoint_of_its_history(ref: str, expected: tuple) -> None:
    assert parse_reference(ref) == expected
    assert reference(*expected) == ref


@pytest.mark.parametrize("ref", ["@5", "abc@", "abc@-1", "abc@+1", "abc@1.5", "abc@1e3", "abc@5@6", "abc@ 5",
                                 "abc@12345678901"])
def test_malformed_references_say_what_goes_where(ref: str) -> None:
    with pytest.raises(BadReference, match="malformed model reference"):
        parse_reference(ref)


def test_the_catalog_serves_a_checkpoint_of_the_history_by_reference(store: JobStore, tmp_path) -> None:
    job_id = claimed_job(store)
    for iteration in (20, 40, 60):
        checkpoint(store, job_id, iteration)
    catalog = ModelCatalog(store, tmp_path)
    ref = reference(job_id, 40)
    entry = catalog.get_entry(ref)
    assert (entry.id, entry.iterations, entry.version, entry.status, entry.source) == (ref, 40, 2, "running", "job")
    assert entry.loss == pytest.approx(1 / 40) and entry.grid_width == 10
    assert catalog.get_model_version(ref) == 2  # fixed: later checkpoints do not change it
    snapshot = from_bytes(catalog.get_model_bytes(ref))
    assert snapshot.info.iterations == 40 and snapshot.optimizer_state is None and snapshot.target is None
    assert catalog.get_entry(job_id).iterations == 60  # the plain id is still the latest

    with pytest.raises(CheckpointNotFound) as missing:
        catalog.get_model_bytes(reference(job_id, 50))
    assert str(missing.value) == f"no checkpoint at iteration 50: GET /api/jobs/{job_id}/checkpoints lists them"
    with pytest.raises(CheckpointNotFound, match="has no training history"):
        catalog.get_entry("example-heart@10")
    for unknown in (reference(new_job_id(), 40), "nonsense@40"):
        with pytest.raises(ModelNotFound) as info:
            catalog.get_model_version(unknown)
        assert not isinstance(info.value, CheckpointNotFound)  # the model itself is unknown
    with pytest.raises(BadReference):
        catalog.get_model_bytes(f"{job_id}@forty")
