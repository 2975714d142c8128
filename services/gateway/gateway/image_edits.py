"""Image editing of an upload (the fundus help's "Edit Image"): rotate, flip, crop, brightness
and contrast, saved as an edited version beside the clean original (never overwritten), with
its own thumbnail; `revert` goes back to the original. Not for pre-graded uploads."""

from __future__ import annotations

import asyncio
import io
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from PIL import Image, ImageEnhance, ImageOps
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.catalogue import IMAGE_NOT_FOUND, stream_object
from gateway.deps import AccessDep, CurrentUser, GatewayDep, client_address
from ingest.read_model import Catalogue, CatalogueRecord
from ingest.upload_history import FieldChange, UploadChange, UploadHistory
from kit.blobs import CLEAN, put_bytes, read_bounded, to_ref

__all__ = ["PRE_GRADED_LOCKED", "ImageEdit", "apply_edit", "router"]

router = APIRouter(prefix="/api")
PRE_GRADED_LOCKED = "Image editing is disabled for pre-graded uploads"
NOTHING_TO_DO = "Choose at least one edit: rotate, flip, crop, brightness, contrast or revert"
MAX_IMAGE_BYTES = 64 * 1024 * 1024
THUMBNAIL_SIDE = 256


class Crop(BaseModel):
    """A rectangle in fractions of the picture (0-1), so it does not depend on its size."""

    model_config = ConfigDict(extra="forbid")

    x: float = Field(ge=0, lt=1)
    y: float = Field(ge=0, lt=1)
    width: float = Field(gt=0, le=1)
    height: float = Field(gt=0, le=1)

    @model_validator(mode="after")
    def _inside(self) -> Crop:
        if self.x + self.width > 1.0001 or self.y + self.height > 1.0001:
            raise ValueError("the crop must lie inside the picture")
        return self


class ImageEdit(BaseModel):
    """One edit, applied to the current version (the edited one if there is one): crop, then
    rotate (clockwise), flip, brightness and contrast (1 leaves them as they are)."""

    model_config = ConfigDict(extra="forbid")

    rotate: Literal[0, 90, 180, 270] = 0
    flip: Literal["horizontal", "vertical"] | None = None
    crop: Crop | None = None
    brightness: float = Field(default=1.0, ge=0.2, le=3.0)
    contrast: float = Field(default=1.0, ge=0.2, le=3.0)
    revert: bool = False

    @property
    def changes_nothing(self) -> bool:
        return (
            not self.revert
            and self.rotate == 0
            and self.flip is None
            and self.crop is None
            and self.brightness == 1.0
            and self.contrast == 1.0
        )


def apply_edit(data: bytes, edit: ImageEdit) -> tuple[bytes, bytes, tuple[int, int]]:
    """(edited JPEG, its thumbnail, its size): pure, bytes in and bytes out."""
    with Image.open(io.BytesIO(data)) as opened:
        image = opened.convert("RGB")
    if edit.crop is not None:
        w, h = image.size
        c = edit.crop
        box = (
            round(c.x * w),
            round(c.y * h),
            round((c.x + c.width) * w),
            round((c.y + c.height) * h),
        )
        image = image.crop(box)
    if edit.rotate:
        image = image.rotate(-edit.rotate, expand=True)
    if edit.flip == "horizontal":
        image = ImageOps.mirror(image)
    elif edit.flip == "vertical":
        image = ImageOps.flip(image)
    if edit.brightness != 1.0:
        image = ImageEnhance.Brightness(image).enhance(edit.brightness)
    if edit.contrast != 1.0:
        image = ImageEnhance.Contrast(image).enhance(edit.contrast)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92)
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    thumb_out = io.BytesIO()
    thumb.save(thumb_out, "JPEG", quality=85)
    return out.getvalue(), thumb_out.getvalue(), image.size


