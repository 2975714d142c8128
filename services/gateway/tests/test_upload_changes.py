"""Correcting and deleting catalogued uploads: metadata edits with their history and events,
access scoping, the 50-upload bulk limit, and deletions that leave nothing of the image."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx

from contracts.envelope import CloudEvent
from contracts.events import (
    Event,
    ObjectRef,
    UploadDeleted,
    UploadMetadataChanged,
    UploadReceived,
    ValueChange,
    decode,
)
from contracts.topics import UPLOAD_CHANGES, UPLOADS_RECEIVED
from gateway.audit import AuditLog
from gateway.intake import CLAIMS
from gateway.upload_changes import DELETE_CONFIRMATION, delete_confirmation
from gateway.uploads import BAD_COMBINATION, NO_ACCESS
from ingest.read_model import CATALOGUE, Catalogue, CatalogueRecord, QueueEntry
from kit.blobs import CLEAN, RAW, put_bytes, to_ref
from kit.store_fs import FilesystemObjectStore
from testkit.synthetic import fundus_image

CITY = {"hospital_id": "city-general", "lab_unit_id": "city-retina-clinic"}
RIVERSIDE = {"hospital_id": "riverside-eye", "lab_unit_id": "riverside-outpatient"}
FORM = {
    "hospital": "city-general",
    "lab_unit": "city-retina-clinic",
    "camera": "remidio-fop",
    "disease": "dr",
    "area": "left-eye",
    "mydriatic": "false",
}


async def _object(site: Any, bucket: str, key: str, data: bytes) -> ObjectRef:
    store = FilesystemObjectStore(root=site.objects)
    try:
        return to_ref(await put_bytes(store, bucket, key, data, content_type="image/jpeg"))
    finally:
        await store.close()


async def seed(
    site: Any,
    *,
    where: dict[str, str] | None = None,
    raw: ObjectRef | None = None,
    job_id: str | None = None,
    item_id: str | None = None,
    edited: bool = False,
    queued: bool = True,
    pre_graded: bool = False,
) -> CatalogueRecord:
    """A catalogued upload as ingest leaves it: its objects in the store, its record and (if
    waiting to be graded) its queue entry. The `site` runs no workers, so this stands in."""
    item_id = item_id or uuid.uuid4().hex
    job_id = job_id or uuid.uuid4().hex
    key = f"{job_id}/{item_id}"
    raw = raw or await _object(site, RAW, key, b"raw " + item_id.encode())
    clean = await _object(site, CLEAN, key + ".jpg", b"clean " + item_id.encode())
    thumbnail = await _object(site, CLEAN, key + ".thumb.jpg", b"thumb " + item_id.encode())
    record = CatalogueRecord(
        item_id=item_id,
        job_id=job_id,
        uploader_id="camp",
        **(where or CITY),
        camera_id="remidio-fop",
        disease_id="dr",
        area_id="left-eye",
        mydriatic=False,
        raw=raw,
        clean=clean,
        thumbnail=thumbnail,
        md5=raw.md5,
        sha256=raw.sha256,
        size=raw.size,
        width=300,
        height=300,
        masked=False,
        pre_graded=pre_graded,
        ingested_at="2025-03-14T09:30:00+00:00",
    )
    doc = record.document(item_id)
    if edited:
        for field, suffix in (("edited", ".edited.jpg"), ("edited_thumbnail", ".edited.thumb.jpg")):
            ref = await _object(site, CLEAN, key + suffix, field.encode() + item_id.encode())
            doc[field] = ref.model_dump(mode="json")
    await site.docs.collection(CATALOGUE).put(doc)
    if queued:
        await Catalogue(docs=site.docs).enqueue(
            QueueEntry(
                record_id=item_id,
                job_id=job_id,
                disease_id=record.disease_id,
                hospital_id=record.hospital_id,
                lab_unit_id=record.lab_unit_id,
                queued_at="2025-03-14T09:30:00+00:00",
            )
        )
    return record


async def patch(site: Any, user: str, item_id: str, changes: dict[str, Any]) -> httpx.Response:
    return await site.client.patch(
        f"/api/uploads/{item_id}",
        headers={**site.auth(user), "User-Agent": "FundusBrowser/1.0"},
        json=changes,
    )


async def events_on(site: Any, topic: str) -> list[Event]:
    consumer = site.bus.consumer(group=f"test-{uuid.uuid4().hex}", topics=[topic])
    try:
        deliveries = await consumer.fetch(max_records=500, timeout=1)
    finally:
        await consumer.close()
    return [decode(CloudEvent.from_bytes(d.message.value)) for d in deliveries]


def stored_files(site: Any) -> set[Path]:
    return {p for p in Path(site.objects).rglob("*") if p.is_file()}


def object_path(site: Any, ref: ObjectRef) -> Path:
    return Path(site.objects) / ref.bucket / ref.key


async def test_a_metadata_edit_changes_the_record_and_its_grading_queue_entry(site: Any) -> None:
    record = await seed(site)

    response = await patch(
        site,
        "boss",
        record.item_id,
        {"hospital": "riverside-eye", "lab_unit": "riverside-outpatient", "disease": "glaucoma"},
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["lab_unit_id"] == "riverside-outpatient"
    assert body["changes"] == {
        "hospital_id": {"old": "city-general", "new": "riverside-eye"},
        "lab_unit_id": {"old": "city-retina-clinic", "new": "riverside-outpatient"},
        "disease_id": {"old": "dr", "new": "glaucoma"},
    }
    stored = await Catalogue(docs=site.docs).get(record.item_id)
    assert stored is not None
    assert (stored.hospital_id, stored.lab_unit_id, stored.disease_id) == (
        "riverside-eye",
        "riverside-outpatient",
        "glaucoma",
    )
    (entry,) = await Catalogue(docs=site.docs).queue(where={}, limit=10)
    assert (entry.hospital_id, entry.lab_unit_id, entry.disease_id) == (
        "riverside-eye",
        "riverside-outpatient",
        "glaucoma",
    )


async def test_camera_area_and_mydriatic_can_be_corrected_too(site: Any) -> None:
    record = await seed(site)

    response = await patch(
        site,
        "camp",
        record.item_id,
        {"camera": "topcon-nw400", "area": "both-eyes", "mydriatic": True},
    )

    assert response.status_code == 200, response.text
    stored = await Catalogue(docs=site.docs).get(record.item_id)
    assert stored is not None
    assert (stored.camera_id, stored.area_id, stored.mydriatic) == (
        "topcon-nw400",
        "both-eyes",
        True,
    )


async def test_the_history_shows_each_change_newest_first_with_who_where_and_old_and_new(
    site: Any,
) -> None:
    record = await seed(site)
    assert (await patch(site, "camp", record.item_id, {"disease": "glaucoma"})).status_code == 200
    assert (await patch(site, "boss", record.item_id, {"mydriatic": True})).status_code == 200

    response = await site.client.get(
        f"/api/uploads/{record.item_id}/history", headers=site.auth("boss")
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    newest, oldest = body["items"]
    assert newest["actor"] == "boss"
    assert newest["changes"] == {"mydriatic": {"old": False, "new": True}}
    assert oldest["actor"] == "camp"
    assert oldest["changes"] == {"disease_id": {"old": "dr", "new": "glaucoma"}}
    assert oldest["kind"] == "metadata"
    assert oldest["ip"] == "203.0.113.7"
    assert oldest["user_agent"] == "FundusBrowser/1.0"
    assert newest["at"] >= oldest["at"]


async def test_the_history_shows_where_a_change_came_from_to_administrators_only(
    site: Any,
) -> None:
    record = await seed(site)
    await patch(site, "boss", record.item_id, {"disease": "amd"})

    response = await site.client.get(
        f"/api/uploads/{record.item_id}/history", headers=site.auth("camp")
    )

    (item,) = response.json()["items"]
    assert item["actor"] == "boss"
    assert (item["ip"], item["user_agent"]) == (None, None)


async def test_each_edit_is_published_as_an_event_and_written_to_the_audit_log(
    site: Any,
) -> None:
    record = await seed(site)

    await patch(site, "camp", record.item_id, {"disease": "glaucoma", "mydriatic": True})

    (event,) = await events_on(site, UPLOAD_CHANGES)
    assert isinstance(event, UploadMetadataChanged)
    assert (event.job_id, event.item_id, event.changed_by) == (
        record.job_id,
        record.item_id,
        "camp",
    )
    assert event.changes == {
        "disease_id": ValueChange(old="dr", new="glaucoma"),
        "mydriatic": ValueChange(old=False, new=True),
    }
    (entry,) = await AuditLog(docs=site.docs).recent(action="upload.edited")
    assert (entry.actor, entry.subject, entry.ip) == ("camp", record.item_id, "203.0.113.7")
    assert entry.detail["changes"]["disease_id"] == {"old": "dr", "new": "glaucoma"}


async def test_an_edit_that_changes_nothing_records_and_publishes_nothing(site: Any) -> None:
    record = await seed(site)

    response = await patch(site, "camp", record.item_id, {"disease": "dr", "mydriatic": False})

    assert response.status_code == 200
    assert response.json()["changes"] == {}
    history = await site.client.get(
        f"/api/uploads/{record.item_id}/history", headers=site.auth("camp")
    )
    assert history.json()["items"] == []
    assert await events_on(site, UPLOAD_CHANGES) == []


async def test_a_lab_unit_of_another_hospital_is_refused_as_an_invalid_combination(
    site: Any,
) -> None:
    record = await seed(site)

    response = await patch(site, "boss", record.item_id, {"lab_unit": "riverside-outpatient"})

    assert response.status_code == 400
    assert response.json()["detail"] == BAD_COMBINATION
    hospital_only = await patch(site, "boss", record.item_id, {"hospital": "riverside-eye"})
    assert hospital_only.json()["detail"] == BAD_COMBINATION
    stored = await Catalogue(docs=site.docs).get(record.item_id)
    assert stored is not None and stored.lab_unit_id == "city-retina-clinic"


async def test_an_uploader_cannot_move_an_upload_to_a_lab_unit_they_may_not_use(
    site: Any,
) -> None:
    record = await seed(site)

    response = await patch(site, "camp", record.item_id, {"lab_unit": "city-screening-camp"})

    assert response.status_code == 403
    assert response.json()["detail"] == NO_ACCESS


async def test_an_unknown_camera_disease_or_area_is_refused_with_a_clear_message(
    site: Any,
) -> None:
    record = await seed(site)

    for field, value in (("camera", "polaroid"), ("disease", "flu"), ("area", "elbow")):
        response = await patch(site, "camp", record.item_id, {field: value})
        assert response.status_code == 400
        assert response.json()["detail"] == f"Unknown {field}: please choose one from the list"
    assert await events_on(site, UPLOAD_CHANGES) == []


async def test_an_edit_naming_no_field_or_an_unknown_field_is_refused(site: Any) -> None:
    record = await seed(site)

    empty = await patch(site, "camp", record.item_id, {})
    unknown = await patch(site, "camp", record.item_id, {"patient_name": "x"})

    assert empty.status_code == 400
    assert "Nothing to change" in empty.json()["detail"]
    assert unknown.status_code == 422


async def test_a_pre_graded_upload_without_a_queue_entry_can_be_edited_too(site: Any) -> None:
    record = await seed(site, queued=False, pre_graded=True)

    response = await patch(site, "camp", record.item_id, {"area": "right-eye"})

    assert response.status_code == 200, response.text
    assert response.json()["pre_graded"] is True
    assert response.json()["area_id"] == "right-eye"
    assert await Catalogue(docs=site.docs).queue(where={}, limit=10) == []


async def test_an_uploader_cannot_edit_delete_or_read_the_history_of_another_lab_units_upload(
    site: Any,
) -> None:
    record = await seed(site, where=RIVERSIDE)
    files = stored_files(site)

    edit = await patch(site, "camp", record.item_id, {"disease": "glaucoma"})
    history = await site.client.get(
        f"/api/uploads/{record.item_id}/history", headers=site.auth("camp")
    )
    bulk_edit = await site.client.post(
        "/api/uploads/bulk-edit",
        headers=site.auth("camp"),
        json={"ids": [record.item_id], "changes": {"disease": "glaucoma"}},
    )
    bulk_delete = await site.client.post(
        "/api/uploads/bulk-delete", headers=site.auth("camp"), json={"ids": [record.item_id]}
    )

    missing = await patch(site, "camp", "no-such-upload", {"disease": "glaucoma"})
    assert edit.status_code == history.status_code == missing.status_code == 404
    assert edit.json() == missing.json() == {"detail": "Upload not found"}
    assert bulk_edit.json()["results"] == [
        {"id": record.item_id, "outcome": "not_found", "reason": "Upload not found"}
    ]
    assert bulk_delete.json()["deleted"] == 0
    assert await Catalogue(docs=site.docs).get(record.item_id) == record
    assert stored_files(site) == files
    assert await events_on(site, UPLOAD_CHANGES) == []


async def test_bulk_operations_refuse_a_51st_upload_with_a_clear_message(site: Any) -> None:
    ids = [uuid.uuid4().hex for _ in range(51)]

    edit = await site.client.post(
        "/api/uploads/bulk-edit",
        headers=site.auth("boss"),
        json={"ids": ids, "changes": {"disease": "amd"}},
    )
    delete = await site.client.post(
        "/api/uploads/bulk-delete", headers=site.auth("boss"), json={"ids": ids}
    )

    message = "At most 50 uploads can be changed at once; you selected 51."
    assert (edit.status_code, edit.json()["detail"]) == (400, message)
    assert (delete.status_code, delete.json()["detail"]) == (400, message)


async def test_bulk_operations_take_fifty_uploads(site: Any) -> None:
    records = [await seed(site) for _ in range(50)]

    response = await site.client.post(
        "/api/uploads/bulk-edit",
        headers=site.auth("boss"),
        json={"ids": [r.item_id for r in records], "changes": {"disease": "amd"}},
    )

    assert response.status_code == 200, response.text
    assert response.json()["changed"] == 50
    assert len(await events_on(site, UPLOAD_CHANGES)) == 50


async def test_bulk_edit_changes_every_visible_upload_and_says_what_happened_to_each(
    site: Any,
) -> None:
    mine, also_mine = await seed(site), await seed(site)
    theirs = await seed(site, where=RIVERSIDE)
    await patch(site, "boss", also_mine.item_id, {"camera": "zeiss-visucam"})

    response = await site.client.post(
        "/api/uploads/bulk-edit",
        headers=site.auth("camp"),
        json={
            "ids": [mine.item_id, also_mine.item_id, theirs.item_id, "gone"],
            "changes": {"camera": "zeiss-visucam", "mydriatic": True},
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["selected"] == 4 and body["changed"] == 2
    by_id = {r["id"]: r for r in body["results"]}
    assert by_id[mine.item_id]["outcome"] == "changed"
    assert by_id[mine.item_id]["changes"] == {
        "camera_id": {"old": "remidio-fop", "new": "zeiss-visucam"},
        "mydriatic": {"old": False, "new": True},
    }
    assert by_id[also_mine.item_id]["changes"] == {"mydriatic": {"old": False, "new": True}}
    assert by_id[theirs.item_id]["outcome"] == by_id["gone"]["outcome"] == "not_found"
    catalogue = Catalogue(docs=site.docs)
    for record in (mine, also_mine):
        stored = await catalogue.get(record.item_id)
        assert stored is not None and (stored.camera_id, stored.mydriatic) == (
            "zeiss-visucam",
            True,
        )
    untouched = await catalogue.get(theirs.item_id)
    assert untouched is not None and untouched.camera_id == "remidio-fop"


async def test_bulk_edit_reports_a_refused_upload_with_its_reason_and_changes_the_others(
    site: Any,
) -> None:
    city = await seed(site)
    riverside = await seed(site, where=RIVERSIDE)

    response = await site.client.post(
        "/api/uploads/bulk-edit",
        headers=site.auth("boss"),
        json={
            "ids": [city.item_id, riverside.item_id],
            "changes": {"lab_unit": "city-screening-camp"},
        },
    )

    by_id = {r["id"]: r for r in response.json()["results"]}
    assert by_id[city.item_id]["outcome"] == "changed"
    assert by_id[riverside.item_id] == {
        "id": riverside.item_id,
        "outcome": "refused",
        "reason": BAD_COMBINATION,
    }


async def test_bulk_delete_removes_every_object_record_queue_entry_and_the_md5_claim(
    site: Any,
) -> None:
    image = fundus_image(size=300, seed=11)
    upload = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data=FORM,
        files=[("files", ("Asha_Rao_MRN12345.jpg", image, "image/jpeg"))],
    )
    assert upload.status_code == 201, upload.text
    (received,) = [e for e in await events_on(site, UPLOADS_RECEIVED)]
    assert isinstance(received, UploadReceived)
    record = await seed(
        site, raw=received.object, job_id=received.job_id, item_id=received.item_id, edited=True
    )
    other = await seed(site)
    doc = await site.docs.collection(CATALOGUE).get(record.item_id)
    refs = [record.raw, record.clean, record.thumbnail] + [
        ObjectRef.model_validate(doc[f]) for f in ("edited", "edited_thumbnail")
    ]
    assert all(object_path(site, ref).is_file() for ref in refs)
    assert await site.docs.collection(CLAIMS).get(record.raw.md5) is not None

    response = await site.client.post(
        "/api/uploads/bulk-delete", headers=site.auth("camp"), json={"ids": [record.item_id]}
    )

    assert response.status_code == 200, response.text
    assert response.json()["deleted"] == 1
    assert response.json()["results"] == [{"id": record.item_id, "outcome": "deleted"}]
    assert [object_path(site, ref).exists() for ref in refs] == [False] * 5
    assert all(object_path(site, ref).is_file() for ref in (other.raw, other.clean))
    catalogue = Catalogue(docs=site.docs)
    assert await catalogue.get(record.item_id) is None
    assert [e.record_id for e in await catalogue.queue(where={}, limit=10)] == [other.item_id]
    assert await site.docs.collection(CLAIMS).get(record.raw.md5) is None
    again = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data=FORM,
        files=[("files", ("again.jpg", image, "image/jpeg"))],
    )
    assert again.status_code == 201 and again.json()["rejected"] == []
    (entry,) = await AuditLog(docs=site.docs).recent(action="upload.deleted")
    assert "Asha" not in json.dumps(entry.model_dump())


async def test_a_deletion_is_audited_without_the_image_or_its_name_and_published(
    site: Any,
) -> None:
    record = await seed(site)

    await site.client.post(
        "/api/uploads/bulk-delete", headers=site.auth("boss"), json={"ids": [record.item_id]}
    )

    (entry,) = await AuditLog(docs=site.docs).recent(action="upload.deleted")
    assert (entry.actor, entry.subject, entry.ip) == ("boss", record.item_id, "203.0.113.7")
    assert entry.detail["objects_removed"] == 3
    written = json.dumps(entry.model_dump())
    assert record.clean.key not in written and "filename" not in written
    events = await events_on(site, UPLOAD_CHANGES)
    assert [(type(e), e.item_id) for e in events] == [(UploadDeleted, record.item_id)]  # type: ignore[attr-defined]
    (deleted,) = events
    assert isinstance(deleted, UploadDeleted) and deleted.deleted_by == "boss"


async def test_bulk_delete_says_how_many_of_the_selected_uploads_were_deleted(
    site: Any,
) -> None:
    records = [await seed(site) for _ in range(3)]
    theirs = await seed(site, where=RIVERSIDE)

    response = await site.client.post(
        "/api/uploads/bulk-delete",
        headers=site.auth("camp"),
        json={"ids": [r.item_id for r in records] + [theirs.item_id]},
    )

    assert response.json()["selected"] == 4
    assert response.json()["deleted"] == 3
    assert await Catalogue(docs=site.docs).get(theirs.item_id) is not None


async def test_the_delete_confirmation_says_how_many_and_that_images_cannot_be_recovered() -> None:
    assert DELETE_CONFIRMATION == "Delete {n} uploads? Deleted images cannot be recovered."
    assert delete_confirmation(3) == "Delete 3 uploads? Deleted images cannot be recovered."


async def test_bulk_operations_with_nothing_selected_are_refused(site: Any) -> None:
    response = await site.client.post(
        "/api/uploads/bulk-delete", headers=site.auth("boss"), json={"ids": []}
    )

    assert (response.status_code, response.json()["detail"]) == (400, "Select at least one upload")
