"""Every Redis key this product uses, in one table: the code takes its names from here and
docs/api.md's "Storage" table is generated from it (`python -m backend.storage.keys` prints it;
tests/storage/test_key_layout.py fails when the docs differ).

Keys with a `<...>` part are prefixes: the code appends the id. The job record's hash fields are
listed by `backend.storage.jobs.Job` and `BOOKKEEPING_FIELDS` (docs/api.md "The job record").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    pattern: str  # the key's name, `<id>` where an id goes
    kind: str  # the Redis type, as a reader should expect it
    content: str  # what it holds, in a line

    @property
    def prefix(self) -> str:
        """The part before the first `<`: for a fixed key, the whole name."""
        return self.pattern.split("<", 1)[0]


JOBS = Key("nca:jobs", "sorted set", "job id -> created_at (listing, newest first)")
JOBS_ACTIVE = Key("nca:jobs:active", "set",
                  "legacy (before `nca:leases`): jobs a worker of the previous version claimed; each lease sweep moves "
                  "its members to `nca:leases` first, then deletes it")
LEASES = Key("nca:leases", "sorted set", "jobs a worker has claimed and not finished: job id -> lease deadline (ms, "
             "Redis clock), written in the same script as the lease; a job given back (shutdown) or whose resend "
             "failed is due at once. The one elected sweeper reads only the due ones (`ZRANGEBYSCORE -inf now`)")
JOB = Key("nca:job:<id>", "hash", "the job record (fields as above; lists, `plan` and `spec` as JSON), plus the "
          "bookkeeping fields `spec_version`, `loss_every` (the loss history's stride), the claim: `owner` "
          "(the lease token) and `lease_ms`, and the artifact pointers: `target_sha256`, `upload_sha256`, "
          "`model_key` and `model_sha256` (the latest checkpoint's object), and `quota_tags` "
          "(`|a:<address>|o:<owner>|`: the quota counters it counts in, while it does)")
JOB_TARGET = Key("nca:job:<id>:target", "string", "legacy (jobs stored before the artifact store; moved there at "
                 "start, read through until then): the processed target")
JOB_UPLOAD = Key("nca:job:<id>:upload", "string", "legacy: the original upload (deleted by the migration)")
JOB_MODEL = Key("nca:job:<id>:model", "string", "legacy: model file bytes of the latest checkpoint")
JOB_HISTORY = Key("nca:job:<id>:history", "sorted set", "the training history: score = iteration, member = JSON "
                  "`{\"iteration\", \"loss\", \"at\", \"version\", \"key\", \"sha256\"}` (`key`: the "
                  "weights' object in the artifact store; a listing is one `ZRANGE`)")
JOB_HISTORY_WEIGHTS = Key("nca:job:<id>:history:weights", "hash",
                          "legacy: iteration -> the weights-only model file of that checkpoint")
JOB_LEASE = Key("nca:job:<id>:lease", "string + TTL", "token of the worker training it")
WORKER = Key("nca:worker:<id>", "string + TTL", "worker presence (JSON: id, device, job, started_at, seen_at, "
             "threads, speed: the worker's measured speed)")
WORKERS = Key("nca:workers", "set",
              "ids of the workers with a presence key (an expired one is dropped when `/api/health` reads it)")
QUOTA_COUNTS = Key("nca:quota:counts", "hash", "the active-job caps (`backend/storage/quota.py`): `total`, "
                   "`a:<address>`, `o:<owner>` -> queued or running jobs counted for it; +1 when an upload becomes a "
                   "job, -1 in the script that gives the job a final status or deletes it (a field at 0 is deleted)")
QUOTA_JOBS = Key("nca:quota:jobs", "sorted set", "the jobs counted in `nca:quota:counts`: job id -> when its "
                 "slot was taken (what is ahead of a new job, for the API's estimate)")
QUOTA_PENDING = Key("nca:quota:pending:<tag>", "sorted set + TTL", "the active-job caps' reservations of uploads "
                    "being read: reservation id -> expiry; `<tag>` is `total`, `a:<address>` or `o:<owner>`")
QUOTA_ACTIVE = Key("nca:quota:active", "sorted set", "legacy (before the counters): job id or reservation -> "
                   "expiry; turned into `nca:quota:counts` once at start, then deleted")
QUOTA_OWNER = Key("nca:quota:owner", "hash", "legacy (before the counters): job id or reservation -> whom it "
                  "counted for (`|a:<address>|o:<owner>|`); deleted with `nca:quota:active`")
STREAM_CLIENT = Key("nca:stream:client:<address>", "sorted set + TTL",
                    "the streams a client address (or `owner:<owner id>`: an owner) has open on any stream replica: "
                    "slot id -> expiry (ms, Redis clock); renewed every 10 s by its replica, lapses 30 s after "
                    "(`backend/storage/stream_clients.py`)")
ELECTED = Key("nca:elected:<role>", "string + TTL", "the one process doing a periodic chore (`orphan-sweep`: the "
              "artifact store's objects no record points at; `lease-sweep`: re-queueing the jobs whose lease "
              "expired), renewed by its holder")
TRAINING_QUEUE = Key("nca-training", "list",
                     "Celery's queue: task `nca.train_job`, one argument, the job id (`backend/storage/queue.py`)")
UNACKED = Key("unacked", "hash", "kombu's messages received by a worker and not yet acknowledged "
              "(delivery tag -> message)")
UNACKED_INDEX = Key("unacked_index", "sorted set", "kombu's unacknowledged messages: delivery tag -> time received")
CHECKPOINTS_CHANNEL = Key("nca:checkpoints", "pub/sub channel",
                          "after each checkpoint, and when a job with a checkpoint changes status: `{\"model_id\": "
                          "\"<job id>\", \"version\": <int>, \"iteration\": <int>, \"status\": \"<job status>\"}`, "
                          "published by the job store's scripts in the same atomic step as the change")

# Owners, sharing, publishing (backend/storage/owners.py, backend/storage/sharing.py).
SECRET = Key("nca:secret", "string", "the key owner tokens are signed with when `NCA_SECRET_KEY` is unset "
             "(generated by the first service that needs it, SET NX)")
JOB_OWNER = Key("nca:job:<id>:owner", "string", "the job's owner id (none: a job from before owners existed)")
OWNER_JOBS = Key("nca:owner:<owner>:jobs", "sorted set", "an owner's jobs: job id -> created_at (its listing)")
OWNERS_MINTED = Key("nca:owners:minted:<address>", "string + TTL",
                    "owners created from an address this hour (`NCA_OWNERS_PER_ADDRESS_PER_HOUR`)")
SHARE = Key("nca:share:<token>", "string", "a share link's token -> the job id it opens (read-only)")
JOB_SHARES = Key("nca:job:<id>:shares", "set", "the job's live share tokens (revoked ones are removed)")
GALLERY = Key("nca:gallery", "sorted set", "published jobs: job id -> published_at (every visitor's listing)")
# Fair dispatch (backend/storage/dispatch.py).
JOB_DISPATCHED = Key("nca:job:<id>:dispatched", "string", "when a worker took the job's fair-dispatch entry")
FAIR_OWNERS = Key("nca:fair:owners", "sorted set", "owners with waiting jobs -> when their last job started "
                  "(least recently served first)")
FAIR_QUEUE = Key("nca:fair:queue:<owner>", "list", "an owner's waiting jobs, first in first out (`-`: jobs "
                 "without an owner)")
FAIR_RESUME = Key("nca:fair:resume", "list", "jobs recovery re-queued: taken before any other")
FAIR_WAITING = Key("nca:fair:waiting", "set", "jobs with an entry not taken yet")
FAIR_SERVED = Key("nca:fair:served:<owner>", "string + TTL", "when the owner's last job started (a day)")
RETENTION_LOCK = Key("nca:retention:lock", "string + TTL", "held by the one process sweeping expired jobs")
# Rooms (backend/storage/rooms.py; the CA state itself lives on the stream replica that holds the lease).
ROOM = Key("nca:room:<id>", "hash + TTL", "a room: `model`, `code`, `client` (its creator: `owner:<owner id>`, or "
           "an address), `created_at`, `host` (SHA-256 of the host token); expires `NCA_ROOM_IDLE_TIMEOUT` after "
           "its replica last touched it")
ROOM_CODE = Key("nca:room:code:<CODE>", "string + TTL", "join code -> room id")
ROOM_OWNER = Key("nca:room:<id>:owner", "string + TTL", "the stream replica that plays the room (a lease, "
                 "`NCA_ROOM_LEASE_SECONDS`)")
ROOM_WANT = Key("nca:room:<id>:want", "string + TTL", "a replica the proxy now sends the room's joiners to (asks the "
                "lease holder to hand the room over)")
ROOM_SNAPSHOT = Key("nca:room:<id>:snapshot", "hash + TTL", "`meta` (JSON: model, version, step, frame, paused, fps, "
                    "steps_per_frame, angle, shape), `state` (float16 bytes): what another replica resumes from")
ROOMS_CLIENT = Key("nca:rooms:client:<creator>", "sorted set + TTL", "a creator's rooms (room id -> created_at), for "
                   "`NCA_ROOMS_PER_CLIENT`")

LAYOUT: tuple[Key, ...] = (JOBS, LEASES, JOBS_ACTIVE, JOB, JOB_TARGET, JOB_UPLOAD, JOB_MODEL, JOB_HISTORY,
                           JOB_HISTORY_WEIGHTS, JOB_LEASE, WORKER, WORKERS, QUOTA_COUNTS, QUOTA_JOBS, QUOTA_PENDING,
                           QUOTA_ACTIVE, QUOTA_OWNER, STREAM_CLIENT,
                           TRAINING_QUEUE, UNACKED, UNACKED_INDEX, CHECKPOINTS_CHANNEL, SECRET, JOB_OWNER, OWNER_JOBS,
                           OWNERS_MINTED, SHARE, JOB_SHARES, GALLERY, JOB_DISPATCHED, FAIR_OWNERS, FAIR_QUEUE,
                           FAIR_RESUME, FAIR_WAITING, FAIR_SERVED, RETENTION_LOCK, ROOM, ROOM_CODE, ROOM_OWNER,
                           ROOM_WANT, ROOM_SNAPSHOT, ROOMS_CLIENT, ELECTED)


def job_key(job_id: str, part: str | None = None) -> str:
    """`nca:job:<id>` or one of its parts (`target`, `model`, `history:weights`, ...)."""
    return f"{JOB.prefix}{job_id}" if part is None else f"{JOB.prefix}{job_id}:{part}"


def markdown_table() -> str:
    """docs/api.md's key table."""
    rows = ["| Key | Type | Content |", "|---|---|---|"]
    rows += [f"| `{key.pattern}` | {key.kind} | {key.content} |" for key in LAYOUT]
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
