"""Cached renders in the artifact store (issue 21): shared by API replicas, kept over a restart, deleted with
their job, swept when their model file is superseded, on both backends (a directory and `rclone serve s3`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.api.renders import render_key
from backend.config import Settings
from backend.exports.video import DEFAULT_SCALE, decode_frames
from backend.nca import modelfile
from backend.nca.jobspec import JobSpec
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo, to_bytes
from backend.storage.artifacts import ArtifactStore, sha256
from backend.storage.jobs import new_job_id
from tests.conftest import S3_KEYS
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADMIN = "operator-token-for-render-tests"
OPERATOR = {"X-Owner-Token": ADMIN}
_buckets = count(1)


@pytest.fixture(params=["dir", "s3"])
def replicas(request: pytest.FixtureRequest, redis_url: str, tmp_path: Path) -> Iterator[Callable[[], TestClient]]:
    """`replica()` -> a new API app (a replica, or the same one restarted) on the same Redis and artifact store."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(REPO_ROOT / "models" / "heart.safetensors", models / "heart.safetensors")
    if request.param == "dir":
        where = {"artifacts": str(tmp_path / "artifacts")}
    else:
        where = {"artifacts": f"s3://nca-renders-{next(_buckets)}/store", "s3_create_bucket": True,
                 "s3_endpoint_url": request.getfixturevalue("s3_server"), "s3_access_key_id": S3_KEYS[0],
                 "s3_secret_access_key": S3_KEYS[1]}
    opened: list[TestClient] = []

    def replica() -> TestClient:
        app: FastAPI = create_app(Settings(redis_url=redis_url, models_dir=models, admin_token=ADMIN, **where))
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield replica
    for client in opened:
        client.__exit__(None, None, None)


def store_of(client: TestClient) -> ArtifactStore:
    return client.app.state.storage.artifacts


def job_with_model(client: TestClient, model: bytes, iteration: int = 100, weights: bytes | None = None) -> str:
    jobs, job_id = client.app.state.storage.jobs, new_job_id()
    jobs.create(job_id, JobSpec.from_options({"experiment": "growing", "iterations": 5000}), torch.zeros(4, 40, 40))
    assert jobs.claim(job_id, "t", 60, "cpu", "test") == "ok"
    assert jobs.store_checkpoint(job_id, "t", model, iteration, 0.01, weights=weights) >= 1
    return job_id


def model_named(name: str, iterations: int = 100) -> bytes:
    return to_bytes(ModelFile(NCA(), ModelInfo(grid_height=40, grid_width=40, iterations=iterations, name=name)))


def renders_of(store: ArtifactStore, prefix: str) -> list[str]:
    return sorted(key for key, _ in store.objects(prefix) if "/renders/" in key)


def rewrite(store: ArtifactStore, key: str, body: bytes) -> None:
    """Replace a stored render by other content with a valid checksum header (what a replica would read)."""
    store.put(key, json.dumps({"sha256": sha256(body)}).encode() + b"\n" + body)


def test_a_render_is_shared_by_replicas_and_kept_over_a_restart(replicas: Callable[[], TestClient]) -> None:
    first = replicas()
    heart = (REPO_ROOT / "models" / "heart.safetensors").read_bytes()
    job_id = job_with_model(first, heart)
    video = first.get(f"/api/models/{job_id}/video.gif?steps=3", headers=OPERATOR)
    assert video.status_code == 200, video.text
    assert decode_frames(video.content, "gif")
    key = render_key(job_id, "video", sha256(heart), {"fmt": "gif", "steps": 3, "scale": DEFAULT_SCALE})
    store = store_of(first)
    assert renders_of(store, job_id) == [key], "the video is kept under its job's prefix, by content"

    # Another replica serves what the store holds (here replaced, so that a recomputation would show).
    rewrite(store, key, b"GIF89a-from-the-store")
    second = replicas()
    assert second.get(f"/api/models/{job_id}/video.gif?steps=3", headers=OPERATOR).content == b"GIF89a-from-the-store"
    # Other parameters are another object; the player and the card are stored too.
    assert second.get(f"/api/models/{job_id}/video.gif?steps=4", headers=OPERATOR).status_code == 200
    player = second.get(f"/api/models/{job_id}/player.html", headers=OPERATOR)
    assert player.status_code == 200 and "<html" in player.text.lower()
    card = second.get(f"/api/models/{job_id}/card", headers=OPERATOR)
    assert card.status_code == 200 and card.headers["x-card-source"] == "computed"
    kinds = sorted(key.rsplit("/", 1)[1].split("-")[0] for key in renders_of(store, job_id))
    assert kinds == ["card", "player", "video", "video"]

    # A restart (a fresh process: empty LRU) still has the card, and serves it without computing it again.
    cached = card.json()
    card_key = next(k for k in renders_of(store, job_id) if "/card-" in k)
    rewrite(store, card_key, json.dumps({**cached, "verdict": "from-the-store"}).encode())
    restarted = replicas()
    assert restarted.get(f"/api/models/{job_id}/card", headers=OPERATOR).json()["verdict"] == "from-the-store"


