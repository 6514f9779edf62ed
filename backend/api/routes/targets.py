"""Targets before a job exists: what an upload will be trained on (the Train view's preview)."""

from __future__ import annotations

import base64
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from backend.nca.target import target_to_png

from ..deps import SettingsDep
from ..schemas import ErrorOut
from ..security import TOKEN, TOKEN_RESPONSES
from ..submissions import UPLOAD_BODY, UPLOAD_ERRORS, job_spec, process_upload, read_upload

router = APIRouter(prefix="/api/targets", tags=["targets"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (413, 422)}


class TargetPreview(BaseModel):
    png: str = Field(description="the processed target as an RGBA PNG, one pixel per cell, base64: what "
                                 "GET /api/jobs/{id}/target.png gives once a job is created from the same upload")
    grid_width: int = Field(description="cells, padding included")
    grid_height: int
    padding: int = Field(description="empty cells on every side (the image part is the grid less twice this)")
    filled: float = Field(description="share of the grid's cells the pattern has to fill (alpha above 0.1)")
    background: Literal["cutout", "key", "keep"] = Field(description="what was done to the background")
    clear_background: bool = Field(description="the image came with a transparent background")
    warning: str | None = Field(None, description="a fallback (e.g. the cut-out ran out of time) or a target that "
                                                  "will likely train badly, in words")


@router.post("/preview", response_model=TargetPreview, responses={**ERRORS, **UPLOAD_ERRORS, **TOKEN_RESPONSES},
             dependencies=[TOKEN], summary="The target an upload becomes, without starting a job",
             openapi_extra=UPLOAD_BODY)
async def preview_target(request: Request, settings: SettingsDep) -> TargetPreview:
    """The same multipart body as POST /api/jobs (options other than the target's are checked, not used)."""
    upload = await read_upload(request, settings.max_upload_bytes)
    spec = job_spec(upload, settings)
    processed = await run_in_threadpool(process_upload, upload, spec, settings)  # TargetError: 422
    png = await run_in_threadpool(target_to_png, processed.target)
    _, height, width = processed.target.shape
    return TargetPreview(png=base64.b64encode(png).decode("ascii"), grid_width=width, grid_height=height,
                         padding=spec.target.padding, filled=round(processed.filled, 4),
                         background=processed.background, clear_background=processed.clear_background,
                         warning=processed.warning)
