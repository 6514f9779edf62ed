"""A worker killed with SIGKILL mid-training: another worker resumes the job from its last checkpoint."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from backend.nca.modelfile import from_bytes
from backend.storage.queue import UNACKED_INDEX_KEY, UNACKED_KEY
from tests.conftest import wait_for


def test_kill_9_then_resume_from_the_checkpoint(client: TestClient, start_worker, redis_url, worker_models_dir,
                                                submit, job_waiter) -> None:
    first = start_worker(redis_url, worker_models_dir)
    job = submit(iterations=500, checkpoint_every=25)
    job_waiter(job["id"], lambda j: (j["checkpoint_iteration"] or 0) >= 50, what="two checkpoints")
    first.kill9()
    at_kill = client.get(f"/api/jobs/{job['id']}").json()
    checkpoint = at_kill["checkpoint_iteration"]
    assert at_kill["status"] == "running" and 50 <= checkpoint < 500

    second = start_worker(redis_url, worker_models_dir)
    seen = []

    def resumed_or_done(j: dict) -> bool:
        if j["attempts"] == 2:
            seen.append(j["iteration"])
        return j["status"] == "succeeded"

    done = job_waiter(job["id"], resumed_or_done, timeout=120, what="the resumed job to finish")
    assert done["resumed_from"] == [checkpoint]  # started again from the checkpoint, not from 0
    assert min(seen) >= checkpoint, "the iteration count went back below the checkpoint"
    assert done["iteration"] == 500 and done["attempts"] == 2
    assert done["worker"].endswith(f"-{second.pid}")
    assert any(it <= checkpoint for it, _ in done["loss_history"])  # the history before the kill is kept
    model = from_bytes(client.get(done["links"]["model_file"]).content)
    assert model.info.iterations == 500
    history = client.get(done["links"]["checkpoints"]).json()["items"]  # one line through the resume
    assert [c["iteration"] for c in history] == list(range(25, 501, 25))
    assert [c["version"] for c in history] == list(range(1, len(history) + 1))
    assert [w["id"] for w in client.app.state.storage.workers.live()] == [done["worker"]]  # the killed one expired
    # The killed worker's Celery message was never acknowledged: recovery dropped it from the broker's
    # unacked set (it used to stay there until the 2-day visibility timeout, one more per crash).
    broker = redis.Redis.from_url(redis_url)
    wait_for(lambda: broker.hlen(UNACKED_KEY) == 0 and broker.zcard(UNACKED_INDEX_KEY) == 0, timeout=30,
             what="no unacknowledged message left")


def test_a_duplicate_message_never_trains_the_job_twice(client: TestClient, start_worker, redis_url,
                                                        worker_models_dir, submit, job_waiter) -> None:
    workers = [start_worker(redis_url, worker_models_dir) for _ in range(2)]
    job = submit(iterations=300)
    running = job_waiter(job["id"], lambda j: j["status"] == "running" and j["iteration"] > 0)
    client.app.state.storage.queue.send(job["id"])  # as if the broker delivered it again
    done = job_waiter(job["id"], lambda j: j["status"] == "succeeded", timeout=120)
    assert done["attempts"] == 1 and done["resumed_from"] == [] and done["worker"] == running["worker"]

    def skipped() -> bool:  # by whichever worker of this module got the duplicate
        logs = "".join(path.read_text() for path in workers[0].log_path.parent.glob("*.log"))
        return f"job {job['id']}: skipped (busy)" in logs or f"job {job['id']}: skipped (succeeded)" in logs

    wait_for(skipped, timeout=30, what="the duplicate message to be dropped")
    assert client.get(f"/api/jobs/{job['id']}").json()["attempts"] == 1

