"""Shared dependencies as `Annotated` aliases; everything lives on `app.state` (built in main.create_app)."""

from __future__ import annotations

from typing import Annotated

import redis
from celery import Celery
from fastapi import Depends, HTTPException, Request

from backend.config import Settings
from backend.storage.jobs import JobStore, is_job_id
from backend.storage.models import ModelCatalog

from .renders import Renders


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _redis(request: Request) -> redis.Redis:
    return request.app.state.redis


def _store(request: Request) -> JobStore:
    return request.app.state.store


def _catalog(request: Request) -> ModelCatalog:
    return request.app.state.catalog


def _renders(request: Request) -> Renders:
    return request.app.state.renders


def _celery(request: Request) -> Celery:
    return request.app.state.celery


def _job_id(job_id: str) -> str:
    if not is_job_id(job_id):
        raise HTTPException(422, f"malformed job id {job_id[:40]!r}: job ids are 32 lowercase hex characters")
    return job_id


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[redis.Redis, Depends(_redis)]
StoreDep = Annotated[JobStore, Depends(_store)]
CatalogDep = Annotated[ModelCatalog, Depends(_catalog)]
CeleryDep = Annotated[Celery, Depends(_celery)]
RendersDep = Annotated[Renders, Depends(_renders)]
JobIdDep = Annotated[str, Depends(_job_id)]
