"""Gateway settings: the platform's plus the upload limits named in the user's documents."""

from __future__ import annotations

from pydantic import AliasChoices, Field

from kit.settings import PlatformSettings

__all__ = ["GatewaySettings"]


def _limit(name: str) -> AliasChoices:
    # The reference documents name these without our prefix; accept both spellings.
    return AliasChoices(name, "UPLOADER_" + name)


class GatewaySettings(PlatformSettings):
    direct_upload_max_file_size_mb: float = Field(
        default=5, gt=0, validation_alias=_limit("DIRECT_UPLOAD_MAX_FILE_SIZE_MB")
    )
    direct_upload_max_files: int = Field(
        default=100, ge=1, validation_alias=_limit("DIRECT_UPLOAD_MAX_FILES")
    )
    max_files_per_upload: int = Field(
        default=50, ge=0, validation_alias=_limit("MAX_FILES_PER_UPLOAD")
    )
    per_file_max_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1, validation_alias=_limit("PER_FILE_MAX_BYTES")
    )
    session_secret: str = ""
    session_hours: int = Field(default=12, ge=1)
    session_https_only: bool = False
    recent_jobs_limit: int = 100

    @property
    def direct_upload_max_bytes(self) -> int:
        return int(self.direct_upload_max_file_size_mb * 1024 * 1024)

    @property
    def max_size_label(self) -> str:
        size = self.direct_upload_max_file_size_mb
        return f"{int(size)}MB" if float(size).is_integer() else f"{size}MB"
