"""Jobs as the gateway records them (who, from where, which files, what was refused at the
door), and the job view: that record joined with the job-tracker's status read model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from contracts.events import DirectUploadMetadata, ObjectRef
from gateway.access import Access
from job_tracker.read_model import ItemState, JobStatus, JobStatuses
from job_tracker.status import job_state
from kit.ports import Documents, Index, Range

__all__ = [
    "INDEXES",
    "JOBS",
    "JobItem",
    "JobRecord",
    "JobRecords",
    "find_job_view",
    "job_view",
    "recent_jobs",
]

JOBS = "jobs"
INDEXES: Mapping[str, Sequence[Index]] = {
    JOBS: (
        Index(fields=(("created_at", -1),)),
        Index(fields=(("uploader", 1), ("created_at", -1))),
        Index(fields=(("announced", 1), ("created_at", 1))),
    ),
}
_COUNTED = ("queued", "processing", "completed", "error")


class JobItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    item_id: str
    filename: str
    size: int | None = None
    md5: str | None = None
    raw: ObjectRef | None = None  # where the accepted file is kept as received
    rejected_reason: str | None = None


class JobRecord(BaseModel):
    """One submission as received. Written once, when the job opens; filenames may hold a
    patient's name, so this never leaves the gateway (events carry item ids only)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    kind: Literal["direct", "archive", "scan"] = "direct"
    uploader: str
    ip: str | None = None
    user_agent: str | None = None
    created_at: str
    metadata: DirectUploadMetadata | None = None
    items: tuple[JobItem, ...] = ()
    rejected_count: int = 0
    # The outbox flag: False until every event of the job is published (see `announce_job`).
    announced: bool = False

    def item(self, item_id: str) -> JobItem | None:
        return next((i for i in self.items if i.item_id == item_id), None)


class JobRecords:
    """The repository of `JobRecord`s (the `jobs` collection)."""

    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(JOBS)

    async def put(self, record: JobRecord) -> None:
        await self._collection.put({"_id": record.job_id, **record.model_dump(mode="json")})

    async def get(self, job_id: str) -> JobRecord | None:
        doc = await self._collection.get(job_id)
        return None if doc is None else JobRecord.model_validate(doc)

    async def mark_announced(self, job_id: str) -> None:
        await self._collection.update(job_id, set={"announced": True})

    async def unannounced(self, *, created_before: str, limit: int = 100) -> list[JobRecord]:
        """Jobs recorded while the event bus was down, oldest first."""
        docs = await self._collection.find(
            {"announced": False, "created_at": Range(lt=created_before)},
            sort=[("created_at", 1)],
            limit=limit,
        )
        return [JobRecord.model_validate(doc) for doc in docs]

    async def recent(self, *, uploader: str | None, limit: int) -> list[JobRecord]:
        where = {} if uploader is None else {"uploader": uploader}
        docs = await self._collection.find(where, sort=[("created_at", -1)], limit=limit)
        return [JobRecord.model_validate(doc) for doc in docs]


def _provisional(entry: JobItem) -> ItemState:
    """An item the tracker has not reported yet: refused at the door, or still queued."""
    return ItemState(
        status="error" if entry.rejected_reason else "queued", reason=entry.rejected_reason
    )


def job_view(
    job: JobRecord, status: JobStatus | None, *, include_ip: bool, include_items: bool = True
) -> dict[str, Any]:
    """What the status API answers and the pages show for one job."""
    tracked = status.items if status is not None else {}
    items: list[dict[str, Any]] = []
    for entry in job.items:
        state = tracked.get(entry.item_id) or _provisional(entry)
        items.append(
            {
                "item_id": entry.item_id,
                "filename": entry.filename,
                "size": entry.size,
                **_state(state),
            }
        )
    known = {entry.item_id for entry in job.items}
    for item_id, state in tracked.items():  # children found inside archives
        if item_id not in known:
            items.append({"item_id": item_id, "filename": None, "size": None, **_state(state)})
    counts = {s: sum(1 for i in items if i["status"] == s) for s in _COUNTED}
    if status is not None and status.opened:
        state_name, message = status.status, status.message
    else:  # not seen by the tracker yet: derived the tracker's way from what is known
        state_name, message = job_state([i["status"] for i in items])
    total = len(items)
    finished = counts["completed"] + counts["error"]
    view: dict[str, Any] = {
        "job_id": job.job_id,
        "token": job.job_id,
        "kind": job.kind,
        "status": state_name,
        "message": message,
        "uploader": job.uploader,
        "user_agent": job.user_agent,
        "created_at": job.created_at,
        "completed_at": status.finished_at
        if status is not None and state_name in ("done", "error")
        else None,
        "metadata": job.metadata.model_dump() if job.metadata else None,
        "total": total,
        "processed": finished,
        "succeeded": counts["completed"],
        "failed": counts["error"],
        "queued": counts["queued"],
        "processing": counts["processing"],
        "rejected_count": job.rejected_count,
        "progress": round(100 * finished / total) if total else 100,
    }
    if include_items:
        view["items"] = items
    if include_ip:
        view["ip"] = job.ip
    return view


def _state(state: ItemState) -> dict[str, Any]:
    return {
        "status": state.status,
        "reason": state.reason,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "parent_item_id": state.parent_item_id,
    }


async def recent_jobs(*, docs: Documents, access: Access, limit: int = 100) -> list[dict[str, Any]]:
    """The most recent jobs the viewer may list (see `Access.lists_jobs_of`), with their
    statuses fetched in one query."""
    records = await JobRecords(docs=docs).recent(uploader=access.lists_jobs_of(), limit=limit)
    statuses = await JobStatuses(docs=docs).get_many(r.job_id for r in records)
    return [
        job_view(
            r, statuses.get(r.job_id), include_ip=access.sees_audit_details, include_items=False
        )
        for r in records
    ]


async def find_job_view(job_id: str, *, docs: Documents, access: Access) -> dict[str, Any] | None:
    """The view of the job this token opens, or None."""
    record = await JobRecords(docs=docs).get(job_id)
    if record is None:
        return None
    status = await JobStatuses(docs=docs).get(job_id)
    return job_view(record, status, include_ip=access.sees_audit_details)
