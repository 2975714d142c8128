"""Small helpers over the ObjectStore port for handlers that work on whole (bounded) files."""

from __future__ import annotations

from collections.abc import AsyncIterator

from contracts.events import ObjectRef
from kit.ports import ObjectStore, StoredObject

__all__ = [
    "CLEAN",
    "RAW",
    "REPORTS",
    "SCANS",
    "ObjectTooLarge",
    "put_bytes",
    "read_bounded",
    "to_ref",
]

# Bucket names (DESIGN.md, Words).
RAW, CLEAN, REPORTS, SCANS = "raw", "clean", "reports", "scans"


class ObjectTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"object of {size} bytes exceeds the {limit}-byte limit")
        self.size, self.limit = size, limit


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def put_bytes(
    store: ObjectStore, bucket: str, key: str, data: bytes, *, content_type: str
) -> StoredObject:
    return await store.put(bucket, key, _once(data), content_type=content_type)


async def read_bounded(store: ObjectStore, ref: ObjectRef, *, limit: int) -> bytes:
    """Read a whole object, refusing (before reading) one larger than `limit` bytes."""
    size = await store.size(ref.bucket, ref.key)
    if size > limit:
        raise ObjectTooLarge(size, limit)
    parts = [chunk async for chunk in store.get(ref.bucket, ref.key)]
    return b"".join(parts)


def to_ref(stored: StoredObject) -> ObjectRef:
    return ObjectRef(
        bucket=stored.bucket,
        key=stored.key,
        size=stored.size,
        md5=stored.md5,
        sha256=stored.sha256,
        content_type=stored.content_type,
    )
