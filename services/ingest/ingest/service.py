"""Ingest wiring: anonymized items become catalogue records and grading-queue entries."""

from __future__ import annotations

from collections.abc import Sequence

from contracts.envelope import utcnow
from contracts.events import Event, ImageAnonymized, Ingested, ReportParsed
from contracts.topics import ANONYMIZED_IMAGES, INGESTED, REPORTS_PARSED
from ingest.laterality import ImageHash, TileHash, match_tiles
from ingest.read_model import Catalogue, CatalogueRecord, QueueEntry, ReportRecord
from kit.ports import Documents
from kit.runtime import Emit, Route, emit_status

__all__ = ["NAME", "catalogue_image", "file_report", "image_record", "routes"]

NAME = "ingest"
TILE_SOURCE = "report tile"


def image_record(event: ImageAnonymized, *, ingested_at: str) -> CatalogueRecord:
    """The catalogue record of one image: everything known about it except PHI."""
    meta = event.metadata.model_dump() if event.metadata else {}
    encounter = event.encounter
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
        encounter_id=encounter.encounter_id if encounter else None,
        subject_id=encounter.subject_id if encounter else None,
        captured_at=event.captured_at,
        phash=event.phash,
        flags=event.flags,
    )


async def _encounter_seen(
    event: ImageAnonymized | ReportParsed, catalogue: Catalogue, *, site: str | None = None
) -> None:
    encounter = event.encounter
    if encounter is None:
        return
    meta = event.metadata
    await catalogue.record_encounter(
        encounter.encounter_id,
        job_id=event.job_id,
        subject_id=encounter.subject_id,
        capture_date=encounter.capture_date,
        hospital_id=meta.hospital_id if meta else None,
        lab_unit_id=meta.lab_unit_id if meta else None,
        site=site,
        created_at=utcnow().isoformat(),
    )


async def _match_encounter(encounter_id: str, catalogue: Catalogue) -> None:
    """Give the encounter's captures the eyes of the report tiles that show them. Run by both
    the image's and the report's handler after writing their own part, so whichever comes
    second sees the other (they arrive in any order, possibly at once)."""
    reports = await catalogue.reports_of([encounter_id])
    tiles = [TileHash(eye=t.get("eye"), phash=t["phash"]) for r in reports for t in r.tiles]
    if not tiles:
        return
    images = await catalogue.images_of([encounter_id])
    eyes = match_tiles(tiles, [ImageHash(i.item_id, i.phash) for i in images if i.phash])
    for image in images:
        eye = eyes.get(image.item_id)
        if eye is not None and image.laterality != eye:
            await catalogue.set_laterality(image.item_id, eye, source=TILE_SOURCE)  # type: ignore[arg-type]


async def catalogue_image(event: ImageAnonymized, *, catalogue: Catalogue) -> Sequence[Emit]:
    # Keyed by item id: a redelivered event finds its record and keeps it as it is now (people
    # may have corrected its metadata, edited the image, or its eye may be known since), so an
    # image is catalogued exactly once however often it arrives.
    existing = await catalogue.get(event.item_id)
    record = existing or image_record(event, ingested_at=utcnow().isoformat())
    if existing is None:
        # A pre-graded upload came with its grades (written by the gateway before the file
        # was announced): it is graded already, and not queued for grading.
        grading = await catalogue.grading(event.item_id)
        if grading is not None and grading.source == "pre_graded":
            record = record.model_copy(
                update={
                    "pre_graded": True,
                    "graded_by": grading.graded_by,
                    "graded_at": grading.graded_at,
                }
            )
    await _encounter_seen(event, catalogue)
    if existing is None:
        await catalogue.put(record)
    if not record.pre_graded:  # (again, if a crash came between the record and its entry)
        await catalogue.enqueue(
            QueueEntry(
                record_id=record.item_id,
                job_id=record.job_id,
                disease_id=record.disease_id,
                hospital_id=record.hospital_id,
                lab_unit_id=record.lab_unit_id,
                queued_at=record.ingested_at,
                needs_review=record.needs_review,
                encounter_id=record.encounter_id,
                subject_id=record.subject_id,
                laterality=record.laterality,
                flags=record.flags,
            )
        )
    if record.encounter_id is not None:
        await _match_encounter(record.encounter_id, catalogue)
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
    encounter = event.encounter
    site = event.fields.get("site_header")
    site_value = site.value if site is not None and isinstance(site.value, str) else None
    await _encounter_seen(event, catalogue, site=site_value)
    await catalogue.put_report(
        ReportRecord(
            item_id=event.item_id,
            job_id=event.job_id,
            report_kind=event.report_kind,
            method=event.method,
            subject_id=event.subject_id or (encounter.subject_id if encounter else None),
            findings=dict(event.findings),
            encounter_id=encounter.encounter_id if encounter else None,
            page_kinds=event.page_kinds,
            fields={name: f.model_dump(mode="json") for name, f in event.fields.items()},
            tiles=tuple(t.model_dump(mode="json") for t in event.tiles),
            raw_text=event.raw_text,
            parser_version=event.parser_version,
            report=event.report,
            needs_review=any(f.needs_review for f in event.fields.values()),
            filed_at=utcnow().isoformat(),
        )
    )
    if encounter is not None:
        await _match_encounter(encounter.encounter_id, catalogue)
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
