"""Continue and fork through the API with a real worker: `start_from` names a model, the new job starts from
its weights (its first checkpoint, at iteration 0, is them), the record keeps the lineage; bad names are
refused with 404 (no such model) or 422 (malformed, another shape)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo, from_bytes, save
from tests.conftest import TINY_TRAINING, png_image


def weights(client: TestClient, model: str) -> dict[str, torch.Tensor]:
    response = client.get(f"/api/models/{model}/file")
    assert response.status_code == 200, response.text
    return from_bytes(response.content).model.state_dict()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def source(client: TestClient, worker, submit, job_waiter) -> dict:
    job = submit(iterations=60, checkpoint_every=20)
    return job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="the source job")


def test_continue_starts_from_the_source_weights_on_its_target(client: TestClient, source, job_waiter) -> None:
    response = client.post("/api/jobs", data={"start_from": source["id"], "iterations": "40"})  # no image: continue
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["options"]["start_from"] == source["id"]  # the lineage, in the record
    assert job["name"] == "square (continued)"
    inherited = {k: v for k, v in job["options"].items() if k in TINY_TRAINING and k != "seed"}
    assert inherited == {k: v for k, v in TINY_TRAINING.items() if k != "seed"}  # the source's recipe
    done = job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="the continued job")
    assert done["options"]["start_from"] == source["id"]
    items = client.get(f"/api/jobs/{job['id']}/checkpoints").json()["items"]
    assert [c["iteration"] for c in items][:2] == [0, 20]
    assert_same(weights(client, f"{job['id']}@0"), weights(client, source["id"]))  # before training: the source's
    with pytest.raises(AssertionError):  # and then it trained
        assert_same(weights(client, job["id"]), weights(client, source["id"]))
    same_target = client.get(f"/api/jobs/{job['id']}/target.png").content
    assert same_target == client.get(f"/api/jobs/{source['id']}/target.png").content
    final = from_bytes(client.get(f"/api/models/{job['id']}/file").content)
    assert final.info.extra["start_from"] == source["id"]  # the lineage, in the model file (and its card)


def test_fork_from_a_checkpoint_trains_a_new_picture(client: TestClient, source, job_waiter) -> None:
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": 20, "start_from": f"{source['id']}@20"}.items()}
    image = png_image((30, 20), colour=(40, 40, 200, 255))
    response = client.post("/api/jobs", files={"image": ("blue.png", image, "image/png")}, data=fields)
    assert response.status_code == 202, response.text
    job = response.json()
    job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="the fork")
    assert_same(weights(client, f"{job['id']}@0"), weights(client, f"{source['id']}@20"))
    assert client.get(f"/api/jobs/{job['id']}/target.png").content != \
        client.get(f"/api/jobs/{source['id']}/target.png").content


@pytest.mark.parametrize(("start_from", "status", "words"), [
    ("0123456789abcdef0123456789abcdef", 404, "no model"),
    ("example-nothing-like-it", 404, "no model"),
    ("not a model", 404, "no model"),
    ("@5", 422, "a model id goes before the @"),
])
def test_unknown_or_malformed_start_models_are_refused(client: TestClient, start_from: str, status: int,
                                                       words: str) -> None:
    response = client.post("/api/jobs", files={"image": ("a.png", png_image(), "image/png")},
                           data={**{k: str(v) for k, v in TINY_TRAINING.items()}, "start_from": start_from})
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_a_model_of_another_shape_is_refused_naming_which(client: TestClient, api_models_dir: Path) -> None:
    small = NCA(hidden=32)
    save(ModelFile(small, ModelInfo(channels=16, hidden=32, fire_rate=0.5, grid_height=12, grid_width=12)),
         api_models_dir / "narrow.safetensors")
    response = client.post("/api/jobs", files={"image": ("a.png", png_image(), "image/png")},
                           data={**{k: str(v) for k, v in TINY_TRAINING.items()}, "start_from": "example-narrow"})
    assert response.status_code == 422, response.text
    assert "hidden 32 (this job: 128)" in response.json()["detail"]
    assert "channels" not in response.json()["detail"].split("shape:")[1].split(";")[0]


def test_continue_without_a_target_asks_for_an_image(client: TestClient, api_models_dir: Path) -> None:
    save(ModelFile(NCA(), ModelInfo(channels=16, hidden=128, fire_rate=0.5, grid_height=12, grid_width=12)),
         api_models_dir / "bare.safetensors")
    response = client.post("/api/jobs", data={"start_from": "example-bare", "iterations": "5"})
    assert response.status_code == 422, response.text
    assert "send an image" in response.json()["detail"]
