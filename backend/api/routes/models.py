"""Every model the stream can play: shipped examples and jobs with a checkpoint."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from fastapi import APIRouter, HTTPException, Response

from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.models import BadReference, CheckpointNotFound, ModelNotFound

from ..deps import CatalogDep
from ..schemas import ErrorOut, ModelOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/models", tags=["models"])
PARTIAL_HEADER = "X-Models-Partial"
NOT_FOUND = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}, 503: {"model": ErrorOut}}


@contextlib.contextmanager
def looked_up(model_id: str) -> Iterator[None]:
    """A catalog lookup's errors as answers: 404 unknown model or checkpoint, 422 malformed reference."""
    try:
        yield
    except CheckpointNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ModelNotFound:
        raise HTTPException(404, f"no model {model_id[:80]!r} (a job's model exists once it has a checkpoint)") \
            from None
    except BadReference as exc:
        raise HTTPException(422, str(exc)) from None


@router.get("", response_model=list[ModelOut], summary="List playable models",
            responses={200: {"headers": {PARTIAL_HEADER: {
                "description": "present when only the examples are listed: why the jobs' models are missing",
                "schema": {"type": "string"}}}}})
def list_models(catalog: CatalogDep, response: Response) -> list[ModelOut]:
    """The shipped examples (`example-<name>`), then jobs with at least one checkpoint, newest first.

    While Redis is down the examples (files on this machine) are still listed, with the header
    `X-Models-Partial` saying that the jobs' models are unavailable.
    """
    entries = catalog.examples()
    try:
        entries += catalog.job_models()
    except REDIS_DOWN_ERRORS as exc:
        log.warning("listing models without the jobs': Redis is unreachable: %s", exc)
        response.headers[PARTIAL_HEADER] = "jobs unavailable: the job store (Redis) is unreachable; try again shortly"
    return [ModelOut.of(entry) for entry in entries]


@router.get("/{model_id}", response_model=ModelOut, responses=NOT_FOUND, summary="One model")
def get_model(model_id: str, catalog: CatalogDep) -> ModelOut:
    """`model_id` may also be `<job id>@<iteration>`: that checkpoint of the job's history."""
    with looked_up(model_id):
        return ModelOut.of(catalog.get_entry(model_id))


@router.get("/{model_id}/file", response_class=Response, summary="Download the model file (.safetensors)",
            responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND})
def download_model(model_id: str, catalog: CatalogDep) -> Response:
    """The latest checkpoint for a job (`<job id>@<iteration>`: that checkpoint of its history, weights only);
    loadable with `backend.nca.modelfile.load` or the `nca` CLI."""
    with looked_up(model_id):
        version = catalog.get_model_version(model_id)
        data = catalog.get_model_bytes(model_id)
    filename = model_id.replace("@", "-")  # "<job id>-<iteration>.safetensors"
    headers = {"Content-Disposition": f'attachment; filename="{filename}.safetensors"',
               "X-Model-Version": str(version), "Cache-Control": "no-store"}
    return Response(data, media_type="application/octet-stream", headers=headers)
