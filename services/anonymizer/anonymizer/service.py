"""Anonymizer wiring: raw image in, clean image and thumbnail out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from anonymizer.fundus import UnreadableImage, anonymize_fundus
from contracts.events import (
    ArchiveEntryExtracted,
    EncounterRef,
    Event,
    ImageAnonymized,
    ObjectRef,
    UploadMetadata,
    UploadReceived,
)
from contracts.topics import ANONYMIZED_IMAGES, ARCHIVE_ENTRIES, UPLOADS_RECEIVED
from kit.blobs import CLEAN, ObjectTooLarge, put_bytes, read_bounded, to_ref
from kit.ports import ObjectStore
from kit.runtime import Emit, Route, emit_status

__all__ = ["MAX_IMAGE_BYTES", "NAME", "anonymize_image", "routes"]

NAME = "anonymizer"
# Larger than any camera's photo; protects the worker's memory from a hostile upload.
MAX_IMAGE_BYTES = 64 * 1024 * 1024
_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}


async def anonymize_image(
    event: Event,
    *,
    item_id: str,
    source: ObjectRef,
    uploader_id: str,
    metadata: UploadMetadata | None,
    store: ObjectStore,
    encounter: EncounterRef | None = None,
    captured_at: str | None = None,
) -> Sequence[Emit]:
    """Anonymize one image (`source`) into the clean bucket with its thumbnail; announce it
    with its perceptual hash and flags, and the `encounter` and `captured_at` an archive entry
    came with (None for a direct upload)."""
    try:
        data = await read_bounded(store, source, limit=MAX_IMAGE_BYTES)
        # CPU-bound; Pillow and numpy release the GIL, so other services keep going.
        clean = await asyncio.to_thread(anonymize_fundus, data, output_format="auto")
    except ObjectTooLarge:
        return [
            emit_status(
                event,
                item_id=item_id,
                status="error",
                service=NAME,
                reason="Image too large to anonymize (max 64MB)",
            )
        ]
    except UnreadableImage as exc:
        return [emit_status(event, item_id=item_id, status="error", service=NAME, reason=str(exc))]
    ext = _EXTENSIONS.get(clean.content_type, "jpg")
    stem = f"{event.job_id}/{item_id}"
    image = await put_bytes(
        store, CLEAN, f"{stem}.{ext}", clean.image, content_type=clean.content_type
    )
    thumb = await put_bytes(
        store, CLEAN, f"{stem}.thumb.jpg", clean.thumbnail, content_type="image/jpeg"
    )
    return [
        Emit(
            ANONYMIZED_IMAGES,
            ImageAnonymized(
                job_id=event.job_id,
                item_id=item_id,
                uploader_id=uploader_id,
                source=source,
                clean=to_ref(image),
                thumbnail=to_ref(thumb),
                width=clean.width,
                height=clean.height,
                masked=clean.masked,
                review_reason=clean.review_reason,
                metadata=metadata,
                encounter=encounter,
                captured_at=captured_at,
                phash=clean.phash,
                flags=clean.flags,
            ),
            key=item_id,
        )
    ]


def _image_item(event: Event) -> str | None:
    """The item an event asks to anonymize: a directly uploaded image or an archive's image."""
    if isinstance(event, UploadReceived) and event.kind == "image":
        return event.item_id
    if isinstance(event, ArchiveEntryExtracted) and event.entry_kind == "image":
        return event.item_id
    return None


def routes(*, store: ObjectStore) -> dict[str, Route]:
    async def on_image(event: Event) -> Sequence[Emit]:
        if _image_item(event) is None:
            return ()
        assert isinstance(event, UploadReceived | ArchiveEntryExtracted)
        entry = event if isinstance(event, ArchiveEntryExtracted) else None
        return await anonymize_image(
            event,
            item_id=event.item_id,
            source=event.object,
            uploader_id=event.uploader_id,
            metadata=event.metadata,
            store=store,
            encounter=entry.encounter if entry is not None else None,
            captured_at=entry.captured_at if entry is not None else None,
        )

    route = Route(on_image, starts_item=_image_item)
    return {UPLOADS_RECEIVED: route, ARCHIVE_ENTRIES: route}
