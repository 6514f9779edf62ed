"""Who a request is (docs/api.md "Identity"): the owner in the cookie or the `X-Owner-Token` header,
the operator, the share links it holds; and the checks every job and model route makes with it.

- Browsers: the signed owner token in the `nca_owner` cookie (HttpOnly, SameSite=Lax, Secure over
  HTTPS). Scripts: `X-Owner-Token: <token>` (or `Authorization: Bearer <owner token>` where the server
  has no NCA_ACCESS_TOKEN, which takes that header). `X-Owner-Token: <NCA_ADMIN_TOKEN>`: the operator.
- A create (or `GET /api/me`) without a valid identity mints a new owner, set as the cookie and
  returned in the body (`owner_token`). A bad token is no identity: it is never an error.
- Cross-site requests: SameSite=Lax keeps the cookie off cross-site POSTs; in addition a state change
  authenticated by the cookie must come with no Origin or the server's own (403 otherwise). Header
  tokens need no check: a page cannot make a browser send a custom header cross-site.
- Someone else's job or model answers 404 (`visible_job`, `visible_model`), as if it did not exist;
  a job shared with the caller read-only answers 403 to a change.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from backend.config import Settings
from backend.storage.jobs import is_job_id
from backend.storage.owners import (
    COOKIE,
    OWNER_HEADER,
    SHARE_HEADER,
    SHARE_PARAM,
    SHARES_COOKIE,
    Caller,
    TooManyOwners,
    identify,
    looks_like_owner_token,
    share_tokens,
)
from backend.storage.shared import Storage

from .security import bearer_token, client_id

SCOPE_CALLER = "nca.caller"
SCOPE_TOKEN = "nca.owner_token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _token(request: Request, settings: Settings) -> tuple[str | None, str]:
    """The presented token and where it came from ('header', 'cookie' or '')."""
    header = request.headers.get(OWNER_HEADER)
    if header:
        return header.strip(), "header"
    bearer = bearer_token(request)
    if bearer and not settings.access_token and looks_like_owner_token(bearer):
        return bearer, "header"
    cookie = request.cookies.get(COOKIE)
    return (cookie, "cookie") if cookie else (None, "")


def resolve(request: Request) -> Caller:
    """The caller of this request (computed once per request). Blocking on first use of the secret."""
    if SCOPE_CALLER in request.scope:
        return request.scope[SCOPE_CALLER]
    settings: Settings = request.app.state.settings
    storage: Storage = request.app.state.storage
    token, source = _token(request, settings)
    shares = share_tokens(request.cookies.get(SHARES_COOKIE), request.headers.get(SHARE_HEADER),
                          request.query_params.get(SHARE_PARAM))
    caller = identify(storage.owners, token, shares, settings.admin_token)
    if source == "cookie" and request.method in UNSAFE_METHODS:
        check_origin(request)
    request.scope[SCOPE_CALLER] = caller
    if caller.owner is not None:
        request.scope[SCOPE_TOKEN] = token  # valid: GET /api/me shows this one rather than a fresh signature
    return caller


def check_origin(request: Request) -> None:
    """403 for a cookie-authenticated change sent from another site's page."""
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (origin is not None and not same_origin(origin,
                                                                                                          request)):
        raise HTTPException(403, "cross-site request refused: changes authenticated by the cookie must come from "
                                 "this site's own pages (scripts: send the X-Owner-Token header)")


def same_origin(origin: str, request: Request) -> bool:
    parts = urlsplit(origin)
    host = request.headers.get("x-forwarded-host") or request.headers.get("host") or ""
    return bool(parts.netloc) and parts.netloc.lower() == host.split(",")[0].strip().lower()


def set_owner_cookie(request: Request, response: Response, token: str, settings: Settings) -> None:
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(COOKIE, token, max_age=int(settings.owner_token_days * 86400), httponly=True,
                        samesite="lax", secure=secure, path="/")


async def caller(request: Request) -> Caller:
    return await run_in_threadpool(resolve, request)


async def owner_or_new(request: Request, response: Response) -> Caller:
    """The caller, with an owner minted for it when it has none (cookie set; the token in `request.state`).
    429 when its address created too many owners this hour."""
    who = await caller(request)
    if who.owner is not None or who.admin:
        return who
    storage: Storage = request.app.state.storage
    settings: Settings = request.app.state.settings
    try:
        owner = await run_in_threadpool(storage.owners.mint, client_id(request))
    except TooManyOwners as exc:
        raise HTTPException(429, str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    token = await run_in_threadpool(storage.owners.token, owner)
    set_owner_cookie(request, response, token, settings)
    request.state.new_owner_token = request.scope[SCOPE_TOKEN] = token
    who = Caller(owner=owner, shares=who.shares)
    request.scope[SCOPE_CALLER] = who
    return who


CallerDep = Annotated[Caller, Depends(caller)]
OwnerDep = Annotated[Caller, Depends(owner_or_new)]


def not_found_job(job_id: str) -> HTTPException:
    return HTTPException(404, f"no job with id {job_id}")


def visible_job(request: Request, job_id: str) -> str:
    """The job id if the caller may see the job (422 malformed, 404 otherwise: as for a job that does not exist)."""
    if not is_job_id(job_id):
        raise HTTPException(422, f"malformed job id {job_id[:40]!r}: job ids are 32 lowercase hex characters")
    storage: Storage = request.app.state.storage
    if not storage.access.visible(job_id, resolve(request)):
        raise not_found_job(job_id)
    return job_id


def managed_job(request: Request, job_id: str) -> tuple[str, Caller]:
    """The job id if the caller may change it: its owner or the operator (403 for a read-only share, else 404)."""
    visible_job(request, job_id)
    storage: Storage = request.app.state.storage
    who = resolve(request)
    if not storage.access.manages(job_id, who):
        raise HTTPException(403, "this job is shared with you read-only: only its owner can change it")
    return job_id, who


def visible_model(request: Request) -> None:
    """Router dependency of /api/models/{model_id}/...: 404 for a job's model the caller may not see."""
    model_id = request.path_params.get("model_id")
    if model_id is None:
        return
    storage: Storage = request.app.state.storage
    if not storage.access.visible(model_id, resolve(request)):
        raise HTTPException(404, f"no model {model_id[:80]!r} (a job's model exists once it has a checkpoint)")
