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
    # A production cluster wants 3 (with min.insync.replicas=2): one broker may fail.
    kafka_replication_factor: int = Field(default=1, ge=1)
    # How long publish/commit wait for an unreachable broker before raising Unavailable.
    kafka_unavailable_after_seconds: float = Field(default=10.0, gt=0)

    # Event-log retention in hours (kit.ports.RetentionPolicy). ~6 KB of log per image: at
    # 10,000 images a day a week is ~0.4 GB. Overrides by exact topic name, e.g.
    # UPLOADER_EVENT_RETENTION_OVERRIDES='{"items.status": 720}'; null keeps a topic forever.
    # Dead-letter topics (*.dlq) are kept forever unless dead_letter_retention_hours is set.
    event_retention_hours: float = Field(default=168.0, gt=0)
    event_retention_overrides: dict[str, float | None] = Field(default_factory=dict)
    dead_letter_retention_hours: float | None = Field(default=None, gt=0)
    # How often the embedded bus prunes (Kafka's broker prunes on its own schedule).
    event_prune_interval_seconds: float = Field(default=3600.0, gt=0)
    # The processed-events ledger forgets an event this long after handling it. A dead letter
    # replayed later than that is handled again by the services that had already handled it
    # (their handlers are idempotent: the same records, the same objects).
    ledger_retention_hours: float = Field(default=720.0, gt=0)
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = "minioadmin"
    s3_secret_key: str = "minioadmin"
    s3_secure: bool = False
    mongo_url: str = "mongodb://127.0.0.1:27017"
    mongo_database: str = "imaging_uploader"

    # Periodic clean-up (interrupted uploads, expired sessions, event-log retention) runs at
    # start-up and then this often.
    maintenance_seconds: float = Field(default=300, gt=0)
    # An object-store write left incomplete (a crash mid-upload) is removed once it is this
    # old: S3 cannot tell a stalled upload of another process from a dead one before that.
    incomplete_write_seconds: float = Field(default=900, ge=0)

    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4318"

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    # A request's headers must arrive within this; its body may pause at most the second.
    http_header_timeout_seconds: float = Field(default=30, gt=0)
    http_body_timeout_seconds: float = Field(default=60, gt=0)

    # The key of the keyed hash that turns an MRN into a subject id (kit.phi). Empty: made on
    # first start and kept in the data folder. Every process of a site must use the same one,
    # and changing it gives everybody new subject ids.
    subject_key: str = ""
    # ClamAV's clamd, to scan every archive entry: "unix:/run/clamav/clamd.ctl" or
    # "tcp:127.0.0.1:3310". Empty: no virus scan (the archive reader's own checks still apply).
    clamd_address: str = ""
    clamd_timeout_seconds: float = Field(default=60, gt=0)

    # What zip-extractor accepts from one archive (beyond these an entry, or the rest of the
    # archive, is refused with its reason). Ratio: uncompressed / compressed bytes of an entry.
    zip_max_entries: int = Field(default=2000, ge=1)
    zip_max_entry_mb: float = Field(default=256, gt=0)
    zip_max_total_mb: float = Field(default=4096, gt=0)
    zip_max_ratio: float = Field(default=100, gt=1)

    # Retries of a failing handler before its event goes to the dead-letter topic.
    max_attempts: int = Field(default=5, ge=1)
    retry_base_seconds: float = Field(default=0.2, ge=0)
