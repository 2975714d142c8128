"""Editing an upload's picture: an edited version beside the clean original (never
overwritten), with its own thumbnail; edits add up; revert goes back; pre-graded uploads and
other lab units' uploads cannot be edited."""

from __future__ import annotations

import io
import uuid
from typing import Any

from PIL import Image

from gateway.image_edits import PRE_GRADED_LOCKED
from ingest.read_model import Catalogue, CatalogueRecord
from kit.blobs import CLEAN, RAW, put_bytes, to_ref
from kit.store_fs import FilesystemObjectStore
from testkit.synthetic import fundus_image

CITY = {"hospital_id": "city-general", "lab_unit_id": "city-retina-clinic"}
OTHER = {"hospital_id": "riverside-eye", "lab_unit_id": "riverside-outpatient"}


async def seed(site: Any, *, where: dict[str, str] = CITY, pre_graded: bool = False) -> str:
    item_id, job_id = uuid.uuid4().hex, uuid.uuid4().hex
    picture = Image.new("RGB", (300, 200), (200, 30, 30))
    picture.paste((20, 20, 220), (0, 0, 100, 200))  # the left third blue: orientation shows
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=95)
    store = FilesystemObjectStore(root=site.objects)
    try:
        refs = [
            to_ref(await put_bytes(store, bucket, key, data, content_type="image/jpeg"))
            for bucket, key, data in (
                (RAW, f"{job_id}/{item_id}", fundus_image(size=64, seed=1)),
                (CLEAN, f"{job_id}/{item_id}.jpg", buffer.getvalue()),
                (CLEAN, f"{job_id}/{item_id}.thumb.jpg", buffer.getvalue()),
            )
        ]
    finally:
        await store.close()
    await Catalogue(docs=site.docs).put(
        CatalogueRecord(
            item_id=item_id, job_id=job_id, uploader_id="camp", **where, raw=refs[0],
            clean=refs[1], thumbnail=refs[2], md5=refs[0].md5, sha256=refs[0].sha256,
            size=refs[0].size, width=300, height=200, masked=False, pre_graded=pre_graded,
            ingested_at="2025-03-14T09:30:00+00:00",
        )
    )  # fmt: skip
    return item_id


def picture(response: Any) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content)).convert("RGB")


async def test_a_rotation_is_saved_beside_the_original_and_edits_add_up(site: Any) -> None:
    item = await seed(site)
    camp = site.auth("camp")
    original = (await site.client.get(f"/api/images/{item}/clean", headers=camp)).content

    first = await site.client.post(
        f"/api/uploads/{item}/image-edits", headers=camp, json={"rotate": 90}
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["edited"] is True and body["edit_version"] == 1
    rotated = picture(await site.client.get(body["edited_url"], headers=camp))
    assert rotated.size == (200, 300)
    assert rotated.getpixel((100, 20))[2] > 150  # the blue third is now on top
    thumb = picture(await site.client.get(body["edited_thumbnail_url"], headers=camp))
    assert max(thumb.size) <= 256 and thumb.size[1] > thumb.size[0]
    assert (await site.client.get(f"/api/images/{item}/clean", headers=camp)).content == original

    second = await site.client.post(
        f"/api/uploads/{item}/image-edits", headers=camp, json={"rotate": 90, "brightness": 1.2}
    )
    turned = picture(await site.client.get(second.json()["edited_url"], headers=camp))
    assert turned.size == (300, 200) and turned.getpixel((280, 100))[2] > 150  # 180° in all
    assert second.json()["edit_version"] == 2
    old = await site.client.get(body["edited_url"], headers=camp)
    assert old.status_code == 200  # the same route now serves version 2
    history = (await site.client.get(f"/api/uploads/{item}/history", headers=camp)).json()
    assert [h["kind"] for h in history["items"]] == ["image", "image"]


async def test_revert_goes_back_to_the_original_and_removes_the_edited_files(site: Any) -> None:
    item = await seed(site)
    camp = site.auth("camp")
    await site.client.post(
        f"/api/uploads/{item}/image-edits",
        headers=camp,
        json={"flip": "horizontal", "crop": {"x": 0, "y": 0, "width": 0.5, "height": 1}},
    )
    edited_files = [p for p in site.objects.rglob("*edited*") if p.is_file()]
    assert len(edited_files) == 2

    reverted = await site.client.post(
        f"/api/uploads/{item}/image-edits", headers=camp, json={"revert": True}
    )

    assert reverted.status_code == 200 and reverted.json()["edited"] is False
    assert not any(p.exists() for p in edited_files)
    gone = await site.client.get(f"/api/images/{item}/edited", headers=camp)
    assert gone.status_code == 404
    record = await Catalogue(docs=site.docs).get(item)
    assert record is not None and record.edited is None


async def test_pre_graded_and_other_lab_units_uploads_cannot_be_edited(site: Any) -> None:
    camp = site.auth("camp")
    locked = await seed(site, pre_graded=True)
    elsewhere = await seed(site, where=OTHER)
    mine = await seed(site)

    refused = await site.client.post(
        f"/api/uploads/{locked}/image-edits", headers=camp, json={"rotate": 90}
    )
    hidden = await site.client.post(
        f"/api/uploads/{elsewhere}/image-edits", headers=camp, json={"rotate": 90}
    )
    nothing = await site.client.post(f"/api/uploads/{mine}/image-edits", headers=camp, json={})
    outside = await site.client.post(
        f"/api/uploads/{mine}/image-edits",
        headers=camp,
        json={"crop": {"x": 0.8, "y": 0, "width": 0.5, "height": 1}},
    )
    sideways = await site.client.post(
        f"/api/uploads/{mine}/image-edits", headers=camp, json={"rotate": 45}
    )

    assert (refused.status_code, refused.json()["detail"]) == (409, PRE_GRADED_LOCKED)
    assert hidden.status_code == 404
    assert nothing.status_code == 400
    assert outside.status_code == 422 and sideways.status_code == 422
