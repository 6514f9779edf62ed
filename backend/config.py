"""All service settings in one place, read from the environment (prefix `NCA_`, plus `REDIS_URL`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
# Checkpoints kept per job in its training history (weights only, ~35 KB each: ~1.7 MB per job at most).
CHECKPOINT_HISTORY = 50
# And a cap on the bytes of those weights per job (issue 21): whichever of the two is smaller binds.
CHECKPOINT_HISTORY_BYTES = 4 * 1024 * 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NCA_", extra="ignore")

    # When REDIS_URL is unset, `python -m backend.run` starts a bundled Redis and points everything at it.
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "NCA_REDIS_URL"))
    models_dir: Path = REPO_ROOT / "models"
    frontend_dir: Path = REPO_ROOT / "frontend"
    data_dir: Path = REPO_ROOT / ".data"  # `python -m backend.run` keeps its bundled Redis's data here
    # The bundled Redis's maxmemory (noeviction): ~20 KB per finished job, see docs/deploy.md "Sizing Redis".
    redis_maxmemory: str = "1gb"

    # `python -m backend.run`: the proxy is the one origin browsers open; the API and stream sit behind it.
    proxy_host: str = "127.0.0.1"
    proxy_port: int = 8000
    api_host: str = "127.0.0.1"
    api_port: int = 8001
    stream_host: str = "127.0.0.1"
    stream_port: int = 8002
    # Where browsers reach the stream service when it is not behind the page's own origin (a split
    # deployment); empty means the page's origin, path /ws/stream (the proxy routes it).
    public_stream_url: str = ""

    # Training iterations between checkpoints for jobs that do not say; None: the job option's own default
    # (backend.nca.train.TrainConfig.checkpoint_every), so that the default is written in one place.
    checkpoint_every: int | None = Field(None, ge=1)
    # The floor a job's checkpoint_every may ask for: each checkpoint writes ~200 KB to the artifact store and a
    # history entry to Redis; 1 wrote on every iteration.
    min_checkpoint_every: int = Field(10, ge=1)

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """`NCA_CHECKPOINT_EVERY=` (docker-compose.yml passes it so) means unset: the option's default."""
        return None if value == "" else value
    # Checkpoints kept in a job's history (its timeline); beyond it the history is thinned evenly, the first
    # and the latest always kept. At least 2.
    checkpoint_history: int = Field(CHECKPOINT_HISTORY, ge=2)
    # The history's weights per job, in bytes (the artifact store's, and the owner's byte quota): the history
    # keeps at most this many bytes' worth of checkpoints, and never fewer than 2 (the first and the latest).
    checkpoint_history_bytes: int = Field(CHECKPOINT_HISTORY_BYTES, ge=1)
    max_upload_bytes: int = 10 * 1024 * 1024
    # Decoded width x height; more is refused as a decompression bomb. None: the core's MAX_IMAGE_PIXELS (40 million).
    max_image_pixels: int | None = None
    cutout_seconds: float = 10.0  # time limit of a photo's subject cut-out; past it the whole image is used
    max_iterations: int = 20_000
    max_minutes: float = Field(12 * 60, gt=0)  # the longest time budget (`minutes`) a job may ask for
    # The model a time budget starts from when the request names none (backend.nca.jobspec.starter_applies says
    # where: measured in docs/benchmarks.md, "The starter"); lineage: the job's start_from. Empty: random weights.
    starter: str = "example-starter"
    device: str = "auto"  # worker device: auto (cuda if available), cpu, cuda, cuda:N

    # Stream service (docs/stream-protocol.md); it plays on `device` too.
    stream_max_sessions: int = 64  # more viewers are refused with close code 1013
    stream_idle_timeout: float = 900.0  # seconds without any client message before a stream ends (4408)
    stream_stall_timeout: float = 10.0  # seconds a client may leave a frame unaccepted before it is closed (4429)
    stream_torch_threads: int = 0  # intra-op threads for the batched steps; 0: torch's default (one per core)
    stream_send_buffer: int = 256 * 1024  # kernel send buffer per viewer, bytes (0: the OS's autotuning)
    # A job still training replays its growth: each viewer regrows from the seed every this many times the
    # job's longest training run (max_steps CA steps), so it shows what the model learned, not 700 steps
    # past it. 0: never (a training job's stream then plays on as a finished model's does).
    stream_loop_multiple: float = Field(3.0, ge=0)

    # Training service: crash recovery and limits (docs/api.md).
    lease_seconds: float = 15.0  # a running job whose worker stops renewing its lease this long is re-queued
    visibility_timeout: int = 2 * 24 * 3600  # Celery redelivers an unacked message after this: longer than any job
    progress_every: float = 0.5  # seconds between progress writes to Redis
    max_pool_megabytes: int = 2048  # training memory cap: pool_size x grid x channels x 4 bytes
    torch_threads: int = 0  # CPU threads for torch in the worker and API (0: torch's default)
    max_stored_upload_bytes: int = 2 * 1024 * 1024  # the original upload is kept only up to this size (keep_upload)
    keep_upload: bool = False  # keep each job's original upload in the artifact store (nothing reads it back)

    # The artifact store (backend/storage/artifacts.py): targets, checkpoints, history weights. A directory, or
    # `s3://bucket[/prefix]` on any S3-compatible service; empty: `data_dir`/artifacts. Every host (API, worker,
    # stream) must name the same one.
    artifacts: str = ""
    s3_endpoint_url: str = ""  # e.g. http://minio:9000 (empty: AWS S3 itself)
    s3_access_key_id: str = ""  # empty: boto3's usual chain (env AWS_*, instance role)
    s3_secret_access_key: str = ""
    s3_region: str = ""
    s3_create_bucket: bool = False  # create the bucket at start when missing (compose, `make run`; not production)

    # Access and quotas (docs/reliability.md, README "Security").
    access_token: str = ""  # when set, creating and cancelling jobs need `Authorization: Bearer <token>`
    max_active_jobs: int = 100  # queued or running jobs overall; more uploads get 429 + Retry-After
    # Per remote address: a coarse guard only, high enough for a classroom of 30 behind one NAT (the owner's
    # quotas below are the ones a person meets).
    max_active_jobs_per_client: int = 60
    stream_max_sessions_per_client: int = 64  # concurrent streams per remote address (close code 1013)

    # Owners (docs/api.md "Identity"): anonymous, in a signed cookie or the X-Owner-Token header.
    secret_key: str = ""  # signs owner tokens; empty: one generated once and kept in Redis (nca:secret)
    admin_token: str = ""  # the operator's token (X-Owner-Token): sees and manages every job
    owner_token_days: float = Field(365.0, gt=0)  # an owner token (and its cookie) is valid this long
    owners_per_address_per_hour: int = 100  # new owners one address may create in an hour
    max_active_jobs_per_owner: int = 10  # queued or running jobs per owner (429 + Retry-After)
    max_owner_megabytes: float = 200.0  # what an owner's jobs may store (targets, uploads, models); 0: no cap
    max_owner_training_minutes_per_day: float = 720.0  # training time of an owner's jobs of the last 24 h; 0: no cap
    stream_max_sessions_per_owner: int = 8  # concurrent streams per owner, all replicas together (close 1013)
    retention_days: float = 0.0  # delete jobs neither shared nor published this long after they end; 0: keep
    # Browser origins allowed to open streams, comma-separated; empty: the stream's own host, localhost and the API's.
    stream_allowed_origins: str = ""
    stream_max_message_bytes: int = 4096  # a bigger client message closes the stream (1009)
    stream_command_rate: float = 100.0  # commands per second a stream may send on average...
    stream_command_burst: int = 200  # ...with bursts this big; over it: an error event, and a flood closes (1008)

    # Rooms: many people on one CA (docs/stream-protocol.md, "Rooms"; docs/deploy.md, "Rooms across replicas").
    room_max_participants: int = Field(60, ge=1)  # connections to one room; more are refused with 1013
    rooms_per_client: int = Field(3, ge=1)  # open rooms one creator (its address, until owners exist) may hold
    room_edit_rate: float = Field(10.0, gt=0)  # erase/seed commands per second per participant on average...
    room_edit_burst: int = Field(30, ge=1)  # ...with bursts this big; over it: a `throttled` event, the edit ignored
    room_idle_timeout: float = Field(600.0, gt=0)  # seconds without a command, or with nobody in it: the room ends
    room_snapshot_every: float = Field(2.0, gt=0)  # seconds between snapshots of a room's state in Redis
    room_lease_seconds: float = Field(3.0, gt=0)  # a room whose replica stops renewing this long moves on
    room_fps: float = Field(30.0, ge=1, le=60)  # frames per second a new room plays at (the host may change it)


@lru_cache
def get_settings() -> Settings:
    return Settings()
