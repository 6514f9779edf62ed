"""From an upload to a queued job: the multipart body, the job's spec, the target, the queue.

The route (`POST /api/jobs`) calls these in order: `read_upload` (HTTP), `job_spec` (validation:
the request model's types and bounds, then the spec's own rules, then this server's limits) and
`submit` (the target image, the job record, its message). Invalid options raise SpecError, which the
app answers with 422 (backend/api/main.py): nothing here speaks HTTP but the reading of the body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from backend.config import Settings
from backend.nca.jobspec import JobSpec, Limits, SpecError, spec_from_request
from backend.nca.target import ProcessedTarget, TargetOptions, process_target
from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.jobs import Job, new_job_id
from backend.storage.shared import Storage

from .schemas import ErrorOut, JobOptions

MAX_FORM_FIELDS = 64
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "malformed multipart body (e.g. no boundary, more than one file)"},
    415: {"model": ErrorOut, "description": "not a multipart/form-data upload"}}
# The body of an upload (POST /api/jobs, POST /api/targets/preview), for the OpenAPI description.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["image"],
    "properties": {"image": {"type": "string", "format": "binary"},
                   "options": {"type": "string", "description": "JSON object of JobOptions"},
                   **JobOptions.model_json_schema()["properties"]}}}}}}


@dataclass(frozen=True)
class Upload:
    image: bytes
    filename: str
    options: dict[str, Any]  # as sent: form fields over the JSON `options` field


async def read_upload(request: Request, max_image_bytes: int) -> Upload:
    """The image, its file name and the raw options (form fields and/or a JSON `options` field)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, "send multipart/form-data with the image in a file field named 'image'")
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise HTTPException(422, "missing the image: send it as a file field named 'image'")
        data = await image.read(max_image_bytes + 1)
        filename = image.filename or "image"
        raw = _json_options(form.get("options"))
        for key, value in form.multi_items():
            if key not in ("image", "options") and isinstance(value, str):
                raw[key] = value
    if len(data) > max_image_bytes:
        raise HTTPException(413, f"the image is larger than {max_image_bytes:,} bytes")
    if not data:
        raise HTTPException(422, "the uploaded image is empty")
    return Upload(data, filename, raw)


def _json_options(field: object) -> dict[str, Any]:
    if not isinstance(field, str) or not field.strip():
        return {}
    try:
        raw = json.loads(field)
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the 'options' field is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: json's recursion limit, not a server error
        raise HTTPException(422, "the 'options' field is nested too deeply: send a flat JSON object") from None
    if not isinstance(raw, dict):
        raise HTTPException(422, "the 'options' field must be a JSON object")
    return raw


def validation_message(exc: ValidationError) -> str:
    """Pydantic's errors as one line: `field: what is wrong; ...`."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def job_spec(upload: Upload, settings: Settings) -> JobSpec:
    """The spec the upload asks for, with what the server chooses when the request does not; 422 if invalid."""
    return spec_of(upload.options, settings, PurePath(upload.filename).stem[:80] or "image")


def limits_of(settings: Settings) -> Limits:
    """This server's limits and defaults for a job spec (backend.nca.jobspec.Limits)."""
    return Limits(max_iterations=settings.max_iterations, max_minutes=settings.max_minutes,
                  max_pool_megabytes=settings.max_pool_megabytes, checkpoint_every=settings.checkpoint_every,
                  min_checkpoint_every=settings.min_checkpoint_every)


def spec_of(raw: dict[str, Any], settings: Settings, default_name: str) -> JobSpec:
    """The spec these request options ask for (POST /api/jobs, /api/estimate); SpecError naming the field
    (the app answers 422). Types and bounds first (the request model, so that form strings are read), then
    the one rule every way in shares (backend.nca.jobspec.spec_from_request)."""
    try:
        request = JobOptions.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(validation_message(exc)) from None
    return spec_from_request(request.model_dump(exclude_unset=True), limits_of(settings), default_name)


def target_options(spec: JobSpec, settings: Settings) -> TargetOptions:
    """The spec's target options with this server's time limit for a cut-out."""
    return dataclasses.replace(spec.target, cutout_seconds=settings.cutout_seconds)


def process_upload(upload: Upload, spec: JobSpec, settings: Settings) -> ProcessedTarget:
    """The target the upload becomes (TargetError: 422). Blocking (a cut-out can take seconds): run it in a thread."""
    return process_target(upload.image, target_options(spec, settings), settings.max_image_pixels)


def submit(storage: Storage, settings: Settings, upload: Upload, spec: JobSpec) -> Job:
    """Process the image (TargetError: 422), store the job and send its message. Blocking: run it in a thread."""
    processed = process_upload(upload, spec, settings)
    job_id = new_job_id()
    keep = settings.keep_upload and len(upload.image) <= settings.max_stored_upload_bytes
    stored_upload = upload.image if keep else None  # nothing reads it back: kept only when asked (keep_upload)
    job = storage.jobs.create(job_id, spec, processed.target, stored_upload, processed.warning)
    try:
        storage.queue.send(job_id)
    except Exception:
        with contextlib.suppress(*REDIS_DOWN_ERRORS):  # a job whose message could not be sent would wait forever
            storage.jobs.queue_failed(job_id, "the job could not be queued (Redis unreachable); upload again")
        raise  # Redis went away between the two steps: 503
    return job
