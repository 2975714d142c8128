"""The pdf-parser's handler: a report PDF entry is kept in the restricted bucket, its
patient goes to the PHI vault, and the parsed report is announced without a name or MRN."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.events import (
    ArchiveEntryExtracted,
    ArchiveUploadMetadata,
    EncounterRef,
    ItemStatusChanged,
    ReportParsed,
)
from contracts.topics import ARCHIVE_ENTRIES, REPORTS_PARSED
from kit.blobs import RAW, REPORTS, put_bytes, to_ref
from kit.docs_sqlite import SqliteDocuments
from kit.phi import PhiVault, subject_id
from kit.runtime import Emit
from kit.store_fs import FilesystemObjectStore
from pdf_parser.service import parse_report, routes
from testkit.remidio_report import ReportValues, draw_report, random_report_values
from testkit.synthetic import fundus_image

KEY = b"test-subject-key"
SITE = "aiims-rp-centre"


@dataclass
class Adapters:
    store: FilesystemObjectStore
    docs: SqliteDocuments
    vault: PhiVault


@pytest.fixture
async def adapters(tmp_path: Path) -> AsyncIterator[Adapters]:
    store = FilesystemObjectStore(root=tmp_path / "objects")
    docs = SqliteDocuments(path=tmp_path / "documents.sqlite3")
    try:
        yield Adapters(store=store, docs=docs, vault=PhiVault(docs=docs))
    finally:
        await docs.close()
        await store.close()


@pytest.fixture(scope="module")
def values() -> ReportValues:
    tiles = [("RE", fundus_image(size=300, seed=5, burned_in_text=None))]
    return random_report_values(random.Random(12), tiles=tiles)


async def entry(
    adapters: Adapters, data: bytes, *, encounter: EncounterRef | None = None
) -> ArchiveEntryExtracted:
    stored = await put_bytes(
        adapters.store, RAW, "job-1/arc-1/3", data, content_type="application/pdf"
    )
    return ArchiveEntryExtracted(
        job_id="job-1",
        archive_item_id="arc-1",
        item_id="item-7",
        entry_index=3,
        entry_kind="pdf",
        layout="remidio-fop",
        object=to_ref(stored),
        uploader_id="u-1",
        metadata=ArchiveUploadMetadata(hospital_id=SITE, lab_unit_id="lab-1"),
        encounter=encounter,
    )


async def handle(adapters: Adapters, event: ArchiveEntryExtracted) -> list[Emit]:
    return list(
        await parse_report(event, store=adapters.store, vault=adapters.vault, subject_key=KEY)
    )


async def test_a_report_is_kept_in_the_reports_bucket_and_announced_without_phi(
    adapters: Adapters, values: ReportValues
) -> None:
    pdf = draw_report(values, text_layer=True)
    (emit,) = await handle(adapters, await entry(adapters, pdf))
    assert emit.topic == REPORTS_PARSED and isinstance(emit.event, ReportParsed)
    parsed = emit.event
    subject = subject_id(mrn=values.mrn, site=SITE, key=KEY)
    assert parsed.subject_id == subject
    assert parsed.report is not None
    assert (parsed.report.bucket, parsed.report.key) == (REPORTS, "job-1/item-7.pdf")
    kept = b"".join([c async for c in adapters.store.get(REPORTS, "job-1/item-7.pdf")])
    assert kept == pdf
    assert parsed.fields["age"].value == values.age
    assert parsed.fields["report_date"].value == values.report_date.isoformat()
    assert parsed.page_kinds == ("dr", "glaucoma") and parsed.report_kind == "combined"
    assert [t.eye for t in parsed.tiles] == ["RE"]
    assert parsed.metadata is not None and parsed.metadata.hospital_id == SITE
    assert subject in parsed.raw_text
    payload = parsed.model_dump_json()
    assert values.mrn not in payload
    assert values.name.lower() not in payload.lower()


async def test_the_patient_read_from_the_report_is_recorded_in_the_vault(
    adapters: Adapters, values: ReportValues
) -> None:
    await handle(adapters, await entry(adapters, draw_report(values, text_layer=True)))
    (record,) = await adapters.vault.of_subject(subject_id(mrn=values.mrn, site=SITE, key=KEY))
    assert record.source_kind == "report" and record.item_id == "item-7"
    assert (record.name, record.mrn, record.site) == (values.name, values.mrn, SITE)


async def test_the_encounters_subject_is_used_when_the_archive_knew_it(
    adapters: Adapters, values: ReportValues
) -> None:
    encounter = EncounterRef(encounter_id="enc-1", subject_id="S-known", capture_date="2025-01-31")
    pdf = draw_report(values, text_layer=True)
    (emit,) = await handle(adapters, await entry(adapters, pdf, encounter=encounter))
    assert isinstance(emit.event, ReportParsed)
    assert emit.event.subject_id == "S-known" and emit.event.encounter == encounter
    (record,) = await adapters.vault.of_subject("S-known")
    assert record.mrn == values.mrn and record.capture_date == "2025-01-31"


async def test_an_image_only_report_is_read_by_ocr(
    adapters: Adapters, values: ReportValues
) -> None:
    (emit,) = await handle(adapters, await entry(adapters, draw_report(values)))
    assert isinstance(emit.event, ReportParsed) and emit.event.method == "ocr"
    assert emit.event.fields["gender"].value == values.gender
    assert values.mrn not in emit.event.model_dump_json()


async def test_a_broken_pdf_fails_alone_with_a_reason(adapters: Adapters) -> None:
    (emit,) = await handle(adapters, await entry(adapters, b"%PDF-1.4 broken beyond repair"))
    assert isinstance(emit.event, ItemStatusChanged)
    assert emit.event.status == "error" and emit.event.item_id == "item-7"
    assert emit.event.reason == "PDF report could not be read"
    assert emit.event.parent_item_id == "arc-1"


async def test_the_route_takes_pdf_entries_only(adapters: Adapters, values: ReportValues) -> None:
    route = routes(store=adapters.store, docs=adapters.docs, subject_key=KEY)[ARCHIVE_ENTRIES]
    event = await entry(adapters, draw_report(values, text_layer=True))
    image = event.model_copy(update={"entry_kind": "image"})
    assert route.starts_item is not None
    assert route.starts_item(event) == "item-7" and route.starts_item(image) is None
    assert await route.handler(image) == ()
    (emit,) = await route.handler(event)
    assert isinstance(emit.event, ReportParsed)
