"""Every check of the ZIP upload (`POST /api/zip/upload`, the `/upload_files` page), with the
messages of the user's help document: the same quota, duplicate, access and field rules as the
direct upload, PER_FILE_MAX_BYTES a file and MAX_FILES_PER_UPLOAD a request."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx

from contracts.envelope import CloudEvent
from contracts.events import ArchiveUploadMetadata, JobOpened, UploadReceived, decode
from contracts.topics import ITEM_STATUS, UPLOADS_RECEIVED
from testkit.synthetic import fundus_image, pdf_bytes

ZIP_FORM = {"hospital": "city-general", "lab_unit": "city-retina-clinic"}


def archive(seed: int, *, name: str | None = None) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        # A fixed date: the same seed gives the very same bytes (writestr would stamp "now").
        entry = zipfile.ZipInfo("visit/FOP/1.02.03.004_PM.jpg", date_time=(2025, 1, 31, 12, 2, 3))
        zf.writestr(entry, fundus_image(size=200, seed=seed))
    return (name or f"export{seed}.zip", buffer.getvalue(), "application/zip")


async def post(
    site: Any, user: str, files: list[tuple[str, bytes, str]], form: dict[str, str] | None = None
) -> httpx.Response:
    return await site.client.post(
        "/api/zip/upload",
        headers=site.auth(user),
        data=ZIP_FORM if form is None else form,
        files=[("files", f) for f in files],
    )


def reasons(response: httpx.Response) -> dict[str, str]:
    return {r["filename"]: r["reason"] for r in response.json()["rejected"]}


def stored_raw(site: Any) -> list[Path]:
    raw = site.objects / "raw"
    return [p for p in raw.rglob("*") if p.is_file()] if raw.exists() else []


async def events_on(site: Any, topic: str) -> list[Any]:
    consumer = site.bus.consumer(group=f"t-{topic}", topics=[topic])
    deliveries = await consumer.fetch(timeout=1)
    await consumer.close()
    return [decode(CloudEvent.from_bytes(d.message.value)) for d in deliveries]


async def test_zip_archives_are_stored_as_they_came_and_announced_as_archives(site: Any) -> None:
    files = [archive(1), archive(2)]

    response = await post(site, "camp", files)

    assert response.status_code == 201, response.text
    body = response.json()
    assert [a["filename"] for a in body["accepted"]] == ["export1.zip", "export2.zip"]
    assert body["rejected"] == []
    assert body["processing_url"] == f"/upload_files/processing/{body['job_id']}"
    assert sorted(p.read_bytes() for p in stored_raw(site)) == sorted(f[1] for f in files)
    received = await events_on(site, UPLOADS_RECEIVED)
    assert [e.kind for e in received] == ["archive", "archive"]
    assert {e.metadata for e in received} == {
        ArchiveUploadMetadata(hospital_id="city-general", lab_unit_id="city-retina-clinic")
    }
    opened = [e for e in await events_on(site, ITEM_STATUS) if isinstance(e, JobOpened)]
    assert [o.kind for o in opened] == ["archive"]
    assert all(isinstance(e, UploadReceived) for e in received)


async def test_only_real_zip_files_pass_each_refused_with_its_reason(site: Any) -> None:
    renamed_pdf = ("report.zip", pdf_bytes(["Report"]), "application/zip")
    image = ("photo.jpg", fundus_image(size=200, seed=3), "image/jpeg")
    zip_named_otherwise = ("export.docx", archive(4)[1], "application/zip")

    response = await post(site, "camp", [archive(5), renamed_pdf, image, zip_named_otherwise])

    assert response.status_code == 201, response.text
    assert reasons(response) == {
        "report.zip": "Invalid file type: application/pdf. Only ZIP files allowed.",
        "photo.jpg": "Invalid file type: image/jpeg. Only ZIP files allowed.",
        "export.docx": "Invalid file type: application/zip. Only ZIP files allowed.",
    }
    assert [a["filename"] for a in response.json()["accepted"]] == ["export5.zip"]
    assert len(stored_raw(site)) == 1


async def test_an_archive_over_per_file_max_bytes_is_refused_with_the_limit(
    site: Any, tmp_path: Path
) -> None:
    # The site fixture keeps PER_FILE_MAX_BYTES at its default of 64 MB.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("big.bin", b"\0" * (64 * 1024 * 1024 + 1))
    response = await post(site, "camp", [("big.zip", buffer.getvalue(), "application/zip")])

    assert reasons(response) == {"big.zip": "File too large (max 64MB)"}
    assert stored_raw(site) == []


async def test_the_same_archive_twice_is_a_duplicate_file(site: Any) -> None:
    first = await post(site, "camp", [archive(6)])
    again = await post(site, "camp", [archive(6, name="copy.zip")])

    assert first.json()["rejected"] == []
    assert reasons(again) == {"copy.zip": "Duplicate file"}


async def test_each_archive_counts_against_the_upload_quota(site: Any) -> None:
    response = await post(site, "small", [archive(7), archive(8), archive(9)])

    assert [a["filename"] for a in response.json()["accepted"]] == ["export7.zip", "export8.zip"]
    assert reasons(response) == {"export9.zip": "Upload quota exceeded"}


async def test_hospital_and_lab_unit_are_required_and_checked(site: Any) -> None:
    missing = await post(site, "camp", [archive(10)], form={"hospital": "city-general"})
    elsewhere = await post(
        site, "camp", [archive(11)], form={"hospital": "city-general", "lab_unit": "rural-camp"}
    )

    assert missing.status_code == 400
    assert missing.json()["detail"] == "All fields are required"
    assert elsewhere.status_code in (400, 403)
    assert elsewhere.json()["detail"] in (
        "Invalid hospital/lab unit combination",
        "You don't have access to the selected lab unit",
    )
    assert stored_raw(site) == []


async def test_more_archives_than_max_files_per_upload_are_refused_whole(site: Any) -> None:
    # The site fixture sets MAX_FILES_PER_UPLOAD to 50.
    files = [archive(100 + i) for i in range(51)]

    response = await post(site, "boss", files)

    assert response.status_code == 413
    assert response.json()["detail"] == (
        "Too many files in one upload (max 50). Please upload fewer files at a time."
    )
    assert stored_raw(site) == []


async def test_the_zip_upload_page_offers_hospital_lab_unit_and_zip_files(site: Any) -> None:
    page = await site.client.get("/upload_files", headers=site.auth("camp"))

    assert page.status_code == 200
    text = page.text
    assert "ZIP Upload" in text and "Upload &amp; Queue" in text
    assert 'name="lab_unit"' in text and 'name="hospital"' in text
    assert 'name="camera"' not in text
    assert 'accept=".zip,application/zip"' in text
    assert "Files are scanned for malicious content" in text
