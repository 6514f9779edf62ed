"""Shared dependencies as `Annotated` aliases; everything lives on `app.state` (built in main.create_app)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from backend.config import Settings
from backend.storage.jobs import JobStore, is_job_id
from backend.storage.models import ModelCatalog
from backend.storage.shared import Storage

from .previews import Previews
from .renders import Renders


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _storage(request: Request) -> Storage:
    return request.app.state.storage


def _store(request: Request) -> JobStore:
    return request.app.state.storage.jobs


def _catalog(request: Request) -> ModelCatalog:
    return request.app.state.storage.catalog


def _previews(request: Request) -> Previews:
    return request.app.state.previews


def _renders(request: Request) -> Renders:
    return request.app.state.renders


def _job_id(job_id: str) -> str:
    if not is_job_id(job_id):
        raise HTTPException(422, f"malformed job id {job_id[:40]!r}: job ids are 32 lowercase hex characters")
    return job_id


SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[Storage, Depends(_storage)]
StoreDep = Annotated[JobStore, Depends(_store)]
CatalogDep = Annotated[ModelCatalog, Depends(_catalog)]
PreviewsDep = Annotated[Previews, Depends(_previews)]
RendersDep = Annotated[Renders, Depends(_renders)]
JobIdDep = Annotated[str, Depends(_job_id)]
