"""The grading queue and the images behind it: clean pictures for signed-in users, the raw
original (which may carry PHI) for admins only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from gateway.deps import AdminUser, CurrentUser, GatewayDep
from kit.ports import ObjectNotFound

__all__ = ["router"]

router = APIRouter(prefix="/api")
CATALOGUE, QUEUE = "uploads", "grading_queue"


def _entry(record: dict[str, Any], queued: dict[str, Any]) -> dict[str, Any]:
    item_id = record["item_id"]
    return {
        "id": item_id,
        "job_id": record["job_id"],
        "hospital_id": record.get("hospital_id"),
        "lab_unit_id": record.get("lab_unit_id"),
        "camera_id": record.get("camera_id"),
        "disease_id": record.get("disease_id"),
        "area_id": record.get("area_id"),
        "mydriatic": record.get("mydriatic"),
        "width": record.get("width"),
        "height": record.get("height"),
        "uploader": record.get("uploader_id"),
        "pre_graded": record.get("pre_graded", False),
        "needs_review": record.get("needs_review", False),
        "review_reason": record.get("review_reason"),
        "queued_at": queued.get("queued_at"),
        "image_url": f"/api/images/{item_id}/clean",
        "thumbnail_url": f"/api/images/{item_id}/thumbnail",
    }


@router.get("/grading/queue")
async def grading_queue(
    gateway: GatewayDep,
    user: CurrentUser,
    disease: str | None = None,
    hospital: str | None = None,
    lab_unit: str | None = None,
    limit: int = 100,
) -> dict[str, Any]:
    where: dict[str, Any] = {"graded": False}
    for field, value in (("disease_id", disease), ("hospital_id", hospital),
                         ("lab_unit_id", lab_unit)):
        if value:
            where[field] = value
    queued = await gateway.docs.collection(QUEUE).find(
        where, sort=[("queued_at", 1)], limit=max(1, min(limit, 500))
    )
    catalogue = gateway.docs.collection(CATALOGUE)
    entries = []
    for entry in queued:
        record = await catalogue.get(entry["record_id"])
        if record is not None:
            entries.append(_entry(record, entry))
    return {"count": len(entries), "items": entries}


async def _stream(gateway: Any, ref: dict[str, Any]) -> StreamingResponse:
    chunks = gateway.store.get(ref["bucket"], ref["key"])
    try:
        first = await chunks.__anext__()
    except (ObjectNotFound, StopAsyncIteration):
        raise HTTPException(404, "Image not found") from None

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:
            yield chunk

    return StreamingResponse(body(), media_type=ref["content_type"],
                             headers={"Cache-Control": "private, max-age=3600"})


async def _record(gateway: Any, item_id: str) -> dict[str, Any]:
    record: dict[str, Any] | None = await gateway.docs.collection(CATALOGUE).get(item_id)
    if record is None:
        raise HTTPException(404, "Image not found")
    return record


@router.get("/images/{item_id}/clean")
async def clean_image(item_id: str, gateway: GatewayDep, user: CurrentUser
                      ) -> StreamingResponse:
    return await _stream(gateway, (await _record(gateway, item_id))["clean"])


@router.get("/images/{item_id}/thumbnail")
async def thumbnail(item_id: str, gateway: GatewayDep, user: CurrentUser) -> StreamingResponse:
    return await _stream(gateway, (await _record(gateway, item_id))["thumbnail"])


@router.get("/images/{item_id}/raw")
async def raw_original(item_id: str, gateway: GatewayDep, user: AdminUser) -> StreamingResponse:
    return await _stream(gateway, (await _record(gateway, item_id))["raw"])
