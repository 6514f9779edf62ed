"""Quota check and lease recovery, before and after the counters and the lease sorted set (docs/benchmarks.md).

    .venv/bin/python benchmarks/bench_leases.py [--jobs 1000,10000,100000] [--active 10000] [--workers 100]
Fills a fresh bundled redis-server (no persistence) with synthetic job records, then measures:

1. The upload's quota check (one reservation, given back after) with N jobs of which `--active` (at most
   N) are queued or running: **before**, the previous version's `_RESERVE` script (kept below, verbatim),
   which walks every active job; **after**, `JobQuota.reserve` on the counters. Time per call seen by the
   client (median) and Redis's own time for the script (INFO commandstats).
2. The recovery sweep with `--recovery-active` running jobs (live leases: nothing to recover, the usual
   case) and `--workers` workers each beating every `--period` seconds: **before**, every worker ran the
   previous `recover_orphans` (INFO, SMEMBERS, then the `_RECOVER` script kept below once per active job);
   **after**, every worker asks for the election (`JobStore.elect`) and the one elected runs
   `JobStore.recover_orphans` (INFO and one script over the due leases). Per second: the commands clients
   send, the commands Redis executes (scripts' inner calls included) and Redis's CPU time.
3. For reference (unchanged): the owner's byte quota check, a walk of that owner's jobs, at `--owner-jobs`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.storage import keys  # noqa: E402
from backend.storage.artifacts import artifact_store  # noqa: E402
from backend.storage.embedded_redis import start_redis  # noqa: E402
from backend.storage.jobs import ACTIVE_KEY, LEASES_KEY, JobStore, job_key  # noqa: E402
from backend.storage.quota import COUNTS_KEY, JOBS_KEY, JobQuota  # noqa: E402

# The previous version's quota script (backend/storage/quota.py before the counters), verbatim.
# KEYS: active, owner. ARGV: now, JOB_SCORE, the job key prefix, reservation id, its expiry, max total,
# then pairs (identity tag, its max).
OLD_RESERVE = """
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total = 0
local counts = {}
for i = 7, #ARGV, 2 do counts[i] = 0 end
for i = 1, #members, 2 do
  local member, score = members[i], tonumber(members[i + 1])
  local alive
  if score < tonumber(ARGV[2]) then
    alive = score > tonumber(ARGV[1])
  else
    local st = redis.call('HGET', ARGV[3] .. member, 'status')
    alive = st == 'queued' or st == 'running'
  end
  if alive then
    total = total + 1
    local who = redis.call('HGET', KEYS[2], member) or ''
    for j = 7, #ARGV, 2 do
      if string.find(who, '|' .. ARGV[j] .. '|', 1, true) then counts[j] = counts[j] + 1 end
    end
  else
    redis.call('ZREM', KEYS[1], member)
    redis.call('HDEL', KEYS[2], member)
  end
end
if total >= tonumber(ARGV[6]) then return {'total', total} end
local tags = {}
for j = 7, #ARGV, 2 do
  if counts[j] >= tonumber(ARGV[j + 1]) then return {ARGV[j], counts[j]} end
  tags[#tags + 1] = ARGV[j]
end
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], '|' .. table.concat(tags, '|') .. '|')
return {'ok', total}
"""
OLD_JOB_SCORE = 1e18

# The previous version's recovery script (backend/storage/job_scripts.py `_RECOVER`), rendered, verbatim.
# KEYS: job, lease, active. ARGV: id, Redis uptime in ms.
OLD_RECOVER = """
-- Whether `token` owns the job: the lease holds it, or the lease expired while nobody took the job
-- over (Redis was down or restarted for longer than the lease), so it is still running under this
-- claim; then the lease is taken back. Recovery waits a lease's length after a Redis restart for this.
local function owns(token)
  local holder = redis.call('GET', KEYS[2])
  if holder then return holder == token end
  if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= token then
    return false
  end
  local ms = redis.call('HGET', KEYS[1], 'lease_ms')
  if not ms then return false end
  redis.call('SET', KEYS[2], token, 'PX', ms)
  return true
