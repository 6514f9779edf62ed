"""Request and response bodies of the HTTP API (also what /docs shows)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from backend.nca.jobspec import DEFAULTS, OPTIONS, SERVER_CHOSEN, OptionField
from backend.storage.jobs import Checkpoint, Job, JobStatus
from backend.storage.models import ModelEntry, reference

EXPERIMENT_HELP = {
    "growing": "Experiment 1: learns to grow the image from one seed cell (it may not stay stable afterwards).",
    "persistent": "Experiment 2: grows the image and keeps it stable (trained from a pool of its own states).",
    "regenerating": "Experiment 3: grows, persists and regrows parts that are erased (pool plus damage).",
}
# Options the server fills in when a request leaves them out (backend.nca.jobspec.spec_from_request): the
# request model says what the server does instead of a default.
SERVER_DEFAULTS = {name: text.format(default=DEFAULTS[name]) for name, text in SERVER_CHOSEN.items()}


def _request_field(opt: OptionField) -> tuple[Any, Any]:
    """The pydantic field of a job option: its type, default, bounds and help, all from the core."""
    meta = opt.meta
    bounds = {k: v for k in ("ge", "gt", "le", "max_length") if (v := getattr(meta, k)) is not None}
    if float in opt.kinds:
        bounds["allow_inf_nan"] = False  # "Input should be a finite number", not a bound NaN happens to fail
    if opt.name in SERVER_DEFAULTS:
        return opt.type | None, Field(None, description=f"{meta.help}; default: {SERVER_DEFAULTS[opt.name]}",
                                      **bounds)
    return opt.type, Field(opt.default, description=meta.help, **bounds)


class _RequestOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt option is refused, not ignored


# Every job option the HTTP API takes (backend.nca.jobspec.OPTIONS with `api`): types, bounds and
# defaults are checked here so that errors name the field; the rules between options run when the
# spec is built. `iterations` is also capped by the server's NCA_MAX_ITERATIONS.
# Request fields that are no job option any more, kept so that older clients keep working
# (backend/api/submissions.py turns them into today's options).
LEGACY_FIELDS: dict[str, Any] = {
    "key_background": (bool, Field(False, description="deprecated: true is the old way to say background=key",
                                   json_schema_extra={"deprecated": True})),
}
JobOptions = create_model(
    "JobOptions", __base__=_RequestOptions, __doc__="Training options; each has a default.",
    **{opt.name: _request_field(opt) for opt in OPTIONS if opt.meta.api}, **LEGACY_FIELDS,
)


class JobLinks(BaseModel):
    self: str
    cancel: str
    target: str
    model_file: str | None = Field(None, description="null until the first checkpoint")
    preview: str | None = Field(None, description="null until the first checkpoint")
    checkpoints: str = Field(description="the training history: every checkpoint kept")


class JobAccess(BaseModel):
    """What the caller may do with the job, and who else sees it (docs/api.md "Sharing")."""

    mine: bool = Field(description="the caller owns it (or is the operator): it may cancel, delete, share, publish")
    published: bool = Field(description="in the public gallery: every visitor's model list shows it")
    shares: list[str] = Field(description="live share tokens (the owner's view only); each opens /s/<token>")
    expires_at: float | None = Field(description="when retention deletes it (unix seconds); null: kept")


class JobOut(Job):
    links: JobLinks
    access: JobAccess | None = None
    owner_token: str | None = Field(None, description="only when this request created a new owner: its token "
                                                      "(also set as the cookie); send it as X-Owner-Token")

    @classmethod
    def of(cls, job: Job) -> JobOut:
        base = f"/api/jobs/{job.id}"
        has_model = job.model_version > 0
        links = JobLinks(self=base, cancel=f"{base}/cancel", target=f"{base}/target.png",
                         model_file=f"/api/models/{job.id}/file" if has_model else None,
                         preview=f"{base}/preview.png" if has_model else None, checkpoints=f"{base}/checkpoints")
        return cls(**dict(job), links=links)


class CheckpointLinks(BaseModel):
    model_file: str = Field(description="its weights-only model file")
    preview: str = Field(description="grown from the seed, as the job's preview")


class CheckpointOut(Checkpoint):
    model: str = Field(description="`<job id>@<iteration>`: plays it on the stream (`model=`), names it in /api/models")
    links: CheckpointLinks

    @classmethod
    def of(cls, job_id: str, checkpoint: Checkpoint) -> CheckpointOut:
        ref = reference(job_id, checkpoint.iteration)
        links = CheckpointLinks(model_file=f"/api/models/{ref}/file",
                                preview=f"/api/jobs/{job_id}/checkpoints/{checkpoint.iteration}/preview.png")
        return cls(**checkpoint.model_dump(), model=ref, links=links)


class CheckpointList(BaseModel):
    job: str
    status: JobStatus
    cap: int = Field(description="checkpoints kept at most (NCA_CHECKPOINT_HISTORY); past it, thinned evenly")
    items: list[CheckpointOut] = Field(description="oldest first; the last is the latest checkpoint")


class JobList(BaseModel):
    items: list[JobOut]
    total: int = Field(description="jobs in the listing (yours; the operator's: all), whatever `q` matches")
    offset: int
    limit: int
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page; null: this is the last")


class ModelOut(ModelEntry):
    file_url: str
    access: Literal["example", "owner", "shared", "public", "unlisted"] | None = Field(
        None, description="why the caller sees it: a shipped example, its own, a share link, the public gallery")

    @classmethod
    def of(cls, entry: ModelEntry) -> ModelOut:
        return cls(**entry.model_dump(), file_url=f"/api/models/{entry.id}/file")


class ModelList(BaseModel):
    items: list[ModelOut] = Field(description="the first page: the examples, then models of jobs; later pages: "
                                              "jobs' models only")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null: this is the last. A page "
                                                "may hold fewer than `limit` items (a search reads a bounded part "
                                                "of the index per request) and still have a next one")
    limit: int


class RedisHealth(BaseModel):
    ok: bool
    url: str
    error: str | None = None
    used_memory: int | None = None  # bytes
    maxmemory: int | None = None  # bytes; null: no limit set


class ArtifactsHealth(BaseModel):
    ok: bool
    store: str  # where the files live (a directory, or s3://bucket at an endpoint)
    error: str | None = None


class Health(BaseModel):
    # degraded: Redis answers, but no worker runs, Redis is above 90 % of maxmemory or the artifact store is down
    status: Literal["ok", "degraded", "unavailable"]
    reasons: list[str] = []  # why it is degraded
    redis: RedisHealth
    artifacts: ArtifactsHealth | None = None
    workers: list[dict[str, Any]]
    queued_messages: int | None = None


# The Train form's training-time choices: minutes of a time budget; "paper" (the article's 8000
# iterations, as long as they take) and "custom" (minutes typed in) are the form's other two.
BUDGET_CHOICES = {"quick": 5.0, "good": 20.0}


class ConfigOut(BaseModel):
    stream_url: str | None = Field(description="the stream's base URL (NCA_PUBLIC_STREAM_URL); null: the page's "
                                               "own origin, where the proxy routes /ws/stream")
    max_upload_bytes: int
    max_iterations: int
    experiments: dict[str, str]
    defaults: dict[str, Any]
    limits: dict[str, dict[str, float]]
    options: list[dict[str, Any]] = Field(description="every job option a request may set, for the Train form to "
                                                      "build its fields from: name, kind, choices, default, bounds "
                                                      "(min, above, max), help (backend.nca.jobspec.option_schema)")
    auth_required: bool = Field(False, description="creating and cancelling jobs need a bearer token")
    budgets: dict[str, float] = Field(description="the form's time-budget choices, in minutes")
    default_budget: Literal["quick", "good", "paper"] = Field(
        description="what the form leads with: 'paper' where the fastest live worker trains the paper recipe "
                    "within 30 minutes, else 'good' (a time budget); 'good' also when no worker is running")
    paper_minutes: float | None = Field(description="the paper recipe's expected minutes on the fastest live worker "
                                                    "(null: no worker is running)")
    max_minutes: float = Field(description="the longest time budget this server allows")
    budget_defaults: dict[str, Any] = Field(description="options a request with `minutes` gets when it leaves "
                                                        "them out (the budget recipe)")


class ErrorOut(BaseModel):
    detail: str
