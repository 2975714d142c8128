"""The small ports every service talks through; each has an embedded and a distributed adapter.

Streams are async iterators of byte chunks so nothing ever holds a whole file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "ByteStream",
    "Collection",
    "Consumer",
    "Delivery",
    "Documents",
    "DuplicateKey",
    "EventBus",
    "KitError",
    "Message",
    "ObjectNotFound",
    "ObjectStore",
    "StorageFull",
    "StoredObject",
    "Unavailable",
]

ByteStream = AsyncIterator[bytes]
Document = dict[str, Any]


class KitError(Exception):
    """Base of every error an adapter raises on purpose."""


class ObjectNotFound(KitError):
    pass


class DuplicateKey(KitError):
    pass


class Unavailable(KitError):
    """The backend (broker, object store, database) cannot be reached right now. Transient by
    nature: callers retry (the runtime without counting it as a failed attempt) or tell the
    user to try again shortly; nothing half-done is left behind."""


class StorageFull(KitError):
    """The object store has no space left for this write; nothing of it was kept."""


# --- event bus -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Delivery:
    topic: str
    partition: int
    offset: int
    message: Message


class Consumer(Protocol):
    """One member of a consumer group. Commit marks a delivery and all before it as done."""

    async def fetch(self, *, max_records: int = 50, timeout: float = 1.0) -> Sequence[Delivery]:
        ...

    async def commit(self, delivery: Delivery) -> None: ...

    async def close(self) -> None: ...


class EventBus(Protocol):
    async def publish(self, topic: str, message: Message) -> None: ...

    def consumer(self, *, group: str, topics: Sequence[str]) -> Consumer: ...

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        """Create missing topics with the given partition counts."""
        ...

    async def close(self) -> None: ...


# --- object store ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    size: int
    md5: str
    sha256: str
    content_type: str


class ObjectStore(Protocol):
    async def put(
        self, bucket: str, key: str, chunks: ByteStream, *, content_type: str
    ) -> StoredObject:
        """Stream chunks in; size and hashes are computed on the way. Atomic: a failed put
        (including one whose chunk iterator raises) leaves no object behind."""
        ...

    def get(self, bucket: str, key: str) -> ByteStream:
        """Stream an object out; raises ObjectNotFound on first iteration if absent."""
        ...

    async def size(self, bucket: str, key: str) -> int:
        """Raises ObjectNotFound."""
        ...

    async def delete(self, bucket: str, key: str) -> None:
        """Deleting a missing object is not an error."""
        ...

    async def close(self) -> None: ...


# --- documents -------------------------------------------------------------------------------


class Collection(Protocol):
    """Documents keyed by a string `_id`. Filters are equality on (dotted) fields only."""

    async def insert(self, doc: Document) -> None:
        """Raises DuplicateKey when `_id` exists."""
        ...

    async def get(self, doc_id: str) -> Document | None: ...

    async def put(self, doc: Document) -> None:
        """Insert or replace by `_id`."""
        ...

    async def update(
        self,
        doc_id: str,
        *,
        set: Mapping[str, Any] | None = None,
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> Document | None:
        """Atomically set and increment (dotted) fields; returns the document after, or None."""
        ...

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]: ...

    async def count(self, where: Mapping[str, Any] | None = None) -> int: ...

    async def delete(self, doc_id: str) -> bool: ...


class Documents(Protocol):
    def collection(self, name: str) -> Collection: ...

    async def close(self) -> None: ...
