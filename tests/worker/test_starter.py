"""The starter through the API with a real worker: a time budget that names no model starts from the server's
starter (models/starter.safetensors) where it applies; the record, the model file and the estimate say so; the
paper recipe and a request's own start_from never use it; without the file, random weights as before."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient

from backend.nca.jobspec import STARTER_MIN_SIZE
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo, from_bytes, save
from tests.conftest import TINY_TRAINING, png_image
from tests.worker.test_start_from import assert_same, weights

BUDGET = {**TINY_TRAINING, "target_size": STARTER_MIN_SIZE, "padding": 2, "minutes": 0.01}


def post(client: TestClient, **options) -> dict:
    response = client.post("/api/jobs", files={"image": ("square.png", png_image(), "image/png")},
                           data={k: str(v) for k, v in options.items()})
    assert response.status_code == 202, response.text
    return response.json()


def test_without_a_starter_file_a_budget_trains_from_random_weights(client: TestClient) -> None:
    answer = client.post("/api/estimate", json={"minutes": 5}).json()
    assert answer["start_from"] is None
    job = post(client, **BUDGET)
    assert job["options"]["start_from"] is None
    client.post(f"/api/jobs/{job['id']}/cancel")


def test_a_budgeted_job_starts_from_the_starter_and_records_it(client: TestClient, worker, api_models_dir: Path,
                                                               worker_models_dir: Path, job_waiter) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(11)
        starter = NCA()
    info = ModelInfo(channels=16, hidden=128, fire_rate=0.5, grid_height=12, grid_width=12, name="starter")
    for folder in (api_models_dir, worker_models_dir):
        save(ModelFile(starter, info), folder / "starter.safetensors")

    answer = client.post("/api/estimate", json={"minutes": 5}).json()
    assert answer["start_from"] == "example-starter"  # the estimate says where the job starts
    assert client.post("/api/estimate", json={"iterations": 100}).json()["start_from"] is None  # paper: never
    patient = client.post("/api/estimate", json={"minutes": 5, "early_stop_patience": 10}).json()
    assert patient["workers"] >= 1  # the soonest end: 10 iterations, well below the budget's
    assert 0 < patient["min_seconds"] < patient["seconds"]
    assert answer["min_seconds"] == answer["seconds"]  # without patience: the estimate

    job = post(client, **BUDGET)
    assert job["options"]["start_from"] == "example-starter"  # the lineage, in the record
    done = job_waiter(job["id"], lambda j: j["status"] == "succeeded", what="the budgeted job")
    assert done["options"]["start_from"] == "example-starter"
    assert_same(weights(client, f"{job['id']}@0"), starter.state_dict())  # before training: the starter's
    final = client.get(f"/api/models/{job['id']}/file")
    assert from_bytes(final.content).info.extra["start_from"] == "example-starter"  # and in the card's lineage

    own = post(client, **BUDGET, start_from=job["id"])  # a request's own start_from wins
    assert own["options"]["start_from"] == job["id"]
    paper = post(client, **TINY_TRAINING, iterations=5)  # no budget: random weights, the recipe as it was
    assert paper["options"]["start_from"] is None
    small = post(client, **{**BUDGET, "target_size": 8})  # below STARTER_MIN_SIZE: not where it was measured to help
    assert small["options"]["start_from"] is None
    for other in (own, paper, small):
        client.post(f"/api/jobs/{other['id']}/cancel")
