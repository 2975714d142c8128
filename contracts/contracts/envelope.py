"""The CloudEvents 1.0 envelope every event travels in (structured JSON mode)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["SOURCE_PREFIX", "CloudEvent", "utcnow"]

SOURCE_PREFIX = "/imaging-uploader/"


def utcnow() -> datetime:
    return datetime.now(UTC)


class CloudEvent(BaseModel):
    """The wire form: attributes plus the payload as plain JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = "1.0"
    # Required on the wire: consumers deduplicate on `id`, so decoding must never invent one.
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    time: datetime
    subject: str | None = None
    datacontenttype: Literal["application/json"] = "application/json"
    data: dict[str, Any]

    @classmethod
    def new(cls, **attributes: Any) -> CloudEvent:
        """A fresh event from a producer: a new id and the current time unless given."""
        attributes.setdefault("id", uuid.uuid4().hex)
        attributes.setdefault("time", utcnow())
        return cls(**attributes)

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> CloudEvent:
        return cls.model_validate_json(raw)