async def _editable(gateway: Any, item_id: str, access: Any) -> CatalogueRecord:
    record = await Catalogue(docs=gateway.docs).get(item_id)
    if record is None or not access.may_see_lab_unit(record.lab_unit_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Upload not found")
    return record


def _answer(record: CatalogueRecord, version: int) -> dict[str, Any]:
    return {
        "id": record.item_id,
        "edited": version > 0,
        "edit_version": version,
        "image_url": f"/api/images/{record.item_id}/clean",
        "edited_url": f"/api/images/{record.item_id}/edited?v={version}" if version else None,
        "edited_thumbnail_url": (
            f"/api/images/{record.item_id}/edited-thumbnail?v={version}" if version else None
        ),
    }


@router.post("/uploads/{item_id}/image-edits")
async def edit_image(
    item_id: str,
    edit: ImageEdit,
    request: Request,
    gateway: GatewayDep,
    access: AccessDep,
    user: CurrentUser,
) -> dict[str, Any]:
    """Edit the picture (or `revert` to the original). The clean original stays as it is."""
    record = await _editable(gateway, item_id, access)
    if record.pre_graded:
        raise HTTPException(status.HTTP_409_CONFLICT, PRE_GRADED_LOCKED)
    if edit.changes_nothing:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, NOTHING_TO_DO)
    catalogue = Catalogue(docs=gateway.docs)
    old_version = record.edit_version if record.edited else 0
    stale = [ref for ref in (record.edited, record.edited_thumbnail) if ref is not None]
    if edit.revert:
        new_version = 0
        await catalogue.set_edited(
            item_id, edited=None, thumbnail=None, version=record.edit_version
        )
    else:
        source = record.edited or record.clean  # edits add up, like the page's buttons
        data = await read_bounded(gateway.store, source, limit=MAX_IMAGE_BYTES)
        image, thumb, _ = await asyncio.to_thread(apply_edit, data, edit)
        new_version = record.edit_version + 1
        stem = f"{record.job_id}/{record.item_id}.edited-{new_version}"
        kept = await put_bytes(
            gateway.store, CLEAN, f"{stem}.jpg", image, content_type="image/jpeg"
        )
        small = await put_bytes(
            gateway.store, CLEAN, f"{stem}.thumb.jpg", thumb, content_type="image/jpeg"
        )
        await catalogue.set_edited(
            item_id, edited=to_ref(kept), thumbnail=to_ref(small), version=new_version
        )
    for ref in stale:  # the previous edited version, now replaced or reverted
        await gateway.store.delete(ref.bucket, ref.key)
    summary = edit.model_dump(exclude_defaults=True, mode="json")
    await UploadHistory(docs=gateway.docs).record(
        UploadChange(
            item_id=record.item_id,
            job_id=record.job_id,
            actor=user.username,
            ip=client_address(request),
            user_agent=(request.headers.get("user-agent") or "")[:300] or None,
            kind="image",
            changes={"image": FieldChange(old=f"version {old_version}", new=summary)},
            announced=True,  # the picture's pixels are nobody else's news; metadata is
        )
    )
    await gateway.audit_request(
        request, "upload.image_edited", actor=user.username, subject=item_id, edit=summary
    )
    return _answer(record, new_version)


async def _edited(gateway: Any, item_id: str, access: Any, *, thumbnail: bool) -> StreamingResponse:
    record = await _editable(gateway, item_id, access)
    ref = record.edited_thumbnail if thumbnail else record.edited
    if ref is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, IMAGE_NOT_FOUND)
    return await stream_object(gateway.store, ref)


@router.get("/images/{item_id}/edited")
async def edited_image(item_id: str, gateway: GatewayDep, access: AccessDep) -> StreamingResponse:
    return await _edited(gateway, item_id, access, thumbnail=False)


@router.get("/images/{item_id}/edited-thumbnail")
async def edited_thumbnail(
    item_id: str, gateway: GatewayDep, access: AccessDep
) -> StreamingResponse:
    return await _edited(gateway, item_id, access, thumbnail=True)
