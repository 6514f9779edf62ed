"""Every kind of bad request gets a clear JSON 4xx, and none of them creates or harms a job."""

from __future__ import annotations

import io
import json
import random
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import TINY_TRAINING, png_image


def post_job(client: TestClient, image: bytes | None = None, filename: str = "x.png", **fields):
    files = {"image": (filename, image, "image/png")} if image is not None else None
    data = {k: str(v) if not isinstance(v, str) else v for k, v in fields.items()}
    return client.post("/api/jobs", files=files, data=data)


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header says width x height: a decompression bomb as far as the decoder knows."""
    data = png_image((8, 8))
    ihdr = struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return data[:16] + ihdr + crc + data[33:]


def noise_png(side: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(0).randbytes(side * side * 3)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def good_job(client: TestClient) -> dict:
    response = post_job(client, png_image(), **TINY_TRAINING, iterations=10)
    assert response.status_code == 202, response.text
    return response.json()


def assert_error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["detail"], str)
    for word in words:
        assert word in body["detail"], body["detail"]


def test_a_good_upload_is_accepted(client: TestClient, good_job: dict) -> None:
    assert good_job["status"] == "queued"
    assert good_job["options"]["target_size"] == 8 and good_job["grid_height"] == 12
    assert good_job["options"]["seed"] == 1 and good_job["name"] == "x"
    assert good_job["links"]["self"] == f"/api/jobs/{good_job['id']}"
    assert good_job["links"]["model_file"] is None  # no checkpoint yet


@pytest.mark.parametrize(("image", "words"), [
    (b"this is not an image", ["not a readable image"]),
    (noise_png()[:2000], ["damaged or truncated"]),
    (png_claiming_size(50_000, 50_000), ["decompression bomb"]),
    (png_image((3, 3), box=0), ["at least 4"]),
    (png_image((16, 16), colour=(10, 10, 10, 0)), ["transparent"]),
    (b"", ["empty"]),
], ids=["text", "truncated", "bomb", "tiny", "transparent", "empty"])
def test_bad_images(client: TestClient, image: bytes, words: list[str]) -> None:
    assert_error(post_job(client, image, **TINY_TRAINING), 422, *words)


@pytest.mark.parametrize(("fields", "words"), [
    ({"iterations": 0}, ["iterations", "greater than or equal to 1"]),
    ({"iterations": 5001}, ["iterations", "at most 5000"]),
    ({"target_size": 200}, ["target_size", "128"]),
    ({"padding": -1}, ["padding"]),
    ({"experiment": "dancing"}, ["experiment"]),
    ({"min_steps": 20, "max_steps": 10}, ["min_steps must be below max_steps"]),
    ({"lr": "fast"}, ["lr"]),
    ({"colour": "red"}, ["colour", "Extra inputs"]),
    ({"experiment": "persistent", "pool_size": 4096, "target_size": 128, "padding": 64}, ["sample pool", "MB"]),
    ({"options": "{not json"}, ["not valid JSON"]),
    ({"options": "[1, 2]"}, ["JSON object"]),
    ({"options": "[" * 100_000}, ["nested too deeply"]),  # used to be a 500 (RecursionError)
], ids=["zero-iterations", "too-many-iterations", "big-target", "negative-padding", "experiment", "steps",
        "lr-text", "unknown-option", "pool-memory", "options-json", "options-not-object", "options-deep"])
def test_bad_options(client: TestClient, fields: dict, words: list[str]) -> None:
    assert_error(post_job(client, png_image(), **fields), 422, "invalid options" if "options" not in fields else "",
                 *words)


def test_options_as_json_field(client: TestClient) -> None:
    options = json.dumps({**TINY_TRAINING, "iterations": 7, "name": "from json"})
    response = post_job(client, png_image(), options=options, seed="5")  # a form field wins over the JSON
    assert response.status_code == 202, response.text
    job = response.json()
    assert (job["name"], job["total"], job["options"]["seed"]) == ("from json", 7, 5)
    assert response.headers["location"] == f"/api/jobs/{job['id']}"


def test_a_blank_name_means_the_file_name(client: TestClient) -> None:
    response = post_job(client, png_image(), filename="heart.png", name="   ", **TINY_TRAINING)
    assert response.status_code == 202, response.text
    assert response.json()["name"] == "heart"


def test_malformed_multipart_is_a_documented_400(client: TestClient) -> None:
    two_files = [("image", ("a.png", png_image(), "image/png")), ("other", ("b.png", png_image(), "image/png"))]
    assert_error(client.post("/api/jobs", files=two_files), 400, "Too many files")
    no_boundary = client.post("/api/jobs", content=b"abc", headers={"content-type": "multipart/form-data"})
    assert_error(no_boundary, 400, "boundary")
    assert {"400", "415"} <= set(client.app.openapi()["paths"]["/api/jobs"]["post"]["responses"])


def test_missing_image_and_wrong_content_type(client: TestClient) -> None:
    wrong_field = client.post("/api/jobs", files={"picture": ("x.png", png_image(), "image/png")})
    assert_error(wrong_field, 422, "missing the image", "'image'")
    assert_error(post_job(client, None, iterations=5), 415, "multipart/form-data")  # a plain form
    assert_error(client.post("/api/jobs", json={"iterations": 5}), 415, "multipart/form-data")


def test_upload_over_the_cap(client: TestClient) -> None:
    big = noise_png(300)  # incompressible: about 270 KB, over the 200 KB cap
    assert len(big) > 200_000
    assert_error(post_job(client, big, filename="big.png"), 413, "larger than")


def test_unknown_and_malformed_ids(client: TestClient) -> None:
    unknown = "0" * 32
    for path in (f"/api/jobs/{unknown}", f"/api/jobs/{unknown}/target.png", f"/api/jobs/{unknown}/preview.png"):
        assert_error(client.get(path), 404, "no job")
    assert_error(client.post(f"/api/jobs/{unknown}/cancel"), 404, "no job")
    for bad in ("xyz", "0" * 31, "G" * 32, "0" * 32 + "0"):
        assert_error(client.get(f"/api/jobs/{bad}"), 422, "malformed job id")
    assert_error(client.get(f"/api/models/{unknown}/file"), 404, "no model")
    assert_error(client.get("/api/models/example-..%2F..%2Fetc%2Fpasswd/file"), 404)
    for path in ("/api/models/example-a%00b", "/api/models/example-a%00b/file"):  # a NUL used to be a 500
        assert_error(client.get(path), 404, "no model")
    assert_error(client.get("/api/jobs?limit=1000"), 422, "limit")


def test_no_preview_before_a_checkpoint(client: TestClient, good_job: dict) -> None:
    assert_error(client.get(f"/api/jobs/{good_job['id']}/preview.png"), 404, "no checkpoint yet")


def test_target_png(client: TestClient, good_job: dict) -> None:
    response = client.get(f"/api/jobs/{good_job['id']}/target.png", params={"scale": 3})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(response.content))
    assert img.size == (36, 36) and img.mode == "RGBA"  # (8 + 2 * 2) cells x 3
    assert img.getpixel((0, 0))[3] == 0 and img.getpixel((18, 18))[3] > 200  # padding clear, square opaque


def test_bad_requests_did_not_create_or_harm_jobs(client: TestClient, good_job: dict) -> None:
    listing = client.get("/api/jobs").json()
    assert listing["total"] == 3  # good_job, the JSON-options and the blank-name jobs, nothing from the refused ones
    assert client.get(f"/api/jobs/{good_job['id']}").json()["status"] == "queued"


def test_config_matches_the_validation(client: TestClient) -> None:
    config = client.get("/api/config").json()
    assert config["stream_url"] is None  # the page's own origin: the proxy routes /ws/stream
    assert config["max_upload_bytes"] == 200_000 and config["max_iterations"] == 5000
    assert set(config["experiments"]) == {"growing", "persistent", "regenerating"}
    assert config["limits"]["target_size"] == {"minimum": 8, "maximum": 128}
    assert config["limits"]["iterations"]["maximum"] == 5000
    assert config["defaults"]["checkpoint_every"] == 25 and config["defaults"]["target_size"] == 40


def test_health_without_workers_is_degraded(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "degraded" and body["redis"]["ok"] is True and body["workers"] == []
    assert body["queued_messages"] >= 2  # the jobs above wait in the queue