end

-- Tell the stream services: a job with a model has a new checkpoint or status (others do not concern them).
local function announce(id)
  local version = tonumber(redis.call('HGET', KEYS[1], 'model_version') or '0') or 0
  if version > 0 then
    local iteration = tonumber(redis.call('HGET', KEYS[1], 'checkpoint_iteration') or '0') or 0
    local status = redis.call('HGET', KEYS[1], 'status')
    redis.call('PUBLISH', 'nca:checkpoints',
               cjson.encode({model_id = id, version = version, iteration = iteration, status = status}))
  end
end

if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local st = redis.call('HGET', KEYS[1], 'status')
local lease_ms = tonumber(redis.call('HGET', KEYS[1], 'lease_ms') or '0') or 0
if st == 'running' and tonumber(ARGV[2]) < lease_ms then return 0 end
if redis.call('SREM', KEYS[3], ARGV[1]) == 0 then return 0 end
if not st or st == 'succeeded' or st == 'failed' or st == 'cancelled' then return 0 end
if st == 'running' then
  redis.call('HINCRBY', KEYS[1], 'workers_lost', 1)
  redis.call('HSET', KEYS[1], 'interrupted_by', 'worker_lost')
end
redis.call('HSET', KEYS[1], 'status', 'queued', 'eta_seconds', '', 'iterations_per_second', '')
announce(ARGV[1])
return 1
"""

OWNERS, ADDRESSES = 1000, 200


def tags(i: int) -> str:
    return f"|a:10.0.{i % ADDRESSES // 256}.{i % 256}|o:owner-{i % OWNERS}|"


def fill_quota(client: redis.Redis, jobs: int, active: int) -> None:
    """`jobs` records (the fields the scripts read), the first `active` queued or running, in both layouts:
    the previous version's sorted set and hash, and the counters with each active job's `quota_tags`."""
    client.flushdb()
    counts: dict[str, int] = {}
    for start in range(0, jobs, 5000):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(jobs, start + 5000)):
                job_id = f"{i:032x}"
                live = i < active
                record = {"id": job_id, "status": ("running" if i % 10 == 0 else "queued") if live else "succeeded",
                          "created_at": time.time(), "name": "bench"}
                if live:
                    record["quota_tags"] = tags(i)
                    pipe.zadd(keys.QUOTA_ACTIVE.pattern, {job_id: OLD_JOB_SCORE})
                    pipe.hset(keys.QUOTA_OWNER.pattern, job_id, tags(i))
                    pipe.zadd(JOBS_KEY, {job_id: i})
                    for tag in ("total", *tags(i).strip("|").split("|")):
                        counts[tag] = counts.get(tag, 0) + 1
                pipe.hset(job_key(job_id), mapping=record)
            pipe.execute()
    client.hset(COUNTS_KEY, mapping=counts)


def script_usec(client: redis.Redis) -> float:
    """Redis's time in EVALSHA per call since the last reset (the script's inner calls included)."""
    stats = client.info("commandstats").get("cmdstat_evalsha")
    return float(stats["usec_per_call"]) if stats else float("nan")


def bench_quota(client: redis.Redis, jobs: int, active: int, reps: int) -> dict[str, float]:
    fill_quota(client, jobs, active)
    old = client.register_script(OLD_RESERVE)
    big = 10**9  # caps that are never reached: the check runs to its end
    results: dict[str, float] = {}
    walls = []
    old(keys=[keys.QUOTA_ACTIVE.pattern, keys.QUOTA_OWNER.pattern],  # a first call: loads the script, warms up
        args=[time.time(), OLD_JOB_SCORE, job_key(""), "reservation:warm", time.time() - 1, big, "a:x", big])
    client.config_resetstat()
    for r in range(reps):
        reservation = f"reservation:bench-{r}"
        started = time.perf_counter()
        outcome, _ = old(keys=[keys.QUOTA_ACTIVE.pattern, keys.QUOTA_OWNER.pattern],
                         args=[time.time(), OLD_JOB_SCORE, job_key(""), reservation, time.time() + 120, big,
                               "a:10.0.0.1", big, "o:owner-1", big])
        walls.append(time.perf_counter() - started)
        assert outcome == b"ok"
        client.zrem(keys.QUOTA_ACTIVE.pattern, reservation)  # given back, as the API's settle does
        client.hdel(keys.QUOTA_OWNER.pattern, reservation)
    results["before_ms"], results["before_redis_ms"] = statistics.median(walls) * 1000, script_usec(client) / 1000
    client.delete(keys.QUOTA_ACTIVE.pattern, keys.QUOTA_OWNER.pattern)  # as the upgrade does

    quota = JobQuota(client, big, big, big)
    quota.upgrade()  # nothing left to rebuild: the counters are filled
    walls, reservations = [], []
    quota.settle(quota.reserve("10.0.0.1", time.time(), "owner-1"), None)  # loads the scripts
    client.config_resetstat()
    for _ in range(reps * 10):
        started = time.perf_counter()
        reservations.append(quota.reserve("10.0.0.1", time.time(), "owner-1"))
        walls.append(time.perf_counter() - started)
    results["after_ms"] = statistics.median(walls) * 1000
    results["after_redis_ms"] = script_usec(client) / 1000
    for reservation in reservations:  # given back
        quota.settle(reservation, None)
    results["after_counted"] = int(client.hget(COUNTS_KEY, "total"))
    return results


def bench_owner_bytes(client: redis.Redis, owner_jobs: int, reps: int) -> float:
    """The owner's byte quota check (`JobQuota.owner_bytes`, left as a walk of the owner's jobs): median ms
    for an owner with `owner_jobs` jobs, each with a 50-entry history (as at the server defaults)."""
    client.flushdb()
    index = keys.OWNER_JOBS.prefix + "bench:jobs"
    with client.pipeline(transaction=False) as pipe:
        for i in range(owner_jobs):
            job_id = f"{i:032x}"
            pipe.hset(job_key(job_id), mapping={"status": "succeeded", "target_bytes": 83_000, "model_bytes": 186_000,
                                                "weights_bytes": 34_800})
            pipe.zadd(job_key(job_id, "history"), {f"{{\"iteration\":{k}}}": k for k in range(50)})
            pipe.zadd(index, {job_id: i})
        pipe.execute()
    quota = JobQuota(client, 1, 1, 1)
    assert quota.owner_bytes("bench") == owner_jobs * (83_000 + 186_000 + 50 * 34_800)
    walls = []
    for _ in range(reps):
        started = time.perf_counter()
        quota.owner_bytes("bench")
        walls.append(time.perf_counter() - started)
    return statistics.median(walls) * 1000


def redis_cpu(client: redis.Redis) -> float:
    cpu = client.info("cpu")
    return float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def bench_recovery(client: redis.Redis, store: JobStore, active: int, workers: int, period: float,
                   rounds: int) -> dict[str, dict[str, float]]:
    """`rounds` heartbeats of every worker, before and after; figures per second of a real deployment, where
    each worker beats once per `period`."""
    client.flushdb()
    ids = [f"{i:032x}" for i in range(active)]
    with client.pipeline(transaction=False) as pipe:
        for job_id in ids:  # running jobs with live leases: what the sweep finds nearly always
            pipe.hset(job_key(job_id), mapping={"id": job_id, "status": "running", "owner": "t", "lease_ms": 30000})
            pipe.set(job_key(job_id, "lease"), "t", px=3_600_000)
        pipe.sadd(ACTIVE_KEY, *ids)
        pipe.execute()
    old = client.register_script(OLD_RECOVER)

    def old_beat() -> int:
        uptime_ms = (int(client.info("server")["uptime_in_seconds"]) + 1) * 1000
        sent = 2
        for raw in client.smembers(ACTIVE_KEY):
            job_id = raw.decode()
            old(keys=[job_key(job_id), job_key(job_id, "lease"), ACTIVE_KEY], args=[job_id, uptime_ms])
            sent += 1
        return sent

    def new_beat(worker: int) -> int:
        """One worker's heartbeat; the commands it sent beyond the election's (INFO when it sweeps)."""
        if store.elect("lease-sweep", f"worker-{worker}", 3 * period):
            assert store.recover_orphans() == []
            return 1
        return 0

    out: dict[str, dict[str, float]] = {}
    for name in ("before", "after"):
        if name == "after":
            store.backfill_leases()  # the upgrade: the active set becomes deadlines
            store.recover_orphans()
        client.config_resetstat()
        cpu, sent, started = redis_cpu(client), 0, time.perf_counter()
        for _ in range(rounds):
            for worker in range(workers):
                sent += old_beat() if name == "before" else new_beat(worker)
        wall = time.perf_counter() - started
        cpu = redis_cpu(client) - cpu
        stats = client.info("commandstats")
        calls = sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config") - 2  # not INFO cpu
        if name == "after":  # the election's SET NX, GET, PEXPIRE and the sweep's EVALSHA; INFO counted above
            sent += sum(int(stats.get(f"cmdstat_{c}", {"calls": 0})["calls"]) for c in ("set", "get", "pexpire",
                                                                                         "evalsha"))
        beats = rounds * workers
        per_second = workers / period  # worker heartbeats per second in the deployment simulated
        out[name] = {"sent_per_s": sent / beats * per_second, "executed_per_s": calls / beats * per_second,
                     "redis_cpu_per_s": cpu / beats * per_second, "ms_per_beat": wall / beats * 1000}
    assert client.zcard(LEASES_KEY) == active
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", default="1000,10000,100000")
    parser.add_argument("--active", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--owner-jobs", default="10,100,1000", help="jobs of one owner, for the byte quota")
    parser.add_argument("--recovery-active", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--period", type=float, default=5.0, help="seconds between a worker's heartbeats")
    parser.add_argument("--rounds", type=int, default=3, help="heartbeats of every worker measured")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(data_dir=tmp, appendonly=False)
        try:
            client = redis.Redis.from_url(server.url)
            print(f"load average {os.getloadavg()[0]:.1f} at the start; {os.cpu_count()} cores")
            print("\n| jobs | active | before: ms per check (Redis ms) | after: ms per check (Redis ms) |")
            print("|---:|---:|---:|---:|")
            for jobs in (int(n) for n in args.jobs.split(",")):
                active = min(jobs, args.active)
                r = bench_quota(client, jobs, active, args.reps)
                assert r["after_counted"] == active
                print(f"| {jobs:,} | {active:,} | {r['before_ms']:.2f} ({r['before_redis_ms']:.2f}) | "
                      f"{r['after_ms']:.3f} ({r['after_redis_ms']:.3f}) |", flush=True)

            print("\nThe owner's byte quota check (unchanged: a walk of that owner's jobs)\n")
            print("| jobs of the owner | ms per check |\n|---:|---:|")
            for n in (int(n) for n in args.owner_jobs.split(",")):
                print(f"| {n:,} | {bench_owner_bytes(client, n, args.reps):.2f} |", flush=True)

            store = JobStore(client, artifacts=artifact_store(str(Path(tmp) / "artifacts")))
            r = bench_recovery(client, store, args.recovery_active, args.workers, args.period, args.rounds)
            print(f"\nRecovery sweep: {args.recovery_active:,} running jobs (live leases), {args.workers} workers "
                  f"beating every {args.period:g} s")
            print("\n| | commands sent /s | commands Redis executes /s | Redis CPU s per s | ms per heartbeat |")
            print("|---|---:|---:|---:|---:|")
            for name in ("before", "after"):
                x = r[name]
                print(f"| {name} | {x['sent_per_s']:,.0f} | {x['executed_per_s']:,.0f} | "
                      f"{x['redis_cpu_per_s']:.3f} | {x['ms_per_beat']:.2f} |")
            print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
