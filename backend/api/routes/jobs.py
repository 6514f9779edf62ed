"""Training jobs: upload a target image, follow progress, cancel, see the target, a preview and the
training history (every checkpoint kept, each with its own preview)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from backend.nca.target import target_to_png
from backend.storage.jobs import Job, JobNotFound, JobStore
from backend.storage.models import CheckpointNotFound

from ..deps import JobIdDep, PreviewsDep, SettingsDep, StorageDep, StoreDep
from ..schemas import CheckpointList, CheckpointOut, ErrorOut, JobList, JobOut
from ..security import JOB_SLOT, QUOTA_RESPONSES, TOKEN, TOKEN_RESPONSES, client_id
from ..submissions import UPLOAD_BODY, UPLOAD_ERRORS, StartNotFound, job_spec, read_upload, submit

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (404, 409, 413, 422, 503)}
Scale = Annotated[int, Query(ge=1, le=16, description="each cell becomes scale x scale pixels")]
Iteration = Annotated[int, Path(ge=0, le=10**9, description="a checkpoint's training iteration")]
HISTORY_CACHE = "public, max-age=86400"  # a checkpoint of the history never changes (the page adds its version)


@router.post("", status_code=202, response_model=JobOut,
             responses={**ERRORS, **UPLOAD_ERRORS, **TOKEN_RESPONSES, **QUOTA_RESPONSES},
             dependencies=[TOKEN, JOB_SLOT], summary="Upload an image and start training", openapi_extra=UPLOAD_BODY)
async def create_job(request: Request, response: Response, settings: SettingsDep, storage: StorageDep) -> JobOut:
    """Multipart: `image` plus JobOptions as form fields or as a JSON `options` field. Answers 202 and a Location."""
    upload = await read_upload(request, settings.max_upload_bytes, allow_no_image=True)
    spec = await run_in_threadpool(job_spec, upload, settings, storage)
    try:
        job = await run_in_threadpool(submit, storage, settings, upload, spec, client_id(request))
    except StartNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    response.headers["Location"] = f"/api/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(store: StoreDep, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,  # Redis ranges are 64-bit
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobList:
    jobs, total = store.list(offset, limit)
    return JobList(items=[JobOut.of(j) for j in jobs], total=total, offset=offset, limit=limit)


def get_job_or_404(store: JobStore, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS, summary="Status, progress and links of a job")
def get_job(job_id: JobIdDep, store: StoreDep) -> JobOut:
    return JobOut.of(get_job_or_404(store, job_id))


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**ERRORS, **TOKEN_RESPONSES},
             dependencies=[TOKEN], summary="Cancel a job (keeps its checkpoint)")
def cancel_job(job_id: JobIdDep, store: StoreDep, response: Response) -> JobOut:
    """A queued job is cancelled at once (200); a running one stops after its current iteration (202)."""
    try:
        outcome = store.cancel(job_id)  # announced to the stream by the store
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None
    job = get_job_or_404(store, job_id)
    if outcome == "finished":
        raise HTTPException(409, f"the job is already {job.status}; there is nothing to cancel")
    if outcome == "requested":
        response.status_code = 202
    return JobOut.of(job)


PNG = {200: {"content": {"image/png": {}}}, **ERRORS}


@router.get("/{job_id}/target.png", response_class=Response, responses=PNG, summary="The processed target image")
def target_png(job_id: JobIdDep, store: StoreDep, scale: Scale = 1) -> Response:
    try:
        target = store.target(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None
    return Response(target_to_png(target, scale), media_type="image/png")


@router.get("/{job_id}/preview.png", response_class=Response, responses=PNG,
            summary="The latest checkpoint grown from the seed")
def preview_png(job_id: JobIdDep, store: StoreDep, previews: PreviewsDep, scale: Scale = 4) -> Response:
    """Grows the latest checkpoint for max_steps CA steps (as long as in training) and shows the last frame."""
    job = get_job_or_404(store, job_id)
    data = store.checkpoint(job_id)
    if data is None:
        raise HTTPException(404, "the job has no checkpoint yet; a preview exists after its first checkpoint")
    return Response(previews.png(job, data, scale), media_type="image/png",
                    headers={"Cache-Control": "no-store", "X-Model-Version": str(job.model_version)})


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses=ERRORS,
            summary="The training history: every checkpoint kept (thinned evenly past the cap)")
def list_checkpoints(job_id: JobIdDep, store: StoreDep) -> CheckpointList:
    """Oldest first, the latest last; each with its loss, time, model file and preview."""
    job = get_job_or_404(store, job_id)
    items = [CheckpointOut.of(job_id, checkpoint) for checkpoint in store.history(job_id)]
    return CheckpointList(job=job_id, status=job.status, cap=store.history_cap, items=items)


@router.get("/{job_id}/checkpoints/{iteration}/preview.png", response_class=Response, responses=PNG,
            summary="A checkpoint of the history grown from the seed")
def checkpoint_preview_png(job_id: JobIdDep, iteration: Iteration, store: StoreDep, previews: PreviewsDep,
                           scale: Scale = 4) -> Response:
    """As preview.png, for the checkpoint at `iteration`; 404 when the history has none there."""
    job = get_job_or_404(store, job_id)
    checkpoint, data = store.history_entry(job_id, iteration), store.history_weights(job_id, iteration)
    if checkpoint is None or data is None:
        raise HTTPException(404, str(CheckpointNotFound(job_id, iteration)))
    return Response(previews.png(job, data, scale, checkpoint.version), media_type="image/png",
                    headers={"Cache-Control": HISTORY_CACHE, "X-Model-Version": str(checkpoint.version)})
