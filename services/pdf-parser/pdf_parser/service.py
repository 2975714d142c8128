"""PDF-parser wiring: a PDF entry of an archive becomes a parsed report.

The PDF is kept in the restricted `reports` bucket under ids only; the patient's name and MRN
read from it go to the PHI vault and are replaced by the subject id in the raw text; the
event carries the values read, the tiles' hashes and eyes, never a name or an MRN.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from contracts.events import ArchiveEntryExtracted, Event, ReportParsed
from contracts.topics import ARCHIVE_ENTRIES, REPORTS_PARSED
from kit.blobs import REPORTS, ObjectTooLarge, put_bytes, read_bounded, to_ref
from kit.phi import PhiRecord, PhiVault, redact, subject_id
from kit.ports import Documents, ObjectStore
from kit.runtime import Emit, Route, emit_status
from pdf_parser.reading import ReportReading, ReportUnreadable, read_report

__all__ = ["MAX_PDF_BYTES", "NAME", "parse_report", "routes"]

NAME = "pdf-parser"
MAX_PDF_BYTES = 64 * 1024 * 1024
_UNKNOWN_PATIENT = "[patient]"  # stands for a name or MRN when no subject id is known


def _error(event: ArchiveEntryExtracted, reason: str) -> list[Emit]:
    return [
        emit_status(
            event,
            item_id=event.item_id,
            status="error",
            service=NAME,
            reason=reason,
            parent_item_id=event.archive_item_id,
        )
    ]


def _subject_of(
    event: ArchiveEntryExtracted, reading: ReportReading, subject_key: bytes
) -> str | None:
    if event.encounter is not None:
        return event.encounter.subject_id
    if reading.patient_mrn and event.metadata is not None and subject_key:
        return subject_id(mrn=reading.patient_mrn, site=event.metadata.hospital_id, key=subject_key)
    return None


def _redacted(text: str, reading: ReportReading, subject: str | None) -> str:
    replacement = subject or _UNKNOWN_PATIENT
    text = redact(text, subject_id=replacement, mrn=reading.patient_mrn, name=reading.patient_name)
    # What followed a name or MRN label but failed validation is PHI all the same.
    for fragment in reading.phi_fragments:
        text = redact(text, subject_id=replacement, name=fragment)
    return text


async def parse_report(
    event: ArchiveEntryExtracted,
    *,
    store: ObjectStore,
    vault: PhiVault,
    subject_key: bytes,
) -> Sequence[Emit]:
    try:
        data = await read_bounded(store, event.object, limit=MAX_PDF_BYTES)
    except ObjectTooLarge:
        return _error(event, "PDF report too large (max 64MB)")
    kept = await put_bytes(
        store, REPORTS, f"{event.job_id}/{event.item_id}.pdf", data, content_type="application/pdf"
    )
    try:
        reading = await asyncio.to_thread(read_report, data)
    except ReportUnreadable as exc:
        return _error(event, exc.reason)

    subject = _subject_of(event, reading, subject_key)
    if subject is not None and (reading.patient_name or reading.patient_mrn):
        await vault.record(
            PhiRecord(
                subject_id=subject,
                source_kind="report",
                job_id=event.job_id,
                item_id=event.item_id,
                site=event.metadata.hospital_id if event.metadata else None,
                mrn=reading.patient_mrn,
                name=reading.patient_name,
                capture_date=event.encounter.capture_date if event.encounter else None,
            )
        )
    parsed = ReportParsed(
        job_id=event.job_id,
        item_id=event.item_id,
        report_kind=reading.report_kind,
        method=reading.method,
        subject_id=subject,
        encounter=event.encounter,
        metadata=event.metadata,
        page_kinds=reading.page_kinds,
        fields=reading.fields,
        tiles=reading.tiles,
        raw_text=_redacted(reading.raw_text, reading, subject),
        parser_version=reading.parser_version,
        report=to_ref(kept),
    )
    return [Emit(REPORTS_PARSED, parsed, key=event.item_id)]


def _pdf_item(event: Event) -> str | None:
    return (
        event.item_id
        if isinstance(event, ArchiveEntryExtracted) and event.entry_kind == "pdf"
        else None
    )


def routes(*, store: ObjectStore, docs: Documents, subject_key: bytes) -> dict[str, Route]:
    vault = PhiVault(docs=docs)

    async def on_entry(event: Event) -> Sequence[Emit]:
        if not isinstance(event, ArchiveEntryExtracted) or event.entry_kind != "pdf":
            return ()
        return await parse_report(event, store=store, vault=vault, subject_key=subject_key)

    return {ARCHIVE_ENTRIES: Route(on_entry, starts_item=_pdf_item)}
