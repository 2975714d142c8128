"""The anonymizer's handler: what an anonymized image is announced with."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from anonymizer.fundus import anonymize_fundus
from anonymizer.quality import NOT_GRADABLE
from anonymizer.service import routes
from contracts.events import (
    ArchiveEntryExtracted,
    ArchiveUploadMetadata,
    DirectUploadMetadata,
    EncounterRef,
    Event,
    ImageAnonymized,
    ObjectRef,
    UploadReceived,
)
from contracts.topics import ARCHIVE_ENTRIES, UPLOADS_RECEIVED
from kit.blobs import RAW, put_bytes, to_ref
from kit.phash import same_picture
from kit.store_fs import FilesystemObjectStore
from testkit.synthetic import fundus_image

ENCOUNTER = EncounterRef(encounter_id="enc-1", subject_id="subj-1", capture_date="2024-03-05")
CAPTURED_AT = "2024-03-05T12:02:16.099"


@pytest.fixture
def store(tmp_path: Path) -> FilesystemObjectStore:
    return FilesystemObjectStore(root=tmp_path)


async def stored(store: FilesystemObjectStore, data: bytes, key: str = "job/item.jpg") -> ObjectRef:
    return to_ref(await put_bytes(store, RAW, key, data, content_type="image/jpeg"))


def archive_entry(source: ObjectRef, **fields: object) -> ArchiveEntryExtracted:
    return ArchiveEntryExtracted.model_validate(
        {
            "job_id": "job",
            "archive_item_id": "arc",
            "item_id": "e0",
            "entry_index": 0,
            "entry_kind": "image",
            "layout": "remidio-fop",
            "object": source,
            "uploader_id": "u",
            "metadata": ArchiveUploadMetadata(hospital_id="h", lab_unit_id="l"),
            **fields,
        }
    )


async def anonymized(store: FilesystemObjectStore, topic: str, event: Event) -> ImageAnonymized:
    (emit,) = await routes(store=store)[topic].handler(event)
    assert isinstance(emit.event, ImageAnonymized)
    return emit.event


async def test_an_archive_entry_s_encounter_and_capture_time_reach_the_anonymized_image(
    store: FilesystemObjectStore,
) -> None:
    source = await stored(store, fundus_image(size=600, seed=1))
    entry = archive_entry(source, encounter=ENCOUNTER, captured_at=CAPTURED_AT)
    image = await anonymized(store, ARCHIVE_ENTRIES, entry)
    assert image.encounter == ENCOUNTER
    assert image.captured_at == CAPTURED_AT
    assert image.metadata == entry.metadata


async def test_an_archive_entry_without_an_encounter_gives_an_image_without_one(
    store: FilesystemObjectStore,
) -> None:
    source = await stored(store, fundus_image(size=600, seed=1))
    image = await anonymized(store, ARCHIVE_ENTRIES, archive_entry(source))
    assert image.encounter is None and image.captured_at is None


async def test_a_direct_upload_has_no_encounter_and_no_capture_time(
    store: FilesystemObjectStore,
) -> None:
    source = await stored(store, fundus_image(size=600, seed=2))
    upload = UploadReceived(
        job_id="job",
        item_id="i1",
        kind="image",
        object=source,
        uploader_id="u",
        metadata=DirectUploadMetadata(
            hospital_id="h",
            lab_unit_id="l",
            camera_id="c",
            disease_id="d",
            area_id="a",
            mydriatic=False,
        ),
    )
    image = await anonymized(store, UPLOADS_RECEIVED, upload)
    assert image.encounter is None and image.captured_at is None


async def test_the_anonymized_image_carries_the_phash_of_the_clean_picture_and_its_flags(
    store: FilesystemObjectStore,
) -> None:
    data = fundus_image(size=800, seed=3)
    image = await anonymized(store, ARCHIVE_ENTRIES, archive_entry(await stored(store, data)))
    assert image.phash is not None and len(image.phash) == 64
    assert image.flags == ()
    assert same_picture(image.phash, anonymize_fundus(data).phash)


async def test_a_black_capture_is_announced_as_not_gradable(
    store: FilesystemObjectStore,
) -> None:
    out = io.BytesIO()
    Image.new("RGB", (640, 480)).save(out, format="JPEG")
    source = await stored(store, out.getvalue())
    image = await anonymized(store, ARCHIVE_ENTRIES, archive_entry(source))
    assert image.flags == (NOT_GRADABLE,)
