"""Ingest groups an archive's patient visit: its images and report become one encounter, and
a capture gets the eye of the report tile that shows it, whichever arrives first."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from contracts.events import (
    ArchiveUploadMetadata,
    EncounterRef,
    ImageAnonymized,
    ObjectRef,
    ReportField,
    ReportParsed,
    ReportTile,
)
from ingest.laterality import ImageHash, TileHash, match_tiles
from ingest.read_model import Catalogue
from ingest.service import catalogue_image, file_report
from kit.docs_sqlite import SqliteDocuments
from kit.phash import fundus_phash
from testkit.synthetic import fundus_image

ENCOUNTER = EncounterRef(
    encounter_id="enc-1", subject_id="S0123456789abcde", capture_date="2025-01-31"
)
SITE = ArchiveUploadMetadata(hospital_id="city-general", lab_unit_id="city-retina-clinic")


def picture(seed: int, size: int = 600) -> Image.Image:
    return Image.open(io.BytesIO(fundus_image(size=size, seed=seed, burned_in_text=None)))


def tile_of(seed: int) -> str:
    """The hash of the picture as a report prints it: small and recompressed."""
    small = picture(seed).resize((220, 220))
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    return fundus_phash(Image.open(buffer))


def ref(key: str) -> ObjectRef:
    return ObjectRef(
        bucket="clean", key=key, size=1, md5="0" * 32, sha256="0" * 64, content_type="image/jpeg"
    )


def image_event(item: str, seed: int) -> ImageAnonymized:
    return ImageAnonymized(
        job_id="job-1",
        item_id=item,
        uploader_id="camp",
        source=ref(f"raw/{item}"),
        clean=ref(f"{item}.jpg"),
        thumbnail=ref(f"{item}.thumb.jpg"),
        width=600,
        height=600,
        masked=False,
        metadata=SITE,
        encounter=ENCOUNTER,
        captured_at=f"2025-01-31T10:0{seed}:00.000",
        phash=fundus_phash(picture(seed)),
    )


def report_event(tiles: list[tuple[str, int]]) -> ReportParsed:
    return ReportParsed(
        job_id="job-1",
        item_id="report-1",
        report_kind="combined",
        method="ocr",
        subject_id=ENCOUNTER.subject_id,
        encounter=ENCOUNTER,
        metadata=SITE,
        page_kinds=("dr", "glaucoma"),
        fields={
            "site_header": ReportField(
                value="COMMUNITY OPHTHALMOLOGY, AIIMS\nCamp 2", confidence=0.9
            ),
            "age": ReportField(value=65, confidence=0.95),
            "report_date": ReportField(value=None, confidence=0.2, needs_review=True),
        },
        tiles=tuple(ReportTile(page=1, eye=eye, phash=tile_of(seed)) for eye, seed in tiles),  # type: ignore[arg-type]
    )


def test_each_badged_tile_goes_to_the_capture_it_shows() -> None:
    images = [ImageHash(f"img-{s}", fundus_phash(picture(s))) for s in (1, 2, 3)]

    eyes = match_tiles([TileHash("RE", tile_of(2)), TileHash("LE", tile_of(3))], images)

    assert eyes == {"img-2": "right", "img-3": "left"}


def test_a_tile_like_no_capture_and_a_capture_claimed_by_both_eyes_get_no_eye() -> None:
    images = [ImageHash("img-1", fundus_phash(picture(1)))]

    assert match_tiles([TileHash("RE", tile_of(9))], images) == {}
    assert match_tiles([TileHash("RE", tile_of(1)), TileHash("LE", tile_of(1))], images) == {}


@pytest.mark.parametrize("report_first", [False, True], ids=["images first", "report first"])
async def test_the_encounter_holds_its_images_and_report_in_either_order(
    tmp_path: Path, report_first: bool
) -> None:
    docs = SqliteDocuments(path=tmp_path / "docs.sqlite3")
    catalogue = Catalogue(docs=docs)
    report = report_event([("RE", 1), ("LE", 2)])
    try:
        if report_first:
            await file_report(report, catalogue=catalogue)
        for item, seed in (("img-1", 1), ("img-2", 2), ("img-3", 3)):
            await catalogue_image(image_event(item, seed), catalogue=catalogue)
        if not report_first:
            await file_report(report, catalogue=catalogue)

        [encounter] = await catalogue.encounters(where={}, limit=10)
        images = {i.item_id: i for i in await catalogue.images_of(["enc-1"])}
        [filed] = await catalogue.reports_of(["enc-1"])
        queue = {q.record_id: q for q in await catalogue.queue(where={}, limit=10)}
    finally:
        await docs.close()

    assert (encounter.subject_id, encounter.capture_date) == ("S0123456789abcde", "2025-01-31")
    assert (encounter.hospital_id, encounter.lab_unit_id) == ("city-general", "city-retina-clinic")
    assert encounter.site == "COMMUNITY OPHTHALMOLOGY, AIIMS\nCamp 2"
    assert {k: v.laterality for k, v in images.items()} == {
        "img-1": "right",
        "img-2": "left",
        "img-3": "unknown",
    }
    assert images["img-1"].laterality_source == "report tile"
    assert {k: q.laterality for k, q in queue.items()} == {
        "img-1": "right",
        "img-2": "left",
        "img-3": "unknown",
    }
    assert filed.needs_review is True
    assert filed.fields["age"]["value"] == 65
