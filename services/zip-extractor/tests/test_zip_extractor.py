from __future__ import annotations

import contextlib
import io
import json
import random
import tracemalloc
import zipfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from contracts.events import (
    ArchiveEntryExtracted,
    ArchiveExtracted,
    ArchiveUploadMetadata,
    ItemStatusChanged,
    UploadReceived,
)
from contracts.topics import ITEM_STATUS
from kit.blobs import RAW, put_bytes, read_bounded, to_ref
from kit.docs_sqlite import SqliteDocuments
from kit.phi import PhiVault, subject_id
from kit.ports import MalwareScanner, NoScanner, ScanStream, ScanVerdict
from kit.runtime import Emit
from kit.store_fs import FilesystemObjectStore
from testkit import hostile_zip
from testkit.remidio_export import RemidioExport, ZipMember, build_batch, build_export, write_zip
from testkit.synthetic import fundus_image, text_pdf_bytes
from zip_extractor.archive import Limits, classify, list_entries
from zip_extractor.layouts import capture_time, parse_patient_folder, place_entries
from zip_extractor.read_model import ArchiveEntries
from zip_extractor.service import Extractor, child_item_id, extract_archive, routes

KEY = b"test-subject-key"
SITE = "hospital-1"


class EicarScanner:
    """A stand-in for clamd: finds the EICAR string in a stream, however it is chunked."""

    @dataclass
    class _Stream:
        seen: bytes = b""
        infected: bool = False

        async def feed(self, chunk: bytes) -> None:
            window = self.seen + chunk
            self.infected |= hostile_zip.EICAR in window
            self.seen = window[-len(hostile_zip.EICAR) :]

        async def verdict(self) -> ScanVerdict:
            return ScanVerdict(self.infected, "Eicar-Signature" if self.infected else None)

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[ScanStream]:
        yield self._Stream()

    async def close(self) -> None:
        return None


@dataclass
class Run:
    emits: list[Emit]
    store: FilesystemObjectStore
    docs: SqliteDocuments
    root: Path

    @property
    def events(self) -> list[object]:
        return [e.event for e in self.emits]

    def extracted(self) -> list[ArchiveEntryExtracted]:
        return [e for e in self.events if isinstance(e, ArchiveEntryExtracted)]

    def summary(self) -> ArchiveExtracted:
        (summary,) = [e for e in self.events if isinstance(e, ArchiveExtracted)]
        return summary

    def statuses(self) -> list[ItemStatusChanged]:
        return [e for e in self.events if isinstance(e, ItemStatusChanged)]

    def errors(self) -> dict[str, str]:
        """The children in error, with their reasons."""
        return {
            s.item_id: str(s.reason)
            for s in self.statuses()
            if s.status == "error" and s.parent_item_id is not None
        }


async def prepare(
    tmp_path: Path, data: bytes, *, item_id: str = "a1", job_id: str = "job"
) -> tuple[FilesystemObjectStore, SqliteDocuments, UploadReceived]:
    store = FilesystemObjectStore(root=tmp_path / "store")
    docs = SqliteDocuments(path=tmp_path / "docs.sqlite")
    key = f"{job_id}/{item_id}"
    stored = await put_bytes(store, RAW, key, data, content_type="application/zip")
    event = UploadReceived(
        job_id=job_id,
        item_id=item_id,
        kind="archive",
        object=to_ref(stored),
        uploader_id="u",
        metadata=ArchiveUploadMetadata(hospital_id=SITE, lab_unit_id="lab-1"),
    )
    return store, docs, event


def extractor(
    store: FilesystemObjectStore,
    docs: SqliteDocuments,
    *,
    scanner: MalwareScanner | None = None,
    limits: Limits | None = None,
) -> Extractor:
    return Extractor(
        store=store,
        docs=docs,
        scanner=scanner or NoScanner(),
        subject_key=KEY,
        limits=limits or Limits(),
    )


