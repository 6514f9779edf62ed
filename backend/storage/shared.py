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
from .jobs import JobStore
from .models import ModelCatalog
from .queue import TrainingQueue, make_sender
from .quota import JobQuota
from .rooms import RoomStore
from .workers import Presence


class Storage:
    def __init__(self, client: redis.Redis, settings: Settings, celery: Celery | None = None):
        """`celery`: the app that sends training messages (a worker passes its own; default: a sender)."""
        self._client = client
        self.artifacts: ArtifactStore = artifacts_from_settings(settings)
        self.jobs = JobStore(client, settings.checkpoint_history, self.artifacts)
        self.catalog = ModelCatalog(self.jobs, settings.models_dir)
        self.quota = JobQuota(client, settings.max_active_jobs, settings.max_active_jobs_per_client)
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
