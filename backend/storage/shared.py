"""What the services share: jobs, the job quota, worker presence and the training queue in Redis;
the models (examples on this machine's disk, jobs' checkpoints in Redis).

`Storage.connect(settings)` opens one Redis client and builds each part on it; the client stays
inside backend/storage, every part offers typed methods (docs/api.md, "Storage").
"""

from __future__ import annotations

import redis
from celery import Celery

from backend.config import Settings

from .artifacts import ArtifactStore, ArtifactUnavailable, artifacts_from_settings
from .connection import connect
from .dispatch import FairQueue
from .jobs import JobStore
from .models import ModelCatalog
from .owners import Owners
from .queue import TrainingQueue, make_sender
from .quota import JobQuota
from .retention import Deletion
from .rooms import RoomStore
from .sharing import Access
from .workers import Presence


class Storage:
    def __init__(self, client: redis.Redis, settings: Settings, celery: Celery | None = None):
        """`celery`: the app that sends training messages (a worker passes its own; default: a sender)."""
        self._client = client
        self.artifacts: ArtifactStore = artifacts_from_settings(settings)
        self.jobs = JobStore(client, settings.checkpoint_history, self.artifacts, settings.checkpoint_history_bytes)
        self.catalog = ModelCatalog(self.jobs, settings.models_dir)
        self.quota = JobQuota(client, settings.max_active_jobs, settings.max_active_jobs_per_client,
                              settings.max_active_jobs_per_owner, int(settings.max_owner_megabytes * 1e6),
                              settings.max_owner_training_minutes_per_day * 60)
        self.owners = Owners(client, settings.secret_key, settings.owner_token_days,
                             settings.owners_per_address_per_hour)
        self.access = Access(client, self.owners)
        self.fair = FairQueue(client)  # which waiting job a free worker takes (round-robin across owners)
        self.deletion = Deletion(client, self.jobs, settings.models_dir, settings.retention_days, self.fair)
        self.workers = Presence(client)
        self.rooms = RoomStore(client, settings.room_idle_timeout, settings.room_lease_seconds)
        self.queue = TrainingQueue(client, celery if celery is not None else make_sender(settings))

    @classmethod
    def connect(cls, settings: Settings, celery: Celery | None = None) -> Storage:
        """Connects lazily: nothing fails here while Redis is down, and it reconnects by itself after."""
        return cls(connect(settings.redis_url), settings, celery)

    def ping(self) -> None:
        """Raises one of REDIS_DOWN_ERRORS (backend.storage.connection) when Redis is unreachable."""
        self._client.ping()

    def memory(self) -> tuple[int, int]:
        """Redis's (used_memory, maxmemory) in bytes; maxmemory 0 means no limit."""
        info = self._client.info("memory")
        return int(info.get("used_memory", 0)), int(info.get("maxmemory", 0))

    def artifacts_error(self) -> str | None:
        """Why the artifact store cannot be reached, or None when it can."""
        try:
            self.artifacts.ping()
        except ArtifactUnavailable as exc:
            return str(exc)
        return None

    def close(self) -> None:
        self._client.close()
