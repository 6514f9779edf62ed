"""Training jobs: upload a target image, follow progress, cancel, see the target and a preview."""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections import OrderedDict
from pathlib import PurePath
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from backend.config import Settings
from backend.nca.modelfile import from_bytes
from backend.nca.render import growth_frames, png_bytes
from backend.nca.target import TargetOptions, process_target, target_to_png
from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.jobs import JobNotFound, JobStore, new_job_id
from backend.storage.models import publish_checkpoint
from backend.worker.celery_app import TRAIN_TASK

from ..deps import CeleryDep, JobIdDep, SettingsDep, StoreDep
from ..schemas import ErrorOut, JobList, JobOptions, JobOut
from ..security import JOB_SLOT, QUOTA_RESPONSES, TOKEN, TOKEN_RESPONSES

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (404, 409, 413, 422, 503)}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed multipart body (e.g. no boundary, more than one file)"},
    415: {"model": ErrorOut, "description": "not a multipart/form-data upload"}}
# The body of an upload (POST /api/jobs, POST /api/targets/preview), for the OpenAPI description.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"},
                   "options": {"type": "string", "description": "JSON object of JobOptions"},
                   **JobOptions.model_json_schema()["properties"]}}}}}}
PREVIEW_SEED = 0  # the preview is the same picture for the same checkpoint
Scale = Annotated[int, Query(ge=1, le=16, description="each cell becomes scale x scale pixels")]


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as one line: `field: what is wrong; ...`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def parse_options(raw: dict[str, Any], settings: Settings) -> JobOptions:
    context = {"max_iterations": settings.max_iterations, "max_pool_megabytes": settings.max_pool_megabytes}
    try:
        return JobOptions.model_validate(raw, context=context)
    except ValidationError as exc:
        raise HTTPException(422, f"invalid options: {validation_message(exc)}") from None


def target_options(options: JobOptions, settings: Settings) -> TargetOptions:
    return TargetOptions(size=options.target_size, padding=options.padding, background=options.background,
                         cutout_seconds=settings.cutout_seconds)


