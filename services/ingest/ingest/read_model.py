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
    "ENCOUNTERS",
    "GRADING_QUEUE",
    "INDEXES",
    "REPORTS",
    "Catalogue",
    "CatalogueRecord",
    "Encounter",
    "GradingRecord",
    "Laterality",
    "QueueEntry",
    "ReportRecord",
]

CATALOGUE, GRADING_QUEUE, REPORTS = "uploads", "grading_queue", "reports"
ENCOUNTERS = "encounters"
GRADING = "grading_records"
Laterality = Literal["right", "left", "unknown"]

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
        Index(fields=(("encounter_id", 1),)),
    ),
    REPORTS: (Index(fields=(("encounter_id", 1),)), Index(fields=(("job_id", 1),))),
    GRADING: (Index(fields=(("job_id", 1),)),),
    ENCOUNTERS: (
        Index(fields=(("job_id", 1), ("capture_date", 1))),
        Index(fields=(("subject_id", 1), ("capture_date", 1))),
        Index(fields=(("lab_unit_id", 1), ("capture_date", 1))),
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
    # From an archive: the visit it belongs to (pseudonymous), when it was captured, which
    # eye (only where a source says so: a report tile showing this picture), its flags.
    encounter_id: str | None = None
    subject_id: str | None = None
    captured_at: str | None = None
    laterality: Laterality = "unknown"
    laterality_source: str | None = None
    phash: str | None = None
    flags: tuple[str, ...] = ()
    # An edited version beside the clean original (never overwritten), and its thumbnail;
    # the version counts edits so each has its own object key (and browser cache entry).
    edited: ObjectRef | None = None
    edited_thumbnail: ObjectRef | None = None
    edit_version: int = 0
    # Who graded it and when, where a grading record exists (a pre-graded upload's comes
    # from the sheet it was uploaded with).
    graded_by: str | None = None
    graded_at: str | None = None


class QueueEntry(_Model):
    """An image waiting to be graded. Only open entries are kept: grading one removes it."""

    record_id: str
    job_id: str
    disease_id: str | None = None
    hospital_id: str | None = None
    lab_unit_id: str | None = None
    queued_at: str
    needs_review: bool = False
    encounter_id: str | None = None
    subject_id: str | None = None
    laterality: Laterality = "unknown"
    flags: tuple[str, ...] = ()


class ReportRecord(_Model):
    """A parsed screening report: the values read, never the patient's name or MRN."""

    item_id: str
    job_id: str
    report_kind: str
    method: str
    subject_id: str | None = None
    findings: dict[str, Any] = {}
    encounter_id: str | None = None
    page_kinds: tuple[str, ...] = ()
    # name → {"value", "confidence", "needs_review"}
    fields: dict[str, dict[str, Any]] = {}
    tiles: tuple[dict[str, Any], ...] = ()
    raw_text: str = ""
    parser_version: str = ""
    report: ObjectRef | None = None
    needs_review: bool = False
    filed_at: str | None = None


class GradingRecord(_Model):
    """The grades of one upload: from a grader, or from the sheet a pre-graded upload came
    with (`source`), by grade field (`gateway.grade_sheet.GRADE_FIELDS`)."""

    record_id: str
    job_id: str
    source: Literal["pre_graded", "grader"] = "grader"
    grades: dict[str, Any] = {}
    graded_by: str
    graded_at: str
    sheet_row: int | None = None  # where in the uploaded sheet these grades were


class Encounter(_Model):
    """One patient visit from an archive (a Remidio patient folder): its images and report
    are found by `encounter_id`."""

    encounter_id: str
    job_id: str
    subject_id: str
    capture_date: str | None = None
    site: str | None = None  # the screening site as the report's header prints it
    hospital_id: str | None = None
    lab_unit_id: str | None = None
    created_at: str


class Catalogue:
    """The repository of catalogue records, grading-queue entries and parsed reports."""

    def __init__(self, *, docs: Documents) -> None:
        self._records = docs.collection(CATALOGUE)
        self._queue = docs.collection(GRADING_QUEUE)
        self._reports = docs.collection(REPORTS)
        self._encounters = docs.collection(ENCOUNTERS)
        self._grading = docs.collection(GRADING)

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

    async def set_edited(
        self,
        record_id: str,
        *,
        edited: ObjectRef | None,
        thumbnail: ObjectRef | None,
        version: int,
    ) -> None:
        await self._records.update(
            record_id,
            set={
                "edited": edited.model_dump(mode="json") if edited else None,
                "edited_thumbnail": thumbnail.model_dump(mode="json") if thumbnail else None,
                "edit_version": version,
            },
        )

    async def put_grading(self, grading: GradingRecord) -> None:
        await self._grading.put(grading.document(grading.record_id))

    async def grading(self, record_id: str) -> GradingRecord | None:
        doc = await self._grading.get(record_id)
        return None if doc is None else GradingRecord.model_validate(doc)

    async def report(self, item_id: str) -> ReportRecord | None:
        doc = await self._reports.get(item_id)
        return None if doc is None else ReportRecord.model_validate(doc)

    async def put_report(self, report: ReportRecord) -> None:
        await self._reports.put(report.document(report.item_id))

    async def set_laterality(self, record_id: str, laterality: Laterality, *, source: str) -> None:
        changes = {"laterality": laterality, "laterality_source": source}
        await self._records.update(record_id, set=changes)
        await self._queue.update(record_id, set={"laterality": laterality})

    async def images_of(self, encounter_ids: Iterable[str]) -> list[CatalogueRecord]:
        wanted = list(dict.fromkeys(encounter_ids))
        if not wanted:
            return []
        found = await self._records.find({"encounter_id": AnyOf(wanted)}, sort=[("captured_at", 1)])
        return [CatalogueRecord.model_validate(doc) for doc in found]

    async def reports_of(self, encounter_ids: Iterable[str]) -> list[ReportRecord]:
        wanted = list(dict.fromkeys(encounter_ids))
        if not wanted:
            return []
        found = await self._reports.find({"encounter_id": AnyOf(wanted)})
        return [ReportRecord.model_validate(doc) for doc in found]

    async def record_encounter(self, encounter_id: str, **fields: Any) -> None:
        """Create the encounter or add to it: each of its images and its report know part of
        it, and they arrive in any order (one upsert of the fields each knows)."""
        known = {k: v for k, v in fields.items() if v is not None}
        existing = await self._encounters.get(encounter_id)
        if existing is not None and existing.get("created_at"):
            known.pop("created_at", None)  # when it was first seen
        await self._encounters.update(encounter_id, set=known, upsert=True)

    async def encounters(
        self, *, where: Mapping[str, Any], limit: int, skip: int = 0
    ) -> list[Encounter]:
        found = await self._encounters.find(
            where, sort=[("capture_date", -1), ("created_at", -1)], limit=limit, skip=skip
        )
        return [Encounter.model_validate({"encounter_id": d["_id"], **d}) for d in found]
