"""The original upload is kept in the artifact store only with NCA_KEEP_UPLOAD (issue 21: nothing reads it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from backend.api.main import create_app
from backend.config import Settings
from tests.conftest import png_image


@pytest.mark.parametrize("keep", [False, True])
def test_the_upload_is_stored_only_when_asked(redis_url: str, tmp_path: Path, keep: bool) -> None:
    settings = Settings(redis_url=redis_url, models_dir=tmp_path / "models", artifacts=str(tmp_path / "store"),
                        keep_upload=keep, max_iterations=100)
    with TestClient(create_app(settings)) as client:
        response = client.post("/api/jobs", files={"image": ("square.png", png_image(), "image/png")},
                               data={"iterations": "10", "target_size": "8", "padding": "2"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        names = sorted(key.split("/", 1)[1] for key, _ in client.app.state.storage.artifacts.objects(f"{job_id}/"))
        client.post(f"/api/jobs/{job_id}/cancel", headers={"X-Owner-Token": response.json()["owner_token"]})
    assert names == (["target", "upload"] if keep else ["target"])
