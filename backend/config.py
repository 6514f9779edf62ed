"""All service settings in one place, read from the environment (prefix `NCA_`, plus `REDIS_URL`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NCA_", extra="ignore")

    # When REDIS_URL is unset, `python -m backend.run` starts a bundled Redis and points everything at it.
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=AliasChoices("REDIS_URL", "NCA_REDIS_URL"))
    models_dir: Path = REPO_ROOT / "models"
    frontend_dir: Path = REPO_ROOT / "frontend"

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    stream_host: str = "127.0.0.1"
    stream_port: int = 8001
    # Where browsers reach the stream service; empty means "same host as the page, port stream_port".
    public_stream_url: str = ""

    checkpoint_every: int = 100  # training iterations between checkpoints
    max_upload_bytes: int = 10 * 1024 * 1024
    max_iterations: int = 20_000
    device: str = "auto"  # worker device: auto (cuda if available), cpu, cuda, cuda:N


@lru_cache
def get_settings() -> Settings:
    return Settings()