async def extract(
    tmp_path: Path,
    data: bytes,
    *,
    scanner: MalwareScanner | None = None,
    limits: Limits | None = None,
    item_id: str = "a1",
) -> Run:
    store, docs, event = await prepare(tmp_path, data, item_id=item_id)
    x = extractor(store, docs, scanner=scanner, limits=limits)
    return Run(await extract_archive(event, x), store, docs, tmp_path)


@pytest.fixture
async def closing() -> AsyncIterator[list[SqliteDocuments]]:
    opened: list[SqliteDocuments] = []
    yield opened
    for docs in opened:
        await docs.close()


async def run(tmp_path: Path, data: bytes, closing: list[SqliteDocuments], **kwargs: object) -> Run:
    result = await extract(tmp_path, data, **kwargs)  # type: ignore[arg-type]
    closing.append(result.docs)
    return result


def small_export(seed: int, **kwargs: object) -> RemidioExport:
    return build_export(random.Random(seed), image_size=192, **kwargs)  # type: ignore[arg-type]


# --- pure parts ------------------------------------------------------------------------------


def test_entries_are_classified_by_their_bytes_not_their_names() -> None:
    assert classify(fundus_image(size=64))[0] == "image"
    assert classify(text_pdf_bytes(["x"]))[0] == "pdf"


def test_remidio_times_use_a_twelve_hour_clock_whose_noon_is_written_zero() -> None:
    assert capture_time("0.02.16.099_PM", "2025-01-31") == "2025-01-31T12:02:16.099"
    assert capture_time("0.02.16.099_AM", "2025-01-31") == "2025-01-31T00:02:16.099"
    assert capture_time("11.59.59.000_PM", "2025-01-31") == "2025-01-31T23:59:59.000"
    assert capture_time("9.05.00.001_AM", "2025-01-31") == "2025-01-31T09:05:00.001"
    assert capture_time("report", "2025-01-31") is None


def test_a_patient_folder_is_split_from_the_right_whatever_the_name() -> None:
    folder = parse_patient_folder("asha_Devi_K_12345678_31-01-2025")
    assert folder is not None
    assert (folder.name, folder.mrn, folder.capture_date) == (
        "asha Devi K",
        "12345678",
        "2025-01-31",
    )
    assert parse_patient_folder("holiday_photos") is None
    assert parse_patient_folder("Ravi_12345678_31-13-2025") is None


def test_layouts_are_decided_per_patient_folder() -> None:
    names = [
        "A_Kumar_11111111_01-02-2025/FOP/1.00.00.000_PM.jpg",
        "A_Kumar_11111111_01-02-2025/REPORTS/1.05.00.000_PM.pdf",
        "B_Rao_22222222_03-02-2025/9.00.00.000_AM.jpg",
        "loose/picture.jpg",
    ]
    layouts = [p.layout for p in place_entries(names)]
    assert layouts == ["remidio-fop", "remidio-fop", "remidio-pristine", "generic"]


# --- hostile archives ------------------------------------------------------------------------

SINGLE_HAZARDS = [
    (hostile_zip.zip_slip, "Unsafe path in archive (leaves the archive folder)"),
    (hostile_zip.absolute_path, "Unsafe path in archive (absolute path)"),
    (hostile_zip.windows_absolute_path, "Unsafe path in archive (absolute path)"),
    (hostile_zip.symlink, "Links are not accepted in archives"),
    (hostile_zip.fifo, "Device files and pipes are not accepted in archives"),
    (hostile_zip.nested_zip, "Nested archives are not accepted (zip)"),
    (hostile_zip.gzip_renamed_jpg, "Nested archives are not accepted (gzip)"),
    (hostile_zip.tar_renamed_pdf, "Nested archives are not accepted (tar)"),
    (hostile_zip.encrypted, "Encrypted entry in archive"),
    (hostile_zip.bomb, "Suspicious compression ratio (possible zip bomb)"),
    (
        hostile_zip.dosexec_renamed_jpg,
        "Unsupported file type in archive: application/x-dosexec",
    ),
]


