"""Jobs as the gateway records them (who, from where, which files, what was refused at the
door), and the job view: that record joined with the job-tracker's status read model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from contracts.events import ItemStatus, ObjectRef, UploadMetadata
from gateway.access import Access
from job_tracker.read_model import ItemState, JobStatus, JobStatuses, JobSummary
from job_tracker.status import job_state
from kit.ports import Documents, Index, Range
from zip_extractor.read_model import ArchiveEntries, ArchiveEntry

__all__ = [
    "INDEXES",
    "JOBS",
    "JobHeader",
    "JobItem",
    "JobRecord",
    "JobRecords",
    "find_job_view",
    "job_view",
    "recent_jobs",
    "summary_view",
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


class JobHeader(BaseModel):
    """A job record without its items: what lists of jobs need."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    job_id: str
    kind: Literal["direct", "archive", "scan"] = "direct"
    uploader: str
    ip: str | None = None
    user_agent: str | None = None
    created_at: str
    metadata: UploadMetadata | None = None
    item_count: int = 0
    rejected_count: int = 0
    # The outbox flag: False until every event of the job is published (see `announce_job`).
    announced: bool = False

    @model_validator(mode="before")
    @classmethod
    def _count_items(cls, data: Any) -> Any:
        # Records written before `item_count` existed: counted from their items.
        if isinstance(data, dict) and "item_count" not in data:
            return {**data, "item_count": len(data.get("items") or ())}
        return data


class JobRecord(JobHeader):
    """One submission as received. Written once, when the job opens; filenames may hold a
    patient's name, so this never leaves the gateway (events carry item ids only)."""

    items: tuple[JobItem, ...] = ()

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

    async def rename_items(self, job_id: str, names: Mapping[str, str]) -> None:
        """Show these items under new names (redacted ones); only the items field is written,
        so the outbox flag is never lost to a concurrent writer."""
        record = await self.get(job_id)
        if record is None:
            return
        items = [
            i.model_copy(update={"filename": names[i.item_id]}) if i.item_id in names else i
            for i in record.items
        ]
        await self._collection.update(
            job_id, set={"items": [i.model_dump(mode="json") for i in items]}
        )

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

    async def recent(self, *, uploader: str | None, limit: int) -> list[JobHeader]:
        where = {} if uploader is None else {"uploader": uploader}
        docs = await self._collection.find(where, sort=[("created_at", -1)], limit=limit)
        return [JobHeader.model_validate(doc) for doc in docs]


def _provisional(entry: JobItem) -> ItemState:
    """An item the tracker has not reported yet: refused at the door, or still queued."""
    return ItemState(
        status="error" if entry.rejected_reason else "queued", reason=entry.rejected_reason
    )


def _child_order(entry: ArchiveEntry) -> tuple[int, int]:
    # By patient folder, then capture time (zip-extractor's `position`): camera exports name
    # entries by capture time but store them in no particular order.
    return (entry.position, entry.entry_index)


def job_view(
    job: JobRecord,
    status: JobStatus | None,
    *,
    include_ip: bool,
    entries: Sequence[ArchiveEntry] = (),
) -> dict[str, Any]:
    """What the status API answers and the pages show for one job, file by file: each
    archive followed by its entries (child items, by the redacted names zip-extractor gave
    them)."""
    tracked = status.items if status is not None else {}
    children: dict[str, list[ArchiveEntry]] = {}
    for child in sorted(entries, key=_child_order):
        children.setdefault(child.archive_item_id, []).append(child)
    items: list[dict[str, Any]] = []
    listed: set[str] = set()
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
        listed.add(entry.item_id)
        for child in children.get(entry.item_id, ()):
            child_state = tracked.get(child.item_id) or ItemState(
                status="error" if child.reason else "queued", reason=child.reason
            )
            items.append(
                {
                    "item_id": child.item_id,
                    "filename": child.display_name,
                    "size": child.size,
                    **_state(child_state),
                    "parent_item_id": entry.item_id,
                    "entry_kind": child.entry_kind,
                    "subject_id": child.subject_id,
                    "encounter_id": child.encounter_id,
                    "captured_at": child.captured_at,
                }
            )
            listed.add(child.item_id)
    for item_id, state in tracked.items():  # entries the tracker knows of before their names
        if item_id not in listed:
            items.append({"item_id": item_id, "filename": None, "size": None, **_state(state)})
    counts = {s: sum(1 for i in items if i["status"] == s) for s in _COUNTED}
    if status is not None and status.opened:
        state_name, message = status.status, status.message
    else:  # not seen by the tracker yet: derived the tracker's way from what is known
        state_name, message = job_state([i["status"] for i in items])
    view = _header_view(job, state_name, message, counts, status, include_ip=include_ip)
    view["items"] = items
    return view


def summary_view(job: JobHeader, summary: JobSummary | None, *, include_ip: bool) -> dict[str, Any]:
    """A job in a list: the fields of `job_view` without the files, from the tracker's counts
    (or, before the tracker has seen it, from what was refused at the door)."""
    if summary is not None and summary.opened:
        counts = {
            "queued": summary.queued_count,
            "processing": summary.processing_count,
            "completed": summary.completed_count,
            "error": summary.error_count,
        }
        state_name, message = summary.status, summary.message
    else:
        waiting = job.item_count - job.rejected_count
        counts = {"queued": waiting, "processing": 0, "completed": 0, "error": job.rejected_count}
        refused: list[ItemStatus] = ["error"] * job.rejected_count
        queued: list[ItemStatus] = ["queued"] * waiting
        state_name, message = job_state(refused + queued)
    return _header_view(job, state_name, message, counts, summary, include_ip=include_ip)


def _header_view(
    job: JobHeader,
    state_name: str,
    message: str | None,
    counts: dict[str, int],
    status: JobSummary | None,
    *,
    include_ip: bool,
) -> dict[str, Any]:
    total = sum(counts.values())
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
    summaries = await JobStatuses(docs=docs).summaries(r.job_id for r in records)
    return [
        summary_view(r, summaries.get(r.job_id), include_ip=access.sees_audit_details)
        for r in records
    ]


async def find_job_view(job_id: str, *, docs: Documents, access: Access) -> dict[str, Any] | None:
    """The view of the job this token opens, or None."""
    record = await JobRecords(docs=docs).get(job_id)
    if record is None:
        return None
    status = await JobStatuses(docs=docs).get(job_id)
    entries = await ArchiveEntries(docs=docs).of_job(job_id) if record.kind == "archive" else []
    return job_view(record, status, include_ip=access.sees_audit_details, entries=entries)
