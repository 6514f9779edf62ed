"""POST /api/targets/preview: the target an upload becomes, the same as the job's, and the same errors."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.api.main import create_app
from backend.config import Settings
from tests.conftest import TINY_TRAINING, png_image
from tests.helpers import png_bytes, synthetic_photo

PHOTO = png_bytes(synthetic_photo(), "JPEG")
TARGET = {"target_size": 24, "padding": 3}


def preview(client: TestClient, image: bytes | None = PHOTO, **fields):
    files = {"image": ("photo.jpg", image, "image/jpeg")} if image is not None else None
    return client.post("/api/targets/preview", files=files, data={k: str(v) for k, v in fields.items()})


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    for word in words:
        assert word in response.json()["detail"]


def test_a_photo_is_cut_out_by_default(client: TestClient) -> None:
    body = preview(client, **TARGET).json()
    assert body["background"] == "cutout" and not body["clear_background"] and body["warning"] is None
    img = Image.open(io.BytesIO(base64.b64decode(body["png"])))
    assert img.mode == "RGBA" and img.size == (body["grid_width"], body["grid_height"])
    assert max(img.size) == 24 + 2 * 3
    alpha = img.getchannel("A")
    assert alpha.getpixel((3, 3)) == 0 and alpha.getpixel((img.width // 2, img.height // 2)) == 255
    whole = preview(client, **TARGET, background="keep").json()
    assert whole["background"] == "keep" and "no transparent background" in whole["warning"]
    assert body["filled"] < whole["filled"]


def test_the_preview_is_the_jobs_target(client: TestClient) -> None:
    """The page shows the preview before the upload; the job must then train on exactly that."""
    for background in ("auto", "keep", "key"):
        shown = preview(client, **TARGET, background=background).json()
        options = {**TINY_TRAINING, **TARGET, "background": background}
        job = client.post("/api/jobs", files={"image": ("photo.jpg", PHOTO, "image/jpeg")},
                          data={k: str(v) for k, v in options.items()})
        assert job.status_code == 202, job.text
        stored = client.get(job.json()["links"]["target"])
        assert stored.content == base64.b64decode(shown["png"]), background
        assert job.json()["warning"] == shown["warning"]
        assert (job.json()["grid_width"], job.json()["grid_height"]) == (shown["grid_width"], shown["grid_height"])


def test_the_old_key_background_switch_still_works(client: TestClient) -> None:
    assert preview(client, **TARGET, key_background="true").json()["background"] == "key"
    assert_error(preview(client, **TARGET, key_background="true", background="cutout"), 422,
                 "key_background=true means background=key")
    assert_error(preview(client, **TARGET, background="remove"), 422, "background")


def test_a_transparent_image_is_kept(client: TestClient) -> None:
    body = preview(client, png_image(), **TARGET).json()
    assert body["background"] == "keep" and body["clear_background"] and body["warning"] is None


@pytest.mark.parametrize(("call", "status", "words"), [
    (lambda c: c.post("/api/targets/preview", content=b"x", headers={"content-type": "image/png"}), 415,
     ["multipart/form-data"]),
    (lambda c: c.post("/api/targets/preview", files={"picture": ("x.png", png_image(), "image/png")}), 422,
     ["missing the image"]),
    (lambda c: preview(c, b"not an image at all"), 422, ["not a readable image"]),
    (lambda c: preview(c, b"\x89PNG" + b"\0" * 300_000), 413, ["larger than"]),
    (lambda c: preview(c, target_size=4), 422, ["target_size"]),
], ids=["not-multipart", "no-image", "not-an-image", "too-big", "bad-option"])
def test_the_same_errors_as_creating_a_job(client: TestClient, call, status: int, words: list[str]) -> None:
    assert_error(call(client), status, *words)


def test_out_of_time_falls_back_to_the_whole_image_and_says_so(redis_url: str, tmp_path) -> None:
    settings = Settings(redis_url=redis_url, models_dir=tmp_path, cutout_seconds=0)
    with TestClient(create_app(settings)) as client:
        body = preview(client, **TARGET).json()
        assert body["background"] == "keep" and "did not finish within 0 s" in body["warning"]
        job = client.post("/api/jobs", files={"image": ("photo.jpg", PHOTO, "image/jpeg")},
                          data={k: str(v) for k, v in {**TINY_TRAINING, **TARGET}.items()}).json()
        assert job["warning"] == body["warning"]  # it reaches the job card too
        assert client.get(f"/api/jobs/{job['id']}").json()["warning"] == body["warning"]


def test_a_protected_server_wants_the_token(redis_url: str, tmp_path) -> None:
    settings = Settings(redis_url=redis_url, models_dir=tmp_path, access_token="s3cret")
    with TestClient(create_app(settings)) as client:
        assert_error(preview(client, **TARGET), 401, "access token")
        client.headers["Authorization"] = "Bearer s3cret"
        assert preview(client, **TARGET).status_code == 200
