"""How long a job would take here, before it is started (the Train form asks as its options change)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from fastapi.concurrency import run_in_threadpool

from ..deps import SettingsDep, StorageDep
from ..estimates import EstimateOut, estimate_job
from ..schemas import ErrorOut, JobOptions
from ..submissions import spec_of

router = APIRouter(prefix="/api", tags=["jobs"])

Options = Annotated[dict[str, Any], Body(description="JobOptions, as POST /api/jobs takes them (no image: the "
                                                     "target is taken to be square, the most cells it can have)",
                                         json_schema_extra=JobOptions.model_json_schema())]


@router.post("/estimate", response_model=EstimateOut, summary="Expected training time and wait for a set of options",
             responses={400: {"model": ErrorOut, "description": "the body is not JSON"},
                        **{code: {"model": ErrorOut} for code in (422, 503)}})
async def estimate(options: Options, settings: SettingsDep, storage: StorageDep) -> EstimateOut:
    """The same options and the same 422s as POST /api/jobs; the answer uses the fastest live worker's
    measured speed and the queued and running jobs ahead."""
    spec = spec_of(options, settings, "estimate")
    return await run_in_threadpool(estimate_job, storage, spec)
