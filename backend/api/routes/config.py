"""What the frontend needs to know: where the stream is, limits, experiments, option defaults and which
training time to lead with (a time budget where the paper recipe would take over half an hour)."""

from __future__ import annotations

from fastapi import APIRouter

from backend.nca.jobspec import JobSpec, option_schema
from backend.nca.train import BUDGET_RECIPE
from backend.storage.connection import REDIS_DOWN_ERRORS

from ..deps import SettingsDep, StorageDep
from ..estimates import default_budget
from ..schemas import BUDGET_CHOICES, EXPERIMENT_HELP, ConfigOut, JobOptions
from ..submissions import limits_of

router = APIRouter(prefix="/api", tags=["config"])


def option_limits(max_iterations: int) -> dict[str, dict[str, float]]:
    """Numeric bounds of JobOptions, from its JSON schema (so they cannot drift from the validation)."""
    limits = {}
    for name, spec in JobOptions.model_json_schema()["properties"].items():
        spec = next((s for s in spec.get("anyOf", [spec]) if s.get("type") in ("integer", "number")), None)
        if spec is not None:
            bounds = {k: spec[k] for k in ("minimum", "maximum", "exclusiveMinimum") if k in spec}
            limits[name] = bounds
    limits["iterations"]["maximum"] = max_iterations
    return limits


@router.get("/config", response_model=ConfigOut, summary="Settings the frontend uses")
def config(settings: SettingsDep, storage: StorageDep) -> ConfigOut:
    options = option_schema(limits_of(settings))
    defaults = {entry["name"]: entry["default"] for entry in options}  # a form offers today's options only
    try:
        budget, paper_minutes = default_budget(storage, JobSpec())
    except REDIS_DOWN_ERRORS:  # the page still loads; uploads will say what is wrong
        budget, paper_minutes = "good", None
    limits = option_limits(settings.max_iterations)
    limits["minutes"]["maximum"] = min(limits["minutes"]["maximum"], settings.max_minutes)
    return ConfigOut(
        budgets=BUDGET_CHOICES, default_budget=budget, paper_minutes=paper_minutes, max_minutes=settings.max_minutes,
        budget_defaults=BUDGET_RECIPE,
        stream_url=settings.public_stream_url or None,
        max_upload_bytes=settings.max_upload_bytes, max_iterations=settings.max_iterations,
        experiments=EXPERIMENT_HELP, defaults=defaults, limits=limits, options=options,
        auth_required=bool(settings.access_token),
    )
