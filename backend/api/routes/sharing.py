"""Identity, share links and the public gallery (docs/api.md "Identity" and "Sharing").

- `GET /api/me`: who you are; a visitor without an owner gets one here (the page asks on load).
- `POST /api/me {"token"}`: carry your jobs to this browser (the owner token from another one).
- `POST/GET /api/jobs/{id}/shares`, `DELETE /api/jobs/{id}/shares/{token}`: share links, owner only.
- `GET /s/{token}`: opening a share link: the browser keeps the token (cookie) and lands on Watch.
- `POST/DELETE /api/jobs/{id}/publish`: a finished model in (or out of) every visitor's list.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field

from backend.storage.owners import SHARES_COOKIE, Caller
from backend.storage.status import FINISHED

from ..deps import SettingsDep, StorageDep
from ..identity import SCOPE_TOKEN, OwnerDep, check_origin, managed_job, set_owner_cookie
from ..schemas import ErrorOut

router = APIRouter(tags=["sharing"])
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (403, 404, 409, 422, 429, 503)}
ManagedDep = Annotated[tuple[str, Caller], Depends(managed_job)]
SHARES_KEPT = 20  # share links one browser remembers (the oldest is forgotten)


class MeOut(BaseModel):
    owner: str | None = Field(description="your owner id (null for the operator)")
    token: str | None = Field(description="your owner token: send it as `X-Owner-Token` from scripts, or paste it "
                                          "in another browser to carry your jobs there (keep it secret)")
    admin: bool = Field(description="the operator's token: sees and manages every job")


class TokenIn(BaseModel):
    token: str = Field(max_length=200, description="an owner token from GET /api/me in another browser")


class ShareOut(BaseModel):
    token: str
    url: str = Field(description="the share link (path): opens the job read-only in any browser")
    job: str


@router.get("/api/me", response_model=MeOut, responses=ERRORS, summary="Who you are (a new owner if you had none)")
def me(request: Request, storage: StorageDep, who: OwnerDep) -> MeOut:
    token = None if who.admin else request.scope.get(SCOPE_TOKEN) or storage.owners.token(who.owner)
    return MeOut(owner=who.owner, token=token, admin=who.admin)


@router.post("/api/me", response_model=MeOut, summary="Use an owner token in this browser",
             responses={**ERRORS, 400: {"model": ErrorOut, "description": "the body is not JSON"}})
def adopt(body: TokenIn, request: Request, response: Response, storage: StorageDep, settings: SettingsDep) -> MeOut:
    """Sets the cookie to the token's owner; 422 when the token is not valid here (mistyped, expired)."""
    check_origin(request)  # a foreign page must not log this browser in as someone else
    owner = storage.owners.owner_of_token(body.token.strip())
    if owner is None:
        raise HTTPException(422, "token: not a valid owner token on this server (mistyped, expired, or from "
                                 "another server); copy it again from 'Use from the command line'")
    set_owner_cookie(request, response, body.token.strip(), settings)
    return MeOut(owner=owner, token=body.token.strip(), admin=False)


@router.post("/api/jobs/{job_id}/shares", status_code=201, response_model=ShareOut, responses=ERRORS,
             summary="Create a share link (read-only)")
def create_share(managed: ManagedDep, storage: StorageDep) -> ShareOut:
    job_id, _ = managed
    token = storage.access.share(job_id)
    return ShareOut(token=token, url=f"/s/{token}", job=job_id)


@router.get("/api/jobs/{job_id}/shares", response_model=list[ShareOut], responses=ERRORS,
            summary="The job's live share links")
def list_shares(managed: ManagedDep, storage: StorageDep) -> list[ShareOut]:
    job_id, _ = managed
    return [ShareOut(token=t, url=f"/s/{t}", job=job_id) for t in storage.access.shares(job_id)]


@router.delete("/api/jobs/{job_id}/shares/{token}", status_code=204, response_class=Response, responses=ERRORS,
               summary="Revoke a share link (it answers 404 from now on)")
def revoke_share(managed: ManagedDep, token: str, storage: StorageDep) -> Response:
    job_id, _ = managed
    if not storage.access.revoke(job_id, token):
        raise HTTPException(404, "no such share link for this job (revoked already?)")
    return Response(status_code=204)


@router.get("/s/{token}", response_class=RedirectResponse, status_code=303, responses={404: {"model": ErrorOut}},
            summary="Open a share link: keeps its token in this browser and shows the job in Watch")
async def open_share(token: str, request: Request, storage: StorageDep, settings: SettingsDep) -> Response:
    job_id = await run_in_threadpool(storage.access.job_of_share, token)
    if job_id is None:
        raise HTTPException(404, "this share link does not exist or was revoked")
    kept = [t for t in (request.cookies.get(SHARES_COOKIE) or "").split(",") if t and t != token]
    response = RedirectResponse(f"/#watch/{job_id}", status_code=303)
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(SHARES_COOKIE, ",".join([*kept[-(SHARES_KEPT - 1):], token]), httponly=True, samesite="lax",
                        secure=secure, path="/", max_age=int(settings.owner_token_days * 86400))
    return response


@router.post("/api/jobs/{job_id}/publish", status_code=204, response_class=Response, responses=ERRORS,
             summary="Publish a finished model to the public gallery")
def publish(managed: ManagedDep, storage: StorageDep) -> Response:
    """Every visitor's model list (GET /api/models, the Watch view) shows it until unpublished. 409 while
    the job is still training or has no model."""
    job_id, _ = managed
    job = storage.jobs.get(job_id)
    if job.status not in FINISHED or job.model_version == 0:
        raise HTTPException(409, f"only a finished job with a model can be published (this one is {job.status}"
                                 f"{'' if job.model_version else ', without a checkpoint'})")
    storage.access.publish(job_id)
    return Response(status_code=204)


@router.delete("/api/jobs/{job_id}/publish", status_code=204, response_class=Response, responses=ERRORS,
               summary="Take a model out of the public gallery")
def unpublish(managed: ManagedDep, storage: StorageDep) -> Response:
    job_id, _ = managed
    storage.access.unpublish(job_id)
    return Response(status_code=204)
