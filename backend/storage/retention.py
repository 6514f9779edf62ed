"""Deleting a job, every byte of it, and the retention sweep that deletes expired ones.

`Deletion.delete(job_id)` removes, in one Lua script (atomic: a worker's next write is refused by
its lease check, so nothing of the job comes back): the record, every `nca:job:<id>:*` part the key
table lists (target, upload, model, history and its weights, lease, owner, shares), its share
tokens, and its place in every index (all jobs, the owner's, lease deadlines, gallery); a job still counted
for the active-job caps stops counting in the same step. Then the
model file the worker exported to `models/jobs/<id>.safetensors` on this machine. Nothing of any
other job is touched. A running job's worker loses its lease and stops at its next iteration.

Retention (`NCA_RETENTION_DAYS`, 0 = off): a job that is neither running nor queued, shared nor
published is deleted that many days after it finished (or was created, if it never ran). One
process sweeps at a time: the sweep holds `nca:retention:lock` for SWEEP_EVERY seconds and does not
give it back, so across every worker the sweep runs about once per period.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from . import keys
from .connection import text
from .dispatch import FairQueue
from .job_scripts import LUA_COMMON
from .jobs import JobStore, is_job_id
from .listing import IndexSource
from .status import FINISHED

log = logging.getLogger(__name__)
SWEEP_EVERY = 600.0  # seconds between sweeps, across all processes
SWEEP_CHUNK = 500  # index entries the sweep reads at a time
JOB_PARTS = tuple(key.pattern.removeprefix(keys.JOB.pattern + ":") for key in keys.LAYOUT
                  if key.pattern.startswith(keys.JOB.pattern + ":"))

# ARGV: id, job key prefix, owner prefix, share prefix, jobs index, lease deadlines, gallery, then the job's
# key parts. Returns 1 when there was something of the job to delete.
_DELETE = LUA_COMMON + """
local id = ARGV[1]
local base = ARGV[2] .. id
local existed = redis.call('EXISTS', base, base .. ':owner', base .. ':target')
release_quota(base, id)
local owner = redis.call('GET', base .. ':owner')
if owner then redis.call('ZREM', ARGV[3] .. owner .. ':jobs', id) end
for _, token in ipairs(redis.call('SMEMBERS', base .. ':shares')) do redis.call('DEL', ARGV[4] .. token) end
for i = 8, #ARGV do redis.call('DEL', base .. ':' .. ARGV[i]) end
redis.call('DEL', base)
redis.call('ZREM', ARGV[5], id)
redis.call('ZREM', ARGV[6], id)
redis.call('ZREM', ARGV[7], id)
return existed > 0 and 1 or 0
"""


class Deletion:
    """Delete a job everywhere it lives; sweep expired ones."""

    def __init__(self, client: redis.Redis, jobs: JobStore, models_dir: str | Path, retention_days: float = 0.0,
                 fair: FairQueue | None = None):
        self._client, self.jobs, self.models_dir = client, jobs, Path(models_dir)
        self.fair = fair if fair is not None else FairQueue(client)
        self.retention_seconds = retention_days * 86400
        self._delete = client.register_script(_DELETE)

    def exported_file(self, job_id: str) -> Path:
        return self.models_dir / "jobs" / f"{job_id}.safetensors"

    def delete(self, job_id: str) -> bool:
        """Remove the job; False when there was nothing of it (idempotent)."""
        if not is_job_id(job_id):
            return False
        with contextlib.suppress(KeyError):  # a queued or running job is cancelled first (the stream is told)
            self.jobs.cancel(job_id)
        self.fair.drop(job_id, text(self._client.get(keys.job_key(job_id, "owner"))))
        args = [job_id, keys.job_key(""), keys.OWNER_JOBS.prefix, keys.SHARE.prefix, keys.JOBS.pattern,
                keys.LEASES.pattern, keys.GALLERY.pattern, *JOB_PARTS]
        existed = bool(self._delete(keys=[], args=args))
        # Its files, after the record (a crash between the two leaves orphans, which the orphan sweep removes).
        self.jobs.artifacts.delete_job(job_id)
        try:
            self.exported_file(job_id).unlink(missing_ok=True)
        except OSError as exc:  # a read-only models folder: the bytes in Redis are gone all the same
            log.warning("job %s: could not remove its exported model file: %s", job_id, exc)
        return existed

    def expires_at(self, finished_at: float | None, created_at: float, status: str, kept: bool) -> float | None:
        """When retention will delete a job: None when it is off, the job is active, shared or published."""
        if self.retention_seconds <= 0 or kept or status not in FINISHED:
            return None
        return (finished_at or created_at) + self.retention_seconds

    def sweep_if_due(self, now: float | None = None, force: bool = False) -> list[str] | None:
        """Delete the expired jobs, if no other process swept within SWEEP_EVERY; the ids deleted, or None
        when it was not this process's turn (or retention is off)."""
        if self.retention_seconds <= 0:
            return None
        took = self._client.set(keys.RETENTION_LOCK.pattern, str(time.time()), nx=True, ex=int(SWEEP_EVERY))
        if not took and not force:
            return None
        return self.sweep(time.time() if now is None else now)

    def _created_before(self, cutoff: float) -> Iterator[str]:
        """The jobs created before `cutoff`, oldest first, read SWEEP_CHUNK at a time (never the whole index at
        once), each chunk strictly after the last (score, id) read, so deleting them on the way skips none."""
        index, after = IndexSource(self._client, keys.JOBS.pattern), None
        while True:
            rows = index.oldest_after(after, SWEEP_CHUNK, cutoff)
            yield from (job_id for job_id, _ in rows)
            if len(rows) < SWEEP_CHUNK:
                return
            after = (rows[-1][1], rows[-1][0])

    def sweep(self, now: float) -> list[str]:
        """Every expired job (see the module's doc), deleted; their ids."""
        cutoff = now - self.retention_seconds
        deleted = []
        for job_id in self._created_before(cutoff):
            with self._client.pipeline(transaction=False) as pipe:
                pipe.hmget(keys.job_key(job_id), ["status", "finished_at", "created_at"])
                pipe.scard(keys.job_key(job_id, "shares"))
                pipe.zscore(keys.GALLERY.pattern, job_id)
                (status, finished, created), shares, published = pipe.execute()
            status = text(status)
            kept = shares > 0 or published is not None
            ended = float(text(finished) or text(created) or 0)
            if status is None or status not in FINISHED or kept or ended > cutoff:
                continue
            if self.delete(job_id):
                deleted.append(job_id)
        if deleted:
            log.info("retention: deleted %d expired jobs", len(deleted))
        return deleted
