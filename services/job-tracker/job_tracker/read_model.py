"""The job status read model: one document a job, written only by the job-tracker.

Readers (the gateway's status API and pages) use `JobStatuses` too, so the collection's name
and shape are known in exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events import ItemStatus
from kit.ports import AnyOf, Documents

__all__ = ["COLLECTION", "ItemState", "JobState", "JobStatus", "JobStatuses", "JobSummary"]

COLLECTION = "job_status"
JobState = Literal["queued", "processing", "done", "error"]


class ItemState(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    status: ItemStatus = "queued"
    reason: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    parent_item_id: str | None = None


class JobSummary(BaseModel):
    """A job's state and counts without its items: what lists of jobs need (reading it skips
    the items, the bulk of the document)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    opened: bool = False
    status: JobState = "queued"
    message: str | None = None
    total: int = 0
    completed_count: int = 0
    error_count: int = 0
    processing_count: int = 0
    queued_count: int = 0
    finished_at: str | None = None


class JobStatus(JobSummary):
    """What the tracker knows of one job: every item's state, and the job's, derived from
    them (`job_tracker.status.job_state`, the only place that derives it)."""

    kind: str | None = None
    item_ids: tuple[str, ...] = ()
    items: dict[str, ItemState] = Field(default_factory=dict)
    opened_at: str | None = None

    def all_item_ids(self) -> list[str]:
        """The job's own items in order, then items only seen in status events (archive
        entries)."""
        ids = list(self.item_ids)
        known = set(ids)
        ids.extend(i for i in self.items if i not in known)
        return ids


class JobStatuses:
    """The repository of `JobStatus` documents."""

    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(COLLECTION)

    async def get(self, job_id: str) -> JobStatus | None:
        doc = await self._collection.get(job_id)
        return None if doc is None else JobStatus.model_validate(doc)

    async def summaries(self, job_ids: Iterable[str]) -> dict[str, JobSummary]:
        """The summaries of many jobs, in one query."""
        wanted = list(dict.fromkeys(job_ids))
        if not wanted:
            return {}
        docs = await self._collection.find({"_id": AnyOf(wanted)})
        return {doc["_id"]: JobSummary.model_validate(doc) for doc in docs}

    async def put(self, status: JobStatus) -> None:
        await self._collection.put({"_id": status.job_id, **status.model_dump(mode="json")})
