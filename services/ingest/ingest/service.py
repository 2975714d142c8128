"""Ingest wiring: anonymized items become catalogue records and grading-queue entries."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.envelope import utcnow
from contracts.events import Event, ImageAnonymized, Ingested, ReportParsed
from contracts.topics import ANONYMIZED_IMAGES, INGESTED, REPORTS_PARSED
from kit.ports import Collection, Documents
from kit.runtime import Emit, Route, emit_status

__all__ = ["CATALOGUE", "GRADING_QUEUE", "NAME", "REPORTS", "catalogue_image", "routes"]

NAME = "ingest"
CATALOGUE = "uploads"
GRADING_QUEUE = "grading_queue"
REPORTS = "reports"


def image_record(event: ImageAnonymized) -> dict[str, object]:
    """The catalogue record of one image: everything known about it except PHI."""
    meta = event.metadata.model_dump() if event.metadata else {}
    return {
        "_id": event.item_id,
        "kind": "image",
        "job_id": event.job_id,
        "item_id": event.item_id,
        "uploader_id": event.uploader_id,
        **meta,
        "raw": event.source.model_dump(),
        "clean": event.clean.model_dump(),
        "thumbnail": event.thumbnail.model_dump(),
        "md5": event.source.md5,
        "sha256": event.source.sha256,
        "size": event.source.size,
        "width": event.width,
        "height": event.height,
        "masked": event.masked,
        "review_reason": event.review_reason,
        "needs_review": event.review_reason is not None,
        "pre_graded": False,
    }


async def catalogue_image(
    event: ImageAnonymized, *, catalogue: Collection, queue: Collection
) -> Sequence[Emit]:
    # Keyed by item id and written with put: a redelivered event rewrites the same record,
    # so an image is catalogued exactly once however often it arrives.
    record = image_record(event)
    existing = await catalogue.get(event.item_id)
    record["ingested_at"] = (existing or {}).get("ingested_at") or utcnow().isoformat()
    await catalogue.put(record)
    meta = event.metadata
    await queue.put(
        {
            "_id": event.item_id,
            "record_id": event.item_id,
            "job_id": event.job_id,
            "disease_id": meta.disease_id if meta else None,
            "hospital_id": meta.hospital_id if meta else None,
            "lab_unit_id": meta.lab_unit_id if meta else None,
            "queued_at": record["ingested_at"],
            "graded": False,
            "needs_review": record["needs_review"],
        }
    )
    return [
        Emit(INGESTED, Ingested(job_id=event.job_id, item_id=event.item_id,
                                record_id=event.item_id, kind="image"), key=event.item_id),
        emit_status(event, item_id=event.item_id, status="completed", service=NAME),
    ]


async def file_report(event: ReportParsed, *, reports: Collection) -> Sequence[Emit]:
    await reports.put(
        {
            "_id": event.item_id,
            "job_id": event.job_id,
            "report_kind": event.report_kind,
            "method": event.method,
            "subject_id": event.subject_id,
            "findings": dict(event.findings),
        }
    )
    return [emit_status(event, item_id=event.item_id, status="completed", service=NAME)]


def routes(*, docs: Documents) -> dict[str, Route]:
    catalogue, queue = docs.collection(CATALOGUE), docs.collection(GRADING_QUEUE)
    reports = docs.collection(REPORTS)

    async def on_image(event: Event) -> Sequence[Emit]:
        if not isinstance(event, ImageAnonymized):
            return ()
        return await catalogue_image(event, catalogue=catalogue, queue=queue)

    async def on_report(event: Event) -> Sequence[Emit]:
        if not isinstance(event, ReportParsed):
            return ()
        return await file_report(event, reports=reports)

    return {ANONYMIZED_IMAGES: Route(on_image), REPORTS_PARSED: Route(on_report)}
