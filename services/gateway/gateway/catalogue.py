"""The grading queue and the images behind it: clean pictures for those who may see the lab
unit (see `gateway.access`), the raw original (which may carry PHI) for admins only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from contracts.events import ObjectRef
from gateway.access import Access
from gateway.deps import AccessDep, AdminUser, GatewayDep
from ingest.read_model import Catalogue, CatalogueRecord, QueueEntry
from kit.ports import ObjectNotFound, ObjectStore

__all__ = ["IMAGE_NOT_FOUND", "router", "stream_object"]

router = APIRouter(prefix="/api")
IMAGE_NOT_FOUND = "Image not found"


def _entry(record: CatalogueRecord, queued: QueueEntry, access: Access) -> dict[str, Any]:
    item_id = record.item_id
    return {
        "id": item_id,
        # The job page lists filenames: only for someone who may list that job.
        "job_id": record.job_id if access.may_list_job(record.uploader_id) else None,
        "hospital_id": record.hospital_id,
        "lab_unit_id": record.lab_unit_id,
        "camera_id": record.camera_id,
        "disease_id": record.disease_id,
        "area_id": record.area_id,
        "mydriatic": record.mydriatic,
        "width": record.width,
        "height": record.height,
        "uploader": record.uploader_id,
        "pre_graded": record.pre_graded,
        "needs_review": record.needs_review,
        "review_reason": record.review_reason,
        "queued_at": queued.queued_at,
        "image_url": f"/api/images/{item_id}/clean",
        "thumbnail_url": f"/api/images/{item_id}/thumbnail",
    }


@router.get("/grading/queue")
async def grading_queue(
    gateway: GatewayDep,
    access: AccessDep,
    disease: str | None = None,
    hospital: str | None = None,
    lab_unit: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    """Images waiting to be graded, oldest first, of the lab units the caller may see."""
    where: dict[str, Any] = access.lab_unit_filter()
    for field, value in (
        ("disease_id", disease),
        ("hospital_id", hospital),
        ("lab_unit_id", lab_unit),
    ):
        if value:
            if field == "lab_unit_id" and not access.may_see_lab_unit(value):
                return {"count": 0, "items": []}
            where[field] = value
    catalogue = Catalogue(docs=gateway.docs)
    queued = await catalogue.queue(where=where, limit=max(1, min(limit, 500)))
    records = await catalogue.get_many(entry.record_id for entry in queued)
    entries = [_entry(records[e.record_id], e, access) for e in queued if e.record_id in records]
    return {"count": len(entries), "items": entries}


async def stream_object(
    store: ObjectStore, ref: ObjectRef, *, not_found: str = IMAGE_NOT_FOUND
) -> StreamingResponse:
    chunks = store.get(ref.bucket, ref.key)
    try:
        first = await chunks.__anext__()
    except (ObjectNotFound, StopAsyncIteration):
        raise HTTPException(404, not_found) from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(
        body(), media_type=ref.content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


async def _visible(gateway: Any, item_id: str, access: Access) -> CatalogueRecord:
    """The record, if this user may see it. Someone who may not gets the same 404 as for an
    id that does not exist, so ids cannot be probed."""
    record = await Catalogue(docs=gateway.docs).get(item_id)
    if record is None or not access.may_see_lab_unit(record.lab_unit_id):
        raise HTTPException(404, IMAGE_NOT_FOUND)
    return record


@router.get("/images/{item_id}/clean")
async def clean_image(item_id: str, gateway: GatewayDep, access: AccessDep) -> StreamingResponse:
    return await stream_object(gateway.store, (await _visible(gateway, item_id, access)).clean)


@router.get("/images/{item_id}/thumbnail")
async def thumbnail(item_id: str, gateway: GatewayDep, access: AccessDep) -> StreamingResponse:
    return await stream_object(gateway.store, (await _visible(gateway, item_id, access)).thumbnail)


@router.get("/images/{item_id}/raw")
async def raw_original(item_id: str, gateway: GatewayDep, admin: AdminUser) -> StreamingResponse:
    record = await _visible(gateway, item_id, Access(admin))
    return await stream_object(gateway.store, record.raw)
