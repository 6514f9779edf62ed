"""Training jobs: upload a target image, follow progress, cancel, see the target, a preview and the
training history (every checkpoint kept, each with its own preview)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from backend.nca.target import target_to_png
from backend.storage.jobs import Job, JobNotFound, JobStore
from backend.storage.listing import BadCursor, Cursor, IndexSource, matches, scan
from backend.storage.models import CheckpointNotFound
from backend.storage.owners import Caller
from backend.storage.shared import Storage

from ..deps import PreviewsDep, RendersDep, SettingsDep, StorageDep, StoreDep
from ..identity import CallerDep, OwnerDep, managed_job, visible_job
from ..schemas import CheckpointList, CheckpointOut, ErrorOut, JobAccess, JobList, JobOut
from ..security import QUOTA_RESPONSES, TOKEN, TOKEN_RESPONSES, job_slot
from ..submissions import UPLOAD_BODY, UPLOAD_ERRORS, StartNotFound, job_spec, read_upload, submit

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (404, 409, 413, 422, 503)}
Scale = Annotated[int, Query(ge=1, le=16, description="each cell becomes scale x scale pixels")]
Iteration = Annotated[int, Path(ge=0, le=10**9, description="a checkpoint's training iteration")]
HISTORY_CACHE = "private, max-age=86400"  # a checkpoint of the history never changes (the page adds its version)
# A job the caller may see (404 otherwise, as for no job), and one it may change (its owner's, the operator's).
JobIdDep = Annotated[str, Depends(visible_job)]
ManagedDep = Annotated[tuple[str, Caller], Depends(managed_job)]


def out(storage: Storage, jobs: list[Job], who: Caller) -> list[JobOut]:
    """The jobs as answered: links, and what the caller may do with each (its shares only to who manages it)."""
    described = storage.access.describe([job.id for job in jobs])
    owners = dict(zip([j.id for j in jobs], storage.owners.owners_of([j.id for j in jobs]), strict=True)) \
        if not who.admin else {}
    answers = []
    for job in jobs:
        published, shares = described[job.id]
        mine = who.admin or (who.owner is not None and owners.get(job.id) == who.owner)
        expires = storage.deletion.expires_at(job.finished_at, job.created_at, job.status, published or bool(shares))
        access = JobAccess(mine=mine, published=published, shares=shares if mine else [], expires_at=expires)
        answers.append(JobOut.of(job).model_copy(update={"access": access}))
    return answers


@router.post("", status_code=202, response_model=JobOut,
             responses={**ERRORS, **UPLOAD_ERRORS, **TOKEN_RESPONSES, **QUOTA_RESPONSES},
             dependencies=[TOKEN], summary="Upload an image and start training", openapi_extra=UPLOAD_BODY)
async def create_job(request: Request, response: Response, settings: SettingsDep, storage: StorageDep,
                     who: OwnerDep) -> JobOut:
    """Multipart: `image` plus JobOptions as form fields or as a JSON `options` field. Answers 202 and a Location.
    Without an owner (cookie or X-Owner-Token) the request gets a new one: the cookie, and `owner_token`.
    Without an image, `start_from` continues that model on its own target."""
    async with job_slot(request, storage, who.owner) as slot:  # 429 over a quota, before the body is read
        upload = await read_upload(request, settings.max_upload_bytes, allow_no_image=True)
        spec = await run_in_threadpool(job_spec, upload, settings, storage)
        try:
            job = await run_in_threadpool(submit, storage, settings, upload, spec, who)
        except StartNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        slot.job_id = job.id
    response.headers["Location"] = f"/api/jobs/{job.id}"
    (answer,) = await run_in_threadpool(out, storage, [job], who)
    return answer.model_copy(update={"owner_token": getattr(request.state, "new_owner_token", None)})


@router.get("", response_model=JobList, responses={422: {"model": ErrorOut}}, summary="List your jobs, newest first")
def list_jobs(storage: StorageDep, who: CallerDep,
              cursor: Annotated[str | None, Query(max_length=300, description="next_cursor of the previous page; "
                                                  "leave out for the first")] = None,
              offset: Annotated[int, Query(ge=0, le=10**9, description="older clients' paging; prefer cursor")] = 0,
              limit: Annotated[int, Query(ge=1, le=100)] = 20,
              q: Annotated[str, Query(max_length=100, description="only jobs whose name contains this "
                                      "(case-insensitive)")] = "") -> JobList:
    """The caller's own jobs (the operator: everybody's), a page at a time: pass each page's `next_cursor` as
    `cursor`. With `q`, a page reads at most SCAN_BUDGET index entries (docs/api.md): it may be short, or
    empty, and still have a `next_cursor`. Shared and published models are in /api/models."""
    if cursor and offset:
        raise HTTPException(422, "give either cursor (from next_cursor) or offset, not both")
    if who.owner is None and not who.admin:
        return JobList(items=[], total=0, offset=offset, limit=limit)
    index = storage.jobs.index() if who.admin else storage.owners.index(who.owner)
    phase = "all" if who.admin else "owner"
    try:
        start = Cursor.decode(cursor, "jobs", [phase]) if cursor else None
    except BadCursor as exc:
        raise HTTPException(422, str(exc)) from None
    if offset and not start:  # offset paging (older clients): the page after the row before `offset`
        before = index.at(offset - 1, 1)
        if not before:
            return JobList(items=[], total=index.count(), offset=offset, limit=limit)
        start = Cursor("jobs", phase, before[0][1], before[0][0])
    ids, next_page = job_page(storage, phase, index, start, limit, q)
    jobs = storage.jobs.get_many(ids)
    return JobList(items=out(storage, jobs, who), total=index.count(), offset=offset, limit=limit,
                   next_cursor=next_page.encode() if next_page else None)


def job_page(storage: Storage, phase: str, index: IndexSource, start: Cursor | None, limit: int,
             q: str) -> tuple[list[str], Cursor | None]:
    """The ids of a page of the index after `start` (whose names contain `q`, when given) and where the next
    page starts; a search reads the names of at most SCAN_BUDGET rows (backend.storage.listing)."""

    def keep(_: str, batch: list[str]) -> list[str | None]:
        if not q:
            return list(batch)
        return [job_id if fields is not None and matches(fields["name"], q) else None
                for job_id, fields in zip(batch, storage.jobs.peek(batch, ("name",)), strict=True)]

    page = scan("jobs", [(phase, index)], start, limit, keep)
    return [job_id for _, job_id in page.items], page.next


def get_job_or_404(store: JobStore, job_id: str) -> Job:
    try:
        return store.get(job_id)
    except JobNotFound:
        raise HTTPException(404, f"no job with id {job_id}") from None


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS, summary="Status, progress and links of a job")
def get_job(job_id: JobIdDep, storage: StorageDep, who: CallerDep) -> JobOut:
    return out(storage, [get_job_or_404(storage.jobs, job_id)], who)[0]


@router.delete("/{job_id}", status_code=204, response_class=Response, responses={**ERRORS, 403: {"model": ErrorOut}},
               summary="Delete a job and every byte of it")
async def delete_job(managed: ManagedDep, storage: StorageDep, previews: PreviewsDep,
                     renders: RendersDep) -> Response:
    """Cancels it if it is queued or running, then removes its record, target, upload, checkpoints and
    history, model, share links, cached previews and renders, and the worker's exported file; nothing of any
    other job. Its owner's or the operator's; a job already deleted answers 404."""
    job_id, _ = managed
    digests = await run_in_threadpool(storage.jobs.model_digests, job_id)
    await run_in_threadpool(storage.deletion.delete, job_id)
    previews.forget(job_id)
    renders.forget(digests)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**ERRORS, **TOKEN_RESPONSES},
             dependencies=[TOKEN], summary="Cancel a job (keeps its checkpoint)")
def cancel_job(managed: ManagedDep, store: StoreDep, response: Response) -> JobOut:
    """A queued job is cancelled at once (200); a running one stops after its current iteration (202)."""
    job_id, _ = managed
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
