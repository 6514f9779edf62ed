"""How long a job would take on this server: the worker that would train it, its plan, the wait.

The workers publish their measured speed with their presence (backend/worker/lifecycle.py); the
core turns a speed and a spec into seconds (backend.nca.budget.estimate). The jobs ahead are the
queued and running ones that hold a quota slot; their remaining time is their own ETA where they
report one, else their estimate, and the wait shares it among the live workers.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from backend.nca.budget import GUESSED_SPEED, PAPER_MINUTES_LIMIT, Estimate, Speed, estimate
from backend.nca.jobspec import JobSpec
from backend.nca.train import TrainConfig
from backend.storage.jobs import Job
from backend.storage.shared import Storage
from backend.storage.status import ACTIVE

AHEAD_FIELDS = ("iteration", "eta_seconds", "trained_seconds", "plan")


class EstimateOut(BaseModel):
    seconds: float | None = Field(description="expected training time, queue not counted (null: no worker is running)")
    iterations: int | None = Field(description="iterations it will train (planned, with a time budget)")
    plan: dict[str, Any] | None = Field(description="with a time budget: the schedule planned at this speed")
    device: str | None = Field(description="the device of the worker that would train it: cpu, cuda, cuda:1, mps")
    speed_source: str | None = Field(description="calibrated (measured at the worker's start), measured (refined "
                                                 "from the jobs it trained) or guess")
    workers: int = Field(description="live workers")
    jobs_ahead: int = Field(description="queued or running jobs before this one")
    wait_seconds: float | None = Field(description="until a worker is free for it (null: no worker is running)")
    long: bool = Field(description=f"the training takes more than {PAPER_MINUTES_LIMIT:g} minutes")
    paper_seconds: float | None = Field(description="the paper recipe (8000 iterations) on the same target, for "
                                                    "comparison")
    start_from: str | None = Field(None, description="the model it starts from: the request's start_from, or for a "
                                                     "time budget the server's starter where it applies (null: "
                                                     "random weights)")
    min_seconds: float | None = Field(None, description="with early_stop_patience: the soonest it may finish (the "
                                                        "loss stalled from the start); else seconds")


def speed_of(worker: dict[str, Any]) -> Speed:
    raw = worker.get("speed")
    try:
        return Speed.from_dict(raw) if isinstance(raw, dict) else GUESSED_SPEED
    except (KeyError, TypeError, ValueError):  # a presence written by another version
        return GUESSED_SPEED


def fastest(workers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The worker a new job most likely goes to: the fastest idle one, else the fastest."""
    idle = [w for w in workers if not w.get("job")]
    return min(idle or workers, key=lambda w: speed_of(w).cell_step_seconds, default=None)


def expected_seconds(spec: JobSpec, speed: Speed) -> float:
    return estimate(spec.train, spec.target.size, spec.target.padding, speed).seconds


def remaining_seconds(job: Job, speed: Speed) -> float:
    """What is left of a job ahead: its own ETA while it reports one, else its estimate less what it trained."""
    if job.status == "running" and job.eta_seconds is not None:
        return job.eta_seconds
    return max(0.0, expected_seconds(job.spec, speed) - (job.trained_seconds or 0.0))


def paper_seconds(spec: JobSpec, speed: Speed) -> float:
    """The paper recipe (its iterations, batch, pool and steps) on this spec's target."""
    paper = TrainConfig(experiment=spec.train.experiment)
    return estimate(paper, spec.target.size, spec.target.padding, speed).seconds


def estimate_job(storage: Storage, spec: JobSpec) -> EstimateOut:
    """The estimate for a new job with `spec` (a square target: the most cells its options allow)."""
    workers = storage.workers.live()
    ahead = [job for job in storage.jobs.summaries(storage.quota.job_ids(), AHEAD_FIELDS)
             if job.status in ACTIVE]
    worker = fastest(workers)
    if worker is None:
        return EstimateOut(seconds=None, iterations=None, plan=None, device=None, speed_source=None, workers=0,
                           jobs_ahead=len(ahead), wait_seconds=None, long=False, paper_seconds=None,
                           start_from=spec.start_from)
    speed = speed_of(worker)
    mine = estimate(spec.train, spec.target.size, spec.target.padding, speed)
    wait = sum(remaining_seconds(job, speed) for job in ahead) / len(workers)
    plan = mine.plan.as_dict() if mine.plan is not None else None
    return EstimateOut(seconds=round(mine.seconds, 1), iterations=mine.iterations, plan=plan,
                       device=str(worker.get("device") or speed.device), speed_source=speed.source,
                       workers=len(workers), jobs_ahead=len(ahead), wait_seconds=round(wait, 1),
                       long=mine.seconds > PAPER_MINUTES_LIMIT * 60,
                       paper_seconds=round(paper_seconds(spec, speed), 1), start_from=spec.start_from,
                       min_seconds=round(soonest_seconds(spec, mine), 1))


def soonest_seconds(spec: JobSpec, mine: Estimate) -> float:
    """The soonest a job may end: with early_stop_patience, when the loss stalls from its start (that many
    iterations at full length: an upper bound of their cost); a job started from a model (the starter, a
    continue) is the likeliest to; without patience, its estimate."""
    patience = spec.train.early_stop_patience
    if patience is None:
        return mine.seconds
    return min(mine.seconds, patience * mine.iteration_seconds)


def default_budget(storage: Storage, spec: JobSpec) -> tuple[str, float | None]:
    """('paper' or 'good', the paper recipe's minutes on the fastest worker): the form leads with a time
    budget where the paper recipe would take more than PAPER_MINUTES_LIMIT minutes (or no worker says)."""
    worker = fastest(storage.workers.live())
    if worker is None:
        return "good", None
    minutes = paper_seconds(spec, speed_of(worker)) / 60
    return ("paper" if minutes <= PAPER_MINUTES_LIMIT else "good"), round(minutes, 1)
