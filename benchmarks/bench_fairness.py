"""Fair dispatch with a real worker: A queues 5 jobs, then B queues 1 (docs/benchmarks.md "Owners").

    .venv/bin/python benchmarks/bench_fairness.py [--iterations 150]

Runs the scenario twice on one Celery worker and a bundled redis-server: B as another owner (round-robin
across owners), and B's job sent by A itself (first-in-first-out, what every job got before owners:
one queue in submission order). Prints the start order and how long B's job waited.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.api.main import create_app  # noqa: E402
from backend.config import Settings  # noqa: E402
from backend.storage.embedded_redis import start_redis  # noqa: E402
from tests.conftest import TINY_TRAINING, Worker, png_image, wait_for  # noqa: E402

ADMIN = {"X-Owner-Token": "bench-operator"}


def submit(client: TestClient, iterations: int, name: str) -> str:
    fields = {k: str(v) for k, v in {**TINY_TRAINING, "iterations": iterations, "name": name}.items()}
    created = client.post("/api/jobs", files={"image": ("s.png", png_image(), "image/png")}, data=fields)
    assert created.status_code == 202, created.text
    return created.json()["id"]


def scenario(app, iterations: int, b_is_a: bool) -> tuple[list[str], float, float]:
    """(start order by name, B's wait in s, the whole run in s)."""
    with TestClient(app, client=("10.0.0.1", 1)) as a, TestClient(app, client=("10.0.0.2", 1)) as b:
        began = time.time()
        for i in range(5):
            submit(a, iterations, f"A{i + 1}")
        b_job = submit(a if b_is_a else b, iterations, "B")

        def done() -> list[dict] | None:
            jobs = a.get("/api/jobs", params={"limit": 100}, headers=ADMIN).json()["items"]
            return jobs if all(j["status"] == "succeeded" for j in jobs) else None

        jobs = wait_for(done, timeout=1800, interval=0.5, what="every job")
    order = sorted(jobs, key=lambda j: j["started_at"])
    b = next(j for j in jobs if j["id"] == b_job)
    return [j["name"] for j in order], b["started_at"] - b["created_at"], max(j["finished_at"] for j in jobs) - began


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        models.mkdir()
        for fifo in (False, True):
            server = start_redis(data_dir=Path(tmp) / f"redis-{fifo}")
            worker = Worker(server.url, models, Path(tmp) / f"worker-{fifo}.log").wait_ready()
            try:
                app = create_app(Settings(redis_url=server.url, models_dir=models, admin_token=ADMIN["X-Owner-Token"]))
                order, waited, total = scenario(app, args.iterations, b_is_a=fifo)
                label = "one queue (B's job sent as A's: FIFO)" if fifo else "round-robin across owners"
                print(f"{label:40s} start order {' '.join(order)}  B waited {waited:5.1f} s  all done in {total:.1f} s")
            finally:
                worker.stop()
                server.stop()


if __name__ == "__main__":
    main()
