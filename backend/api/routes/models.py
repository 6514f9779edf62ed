"""Every model the stream can play: shipped examples and jobs with a checkpoint."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse

from backend.exports.card import model_card
from backend.exports.player import player_html
from backend.exports.video import DEFAULT_SCALE, DEFAULT_STEPS, VideoLimitError, render_video
from backend.exports.video import FORMATS as VIDEO_FORMATS
from backend.exports.video import LIMITS as VIDEO_LIMITS
from backend.nca.distill import export_distill
from backend.nca.modelfile import ModelFile
from backend.storage.connection import REDIS_DOWN_ERRORS
from backend.storage.listing import BadCursor, Cursor, ListSource, Page, Source, matches, scan
from backend.storage.models import BadReference, CheckpointNotFound, ModelCatalog, ModelEntry, ModelNotFound
from backend.storage.owners import Caller
from backend.storage.shared import Storage

from ..deps import CatalogDep, RendersDep, StorageDep
from ..identity import CallerDep, visible_model
from ..renders import computed, model_digest, stored_card
from ..schemas import ErrorOut, ModelList, ModelOut

log = logging.getLogger(__name__)
# Every route with a model id answers 404 for a job's model the caller may not see (backend/api/identity.py).
router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[Depends(visible_model)])
PARTIAL_HEADER = "X-Models-Partial"
MAX_MODELS_PAGE = 200
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


@router.get("", response_model=ModelList, responses={422: {"model": ErrorOut}, 200: {"headers": {PARTIAL_HEADER: {
                "description": "present when only the examples are listed: why the jobs' models are missing",
                "schema": {"type": "string"}}}}}, summary="List playable models, a page at a time")
def list_models(catalog: CatalogDep, storage: StorageDep, who: CallerDep, response: Response,
                cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page; "
                                                    "leave out for the first")] = None,
                limit: Annotated[int, Query(ge=1, le=MAX_MODELS_PAGE, description="jobs' models per page (the "
                                            "examples come on the first page besides)")] = 50,
                q: Annotated[str, Query(max_length=100, description="only models whose name contains this "
                                        "(case-insensitive)")] = "") -> ModelList:
    """The shipped examples (`example-<name>`, first page only), then the models of the caller's own jobs, of
    the jobs shared with it (share links it opened) and of the public gallery, each newest first; `access`
    says which. Only jobs with at least one checkpoint have a model. A page reads at most SCAN_BUDGET entries
    of the indexes (docs/api.md): a page may be short, or empty, and still have a `next_cursor`.

    While Redis is down the examples (files on this machine) are still listed, with the header
    `X-Models-Partial` saying that the jobs' models are unavailable.
    """
    try:
        start = Cursor.decode(cursor, "models", storage.access.model_phase_names(who)) if cursor else None
    except BadCursor as exc:
        raise HTTPException(422, str(exc)) from None
    answers = [] if start else [ModelOut.of(entry).model_copy(update={"access": "example"})
                                for entry in catalog.examples() if matches(entry.name, q)]
    next_cursor = None
    try:
        page = visible_job_models(catalog, storage, who, storage.access.model_phases(who), start, limit, q)
        answers += [ModelOut.of(entry).model_copy(update={"access": access}) for _, (entry, access) in page.items]
        next_cursor = page.next.encode() if page.next else None
    except REDIS_DOWN_ERRORS as exc:
        log.warning("listing models without the jobs': Redis is unreachable: %s", exc)
        response.headers[PARTIAL_HEADER] = "jobs unavailable: the job store (Redis) is unreachable; try again shortly"
    return ModelList(items=answers, next_cursor=next_cursor, limit=limit)


def visible_job_models(catalog: ModelCatalog, storage: Storage, who: Caller, phases: list[tuple[str, Source]],
                       start: Cursor | None, limit: int, q: str = "") -> Page[tuple[ModelEntry, str]]:
    """A page of (entry, why the caller sees it) for the jobs' models in its listing: its own, shared with it,
    public, each once (a job of its own that it also published is listed as its own)."""
    shared = {job_id for name, source in phases if isinstance(source, ListSource) for job_id in source.ids}

    def keep(phase: str, ids: list[str]) -> list[tuple[ModelEntry, str] | None]:
        raw = catalog.jobs.peek(ids, ("name", "model_version"))
        owners = storage.owners.owners_of(ids) if phase in ("shared", "public") else [None] * len(ids)
        wanted = [job_id for job_id, fields, owner in zip(ids, raw, owners, strict=True)
                  if fields is not None and int(fields["model_version"] or 0) > 0 and matches(fields["name"], q)
                  and (who.owner is None or owner != who.owner) and not (phase == "public" and job_id in shared)]
        access = "owner" if phase in ("all", "owner") else phase
        entries = {entry.id: (entry, access) for entry in catalog.job_models(wanted)}
        return [entries.get(job_id) for job_id in ids]

    return scan("models", phases, start, limit, keep)


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


# --- Take it with you: exports, videos and the model card (computed in backend.nca, cached per model) ---

EXPORT_ERRORS = NOT_FOUND  # 404 unknown model; 422 malformed reference, unreadable file, video past a limit


async def model_bytes(catalog: ModelCatalog, model_id: str) -> bytes:
    """The stored model file's bytes, read off the event loop; the lookup's errors as answers."""
    with looked_up(model_id):
        return await run_in_threadpool(catalog.get_model_bytes, model_id)


def download_name(model_id: str, name: str | None, suffix: str, experiment: str | None = None) -> str:
    """A file name from the model's name, reduced to safe characters (it goes into a header)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", name or "").strip("_")[:60] or model_id[:40]
    return f"{experiment}_{stem}{suffix}" if experiment else f"{stem}{suffix}"


