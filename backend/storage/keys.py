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
                  "jobs a worker has claimed and not finished (crash recovery looks here)")
JOB = Key("nca:job:<id>", "hash", "the job record (fields as above; lists, `plan` and `spec` as JSON), plus the "
          "bookkeeping fields `spec_version`, `loss_every` (the loss history's stride), the claim: `owner` "
          "(the lease token) and `lease_ms`, and the artifact pointers: `target_sha256`, `upload_sha256`, "
          "`model_key` and `model_sha256` (the latest checkpoint's object)")
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
QUOTA_ACTIVE = Key("nca:quota:active", "sorted set",
                   "the active-job caps: job id or pending reservation -> expiry (`backend/storage/quota.py`)")
QUOTA_OWNER = Key("nca:quota:owner", "hash", "the active-job caps: job id or reservation -> client")
STREAM_CLIENT = Key("nca:stream:client:<address>", "sorted set + TTL",
                    "the streams a client address has open on any stream replica: slot id -> expiry (ms, Redis "
                    "clock); renewed every 10 s by its replica, lapses 30 s after "
                    "(`backend/storage/stream_clients.py`)")
ROOM = Key("nca:room:<id>", "hash + TTL", "a room: `model`, `code`, `client` (its creator), `created_at`, `host` "
           "(SHA-256 of the host token); expires `NCA_ROOM_IDLE_TIMEOUT` after its replica last touched it "
           "(`backend/storage/rooms.py`)")
ROOM_CODE = Key("nca:room:code:<CODE>", "string + TTL", "join code -> room id")
ROOM_OWNER = Key("nca:room:<id>:owner`, `nca:room:<id>:want", "string + TTL",
                 "the stream replica that plays the room (a lease, `NCA_ROOM_LEASE_SECONDS`); a replica the proxy "
                 "now sends its joiners to (asks the owner to hand over)")
ROOM_SNAPSHOT = Key("nca:room:<id>:snapshot", "hash + TTL", "`meta` (JSON: model, version, step, frame, paused, fps, "
                    "steps_per_frame, angle, shape), `state` (float16 bytes): what another replica resumes from")
ROOMS_CLIENT = Key("nca:rooms:client:<address>", "sorted set + TTL",
                   "a creator's rooms (room id -> created_at), for `NCA_ROOMS_PER_CLIENT`")
ELECTED = Key("nca:elected:<role>", "string + TTL", "the one process doing a periodic chore (`orphan-sweep`: the "
              "artifact store's objects no record points at), renewed by its holder")
TRAINING_QUEUE = Key("nca-training", "list",
                     "Celery's queue: task `nca.train_job`, one argument, the job id (`backend/storage/queue.py`)")
UNACKED = Key("unacked", "hash", "kombu's messages received by a worker and not yet acknowledged "
              "(delivery tag -> message)")
UNACKED_INDEX = Key("unacked_index", "sorted set", "kombu's unacknowledged messages: delivery tag -> time received")
CHECKPOINTS_CHANNEL = Key("nca:checkpoints", "pub/sub channel",
                          "after each checkpoint, and when a job with a checkpoint changes status: `{\"model_id\": "
                          "\"<job id>\", \"version\": <int>, \"iteration\": <int>, \"status\": \"<job status>\"}`, "
                          "published by the job store's scripts in the same atomic step as the change")

LAYOUT: tuple[Key, ...] = (JOBS, JOBS_ACTIVE, JOB, JOB_TARGET, JOB_UPLOAD, JOB_MODEL, JOB_HISTORY,
                           JOB_HISTORY_WEIGHTS, JOB_LEASE, WORKER, WORKERS, QUOTA_ACTIVE, QUOTA_OWNER, STREAM_CLIENT,
                           ROOM, ROOM_CODE, ROOM_OWNER, ROOM_SNAPSHOT, ROOMS_CLIENT,
                           ELECTED, TRAINING_QUEUE, UNACKED, UNACKED_INDEX, CHECKPOINTS_CHANNEL)


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
