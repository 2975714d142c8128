"""The catalogue and the grading queue: read models written only by ingest.

Readers (the gateway's grading queue, image routes and later the dashboard) use `Catalogue`,
so the collections' names, shapes and indexes are known in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from contracts.events import ObjectRef
from kit.ports import AnyOf, Documents, Index

__all__ = [
    "CATALOGUE",
    "GRADING_QUEUE",
    "INDEXES",
    "REPORTS",
    "Catalogue",
    "CatalogueRecord",
    "QueueEntry",
    "ReportRecord",
]

CATALOGUE, GRADING_QUEUE, REPORTS = "uploads", "grading_queue", "reports"

# What the read APIs filter and sort by; created at start-up (see `ServiceSpec.indexes`).
INDEXES: Mapping[str, Sequence[Index]] = {
    GRADING_QUEUE: (
        Index(fields=(("queued_at", 1),)),
        Index(fields=(("lab_unit_id", 1), ("queued_at", 1))),
        Index(fields=(("disease_id", 1), ("queued_at", 1))),
        Index(fields=(("hospital_id", 1), ("queued_at", 1))),
    ),
    CATALOGUE: (
        Index(fields=(("ingested_at", -1),)),
        Index(fields=(("lab_unit_id", 1), ("ingested_at", -1))),
        Index(fields=(("job_id", 1),)),
    ),
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    def document(self, doc_id: str) -> dict[str, Any]:
        return {"_id": doc_id, **self.model_dump(mode="json")}


class CatalogueRecord(_Model):
    """One catalogued upload: everything known about it except PHI."""

    item_id: str
    kind: Literal["image"] = "image"
    job_id: str
    uploader_id: str
    hospital_id: str | None = None
    lab_unit_id: str | None = None
    camera_id: str | None = None
    disease_id: str | None = None
    area_id: str | None = None
    mydriatic: bool | None = None
    raw: ObjectRef
    clean: ObjectRef
    thumbnail: ObjectRef
    md5: str
    sha256: str
    size: int
    width: int
    height: int
    masked: bool
    review_reason: str | None = None
    needs_review: bool = False
    pre_graded: bool = False
    ingested_at: str


class QueueEntry(_Model):
    """An image waiting to be graded. Only open entries are kept: grading one removes it."""

    record_id: str
    job_id: str
    disease_id: str | None = None
    hospital_id: str | None = None
    lab_unit_id: str | None = None
    queued_at: str
    needs_review: bool = False


class ReportRecord(_Model):
    item_id: str
    job_id: str
    report_kind: str
    method: str
    subject_id: str | None = None
    findings: dict[str, Any] = {}


class Catalogue:
    """The repository of catalogue records, grading-queue entries and parsed reports."""

    def __init__(self, *, docs: Documents) -> None:
        self._records = docs.collection(CATALOGUE)
        self._queue = docs.collection(GRADING_QUEUE)
        self._reports = docs.collection(REPORTS)

    async def get(self, record_id: str) -> CatalogueRecord | None:
        doc = await self._records.get(record_id)
        return None if doc is None else CatalogueRecord.model_validate(doc)

    async def get_many(self, record_ids: Iterable[str]) -> dict[str, CatalogueRecord]:
        """Records by id, in one query (a page of the queue must not cost a query an entry)."""
        wanted = list(dict.fromkeys(record_ids))
        if not wanted:
            return {}
        found = await self._records.find({"_id": AnyOf(wanted)})
        return {doc["_id"]: CatalogueRecord.model_validate(doc) for doc in found}

    async def put(self, record: CatalogueRecord) -> None:
        await self._records.put(record.document(record.item_id))

    async def enqueue(self, entry: QueueEntry) -> None:
        await self._queue.put(entry.document(entry.record_id))

    async def dequeue(self, record_id: str) -> None:
        await self._queue.delete(record_id)

    async def queue(self, *, where: Mapping[str, Any], limit: int) -> list[QueueEntry]:
        """Open entries, oldest first."""
        found = await self._queue.find(where, sort=[("queued_at", 1)], limit=limit)
        return [QueueEntry.model_validate(doc) for doc in found]

    async def put_report(self, report: ReportRecord) -> None:
        await self._reports.put(report.document(report.item_id))
