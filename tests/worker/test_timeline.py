"""The training timeline through a real worker: `GET /api/jobs/{id}/checkpoints` lists the history of a
finished, a running and a cancelled job; each checkpoint's model file and preview are served."""

from __future__ import annotations

import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from backend.nca.modelfile import from_bytes
from backend.storage.jobs import new_job_id


def picture(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_a_finished_job_lists_its_checkpoints_each_with_model_file_and_preview(
        client: TestClient, worker, submit, job_waiter) -> None:
    job = submit(iterations=240, checkpoint_every=20)
    done = job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="success")
    assert done["links"]["checkpoints"] == f"/api/jobs/{job['id']}/checkpoints"
    listing = client.get(done["links"]["checkpoints"]).json()
    assert (listing["job"], listing["status"], listing["cap"]) == (job["id"], "succeeded", 50)
    items = listing["items"]
    assert [c["iteration"] for c in items] == list(range(20, 241, 20))  # every checkpoint: under the cap
    assert [c["version"] for c in items] == sorted(c["version"] for c in items)
    last = items[-1]
    assert (last["iteration"], last["version"], last["loss"]) == \
        (done["checkpoint_iteration"], done["model_version"], done["checkpoint_loss"])
    assert all(c["loss"] > 0 and c["at"] >= done["started_at"] for c in items)

    first = items[0]
    assert first["model"] == f"{job['id']}@20"
    response = client.get(first["links"]["model_file"])
    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="{job["id"]}-20.safetensors"'
    assert response.headers["x-model-version"] == str(first["version"])
    early = from_bytes(response.content)
    assert early.info.iterations == 20 and early.info.grid_height == 12
    assert early.optimizer_state is None and early.target is None  # weights only
    assert len(response.content) < 40_000
    entry = client.get(f"/api/models/{first['model']}").json()
    assert (entry["id"], entry["iterations"], entry["status"]) == (first["model"], 20, "succeeded")

    early_png = client.get(first["links"]["preview"], params={"scale": 2})
    assert early_png.headers["x-model-version"] == str(first["version"])
    assert "max-age" in early_png.headers["cache-control"]
    assert picture(early_png).shape == (24, 24, 3)
    late = picture(client.get(last["links"]["preview"], params={"scale": 2}))
    assert not np.array_equal(picture(early_png), late)  # the replay: the model changed as it learned
    np.testing.assert_array_equal(late, picture(client.get(done["links"]["preview"], params={"scale": 2})))


def test_a_running_then_cancelled_job_lists_its_checkpoints_so_far(client: TestClient, worker, submit,
                                                                   job_waiter) -> None:
    job = submit(iterations=5000, checkpoint_every=10)
    running = job_waiter(job["id"], lambda j: (j["checkpoint_iteration"] or 0) >= 30, what="three checkpoints")
    listing = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    assert listing["status"] == "running" and len(listing["items"]) >= 3
    assert [c["iteration"] for c in listing["items"][:3]] == [10, 20, 30]
    assert listing["items"][-1]["iteration"] >= running["checkpoint_iteration"]
    assert client.post(f"/api/jobs/{job['id']}/cancel").status_code == 202
    cancelled = job_waiter(job["id"], lambda j: j["status"] == "cancelled", what="the cancel")
    listing = client.get(f"/api/jobs/{job['id']}/checkpoints").json()
    assert listing["status"] == "cancelled"
    assert listing["items"][-1]["iteration"] == cancelled["checkpoint_iteration"]  # its last checkpoint too
    assert picture(client.get(listing["items"][-1]["links"]["preview"])).shape == (48, 48, 3)


def test_bad_checkpoint_requests_are_clear_4xx(client: TestClient, worker, submit, job_waiter) -> None:
    job = submit(iterations=40, checkpoint_every=20)
    job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="success")
    base = f"/api/jobs/{job['id']}/checkpoints"

    def detail(path: str, status: int) -> str:
        response = client.get(path)
        assert response.status_code == status, response.text
        return response.json()["detail"]

    assert detail(f"{base}/30/preview.png", 404) == \
        f"no checkpoint at iteration 30: GET {base} lists them"
    assert detail(f"/api/models/{job['id']}@30/file", 404) == \
        f"no checkpoint at iteration 30: GET {base} lists them"
    assert "valid integer" in detail(f"{base}/latest/preview.png", 422)
    assert "greater than or equal to 0" in detail(f"{base}/-20/preview.png", 422)
    assert "after the @ goes a checkpoint's iteration" in detail(f"/api/models/{job['id']}@twenty/file", 422)
    assert "malformed job id" in detail("/api/jobs/nope/checkpoints", 422)
    assert "no job with id" in detail(f"/api/jobs/{new_job_id()}/checkpoints", 404)
    assert "no model" in detail(f"/api/models/{new_job_id()}@20/file", 404)
    assert "has no training history" in detail("/api/models/example-heart@20", 404)
    assert client.get(f"{base}/20/preview.png").status_code == 200  # and the real one is there
