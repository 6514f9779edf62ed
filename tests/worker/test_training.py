"""Upload -> queued -> running -> succeeded through a real worker; cancel; one job at a time; no shared files."""

from __future__ import annotations

import io
import json
import time

import redis
from fastapi.testclient import TestClient
from PIL import Image

from backend.nca.modelfile import from_bytes
from backend.storage.models import CHECKPOINT_CHANNEL


def test_job_runs_to_success_and_its_model_is_served(client: TestClient, worker, submit, job_waiter, redis_url,
                                                     api_models_dir, worker_models_dir) -> None:
    pubsub = redis.Redis.from_url(redis_url).pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHECKPOINT_CHANNEL)
    job = submit(iterations=240)
    assert job["status"] == "queued" and job["iteration"] == 0
    seen_running = job_waiter(job["id"], lambda j: j["status"] == "running" and j["iteration"] > 0,
                              what="progress while running")
    assert seen_running["iteration"] < 240 and seen_running["loss"] is not None
    assert seen_running["device"] == "cpu" and seen_running["started_at"] is not None
    done = job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="success")
    assert (done["iteration"], done["total"], done["error"]) == (240, 240, None)
    assert done["finished_at"] >= done["started_at"] >= done["created_at"]
    assert done["iterations_per_second"] > 0 and done["eta_seconds"] is None
    history = done["loss_history"]
    assert 0 < len(history) <= 200 and history[-1][0] <= 240 and history[0][1] > history[-1][1]
    assert done["model_version"] >= 240 // 20  # a checkpoint every 20 iterations and one at the end
    assert done["checkpoint_iteration"] == 240

    response = client.get(done["links"]["model_file"])
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="{job["id"]}.safetensors"'
    model_file = from_bytes(response.content)  # loadable by the core
    assert model_file.info.iterations == 240 and model_file.info.grid_height == 12
    assert model_file.optimizer_state  # so it could be resumed

    preview = client.get(done["links"]["preview"], params={"scale": 2})
    assert preview.status_code == 200
    assert Image.open(io.BytesIO(preview.content)).size == (24, 24)

    # No shared filesystem: the worker exported into its own folder; the API served from Redis alone.
    exported = worker_models_dir / "jobs" / f"{job['id']}.safetensors"
    assert exported.read_bytes() == response.content
    assert not (api_models_dir / "jobs").exists()
    models = {m["id"]: m for m in client.get("/api/models").json()["items"]}
    assert models[job["id"]]["status"] == "succeeded" and models[job["id"]]["iterations"] == 240
    assert models[job["id"]]["file_url"] == f"/api/models/{job['id']}/file"

    # The stream hears of every checkpoint, then of the final status.
    messages, deadline = [], time.monotonic() + 2
    while time.monotonic() < deadline:  # None also stands for the skipped subscribe confirmation
        if (message := pubsub.get_message(timeout=0.2)) is not None:
            messages.append(json.loads(message["data"]))
    pubsub.close()
    versions = [m["version"] for m in messages if m["status"] == "running"]
    assert versions == list(range(1, done["model_version"] + 1))
    assert [m["iteration"] for m in messages][:2] == [20, 40]
    assert messages[-1] == {"model_id": job["id"], "version": done["model_version"], "iteration": 240,
                            "status": "succeeded"}


def test_health_reports_the_worker(client: TestClient, worker) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok"
    assert [w["device"] for w in health["workers"]] == ["cpu"]


def test_two_jobs_run_one_after_the_other(client: TestClient, worker, submit, job_waiter) -> None:
    first, second = submit(iterations=120), submit(iterations=120)
    assert client.get(f"/api/jobs/{second['id']}").json()["status"] == "queued"
    first = job_waiter(first["id"], lambda j: j["status"] == "succeeded")
    second = job_waiter(second["id"], lambda j: j["status"] == "succeeded")
    assert first["finished_at"] <= second["started_at"], "the worker trained two jobs at once"
    listing = client.get("/api/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in listing["items"]] == [second["id"], first["id"]]


def test_cancel_running_and_queued_jobs(client: TestClient, worker, submit, job_waiter) -> None:
    running = submit(iterations=5000)
    queued = submit(iterations=50)
    job_waiter(running["id"], lambda j: j["status"] == "running" and (j["checkpoint_iteration"] or 0) >= 40,
               what="a checkpoint")
    response = client.post(f"/api/jobs/{queued['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    response = client.post(f"/api/jobs/{running['id']}/cancel")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    cancelled = job_waiter(running["id"], lambda j: j["status"] == "cancelled", timeout=30)
    assert 40 <= cancelled["iteration"] < 5000
    assert cancelled["checkpoint_iteration"] == cancelled["iteration"]  # the last iterations were checkpointed
    model = from_bytes(client.get(cancelled["links"]["model_file"]).content)  # still playable
    assert model.info.iterations == cancelled["iteration"]
    assert client.get(cancelled["links"]["preview"]).status_code == 200

    assert client.post(f"/api/jobs/{running['id']}/cancel").status_code == 409  # already cancelled
    # The worker got the queued job's message after the cancel and skipped it.
    later = submit(iterations=20)
    job_waiter(later["id"], lambda j: j["status"] == "succeeded")
    skipped = client.get(f"/api/jobs/{queued['id']}").json()
    assert (skipped["status"], skipped["started_at"], skipped["iteration"]) == ("cancelled", None, 0)
