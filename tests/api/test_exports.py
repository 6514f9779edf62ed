"""Take it with you: the Distill export, the one-file player, videos and the model card over HTTP."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from backend.exports.video import decode_frames
from backend.nca import modelfile
from backend.nca.distill import from_distill_json, quantized
from backend.nca.jobspec import JobSpec
from backend.nca.model import NCA
from backend.nca.modelfile import ModelFile, ModelInfo, to_bytes
from backend.storage.jobs import new_job_id
from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

XSS_NAME = "</script><script>alert(1)</script>"
ENDPOINTS = ["distill.json", "player.html", "video.gif?steps=3", "card"]


@pytest.fixture(scope="module")
def models(api_models_dir: Path) -> Path:
    """example-heart (with its stored card), example-hostile (a name that is an XSS attempt), example-big
    (a 72x72 grid), example-broken (a file whose checksum no longer matches)."""
    for suffix in (".safetensors", ".card.json"):
        shutil.copy(REPO_ROOT / "models" / f"heart{suffix}", api_models_dir / f"heart{suffix}")
    hostile = modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    hostile.info.name = XSS_NAME
    modelfile.save(hostile, api_models_dir / "hostile.safetensors")
    modelfile.save(ModelFile(NCA(), ModelInfo(grid_height=72, grid_width=72, name="big")),
                   api_models_dir / "big.safetensors")
    data = bytearray((REPO_ROOT / "models" / "heart.safetensors").read_bytes())
    data[-100] ^= 0xFF  # one weight changed: the checksum catches it
    (api_models_dir / "broken.safetensors").write_bytes(bytes(data))
    return api_models_dir


def test_distill_export_is_the_quantised_model_with_a_report(client: TestClient, models: Path) -> None:
    response = client.get("/api/models/example-heart/distill.json")
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == 'attachment; filename="regenerating_heart.json"'
    assert response.headers["x-quantization-grows-8bit"] == "true"
    psnr_float = float(response.headers["x-quantization-psnr-float"])
    assert abs(psnr_float - float(response.headers["x-quantization-psnr-8bit"])) < 1.0 and psnr_float > 20
    imported = from_distill_json(response.json()).model
    want = quantized(modelfile.load(models / "heart.safetensors")).model
    for got, expected in zip(imported.parameters(), want.parameters(), strict=True):
        assert torch.equal(got, expected)


def test_player_is_one_html_file_with_the_name_escaped(client: TestClient, models: Path) -> None:
    response = client.get("/api/models/example-hostile/player.html")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    # The file name keeps only letters, digits, _ and - of the name (it is a header).
    assert response.headers["content-disposition"] == 'attachment; filename="script_script_alert_1_script.html"'
    page = response.text
    assert XSS_NAME not in page and "&lt;/script&gt;&lt;script&gt;alert(1)" in page
    assert page.count("<script") == 2 and "http://" not in page and "https://" not in page
    # The page's "Open" link: the same file, shown in the tab rather than downloaded.
    shown = client.get("/api/models/example-hostile/player.html?inline=true")
    assert shown.headers["content-disposition"] == 'inline; filename="script_script_alert_1_script.html"'
    assert shown.text == page
    assert client.get("/api/models/example-hostile/player.html?inline=perhaps").status_code == 422


@pytest.mark.parametrize("fmt", ["gif", "webp", "mp4"])
def test_videos_decode_with_the_frames_and_size_asked_for(client: TestClient, models: Path, fmt: str) -> None:
    response = client.get(f"/api/models/example-heart/video.{fmt}?steps=30&scale=2")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == {"gif": "image/gif", "webp": "image/webp", "mp4": "video/mp4"}[fmt]
    frames = decode_frames(response.content, fmt)
    assert len(frames) == 31 and frames[0].shape == (72, 72, 3)  # steps 0..30, 36 cells x 2 pixels
    assert (frames[0] < 128).all(axis=-1).sum() == 4  # the seed: one black cell of 2 x 2 pixels
    assert (frames[-1] < 200).any(axis=-1).mean() > 0.1  # grown (and cut at step 10)
    again = client.get(f"/api/models/example-heart/video.{fmt}?steps=30&scale=2")
    assert again.content == response.content  # cached per model version; the same seed anyway


@pytest.mark.parametrize(("query", "words"), [
    ("video.gif?steps=5000", ["steps", "2000"]),
    ("video.gif?steps=0", ["steps"]),
    ("video.mp4?scale=99", ["scale", "16"]),
    ("video.avi", ["fmt"]),
])
def test_absurd_video_requests_name_the_limit(client: TestClient, models: Path, query: str, words: list) -> None:
    response = client.get(f"/api/models/example-heart/{query}")
    assert response.status_code == 422, response.text
    for word in words:
        assert word in response.json()["detail"]


def test_a_video_too_big_to_render_names_the_pixel_limit(client: TestClient, models: Path) -> None:
    response = client.get("/api/models/example-big/video.webp?steps=10&scale=16")
    assert response.status_code == 422
    assert "1152x1152" in response.json()["detail"] and "1024" in response.json()["detail"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("model_id", ["example-nothing", "0" * 32, "not-a-job"])
def test_unknown_models_are_404(client: TestClient, models: Path, endpoint: str, model_id: str) -> None:
    response = client.get(f"/api/models/{model_id}/{endpoint}")
    assert response.status_code == 404, response.text
    assert "no model" in response.json()["detail"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_an_unreadable_stored_model_is_a_clear_422(client: TestClient, models: Path, endpoint: str) -> None:
    response = client.get(f"/api/models/example-broken/{endpoint}")
    assert response.status_code == 422, response.text
    assert "cannot be read" in response.json()["detail"] and "checksum" in response.json()["detail"]


def test_a_shipped_examples_card_is_served_from_its_file(client: TestClient, models: Path) -> None:
    response = client.get("/api/models/example-heart/card")
    assert response.status_code == 200 and response.headers["x-card-source"] == "stored"
    assert response.json() == json.loads((models / "heart.card.json").read_text())


def test_a_jobs_card_is_computed_once_per_model_version(client: TestClient, models: Path) -> None:
    store, job_id = client.app.state.storage.jobs, new_job_id()
    store.create(job_id, JobSpec.from_options({"name": "heart", "experiment": "regenerating", "iterations": 100}),
                 torch.zeros(4, 36, 36))
    assert store.claim(job_id, "t", 60, "cpu", "test") == "ok"
    heart = modelfile.load(models / "heart.safetensors")
    assert store.store_checkpoint(job_id, "t", to_bytes(heart), 2000, 0.002) == 1
    first = client.get(f"/api/models/{job_id}/card")
    assert first.status_code == 200 and first.headers["x-card-source"] == "computed"
    card = first.json()
    assert card["verdict"] in ("persists", "regrows") and card["model"]["iterations"] == heart.info.iterations
    assert client.get(f"/api/models/{job_id}/card").json() == card

    untrained = ModelFile(NCA(), ModelInfo(grid_height=36, grid_width=36, experiment="regenerating", iterations=5))
    assert store.store_checkpoint(job_id, "t", to_bytes(untrained), 5, 0.1) == 2
    newer = client.get(f"/api/models/{job_id}/card").json()
    assert newer["verdict"] == "fails" and newer["model"]["sha256"] != card["model"]["sha256"]

    # A checkpoint of the job's history (`<job id>@<iteration>`, weights only) exports like any model.
    checkpoint = client.get(f"/api/models/{job_id}@5/video.mp4?steps=4")  # (2000 was dropped: 5 < 2000)
    assert checkpoint.status_code == 200, checkpoint.text
    assert len(decode_frames(checkpoint.content, "mp4")) == 5
    assert checkpoint.headers["content-disposition"] == f'inline; filename="{job_id}-5.mp4"'
    assert client.get(f"/api/models/{job_id}@77/card").status_code == 404
    assert client.get(f"/api/models/{job_id}@x/distill.json").status_code == 422


def test_a_hostile_names_card_is_computed(client: TestClient, models: Path) -> None:
    response = client.get("/api/models/example-hostile/card")
    assert response.status_code == 200 and response.headers["x-card-source"] == "computed"
    assert response.json()["model"]["name"] == XSS_NAME  # JSON, served as application/json: data, not markup
    assert response.headers["content-type"] == "application/json"


def test_rendering_does_not_block_other_requests(client: TestClient, models: Path) -> None:
    """A long video renders on the render pool; meanwhile the API answers other requests."""
    result = {}
    video = threading.Thread(target=lambda: result.update(
        response=client.get("/api/models/example-heart/video.mp4?steps=2000&scale=1")))
    video.start()
    try:
        for _ in range(3):
            assert client.get("/api/models").status_code == 200
            assert client.get("/api/health").status_code in (200, 503)
        assert video.is_alive(), "the video finished before the other requests: nothing was shown"
    finally:
        video.join(timeout=240)
    assert result["response"].status_code == 200
