"""Every model the stream can play: shipped examples and jobs with a checkpoint."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, Response

from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.models import ModelNotFound

from ..deps import CatalogDep
from ..schemas import ErrorOut, ModelOut

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/models", tags=["models"])
PARTIAL_HEADER = "X-Models-Partial"
NOT_FOUND = {404: {"model": ErrorOut}, 503: {"model": ErrorOut}}


def not_found(model_id: str) -> HTTPException:
    return HTTPException(404, f"no model {model_id[:80]!r} (a job's model exists once it has a checkpoint)")


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
    try:
        return ModelOut.of(catalog.get_entry(model_id))
    except ModelNotFound:
        raise not_found(model_id) from None


@router.get("/{model_id}/file", response_class=Response, summary="Download the model file (.safetensors)",
            responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND})
def download_model(model_id: str, catalog: CatalogDep) -> Response:
    """The latest checkpoint for a job; loadable with `backend.nca.modelfile.load` or the `nca` CLI."""
    try:
        version = catalog.get_model_version(model_id)
        data = catalog.get_model_bytes(model_id)
    except ModelNotFound:
        raise not_found(model_id) from None
    headers = {"Content-Disposition": f'attachment; filename="{model_id}.safetensors"',
               "X-Model-Version": str(version), "Cache-Control": "no-store"}
    return Response(data, media_type="application/octet-stream", headers=headers)
