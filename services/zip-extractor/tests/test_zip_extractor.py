from __future__ import annotations

import io
import zipfile
from pathlib import Path

from contracts.events import (
    ArchiveEntryExtracted,
    ArchiveExtracted,
    ItemStatusChanged,
    UploadReceived,
)
from kit.blobs import RAW, put_bytes, read_bounded, to_ref
from kit.store_fs import FilesystemObjectStore
from testkit.synthetic import fundus_image, text_pdf_bytes
from zip_extractor.service import classify, extract_archive


def archive(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


async def extract(tmp_path: Path, data: bytes) -> tuple[FilesystemObjectStore, list[object]]:
    store = FilesystemObjectStore(root=tmp_path)
    stored = await put_bytes(store, RAW, "job/a1", data, content_type="application/zip")
    event = UploadReceived(
        job_id="job", item_id="a1", kind="archive", object=to_ref(stored), uploader_id="u"
    )
    return store, [e.event for e in await extract_archive(event, store=store)]


def test_entries_are_classified_by_their_bytes_not_their_names() -> None:
    assert classify(fundus_image(size=64))[0] == "image"
    assert classify(text_pdf_bytes(["x"]))[0] == "pdf"
    assert classify(b"\0" * 128 + b"DICM" + b"\0" * 16) == ("dicom", "application/dicom")
    assert classify(b"just some notes")[0] == "other"


async def test_each_entry_is_stored_and_announced_and_the_archive_completes(
    tmp_path: Path,
) -> None:
    image, report = fundus_image(size=128, seed=1), text_pdf_bytes(["DR report"])
    store, events = await extract(
        tmp_path, archive({"eye.jpg": image, "report.pdf": report, "notes.txt": b"hello"})
    )
    entries = [e for e in events if isinstance(e, ArchiveEntryExtracted)]
    assert sorted(e.entry_kind for e in entries) == ["image", "pdf"]
    for entry in entries:
        assert entry.object.key == f"job/{entry.item_id}"
        stored = await read_bounded(store, entry.object, limit=10**7)
        assert stored in (image, report)
    statuses = [e for e in events if isinstance(e, ItemStatusChanged)]
    unsupported = [s for s in statuses if s.status == "error"]
    assert [s.reason for s in unsupported] == ["Unsupported file type in archive: text/plain"]
    (summary,) = [e for e in events if isinstance(e, ArchiveExtracted)]
    assert summary.entry_count == 3
    assert statuses[-1].item_id == "a1" and statuses[-1].status == "completed"


async def test_an_entry_escaping_the_archive_is_rejected_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    _, events = await extract(
        tmp_path, archive({"../../etc/passwd": b"x", "ok.jpg": fundus_image(size=64)})
    )
    (summary,) = [e for e in events if isinstance(e, ArchiveExtracted)]
    assert [r.reason for r in summary.rejected] == ["Unsafe path in archive"]
    assert len([e for e in events if isinstance(e, ArchiveEntryExtracted)]) == 1


async def test_a_file_that_is_not_a_zip_fails_with_a_clear_reason(tmp_path: Path) -> None:
    _, events = await extract(tmp_path, b"this is not a zip archive at all")
    assert len(events) == 1
    assert isinstance(events[0], ItemStatusChanged)
    assert events[0].reason == "Invalid ZIP archive"
