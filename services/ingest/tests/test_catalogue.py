"""Cataloguing an image is done once: a redelivered event keeps the record as people have
made it since (corrected metadata, an edited version), and its queue entry."""

from __future__ import annotations

from pathlib import Path

from contracts.events import DirectUploadMetadata, ImageAnonymized, ObjectRef
from ingest.read_model import Catalogue
from ingest.service import catalogue_image
from kit.docs_sqlite import SqliteDocuments


def ref(key: str) -> ObjectRef:
    return ObjectRef(
        bucket="clean", key=key, size=1, md5="0" * 32, sha256="0" * 64, content_type="image/jpeg"
    )


async def test_a_redelivered_image_keeps_the_corrections_made_since(tmp_path: Path) -> None:
    docs = SqliteDocuments(path=tmp_path / "docs.sqlite3")
    catalogue = Catalogue(docs=docs)
    event = ImageAnonymized(
        job_id="job-1", item_id="img-1", uploader_id="camp", source=ref("raw/img-1"),
        clean=ref("img-1.jpg"), thumbnail=ref("img-1.thumb.jpg"), width=10, height=10,
        masked=False,
        metadata=DirectUploadMetadata(
            hospital_id="city-general", lab_unit_id="city-retina-clinic", camera_id="remidio-fop",
            disease_id="dr", area_id="left-eye", mydriatic=False,
        ),
    )  # fmt: skip
    try:
        await catalogue_image(event, catalogue=catalogue)
        await docs.collection("uploads").update("img-1", set={"area_id": "right-eye"})
        await catalogue.set_edited(
            "img-1", edited=ref("img-1.edited-1.jpg"), thumbnail=ref("t.jpg"), version=1
        )
        await catalogue.dequeue("img-1")

        await catalogue_image(event, catalogue=catalogue)  # redelivered

        record = await catalogue.get("img-1")
        queue = await catalogue.queue(where={}, limit=5)
    finally:
        await docs.close()
    assert record is not None
    assert (record.area_id, record.edit_version) == ("right-eye", 1)
    assert record.edited is not None and record.edited.key == "img-1.edited-1.jpg"
    assert [q.record_id for q in queue] == ["img-1"]  # put back: a crash may have lost it
