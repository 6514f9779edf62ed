"""Request and response bodies of the HTTP API (also what /docs shows)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from backend.nca import EXPERIMENTS, TrainConfig
from backend.nca.model import CHANNELS
from backend.nca.target import MAX_PADDING, MAX_TARGET_SIZE, MIN_TARGET_SIZE, TARGET_PADDING, TARGET_SIZE, Background
from backend.storage.jobs import Job
from backend.storage.models import ModelEntry

_CORE = {f.name: f.default for f in fields(TrainConfig)}  # the core's defaults are the API's defaults

EXPERIMENT_HELP = {
    "growing": "Experiment 1: learns to grow the image from one seed cell (it may not stay stable afterwards).",
    "persistent": "Experiment 2: grows the image and keeps it stable (trained from a pool of its own states).",
    "regenerating": "Experiment 3: grows, persists and regrows parts that are erased (pool plus damage).",
}


class JobOptions(BaseModel):
    """Training options; each has a default. `iterations` is also capped by the server's NCA_MAX_ITERATIONS."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=80, description="shown in lists; default: the image file name")
    experiment: Literal["growing", "persistent", "regenerating"] = _CORE["experiment"]
    iterations: int = Field(_CORE["iterations"], ge=1, le=1_000_000)
    target_size: int = Field(TARGET_SIZE, ge=MIN_TARGET_SIZE, le=MAX_TARGET_SIZE,
                             description="longer side of the target in cells")
    padding: int = Field(TARGET_PADDING, ge=0, le=MAX_PADDING, description="empty cells around the target")
    background: Background = Field("auto", description="what happens to the image's background: `cutout` cuts "
                                   "the subject out and crops to it, `key` makes the border colour transparent, "
                                   "`keep` leaves the image as it is; `auto`: `cutout` for an image without a "
                                   "transparent background, else `keep`")
    key_background: bool = Field(False, description="deprecated: true is the old way to say background=key",
                                 json_schema_extra={"deprecated": True})
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="default: a random seed, recorded in the job")
    batch_size: int = Field(_CORE["batch_size"], ge=1, le=64)
    pool_size: int = Field(_CORE["pool_size"], ge=1, le=4096)
    min_steps: int = Field(_CORE["min_steps"], ge=1, le=256, description="CA steps per iteration, at least")
    max_steps: int = Field(_CORE["max_steps"], ge=2, le=512, description="CA steps per iteration, below this")
    lr: float = Field(_CORE["lr"], gt=0, le=0.1)
    lr_decay_at: int = Field(_CORE["lr_decay_at"], ge=0, description="iteration from which lr is 10x lower")
    fire_rate: float = Field(_CORE["fire_rate"], gt=0, le=1)
    checkpoint_every: int | None = Field(None, ge=1, le=1_000_000,
                                         description="iterations between checkpoints; default: NCA_CHECKPOINT_EVERY")

    @field_validator("iterations")
    @classmethod
    def _within_server_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_iterations")
        if limit is not None and value > limit:
            raise ValueError(f"at most {limit} iterations are allowed on this server")
        return value

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> JobOptions:
        if self.key_background:  # clients from before `background` (and the jobs they stored) keep working
            if "background" in self.model_fields_set and self.background != "key":
                raise ValueError("key_background=true means background=key: send only background")
            self.background = "key"
        if self.min_steps >= self.max_steps:
            raise ValueError("min_steps must be below max_steps")
        uses_pool = bool(EXPERIMENTS[self.experiment]["use_pool"])
        if uses_pool and self.pool_size < self.batch_size:
            raise ValueError("pool_size must be at least batch_size")
        if self.experiment == "regenerating" and self.batch_size <= int(EXPERIMENTS["regenerating"]["damage_count"]):
            raise ValueError("the regenerating experiment needs batch_size of at least 4")
        limit_mb = (info.context or {}).get("max_pool_megabytes")
        side = self.target_size + 2 * self.padding
        pool_mb = self.pool_size * CHANNELS * side * side * 4 / 2**20
        if uses_pool and limit_mb is not None and pool_mb > limit_mb:
            raise ValueError(f"the sample pool would need {pool_mb:,.0f} MB (at most {limit_mb:,} MB): "
                             "lower pool_size, target_size or padding")
        return self


class JobLinks(BaseModel):
    self: str
    cancel: str
    target: str
    model_file: str | None = Field(None, description="null until the first checkpoint")
    preview: str | None = Field(None, description="null until the first checkpoint")


class JobOut(Job):
    links: JobLinks

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/api/jobs/{job.id}"
        has_model = job.model_version > 0
        links = JobLinks(self=base, cancel=f"{base}/cancel", target=f"{base}/target.png",
                         model_file=f"/api/models/{job.id}/file" if has_model else None,
                         preview=f"{base}/preview.png" if has_model else None)
        return cls(**job.model_dump(), links=links)


class JobList(BaseModel):
    items: list[JobOut]
    total: int
    offset: int
    limit: int


class ModelOut(ModelEntry):
    file_url: str

    @classmethod
    def of(cls, entry: ModelEntry) -> ModelOut:
        return cls(**entry.model_dump(), file_url=f"/api/models/{entry.id}/file")


class RedisHealth(BaseModel):
    ok: bool
    url: str
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]  # degraded: Redis is fine but no worker is running
    redis: RedisHealth
    workers: list[dict[str, Any]]
    queued_messages: int | None = None


class ConfigOut(BaseModel):
    stream_url: str | None
    stream_port: int
    max_upload_bytes: int
    max_iterations: int
    experiments: dict[str, str]
    defaults: dict[str, Any]
    limits: dict[str, dict[str, float]]
    auth_required: bool = Field(False, description="creating and cancelling jobs need a bearer token")


class ErrorOut(BaseModel):
    detail: str
