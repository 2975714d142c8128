"""PDF-parser wiring: a PDF entry becomes a parsed report (text layer first)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Sequence

import pdfplumber

from contracts.events import ArchiveEntryExtracted, Event, ReportParsed
from contracts.topics import ARCHIVE_ENTRIES, REPORTS_PARSED
from kit.blobs import ObjectTooLarge, read_bounded
from kit.ports import ObjectStore
from kit.runtime import Emit, Route, emit_status

__all__ = ["NAME", "extract_text", "report_kind", "routes"]

NAME = "pdf-parser"
MAX_PDF_BYTES = 64 * 1024 * 1024


def extract_text(data: bytes) -> str:
    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return "\n".join(page.extract_text() or "" for page in pdf.pages)


def report_kind(text: str) -> str:
    lowered = text.lower()
    if "glaucoma" in lowered:
        return "glaucoma"
    if "diabetic retinopathy" in lowered or "dr screening" in lowered:
        return "dr"
    return "unknown"


async def parse_report(event: ArchiveEntryExtracted, *, store: ObjectStore) -> Sequence[Emit]:
    try:
        data = await read_bounded(store, event.object, limit=MAX_PDF_BYTES)
        text = await asyncio.to_thread(extract_text, data)
    except ObjectTooLarge:
        reason = "PDF report too large (max 64MB)"
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
    except Exception:  # pdfminer raises many types for a broken file
        return [
            emit_status(
                event,
                item_id=event.item_id,
                status="error",
                service=NAME,
                reason="PDF report could not be read",
                parent_item_id=event.archive_item_id,
            )
        ]
    parsed = ReportParsed(
        job_id=event.job_id,
        item_id=event.item_id,
        report_kind=report_kind(text),  # type: ignore[arg-type]
        method="text" if text.strip() else "ocr",
    )
    return [Emit(REPORTS_PARSED, parsed, key=event.item_id)]


def _pdf_item(event: Event) -> str | None:
    return (
        event.item_id
        if isinstance(event, ArchiveEntryExtracted) and event.entry_kind == "pdf"
        else None
    )


def routes(*, store: ObjectStore) -> dict[str, Route]:
    async def on_entry(event: Event) -> Sequence[Emit]:
        if not isinstance(event, ArchiveEntryExtracted) or event.entry_kind != "pdf":
            return ()
        return await parse_report(event, store=store)

    return {ARCHIVE_ENTRIES: Route(on_entry, starts_item=_pdf_item)}