def test_a_damaged_stored_render_is_computed_again(replicas: Callable[[], TestClient]) -> None:
    client = replicas()
    heart = (REPO_ROOT / "models" / "heart.safetensors").read_bytes()
    job_id = job_with_model(client, heart)
    good = client.get(f"/api/models/{job_id}/video.webp?steps=3", headers=OPERATOR).content
    store = store_of(client)
    [key] = renders_of(store, job_id)
    store.put(key, store.get(key)[:-10] + b"0123456789")  # bytes changed under an unchanged checksum header
    again = replicas().get(f"/api/models/{job_id}/video.webp?steps=3", headers=OPERATOR)
    assert again.status_code == 200 and len(decode_frames(again.content, "webp")) == len(decode_frames(good, "webp"))
    header, _, body = store.get(key).partition(b"\n")
    assert json.loads(header)["sha256"] == sha256(body), "the recomputed render replaced the damaged one"


def test_deleting_a_job_deletes_its_renders_and_examples_renders_are_stored(
        replicas: Callable[[], TestClient]) -> None:
    client = replicas()
    heart = (REPO_ROOT / "models" / "heart.safetensors").read_bytes()
    job_id, other = job_with_model(client, heart), job_with_model(client, model_named("another"))
    for model in (job_id, other, "example-heart"):
        assert client.get(f"/api/models/{model}/video.mp4?steps=3", headers=OPERATOR).status_code == 200
    store = store_of(client)
    assert len(renders_of(store, job_id)) == len(renders_of(store, other)) == 1
    assert renders_of(store, "_examples/") == [render_key("example-heart", "video", sha256(heart),
                                                          {"fmt": "mp4", "steps": 3, "scale": DEFAULT_SCALE})]
    assert client.delete(f"/api/jobs/{job_id}", headers=OPERATOR).status_code == 204
    assert list(store.objects(f"{job_id}/")) == []
    assert len(renders_of(store, other)) == 1, "another job's renders are untouched"
    assert len(renders_of(store, "_examples/")) == 1


def test_the_orphan_sweep_drops_renders_of_superseded_model_files_only(replicas: Callable[[], TestClient]) -> None:
    client = replicas()
    jobs = client.app.state.storage.jobs
    heart = (REPO_ROOT / "models" / "heart.safetensors").read_bytes()
    # As the worker writes them: the model file (with optimizer state) and, for the history, its weights only.
    job_id = job_with_model(client, heart, iteration=100, weights=model_named("weights at 100"))
    assert client.get(f"/api/models/{job_id}/player.html", headers=OPERATOR).status_code == 200
    assert client.get("/api/models/example-heart/player.html").status_code == 200
    newer = model_named("model at 200", 200)
    assert jobs.store_checkpoint(job_id, "t", newer, 200, 0.005, weights=model_named("weights at 200", 200)) >= 2
    assert client.get(f"/api/models/{job_id}/player.html", headers=OPERATOR).status_code == 200
    # History entry 100 (weights-only file) is a model file the job still has: its render stays.
    assert client.get(f"/api/models/{job_id}@100/player.html", headers=OPERATOR).status_code == 200
    store = store_of(client)
    before = renders_of(store, job_id)
    assert len(before) == 3
    jobs.sweep_orphans(grace_seconds=-5)
    after = renders_of(store, job_id)
    latest = sha256(jobs.checkpoint(job_id))
    weights_100 = sha256(jobs.history_weights(job_id, 100))
    assert sorted(key.split("/")[2] for key in after) == sorted([latest, weights_100])
    assert render_key(job_id, "player", sha256(heart), {}) in set(before) - set(after), \
        "the render of the replaced model file (the first checkpoint's) was swept"
    assert len(renders_of(store, "_examples/")) == 1, "the examples' renders are no job's orphans"
    assert modelfile.from_bytes(jobs.checkpoint(job_id)).info.iterations == 200  # nothing else was touched