@pytest.mark.parametrize(
    ("hazard", "reason"), SINGLE_HAZARDS, ids=lambda v: getattr(v, "__name__", "")
)
async def test_each_hostile_entry_fails_with_its_own_reason_while_good_ones_complete(
    tmp_path: Path, closing: list[SqliteDocuments], hazard: object, reason: str
) -> None:
    data = hostile_zip.single(hazard(), good=2)  # type: ignore[operator]
    result = await run(tmp_path, data, closing)
    hostile = child_item_id("a1", 0)
    assert result.errors() == {hostile: reason}
    assert len(result.extracted()) == 2
    assert [r.reason for r in result.summary().rejected] == [reason]
    assert result.statuses()[-1].status == "completed"
    assert not [o async for o in result.store.list(RAW, f"job/{hostile}")]


async def test_one_archive_mixing_every_hazard_keeps_its_good_entries(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    data, good, kinds = hostile_zip.mixed_archive()
    result = await run(tmp_path, data, closing, scanner=EicarScanner())
    assert len(result.extracted()) == len(good)
    reasons = [r.reason for r in result.summary().rejected]
    assert len(reasons) == len(kinds)
    assert "Malicious content detected (Eicar-Signature)" in reasons
    assert result.summary().ignored_count == len(hostile_zip.os_litter())
    assert result.statuses()[-1].status == "completed"


async def test_an_infected_entry_is_removed_from_the_store_and_says_what_was_found(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    # EICAR inside a real JPEG: a type the flow takes, so it is stored while being scanned.
    infected = fundus_image(size=96, seed=3) + hostile_zip.EICAR
    data = write_zip([ZipMember("x.jpg", infected), ZipMember("ok.jpg", fundus_image(size=96))])
    result = await run(tmp_path, data, closing, scanner=EicarScanner())
    child = child_item_id("a1", 0)
    assert result.errors() == {child: "Malicious content detected (Eicar-Signature)"}
    keys = [o.key async for o in result.store.list(RAW, "job/")]
    assert f"job/{child}" not in keys and f"job/{child_item_id('a1', 1)}" in keys


async def test_eicar_named_like_a_photo_is_reported_as_malware_not_as_a_wrong_type(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    result = await run(
        tmp_path, hostile_zip.single(hostile_zip.eicar_jpg()), closing, scanner=EicarScanner()
    )
    assert list(result.errors().values()) == ["Malicious content detected (Eicar-Signature)"]


async def test_entries_beyond_the_limit_are_not_read_and_the_archive_says_so(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    result = await run(
        tmp_path, hostile_zip.too_many_entries(8), closing, limits=Limits(max_entries=5)
    )
    assert len(result.extracted()) == 5
    reason = "Too many entries in archive (max 5); the first 5 were read"
    assert result.summary().reason == reason
    assert (result.statuses()[-1].status, result.statuses()[-1].reason) == ("error", reason)


async def test_an_entry_larger_than_the_limit_is_refused_by_its_inflated_bytes(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    big = fundus_image(size=512, seed=1)
    limits = Limits(max_entry_bytes=len(big) - 1)
    data = write_zip([ZipMember("big.jpg", big), ZipMember("small.jpg", fundus_image(size=64))])
    result = await run(tmp_path, data, closing, limits=limits)
    assert list(result.errors().values()) == [
        f"Archive entry too large (max {limits.max_entry_bytes / 2**20:g} MB)"
    ]


async def test_a_bomb_whose_headers_lie_is_caught_while_inflating(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    zeros = bytes(20 << 20)
    honest = write_zip([ZipMember("z.jpg", zeros, flags=0x0800)])
    # Patch the central directory's uncompressed size down to a harmless-looking value.
    lying = bytearray(honest)
    cd = lying.rfind(b"PK\x01\x02")
    lying[cd + 24 : cd + 28] = (1000).to_bytes(4, "little")
    local = 0
    lying[local + 22 : local + 26] = (1000).to_bytes(4, "little")
    result = await run(tmp_path, bytes(lying), closing)
    assert list(result.errors().values()) == ["Suspicious compression ratio (possible zip bomb)"]


async def test_a_crc_mismatch_refuses_that_entry_only(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    image = fundus_image(size=96)
    data = write_zip(
        [
            ZipMember("bad.jpg", image, crc=0x1234),
            ZipMember("ok.png", fundus_image(size=64, fmt="PNG")),
        ]
    )
    result = await run(tmp_path, data, closing)
    assert list(result.errors().values()) == ["Archive entry is corrupt (CRC mismatch)"]
    assert len(result.extracted()) == 1


async def test_a_file_that_is_not_a_zip_fails_with_a_clear_reason(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    result = await run(tmp_path, b"this is not a zip archive at all", closing)
    assert len(result.events) == 1
    assert result.statuses()[0].reason == "Invalid ZIP archive"


async def test_a_truncated_archive_recovers_every_complete_entry(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    export = small_export(5, images=6)
    full = zipfile.ZipFile(io.BytesIO(export.data))
    cut = hostile_zip.truncated(export.data, keep=0.6)
    complete = [
        i
        for i in full.infolist()
        if i.header_offset + 30 + len(i.filename) + i.compress_size + 16 <= len(cut)
    ]
    result = await run(tmp_path, cut, closing)
    assert len(result.extracted()) == len(complete) >= 2
    reason = f"ZIP archive is truncated or damaged; {len(complete)} entries could be recovered"
    assert result.summary().reason == reason
    assert (result.statuses()[-1].status, result.statuses()[-1].reason) == ("error", reason)
    assert list(result.errors().values()) == ["Archive entry is truncated or damaged"]
    # The same entries get the same child ids as in the intact archive.
    names = {
        e.index: e.name for e in list_entries(io.BytesIO(export.data), limits=Limits()).entries
    }
    for extracted in result.extracted():
        assert names[extracted.entry_index] == full.infolist()[extracted.entry_index].filename


# --- redelivery and duplicates ---------------------------------------------------------------


async def test_a_redelivered_archive_makes_the_same_children_and_no_duplicates(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    data = small_export(1).data
    first = await run(tmp_path, data, closing)
    second = await run(tmp_path, data, closing)
    assert [e.event for e in first.emits if not isinstance(e.event, ItemStatusChanged)] == [
        e.event for e in second.emits if not isinstance(e.event, ItemStatusChanged)
    ]
    assert not second.errors()
    assert [(s.item_id, s.status) for s in first.statuses()] == [
        (s.item_id, s.status) for s in second.statuses()
    ]


async def test_the_same_file_in_another_archive_is_a_duplicate(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    data = small_export(1).data
    await run(tmp_path, data, closing)
    again = await run(tmp_path, data, closing, item_id="a2")
    assert set(again.errors().values()) == {"Duplicate file"}
    assert not again.extracted()
    assert not [
        o async for o in again.store.list(RAW, "job/") if o.key.split("/")[1] in again.errors()
    ]


# --- Remidio layouts and PHI -----------------------------------------------------------------


@pytest.mark.parametrize("layout", ["fop", "pristine"])
async def test_remidio_exports_give_subjects_encounters_and_sorted_capture_times(
    tmp_path: Path, closing: list[SqliteDocuments], layout: str
) -> None:
    export = small_export(7, layout=layout, black_capture=True)
    result = await run(tmp_path, export.data, closing)
    subject = subject_id(mrn=export.mrn, site=SITE, key=KEY)
    summary = result.summary()
    assert summary.subject_ids == (subject,)
    (encounter,) = summary.encounters
    assert encounter.capture_date == export.capture_date
    assert summary.layout == f"remidio-{layout}"
    extracted = result.extracted()
    assert {e.encounter for e in extracted} == {encounter}
    images = [e for e in extracted if e.entry_kind == "image"]
    truth = sorted(str(e.captured_at) for e in export.images)
    assert [e.captured_at for e in images] == truth
    documents = await ArchiveEntries(docs=result.docs).of_job("job")
    image_dir = f"{subject}/FOP/" if layout == "fop" else f"{subject}/"
    shown = [d.display_name for d in documents if d.entry_kind == "image"]
    assert all(name.startswith(image_dir) for name in shown)
    assert [d.captured_at for d in documents if d.entry_kind == "image"] == truth
    assert any(d.display_name.startswith(f"{subject}/REPORTS/") for d in documents)
    vault = await PhiVault(docs=result.docs).of_subject(subject)
    (folder,) = [r for r in vault if r.source_kind == "patient_folder"]
    assert (folder.name, folder.mrn, folder.original) == (export.name, export.mrn, export.folder)


async def test_a_batch_archive_makes_one_encounter_per_patient_folder(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    exports = [small_export(seed, report_pdf=None) for seed in (11, 12)]
    result = await run(tmp_path, build_batch(exports), closing)
    summary = result.summary()
    assert len(summary.encounters) == 2 and len(summary.subject_ids) == 2
    assert len(result.extracted()) == sum(len(e.entries) for e in exports)


async def test_names_and_mrns_appear_only_in_the_vault(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    export = small_export(3)
    result = await run(tmp_path, export.data, closing)
    secrets = [export.mrn, export.folder, *export.name.split()]
    payloads = [json.dumps(e.event.model_dump(mode="json")) for e in result.emits]
    keys = [o.key async for o in result.store.list(RAW)]
    documents = [d.model_dump_json() for d in await ArchiveEntries(docs=result.docs).of_job("job")]
    for secret in secrets:
        for text in [*payloads, *keys, *documents]:
            assert secret not in text, (secret, text)
    vault = await PhiVault(docs=result.docs).of_subjects(result.summary().subject_ids)
    assert any(r.mrn == export.mrn for r in vault)


async def test_child_statuses_come_before_the_archive_status_and_each_child_is_queued_first(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    data, _, _ = hostile_zip.mixed_archive([hostile_zip.zip_slip(), hostile_zip.bomb(5)])
    result = await run(tmp_path, data, closing)
    statuses = [e for e in result.emits if e.topic == ITEM_STATUS]
    assert statuses[-1].event.item_id == "a1"  # type: ignore[attr-defined]
    seen: set[str] = set()
    for emit in result.emits[:-1]:
        event = emit.event
        if isinstance(event, ItemStatusChanged):
            assert event.parent_item_id == "a1"
            if event.status == "queued":
                seen.add(event.item_id)
            else:
                assert event.item_id in seen
        elif isinstance(event, ArchiveEntryExtracted):
            assert event.item_id in seen
            stored = await read_bounded(result.store, event.object, limit=10**8)
            assert len(stored) == event.object.size


# --- memory ----------------------------------------------------------------------------------


def _incompressible_jpegs(count: int, size: int) -> Sequence[ZipMember]:
    head = fundus_image(size=64)
    rng = random.Random(0)
    return [ZipMember(f"p/{n}.jpg", head + rng.randbytes(size), flags=0x0808) for n in range(count)]


async def test_memory_stays_flat_for_a_60_mb_archive(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    data = write_zip(_incompressible_jpegs(6, 10 << 20), level=1)
    assert len(data) > 60 << 20
    store, docs, event = await prepare(tmp_path, data)
    closing.append(docs)
    del data
    x = extractor(store, docs)
    tracemalloc.start()
    try:
        emits = await extract_archive(event, x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len([e for e in emits if isinstance(e.event, ArchiveEntryExtracted)]) == 6
    # Chunks in flight (1 MiB each, a few ahead) and the store's batches: far below 60 MB.
    assert peak < 16 << 20, peak


async def test_routes_refuse_to_start_without_a_subject_key(
    tmp_path: Path, closing: list[SqliteDocuments]
) -> None:
    docs = SqliteDocuments(path=tmp_path / "d.sqlite")
    closing.append(docs)
    with pytest.raises(ValueError, match="subject key"):
        routes(
            store=FilesystemObjectStore(root=tmp_path),
            docs=docs,
            scanner=NoScanner(),
            subject_key=b"",
            limits=Limits(),
        )
