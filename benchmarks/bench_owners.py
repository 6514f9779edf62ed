"""Listing time with many owners: 10,000 jobs over 1,000 owners in a real Redis (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_owners.py [--jobs 10000] [--owners 1000]

Fills a fresh bundled redis-server with jobs the way the API stores them (the record, a small target,
the owner index; every job with a model), then times through the real app (TestClient):
- `GET /api/jobs` and `GET /api/models` as one owner (10 jobs of their own, the 8-job public gallery);
- `GET /api/jobs?limit=100` as the operator (every job, paged);
- `GET /api/models` as the operator: before the cursor pages, the listing every visitor got before owners
  existed (every job); now its first page (benchmarks/bench_listing.py times pages at 1k-100k jobs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import torch
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.api.main import create_app  # noqa: E402
from backend.config import Settings  # noqa: E402
from backend.nca import JobSpec  # noqa: E402
from backend.storage.embedded_redis import start_redis  # noqa: E402
from backend.storage.jobs import JobStore  # noqa: E402
from backend.storage.owners import Owners  # noqa: E402
from backend.storage.sharing import Access  # noqa: E402

ADMIN = "bench-operator"


def fill(client: redis.Redis, jobs: int, owners: int) -> list[str]:
    """`jobs` finished jobs with a model, round-robin over `owners` owners; the owners' ids."""
    store, ids = JobStore(client), Owners(client, "bench-key")
    spec = JobSpec.from_options({"name": "bench", "iterations": 100})
    target = torch.zeros(4, 8, 8)
    people = [uuid.uuid4().hex for _ in range(owners)]
    access = Access(client, ids)
    for i in range(jobs):
        job_id = uuid.uuid4().hex
        ids.claim(job_id, people[i % owners])
        store.create(job_id, spec, target)
        store.claim(job_id, "w", 60, "cpu", "bench")
        store.store_checkpoint(job_id, "w", b"not a real model file", 100, 0.1, b"w")
        store.finish(job_id, "w", "succeeded")
        if i < 8:
            access.publish(job_id)
    return people


def timed(call, repeat: int = 20) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = call()
        times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--owners", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(data_dir=Path(tmp) / "redis")
        try:
            client = redis.Redis.from_url(server.url)
            began = time.perf_counter()
            people = fill(client, args.jobs, args.owners)
            print(f"filled {args.jobs} jobs over {args.owners} owners in {time.perf_counter() - began:.0f} s")
            settings = Settings(redis_url=server.url, models_dir=Path(tmp), secret_key="bench-key", admin_token=ADMIN)
            app = create_app(settings)
            token = Owners(client, "bench-key").token(people[0])
            with TestClient(app) as http:
                mine = {"X-Owner-Token": token}
                rows = [
                    ("GET /api/jobs (one owner, 10 jobs)", lambda: http.get("/api/jobs", headers=mine)),
                    ("GET /api/models (one owner + gallery)", lambda: http.get("/api/models", headers=mine)),
                    ("GET /api/jobs?limit=100 (operator)",
                     lambda: http.get("/api/jobs?limit=100", headers={"X-Owner-Token": ADMIN})),
                    ("GET /api/models (operator: first page)",
                     lambda: http.get("/api/models", headers={"X-Owner-Token": ADMIN})),
                ]
                for name, call in rows:
                    median, worst = timed(call, repeat=20)
                    print(f"{name:45s} median {median:8.1f} ms   max {worst:8.1f} ms")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