def disposition(kind: str, filename: str) -> dict[str, str]:
    return {"Content-Disposition": f'{kind}; filename="{filename}"', "Cache-Control": "no-store"}


@router.get("/{model_id}/distill.json", summary="The model in the Distill demo's 8-bit format",
            responses={200: {"content": {"application/json": {}}}, **EXPORT_ERRORS})
async def distill_json(model_id: str, catalog: CatalogDep, renders: RendersDep) -> Response:
    """The update network's two layers, 8-bit quantised, band-major, as the article's WebGL demo loads
    them (docs/model-format.md). What quantisation does to this model is in the `X-Quantization-*`
    headers: grown PSNR of the float and of the 8-bit model, and a warning when the 8-bit one no
    longer grows."""
    data = await model_bytes(catalog, model_id)
    (layers, report, name, experiment), _ = await computed(renders, model_id, "distill", data, _distill)
    headers = disposition("attachment", download_name(model_id, name, ".json", experiment))
    headers.update({"X-Quantization-PSNR-Float": f"{report.psnr_float:.2f}",
                    "X-Quantization-PSNR-8bit": f"{report.psnr_8bit:.2f}",
                    "X-Quantization-Grows-8bit": str(report.grows_8bit).lower()})
    if report.warnings:
        headers["X-Quantization-Warning"] = " | ".join(report.warnings).encode("ascii", "replace").decode()
    return Response(json.dumps(layers), media_type="application/json", headers=headers)


def _distill(mf: ModelFile) -> tuple:
    layers, report = export_distill(mf)
    return layers, report, mf.info.name, mf.info.experiment


@router.get("/{model_id}/player.html", response_class=Response, summary="A one-file web player",
            responses={200: {"content": {"text/html": {}}}, **EXPORT_ERRORS})
async def player(model_id: str, catalog: CatalogDep, renders: RendersDep,
                 inline: Annotated[bool, Query(description="true: shown in the browser tab (the page's "
                                               "'open' link) instead of downloaded")] = False) -> Response:
    """One self-contained HTML file (weights inside, no network) that runs the model in the browser:
    WebGL2 where there is one, plain JavaScript otherwise. Open it from disk, or with `?inline=true` in
    a tab straight from here."""
    data = await model_bytes(catalog, model_id)
    (page, name), _ = await computed(renders, model_id, "player", data, lambda mf: (player_html(mf), mf.info.name))
    kind = "inline" if inline else "attachment"
    return HTMLResponse(page, headers=disposition(kind, download_name(model_id, name, ".html")))


@router.get("/{model_id}/video.{fmt}", response_class=Response, summary="Growth, damage and regrowth as a video",
            responses={200: {"content": {t: {} for t in VIDEO_FORMATS.values()}}, **EXPORT_ERRORS})
async def video(model_id: str, fmt: Literal["gif", "webp", "mp4"], catalog: CatalogDep, renders: RendersDep,
                steps: Annotated[int, Query(ge=1, le=VIDEO_LIMITS.max_steps, description="CA steps")] = DEFAULT_STEPS,
                scale: Annotated[int, Query(ge=1, le=VIDEO_LIMITS.max_scale, description="pixels per cell")]
                = DEFAULT_SCALE) -> Response:
    """The model grows from the seed, its centre is cut out after a third of the steps, and it regrows.
    At most 2000 steps, 16 pixels per cell and 1024 pixels a side (422 says which limit was passed)."""
    data = await model_bytes(catalog, model_id)
    try:
        video_bytes, _ = await computed(renders, model_id, "video", data,
                                        lambda mf: render_video(mf, fmt, steps, scale), fmt=fmt, steps=steps,
                                        scale=scale)
    except VideoLimitError as exc:
        raise HTTPException(422, str(exc)) from None
    filename = download_name(model_id, model_id.replace("@", "-"), f".{fmt}")
    return Response(video_bytes, media_type=VIDEO_FORMATS[fmt], headers=disposition("inline", filename))


@router.get("/{model_id}/card", summary="The model card: an automatic evaluation",
            responses={200: {"content": {"application/json": {}}}, **EXPORT_ERRORS})
async def card(model_id: str, catalog: CatalogDep, renders: RendersDep) -> JSONResponse:
    """Growth, persistence at 1000 and 2000 steps, regrowth after two cuts, rotated growth and the 8-bit
    export, each as a number and a picture, and a one-word verdict (docs/model-format.md#model-card).
    A shipped example's card is stored next to it; any other is computed on the first request
    (seconds) and cached for this model version. `X-Card-Source` says which."""
    data = await model_bytes(catalog, model_id)
    digest = model_digest(data)
    found = await stored_card(catalog, model_id, digest)
    if found is not None:
        return JSONResponse(found, headers={"X-Card-Source": "stored", "Cache-Control": "no-store"})
    result, _ = await computed(renders, model_id, "card", data, lambda mf: model_card(mf, model_sha256=digest))
    return JSONResponse(result, headers={"X-Card-Source": "computed", "Cache-Control": "no-store"})
