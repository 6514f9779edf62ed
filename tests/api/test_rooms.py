"""POST/GET/DELETE /api/rooms and the QR code, against the real Redis (the stream side: tests/stream/test_rooms.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from xml.etree import ElementTree

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.storage.connection import connect
from backend.storage.rooms import RoomStore
from tests.helpers import REPO_ROOT

HEART = "example-heart"


@pytest.fixture(autouse=True, scope="module")
def heart(api_models_dir: Path) -> None:
    shutil.copy(REPO_ROOT / "models" / "heart.safetensors", api_models_dir)


@pytest.fixture(autouse=True)
def no_rooms_left(redis_url: str) -> None:
    """Each test starts with no rooms of the test client's address (the per-creator cap counts them)."""
    client = connect(redis_url)
    for key in client.scan_iter("nca:room*"):
        client.delete(key)
    client.close()


def test_a_room_is_made_found_by_code_and_closed_by_its_host(client: TestClient, redis_url: str) -> None:
    made = client.post("/api/rooms", json={"model": HEART})
    assert made.status_code == 201, made.text
    room = made.json()
    assert len(room["id"]) == 32 and len(room["code"]) == 6 and room["model"] == HEART
    assert room["join_url"].endswith(f"/room.html?code={room['code']}")
    assert room["stream_path"] == f"/ws/stream?room={room['id']}"
    assert room["host_url"] == f"{room['join_url']}#host={room['host_token']}"
    found = client.get(f"/api/rooms/{room['code'].lower()}")  # a code typed in lower case
    assert found.status_code == 200 and found.json()["id"] == room["id"] and "host_token" not in found.json()
    stored = RoomStore(connect(redis_url), 60).get(room["id"])
    assert stored.is_host(room["host_token"]) and not stored.is_host("guess")
    assert room["host_token"] not in str(connect(redis_url).hgetall(f"nca:room:{room['id']}"))  # a digest only

    assert client.delete(f"/api/rooms/{room['id']}").status_code == 403
    refused = client.delete(f"/api/rooms/{room['id']}", headers={"X-Room-Host-Token": "guess"})
    assert refused.status_code == 403 and "host token" in refused.json()["detail"]
    assert client.delete(f"/api/rooms/{room['id']}", headers={"X-Room-Host-Token": room["host_token"]}
                         ).status_code == 204
    gone = client.get(f"/api/rooms/{room['code']}")
    assert gone.status_code == 404 and "no open room" in gone.json()["detail"]


def test_the_qr_code_is_an_svg_of_the_join_link(client: TestClient) -> None:
    room = client.post("/api/rooms", json={"model": HEART}).json()
    answer = client.get(f"/api/rooms/{room['code']}/qr.svg")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"
    svg = ElementTree.fromstring(answer.content)
    assert svg.tag.endswith("svg") and int(float(svg.get("width"))) >= 200  # scale 8: big enough to scan
    assert scan(svg) == room["join_url"], "the QR code does not scan to the join link"
    assert client.get("/api/rooms/ZZZZZZ/qr.svg").status_code == 404


def scan(svg: ElementTree.Element) -> str:
    """Rasterise the SVG's one path (segno writes each dark run as `m dx dy h n` on a unit grid, scaled) and
    decode it with OpenCV's QR detector, as a phone's camera would."""
    size = int(float(svg.get("width"))) // 8
    grid = np.full((size, size), 255, np.uint8)
    path = next(e for e in svg.iter() if e.tag.endswith("path")).get("d")
    x = y = 0.0
    for op, a, b in re.findall(r"([Mmh])(-?[\d.]+)(?:\s(-?[\d.]+))?", path):
        if op == "M":
            x, y = float(a), float(b)
        elif op == "m":
            x, y = x + float(a), y + float(b)
        else:
            grid[int(y), int(x) : int(x + float(a))] = 0
            x += float(a)
    image = cv2.resize(grid, (size * 8, size * 8), interpolation=cv2.INTER_NEAREST)
    text, _, _ = cv2.QRCodeDetector().detectAndDecode(image)
    return text


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"model": "example-nope"}, 404, "no model 'example-nope'"),
    ({"model": "abc@"}, 422, "malformed model reference"),
    ({}, 422, "model"),
    ({"model": 5}, 422, "model"),
])
def test_bad_room_requests_say_what_to_fix(client: TestClient, body: dict, status: int, words: str) -> None:
    answer = client.post("/api/rooms", json=body)
    assert answer.status_code == status and words in answer.json()["detail"], answer.text


def test_rooms_per_creator_are_capped(redis_url: str, api_models_dir: Path) -> None:
    from backend.api.main import create_app

    settings = Settings(redis_url=redis_url, models_dir=api_models_dir, rooms_per_client=2)
    with TestClient(create_app(settings)) as capped:
        first = capped.post("/api/rooms", json={"model": HEART}).json()
        assert capped.post("/api/rooms", json={"model": HEART}).status_code == 201
        third = capped.post("/api/rooms", json={"model": HEART})
        assert third.status_code == 429 and "2 open rooms" in third.json()["detail"]
        capped.delete(f"/api/rooms/{first['id']}", headers={"X-Room-Host-Token": first["host_token"]})
        assert capped.post("/api/rooms", json={"model": HEART}).status_code == 201  # a closed room frees its place


def test_a_model_the_caller_may_not_see_gets_no_room(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """`Access.visible` is the one visibility check (someone else's private job); the room routes ask it: a model
    it refuses is answered as an unknown one."""
    from backend.storage.sharing import Access

    asked = []
    monkeypatch.setattr(Access, "visible", lambda self, model, caller: asked.append(model) or False)
    answer = client.post("/api/rooms", json={"model": HEART})
    assert answer.status_code == 404 and asked == [HEART]
