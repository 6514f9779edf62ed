"""A worker asked to stop (SIGTERM) checkpoints its job and gives it back; the next worker resumes it."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_a_stopping_worker_checkpoints_and_gives_the_job_back(client: TestClient, start_worker, redis_url,
                                                              worker_models_dir, submit, job_waiter) -> None:
    first = start_worker(redis_url, worker_models_dir)
    job = submit(iterations=2000, checkpoint_every=1000)
    job_waiter(job["id"], lambda j: j["status"] == "running" and j["worker"].endswith(f"-{first.pid}")
               and j["iteration"] >= 30)
    first.stop()  # SIGTERM, as Ctrl-C of `python -m backend.run` does
    assert first.process.returncode == 0
    stopped = client.get(f"/api/jobs/{job['id']}").json()
    assert stopped["status"] == "queued"
    assert stopped["checkpoint_iteration"] == stopped["iteration"] >= 30  # checkpointed where it stopped
    second = start_worker(redis_url, worker_models_dir)
    job_waiter(job["id"], lambda j: j["status"] == "running" and j["attempts"] == 2, timeout=60)
    assert client.get(f"/api/jobs/{job['id']}").json()["worker"].endswith(f"-{second.pid}")
    client.post(f"/api/jobs/{job['id']}/cancel")
    done = job_waiter(job["id"], lambda j: j["status"] == "cancelled", timeout=60)
    assert done["resumed_from"] == [stopped["iteration"]]
