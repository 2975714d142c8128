"""Ingest wiring: anonymized items become catalogue records and grading-queue entries."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.envelope import utcnow
from contracts.events import Event, ImageAnonymized, Ingested, ReportParsed
from contracts.topics import ANONYMIZED_IMAGES, INGESTED, REPORTS_PARSED
from ingest.read_model import Catalogue, CatalogueRecord, QueueEntry, ReportRecord
from kit.ports import Documents
from kit.runtime import Emit, Route, emit_status

__all__ = ["NAME", "catalogue_image", "file_report", "image_record", "routes"]

NAME = "ingest"


def image_record(event: ImageAnonymized, *, ingested_at: str) -> CatalogueRecord:
    """The catalogue record of one image: everything known about it except PHI."""
    meta = event.metadata.model_dump() if event.metadata else {}
    return CatalogueRecord(
        item_id=event.item_id,
        job_id=event.job_id,
        uploader_id=event.uploader_id,
        **meta,
        raw=event.source,
        clean=event.clean,
        thumbnail=event.thumbnail,
        md5=event.source.md5,
        sha256=event.source.sha256,
        size=event.source.size,
        width=event.width,
        height=event.height,
        masked=event.masked,
        review_reason=event.review_reason,
        needs_review=event.review_reason is not None,
        ingested_at=ingested_at,
    )


async def catalogue_image(event: ImageAnonymized, *, catalogue: Catalogue) -> Sequence[Emit]:
    # Keyed by item id and written with put: a redelivered event rewrites the same record,
    # so an image is catalogued exactly once however often it arrives.
    existing = await catalogue.get(event.item_id)
    record = image_record(
        event, ingested_at=existing.ingested_at if existing else utcnow().isoformat()
    )
    await catalogue.put(record)
    await catalogue.enqueue(
        QueueEntry(
            record_id=record.item_id,
            job_id=record.job_id,
            disease_id=record.disease_id,
            hospital_id=record.hospital_id,
            lab_unit_id=record.lab_unit_id,
            queued_at=record.ingested_at,
            needs_review=record.needs_review,
        )
    )
    return [
        Emit(
            INGESTED,
            Ingested(
                job_id=event.job_id, item_id=event.item_id, record_id=event.item_id, kind="image"
            ),
            key=event.item_id,
        ),
        emit_status(event, item_id=event.item_id, status="completed", service=NAME),
    ]


async def file_report(event: ReportParsed, *, catalogue: Catalogue) -> Sequence[Emit]:
    await catalogue.put_report(
        ReportRecord(
            item_id=event.item_id,
            job_id=event.job_id,
            report_kind=event.report_kind,
            method=event.method,
            subject_id=event.subject_id,
            findings=dict(event.findings),
        )
    )
    return [emit_status(event, item_id=event.item_id, status="completed", service=NAME)]


def routes(*, docs: Documents) -> dict[str, Route]:
    catalogue = Catalogue(docs=docs)

    async def on_image(event: Event) -> Sequence[Emit]:
        if not isinstance(event, ImageAnonymized):
            return ()
        return await catalogue_image(event, catalogue=catalogue)

    async def on_report(event: Event) -> Sequence[Emit]:
        if not isinstance(event, ReportParsed):
            return ()
        return await file_report(event, catalogue=catalogue)

    return {ANONYMIZED_IMAGES: Route(on_image), REPORTS_PARSED: Route(on_report)}
