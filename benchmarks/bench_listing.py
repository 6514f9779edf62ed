"""Listing latency with 1,000 / 10,000 / 100,000 jobs: cursor pages never read every job (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_listing.py [--sizes 1000 10000 100000] [--repeat 20]

Fills a fresh bundled redis-server with finished jobs, each with a model, all one owner's (the worst
case for an owner's listing: every job is in its index) and in the global index (the operator's). The
records are written straight into Redis with the store's own encoding (`RecordCodec`, the key table's
names, the owner index), pipelined, small (no loss history, no files: a listing reads neither), so
100,000 jobs take seconds to set up. Then it times through the real app in-process (FastAPI's
TestClient: routing, validation, JSON included):

- `GET /api/models` and `GET /api/jobs`, first page (defaults: 50 models, 20 jobs), as the owner;
- a deep page: the cursor of the middle of the index (where a client that paged half-way is);
- `GET /api/jobs?offset=<half>` (the older offset paging, kept for compatibility);
- a search `q=` that matches one job in 1,000: the first page of the search reads at most SCAN_BUDGET
  index entries;
- `GET /api/models` as the operator (the global index).

Prints one table: median and max milliseconds per request over `--repeat` requests.
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
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.api.main import create_app  # noqa: E402
from backend.config import Settings  # noqa: E402
from backend.nca import JobSpec  # noqa: E402
from backend.storage import keys  # noqa: E402
from backend.storage.embedded_redis import start_redis  # noqa: E402
from backend.storage.jobs import RecordCodec, job_key  # noqa: E402
from backend.storage.listing import SCAN_BUDGET, Cursor  # noqa: E402
from backend.storage.owners import Owners, owner_key  # noqa: E402

ADMIN = "bench-operator"
SECRET = "bench-key"
RARE = 1000  # one job in RARE is named "needle ..." (what the search looks for)


def fill(client: redis.Redis, owner: str, start: int, stop: int, began: float) -> None:
    """Jobs number `start` .. `stop` - 1 of `owner`, finished with a model; job i created at `began + i` ms."""
    spec = JobSpec.from_options({"name": "bench", "iterations": 100})
    with client.pipeline(transaction=False) as pipe:
        for i in range(start, stop):
            job_id, created = uuid.uuid4().hex, began + i / 1000
            name = f"needle {i}" if i % RARE == RARE // 2 else f"bench {i}"
            record = {"id": job_id, "name": name, "status": "succeeded", "iteration": 100, "total": 100,
                      "created_at": created, "started_at": created, "finished_at": created + 1, "options": spec,
                      "spec_version": 2, "grid_height": 40, "grid_width": 40, "model_version": 1,
                      "checkpoint_iteration": 100, "checkpoint_loss": 0.01, "checkpoint_at": created + 1,
                      "loss": 0.01, "loss_history": [], "resumed_from": []}
            pipe.hset(job_key(job_id), mapping=dict(zip(*[iter(RecordCodec.encode(record))] * 2, strict=True)))
            pipe.set(keys.job_key(job_id, "owner"), owner)
            pipe.zadd(owner_key(owner), {job_id: created})
            pipe.zadd(keys.JOBS.pattern, {job_id: created})
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()


def timed(http: TestClient, path: str, params: dict, headers: dict, repeat: int) -> tuple[float, float]:
    """Median and max milliseconds of `repeat` requests."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        response = http.get(path, params=params, headers=headers)
        times.append((time.perf_counter() - began) * 1000)
        assert response.status_code == 200, response.text
    return statistics.median(times), max(times)


def middle_cursor(client: redis.Redis, key: str, listing: str, phase: str) -> str:
    """The cursor a client has after paging half-way down the index."""
    ((member, score),) = client.zrevrange(key, client.zcard(key) // 2, client.zcard(key) // 2, withscores=True)
    return Cursor(listing, phase, score, member.decode()).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    rows: list[tuple[int, str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(data_dir=Path(tmp) / "redis", appendonly=False)
        try:
            client = redis.Redis.from_url(server.url)
            owner, filled, began = uuid.uuid4().hex, 0, time.time() - 10**6
            settings = Settings(redis_url=server.url, models_dir=Path(tmp), secret_key=SECRET, admin_token=ADMIN)
            token = Owners(client, SECRET).token(owner)
            mine, operator = {"X-Owner-Token": token}, {"X-Owner-Token": ADMIN}
            with TestClient(create_app(settings)) as http:
                for size in sorted(args.sizes):
                    setup = time.perf_counter()
                    fill(client, owner, filled, size, began)
                    filled = size
                    print(f"{size:>7} jobs: set up in {time.perf_counter() - setup:.1f} s "
                          f"(Redis: {client.info('memory')['used_memory_human']})", file=sys.stderr)
                    deep_models = middle_cursor(client, owner_key(owner), "models", "owner")
                    deep_jobs = middle_cursor(client, owner_key(owner), "jobs", "owner")
                    calls = [
                        ("GET /api/models (first page)", "/api/models", {}, mine),
                        ("GET /api/models (deep page)", "/api/models", {"cursor": deep_models}, mine),
                        ("GET /api/models?q= (search)", "/api/models", {"q": "needle"}, mine),
                        ("GET /api/jobs (first page)", "/api/jobs", {}, mine),
                        ("GET /api/jobs (deep page)", "/api/jobs", {"cursor": deep_jobs}, mine),
                        ("GET /api/jobs?offset=half", "/api/jobs", {"offset": size // 2}, mine),
                        ("GET /api/jobs?q= (search)", "/api/jobs", {"q": "needle"}, mine),
                        ("GET /api/models (operator)", "/api/models", {}, operator),
                    ]
                    for name, path, params, headers in calls:
                        rows.append((size, name, *timed(http, path, params, headers, args.repeat)))
        finally:
            server.stop()
    sizes = sorted(args.sizes)
    names = list(dict.fromkeys(name for _, name, _, _ in rows))
    table = {(size, name): (median, worst) for size, name, median, worst in rows}
    print(f"median (max) ms per request, {args.repeat} requests each; search: a match in {RARE} jobs, "
          f"at most {SCAN_BUDGET} index entries read a request")
    print("| request | " + " | ".join(f"{s:,} jobs" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for name in names:
        cells = [f"{table[size, name][0]:.1f} ({table[size, name][1]:.1f})" for size in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
