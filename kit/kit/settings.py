"""Process settings: the only place that reads the environment (prefix UPLOADER_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PlatformSettings"]


class PlatformSettings(BaseSettings):
    """Which backends to use and where they are. Embedded by default: zero set-up."""

    model_config = SettingsConfigDict(env_prefix="UPLOADER_", extra="ignore")

    bus: Literal["sqlite", "kafka"] = "sqlite"
    store: Literal["fs", "s3"] = "fs"
    db: Literal["sqlite", "mongo"] = "sqlite"
    data_dir: Path = Path("var")

    kafka_bootstrap: str = "127.0.0.1:9092"
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_secure: bool = False
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_database: str = "imaging_uploader"

    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318"

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)

    # Retries of a failing handler before its event goes to the dead-letter topic.
    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=0.2, ge=0)
