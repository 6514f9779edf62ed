"""Who may see a job: its owner, the operator, holders of a share link, everybody once it is published.

`Access.visible(model_id, caller)` is the one answer to "may this caller see this model or job",
asked by the API's routes, the stream before it plays, and rooms. A job nobody may see is answered
like a job that does not exist (404), so an id cannot be probed.

- A share link's token (`nca:share:<token>` -> job id) is 128 random bits, read-only: it lets its
  holder watch, download, export and read the card and timeline, never cancel, delete or share on.
  Revoking deletes the key: the link is then a 404.
- Publishing adds a finished job to the gallery (`nca:gallery`), which every visitor's listing shows
  (a page at a time: `model_phases`).
- A job from before owners existed (no `nca:job:<id>:owner`) is found by its id as it was then, and
  listed to nobody but the operator.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import redis

from . import keys
from .connection import text
from .jobs import is_job_id
from .listing import IndexSource, ListSource, Source
from .models import EXAMPLE_PREFIX, BadReference, parse_reference
from .owners import Caller, Owners

SHARE_TOKEN_BYTES = 16
MAX_SHARES_PRESENTED = 20  # share tokens one request may carry (a browser keeps the links it opened)


def job_of_model(model_id: str) -> str | None:
    """The job a model id or reference names (None: an example, or not a job's id at all)."""
    try:
        base, _ = parse_reference(model_id)
    except BadReference:
        return None
    return base if is_job_id(base) and not base.startswith(EXAMPLE_PREFIX) else None


class Access:
    """Share links, the public gallery, and `visible`."""

    def __init__(self, client: redis.Redis, owners: Owners):
        self._client, self.owners = client, owners

    # --- the question ----------------------------------------------------------------------

    def visible(self, model_id: str, caller: Caller) -> bool:
        """Whether `caller` may see the model or job `model_id` (a job id, `<job id>@<iteration>`, an example).

        True for what is not a job's (examples; an unknown one is then the catalog's 404 to give); False for a
        job that does not exist.
        """
        job_id = job_of_model(model_id)
        if job_id is None or caller.admin:
            return True
        shares = sorted(caller.shares)[:MAX_SHARES_PRESENTED]
        with self._client.pipeline(transaction=False) as pipe:
            pipe.exists(keys.job_key(job_id))
            pipe.get(keys.job_key(job_id, "owner"))
            pipe.zscore(keys.GALLERY.pattern, job_id)
            for token in shares:
                pipe.get(keys.SHARE.prefix + token)
            exists, owner, published, *shared = pipe.execute()
        owner = text(owner)
        if not exists:
            return False  # no job (deleted, never was): everybody gets the same 404
        if owner is None or owner == caller.owner or published is not None:
            return True
        return any(text(j) == job_id for j in shared)

    def manages(self, job_id: str, caller: Caller) -> bool:
        """Whether `caller` may change the job (cancel, delete, share, publish): its owner or the operator.
        A job from before owners existed: the operator only."""
        if caller.admin:
            return True
        return caller.owner is not None and self.owners.owner_of(job_id) == caller.owner

    def shared_jobs(self, caller: Caller) -> list[str]:
        """The jobs the caller's live share tokens open (revoked ones left out)."""
        shares = sorted(caller.shares)[:MAX_SHARES_PRESENTED]
        if not shares:
            return []
        found = self._client.mget([keys.SHARE.prefix + t for t in shares])
        return list(dict.fromkeys(text(j) for j in found if j is not None))

    def describe(self, job_ids: list[str]) -> dict[str, tuple[bool, list[str]]]:
        """Per job: whether it is published, and its live share tokens (one round trip)."""
        with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.zscore(keys.GALLERY.pattern, job_id)
                pipe.smembers(keys.job_key(job_id, "shares"))
            rows = pipe.execute()
        return {job_id: (rows[2 * i] is not None, sorted(text(t) for t in rows[2 * i + 1]))
                for i, job_id in enumerate(job_ids)}

    # --- share links ------------------------------------------------------------------------

    def share(self, job_id: str) -> str:
        """A new share token for the job."""
        token = secrets.token_urlsafe(SHARE_TOKEN_BYTES)
        with self._client.pipeline(transaction=True) as pipe:
            pipe.set(keys.SHARE.prefix + token, job_id)
            pipe.sadd(keys.job_key(job_id, "shares"), token)
            pipe.execute()
        return token

    def shares(self, job_id: str) -> list[str]:
        return sorted(text(t) for t in self._client.smembers(keys.job_key(job_id, "shares")))

    def job_of_share(self, token: str) -> str | None:
        if not token or len(token) > 64:
            return None
        return text(self._client.get(keys.SHARE.prefix + token))

    def revoke(self, job_id: str, token: str) -> bool:
        """False when the job has no such share (already revoked, or another job's)."""
        if self.job_of_share(token) != job_id:
            return False
        with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(keys.SHARE.prefix + token)
            pipe.srem(keys.job_key(job_id, "shares"), token)
            pipe.execute()
        return True

    # --- the gallery ------------------------------------------------------------------------

    def publish(self, job_id: str) -> None:
        self._client.zadd(keys.GALLERY.pattern, {job_id: time.time()}, nx=True)

    def unpublish(self, job_id: str) -> None:
        self._client.zrem(keys.GALLERY.pattern, job_id)

    def published(self, job_id: str) -> bool:
        return self._client.zscore(keys.GALLERY.pattern, job_id) is not None

    # --- what a caller's model listing reads ---------------------------------------------------

    @staticmethod
    def model_phase_names(caller: Caller) -> list[str]:
        """The phases `model_phases` gives the caller, without asking Redis (to check a cursor)."""
        return ["all"] if caller.admin else [*(["owner"] if caller.owner else []), "shared", "public"]

    def model_phases(self, caller: Caller) -> list[tuple[str, Source]]:
        """Where the caller's model listing reads, in order (backend.storage.listing): every job (the operator),
        or its own, the ones its share links open, the public gallery; each an index read newest first (the
        share links: their short list), never the whole of one."""
        sources: dict[str, Callable[[], Source]] = {
            "all": lambda: IndexSource(self._client, keys.JOBS.pattern),
            "owner": lambda: self.owners.index(caller.owner),
            "shared": lambda: ListSource(self.shared_jobs(caller)),
            "public": lambda: IndexSource(self._client, keys.GALLERY.pattern),
        }
        return [(name, sources[name]()) for name in self.model_phase_names(caller)]