async def read_upload(request: Request, settings: Settings) -> tuple[bytes, str, dict[str, Any]]:
    """The image bytes, its file name and the raw options (form fields and/or a JSON `options` field)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with the image in a file field named 'image'")
    async with request.form(max_files=1, max_fields=64) as form:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise HTTPException(422, "missing the image: send it as a file field named 'image'")
        data = await image.read(settings.max_upload_bytes + 1)
        filename = image.filename or "image"
        raw: dict[str, Any] = {}
        if isinstance(options := form.get("options"), str) and options.strip():
            try:
                raw = json.loads(options)
            except json.JSONDecodeError as exc:
                raise HTTPException(422, f"the 'options' field is not valid JSON: {exc}") from None
            except RecursionError:  # thousands of nested brackets: json's recursion limit, not a server error
                raise HTTPException(422, "the 'options' field is nested too deeply: send a flat JSON object") from None
            if not isinstance(raw, dict):
                raise HTTPException(422, "the 'options' field must be a JSON object")
        for key, value in form.multi_items():
            if key not in ("image", "options") and isinstance(value, str):
                raw[key] = value
    if len(data) > settings.max_upload_bytes:
        raise HTTPException(413, f"the image is larger than {settings.max_upload_bytes:,} bytes")
    if not data:
        raise HTTPException(422, "the uploaded image is empty")
    return data, filename, raw


@router.post("", status_code=202, response_model=JobOut,
             responses={**ERRORS, **UPLOAD_ERRORS, **TOKEN_RESPONSES, **QUOTA_RESPONSES},
             dependencies=[TOKEN, JOB_SLOT], summary="Upload an image and start training", openapi_extra=UPLOAD_BODY)
async def create_job(request: Request, response: Response, settings: SettingsDep, store: StoreDep,
                     celery: CeleryDep) -> JobOut:
    """Multipart: `image` plus JobOptions as form fields or as a JSON `options` field. Answers 202 and a Location."""
    data, filename, raw = await read_upload(request, settings)
    options = parse_options(raw, settings)
    if options.seed is None:
        options.seed = random.randrange(2**31)
    if options.checkpoint_every is None:
        options.checkpoint_every = settings.checkpoint_every
    if options.name is None or not options.name.strip():  # a blank name would leave the job unnamed in lists
        options.name = PurePath(filename).stem[:80] or "image"
    processed = await run_in_threadpool(process_target, data, target_options(options, settings),
                                        settings.max_image_pixels)  # TargetError: 422
    job_id = new_job_id()
    upload = data if len(data) <= settings.max_stored_upload_bytes else None
    job = await run_in_threadpool(store.create, job_id, options.name, options.model_dump(), options.iterations,
                                  processed.target, upload, processed.warning)
    try:
        await run_in_threadpool(celery.send_task, TRAIN_TASK, args=[job_id])
    except Exception:
        await run_in_threadpool(mark_unqueued, store, job_id)
        raise  # Redis went away between the two steps: 503
    response.headers["Location"] = f"/api/jobs/{job_id}"
    return JobOut.of(job)


def mark_unqueued(store: JobStore, job_id: str) -> None:
    """A job whose message could not be sent would wait forever: fail it (if Redis lets us)."""
    with contextlib.suppress(REDIS_DOWN_ERRORS):
        store.update(job_id, status="failed", error="the job could not be queued (Redis unreachable); upload again",
                     finished_at=time.time())


@router.get("", response_model=JobList, summary="List jobs, newest first")
def list_jobs(store: StoreDep, offset: Annotated[int, Query(ge=0, le=10**9)] = 0,  # Redis ranges are 64-bit
              limit: Annotated[int, Query(ge=1, le=100)] = 20) -> JobList:
    jobs, total = store.list(offset, limit)
    return JobList(items=[JobOut.of(j) for j in jobs], total=total, offset=offset, limit=limit)


def get_job_or_404(store: JobStore, job_id: str) -> JobOut:
    try:
        return JobOut.of(store.get(job_id))
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS, summary="Status, progress and links of a job")
def get_job(job_id: JobIdDep, store: StoreDep) -> JobOut:
    return get_job_or_404(store, job_id)


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**ERRORS, **TOKEN_RESPONSES},
             dependencies=[TOKEN], summary="Cancel a job (keeps its checkpoint)")
def cancel_job(job_id: JobIdDep, store: StoreDep, response: Response) -> JobOut:
    """A queued job is cancelled at once (200); a running one stops after its current iteration (202)."""
    try:
        outcome = store.cancel(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None
    job = get_job_or_404(store, job_id)
    if outcome == "finished":
        raise HTTPException(409, f"the job is already {job.status}; there is nothing to cancel")
    if outcome == "requested":
        response.status_code = 202
    elif job.model_version:
        publish_checkpoint(store.client, job_id, job.model_version, job.checkpoint_iteration or 0, "cancelled")
    return job


PNG = {200: {"content": {"image/png": {}}}, **ERRORS}


@router.get("/{job_id}/target.png", response_class=Response, responses=PNG, summary="The processed target image")
def target_png(job_id: JobIdDep, store: StoreDep, scale: Scale = 1) -> Response:
    try:
        target = store.target(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None
    return Response(target_to_png(target, scale), media_type="image/png")


_previews: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()  # (job id, model version) -> last frame
_previews_lock = threading.Lock()
PREVIEW_CACHE_SIZE = 64  # growing is the costly part; a client polling the preview must not repeat it


def grown_frame(job: JobOut, model_bytes: bytes) -> np.ndarray:
    key = (job.id, job.model_version)
    with _previews_lock:
        if key in _previews:
            _previews.move_to_end(key)
            return _previews[key]
    generator = torch.Generator().manual_seed(PREVIEW_SEED)
    frames = growth_frames(from_bytes(model_bytes).model, job.grid_height, job.grid_width,
                           int(job.options.get("max_steps", 96)), every=10**9, generator=generator)
    with _previews_lock:
        _previews[key] = frames[-1]
        while len(_previews) > PREVIEW_CACHE_SIZE:
            _previews.popitem(last=False)
    return frames[-1]


@router.get("/{job_id}/preview.png", response_class=Response, responses=PNG,
            summary="The latest checkpoint grown from the seed")
def preview_png(job_id: JobIdDep, store: StoreDep, scale: Scale = 4) -> Response:
    """Grows the latest checkpoint for max_steps CA steps (as long as in training) and shows the last frame."""
    job = get_job_or_404(store, job_id)
    data = store.checkpoint(job_id)
    if data is None:
        raise HTTPException(404, "the job has no checkpoint yet; a preview exists after its first checkpoint")
    return Response(png_bytes(grown_frame(job, data), scale), media_type="image/png",
                    headers={"Cache-Control": "no-store", "X-Model-Version": str(job.model_version)})
