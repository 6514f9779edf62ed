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

import torch
from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from backend.config import Settings
from backend.nca.jobspec import OPTIONS, JobSpec, Limits, SpecError, spec_from_request
from backend.nca.modelfile import ModelFile
from backend.nca.target import ProcessedTarget, TargetOptions, process_target
from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.jobs import Job, JobNotFound, is_job_id, new_job_id
from backend.storage.models import (
    EXAMPLE_PREFIX,
    BadReference,
    CheckpointNotFound,
    ModelNotFound,
    example_file,
    parse_reference,
)
from backend.storage.owners import Caller
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


async def read_upload(request: Request, max_image_bytes: int, allow_no_image: bool = False) -> Upload:
    """The image, its file name and the raw options (form fields and/or a JSON `options` field). With
    `allow_no_image` (POST /api/jobs), a request with `start_from` and no image continues that model on its
    own target: the Upload's image is then empty."""
    content_type = request.headers.get("content-type", "")
    form_only = allow_no_image and content_type.startswith("application/x-www-form-urlencoded")  # continue
    if not content_type.startswith("multipart/form-data") and not form_only:
        raise HTTPException(415, "send multipart/form-data with the image in a file field named 'image'")
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        image = form.get("image")
        raw = _json_options(form.get("options"))
        for key, value in form.multi_items():
            if key not in ("image", "options") and isinstance(value, str):
                raw[key] = value
        if not isinstance(image, UploadFile):
            if allow_no_image and raw.get("start_from"):  # continue training: the source's own target
                return Upload(b"", "", raw)
            if form_only:  # a plain form is for continuing only: an image needs multipart
                raise HTTPException(415, "send multipart/form-data with the image in a file field named 'image' "
                                         "(a plain form only continues a model: start_from without an image)")
            raise HTTPException(422, "missing the image: send it as a file field named 'image'")
        data = await image.read(max_image_bytes + 1)
        filename = image.filename or "image"
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


def job_spec(upload: Upload, settings: Settings, storage: Storage | None = None) -> JobSpec:
    """The spec the upload asks for, with what the server chooses when the request does not; 422 if invalid.
    A continued job (no image; `storage` given) takes the options it leaves out from its source job."""
    options, default_name = upload.options, PurePath(upload.filename).stem[:80] or "image"
    if not upload.image and upload.options.get("start_from") and storage is not None:
        options, default_name = continued_options(storage, upload.options)
    return spec_of(options, settings, default_name)


# Of a source job's options, those a continued job does not inherit: its own name, seed and start.
NOT_INHERITED = frozenset({"name", "seed", "start_from"})


