from __future__ import annotations

from pathlib import Path

from contracts.events import ArchiveEntryExtracted, ItemStatusChanged, ReportParsed
from kit.blobs import RAW, put_bytes, to_ref
from kit.store_fs import FilesystemObjectStore
from pdf_parser.service import extract_text, parse_report, report_kind
from testkit.synthetic import text_pdf_bytes


def test_the_text_layer_is_read_and_the_report_kind_recognised() -> None:
    text = extract_text(text_pdf_bytes(["Diabetic Retinopathy Screening Report", "Result: No DR"]))
    assert "Diabetic Retinopathy Screening Report" in text
    assert report_kind(text) == "dr"
    assert report_kind("GLAUCOMA screening") == "glaucoma"
    assert report_kind("something else") == "unknown"


async def _entry(
    tmp_path: Path, data: bytes
) -> tuple[FilesystemObjectStore, ArchiveEntryExtracted]:
    store = FilesystemObjectStore(root=tmp_path)
    stored = await put_bytes(store, RAW, "job/arc/0", data, content_type="application/pdf")
    entry = ArchiveEntryExtracted(
        job_id="job",
        archive_item_id="arc",
        item_id="e0",
        entry_index=0,
        entry_kind="pdf",
        layout="generic",
        object=to_ref(stored),
        uploader_id="u",
    )
    return store, entry


async def test_a_parsed_report_is_announced(tmp_path: Path) -> None:
    store, entry = await _entry(tmp_path, text_pdf_bytes(["Glaucoma Screening Report"]))
    (emit,) = await parse_report(entry, store=store)
    assert isinstance(emit.event, ReportParsed)
    assert emit.event.report_kind == "glaucoma" and emit.event.method == "text"


async def test_a_broken_pdf_fails_alone_with_a_reason(tmp_path: Path) -> None:
    store, entry = await _entry(tmp_path, b"%PDF-1.4 broken beyond repair")
    (emit,) = await parse_report(entry, store=store)
    assert isinstance(emit.event, ItemStatusChanged)
    assert emit.event.status == "error"
    assert emit.event.reason == "PDF report could not be read"
    assert emit.event.parent_item_id == "arc"
