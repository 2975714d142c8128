"""Zip-extractor wiring: an archive in `raw` becomes one stored entry and one event per file."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Sequence
from pathlib import PurePosixPath
from typing import IO

import magic

from contracts.events import (
    ArchiveEntryExtracted,
    ArchiveExtracted,
    Event,
    RejectedEntry,
    UploadReceived,
)
from contracts.topics import ARCHIVE_ENTRIES, ARCHIVES_EXTRACTED, UPLOADS_RECEIVED
from kit.blobs import RAW, to_ref
from kit.ports import ObjectStore
from kit.runtime import Emit, Route, emit_status

__all__ = ["NAME", "classify", "extract_archive", "routes"]

NAME = "zip-extractor"
CHUNK = 1024 * 1024
MAX_ENTRY_BYTES = 512 * 1024 * 1024
MAX_RATIO = 200  # uncompressed/compressed beyond this is treated as a zip bomb
_KINDS = {
    "image/jpeg": "image",
    "image/png": "image",
    "application/pdf": "pdf",
    "application/dicom": "dicom",
}


def classify(head: bytes) -> tuple[str, str]:
    """(entry kind, MIME) from the first bytes, never from the name."""
    if len(head) > 132 and head[128:132] == b"DICM":
        return "dicom", "application/dicom"
    mime = magic.from_buffer(head, mime=True)
    return _KINDS.get(mime, "other"), mime


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    path = PurePosixPath(info.filename.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        return "Unsafe path in archive"
    if info.flag_bits & 0x1:
        return "Encrypted entry in archive"
    if info.file_size > MAX_ENTRY_BYTES:
        return "Archive entry too large"
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO:
        return "Suspicious compression ratio (possible zip bomb)"
    return None


async def _download(store: ObjectStore, bucket: str, key: str, into: IO[bytes]) -> None:
    async for chunk in store.get(bucket, key):
        await asyncio.to_thread(into.write, chunk)
    await asyncio.to_thread(into.flush)


async def _entry_chunks(handle: IO[bytes], first: bytes) -> AsyncIterator[bytes]:
    if first:
        yield first
    while chunk := await asyncio.to_thread(handle.read, CHUNK):
        yield chunk


async def extract_archive(event: UploadReceived, *, store: ObjectStore) -> Sequence[Emit]:
    emits: list[Emit] = []
    rejected: list[RejectedEntry] = []
    fd, tmp = tempfile.mkstemp(prefix="archive-", suffix=".zip")
    try:
        with os.fdopen(fd, "w+b") as spool:
            await _download(store, event.object.bucket, event.object.key, spool)
            spool.seek(0)
            try:
                archive = zipfile.ZipFile(spool)
            except zipfile.BadZipFile:
                return [
                    emit_status(
                        event,
                        item_id=event.item_id,
                        status="error",
                        service=NAME,
                        reason="Invalid ZIP archive",
                    )
                ]
            with archive:
                entries = [i for i in archive.infolist() if not i.is_dir()]
                for index, info in enumerate(entries):
                    if reason := unsafe_reason(info):
                        rejected.append(RejectedEntry(entry_index=index, reason=reason))
                        continue
                    child = uuid.uuid4().hex
                    with archive.open(info) as handle:
                        head = await asyncio.to_thread(handle.read, 2048)
                        kind, mime = classify(head)
                        stored = await store.put(
                            # Every item's raw bytes live at {job}/{item}, children too.
                            RAW,
                            f"{event.job_id}/{child}",
                            _entry_chunks(handle, head),
                            content_type=mime,
                        )
                    emits.append(
                        emit_status(
                            event,
                            item_id=child,
                            status="queued",
                            service=NAME,
                            parent_item_id=event.item_id,
                        )
                    )
                    if kind == "other":
                        emits.append(
                            emit_status(
                                event,
                                item_id=child,
                                status="error",
                                service=NAME,
                                parent_item_id=event.item_id,
                                reason=f"Unsupported file type in archive: {mime}",
                            )
                        )
                        continue
                    emits.append(
                        Emit(
                            ARCHIVE_ENTRIES,
                            ArchiveEntryExtracted(
                                job_id=event.job_id,
                                archive_item_id=event.item_id,
                                item_id=child,
                                entry_index=index,
                                entry_kind=kind,  # type: ignore[arg-type]
                                layout="generic",
                                object=to_ref(stored),
                                uploader_id=event.uploader_id,
                                metadata=event.metadata,
                            ),
                            key=child,
                        )
                    )
    finally:
        os.unlink(tmp)
    emits.append(
        Emit(
            ARCHIVES_EXTRACTED,
            ArchiveExtracted(
                job_id=event.job_id,
                item_id=event.item_id,
                layout="generic",
                entry_count=len(entries),
                rejected=tuple(rejected),
            ),
            key=event.item_id,
        )
    )
    emits.append(emit_status(event, item_id=event.item_id, status="completed", service=NAME))
    return emits


def _archive_item(event: Event) -> str | None:
    return event.item_id if isinstance(event, UploadReceived) and event.kind == "archive" else None


def routes(*, store: ObjectStore) -> dict[str, Route]:
    async def on_upload(event: Event) -> Sequence[Emit]:
        if not isinstance(event, UploadReceived) or event.kind != "archive":
            return ()
        return await extract_archive(event, store=store)

    return {UPLOADS_RECEIVED: Route(on_upload, starts_item=_archive_item)}