def continued_options(storage: Storage, options: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The request's options over its source job's recipe (same experiment, budget, steps...), and the name
    "<source> (continued)"; a source that is not a job (an example) lends nothing but its id."""
    source, _ = parse_reference(str(options["start_from"]))
    if not is_job_id(source):
        return options, f"{source[:60]} (continued)"
    try:
        job = storage.jobs.get(source)
    except (JobNotFound, ValueError):  # unknown: start_point answers 404 for it
        return options, "continued"
    inherited = {opt.name: value for opt in OPTIONS if opt.meta.api and opt.name not in NOT_INHERITED
                 and (value := job.spec.options()[opt.name]) is not None}
    if "minutes" in inherited or "minutes" in options or "iterations" in options:
        inherited.pop("iterations", None)  # a time budget plans them; one the request sets wins
    if "iterations" in options:
        inherited.pop("minutes", None)
    return {**inherited, **options}, f"{job.name[:60]} (continued)"


def limits_of(settings: Settings) -> Limits:
    """This server's limits and defaults for a job spec (backend.nca.jobspec.Limits)."""
    return Limits(max_iterations=settings.max_iterations, max_minutes=settings.max_minutes,
                  max_pool_megabytes=settings.max_pool_megabytes, checkpoint_every=settings.checkpoint_every,
                  min_checkpoint_every=settings.min_checkpoint_every, starter=starter_of(settings))


def starter_of(settings: Settings) -> str | None:
    """The server's starter (NCA_STARTER) when it is there to start from: a shipped example's file must exist
    (a deployment without models/ trains from random weights rather than answering 404 to a request that
    named no model)."""
    starter = settings.starter.strip()
    if starter.startswith(EXAMPLE_PREFIX):
        try:
            return starter if example_file(settings.models_dir, starter).is_file() else None
        except ModelNotFound:
            return None
    return starter or None


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


class StartNotFound(LookupError):
    """`start_from` names no model the caller may see (the route answers 404); str() says which."""


def start_point(storage: Storage, spec: JobSpec, who: Caller) -> ModelFile | None:
    """The model `start_from` names, checked: one the caller may see (else StartNotFound) and of this job's
    shape (else SpecError naming channels or hidden); None without `start_from`. BadReference: 422."""
    if spec.start_from is None:
        return None
    unknown = f"start_from: no model {spec.start_from[:80]!r}: pick one from GET /api/models"
    try:
        model = storage.catalog.start_model(spec.start_from)
    except ModelNotFound as exc:
        raise StartNotFound(str(exc) if isinstance(exc, CheckpointNotFound) else unknown) from None
    except BadReference as exc:
        raise SpecError(f"start_from: {exc}", "start_from") from None
    if not storage.access.visible(parse_reference(spec.start_from)[0], who):
        raise StartNotFound(unknown)
    spec.check_start(model.info)
    return model


def continued(storage: Storage, spec: JobSpec, start: ModelFile) -> tuple[JobSpec, torch.Tensor]:
    """A job without an image continues its start model on that model's own target (the file's, else its
    job's), with its geometry; SpecError when there is none (a model from elsewhere: send an image)."""
    assert spec.start_from is not None
    source, _ = parse_reference(spec.start_from)
    target = start.target
    if target is None and is_job_id(source):
        with contextlib.suppress(JobNotFound):
            target = storage.jobs.target(source)
    if target is None:
        raise SpecError(f"start_from: {spec.start_from[:80]!r} keeps no target to continue on: send an image "
                        "(a new picture from this model)", "start_from")
    info = start.info
    geometry = {k: v for k, v in (("size", info.target_size), ("padding", info.padding)) if v is not None}
    return dataclasses.replace(spec, target=dataclasses.replace(spec.target, **geometry)), target


def submit(storage: Storage, settings: Settings, upload: Upload, spec: JobSpec, who: Caller = Caller()) -> Job:
    """Check `start_from` (StartNotFound: 404), process the image (TargetError: 422) or, without one, take the
    start model's target (continue), store the job (`who`'s) and send its message. Blocking: run it in a thread."""
    start = start_point(storage, spec, who)
    owner = who.owner
    if upload.image or start is None:
        processed = process_upload(upload, spec, settings)
        target, warning = processed.target, processed.warning
    else:
        spec, target = continued(storage, spec, start)
        warning = None
    job_id = new_job_id()
    if owner is not None:  # first: a job is never seen without its owner
        storage.owners.claim(job_id, owner)
    # The original upload is kept only when asked (NCA_KEEP_UPLOAD): the job trains from its target.
    keep = settings.keep_upload and 0 < len(upload.image) <= settings.max_stored_upload_bytes
    stored_upload = upload.image if keep else None
    job = storage.jobs.create(job_id, spec, target, stored_upload, warning)
    try:
        storage.fair.enqueue(job_id, owner)  # its turn among its owner's, round-robin across owners
        storage.queue.send(job_id)
    except Exception:
        with contextlib.suppress(*REDIS_DOWN_ERRORS):  # a job whose message could not be sent would wait forever
            storage.jobs.queue_failed(job_id, "the job could not be queued (Redis unreachable); upload again")
            storage.fair.drop(job_id, owner)
        raise  # Redis went away between the two steps: 503
    return job
