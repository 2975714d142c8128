"""The small ports every service talks through; each has an embedded and a distributed adapter.

Streams are async iterators of byte chunks so nothing ever holds a whole file.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol

__all__ = [
    "AnyOf",
    "ByteStream",
    "Collection",
    "Consumer",
    "Delivery",
    "Documents",
    "DuplicateKey",
    "EventBus",
    "Index",
    "KitError",
    "ListedObject",
    "MalwareScanner",
    "Message",
    "NoScanner",
    "ObjectNotFound",
    "ObjectStore",
    "PruneResult",
    "Range",
    "RetentionPolicy",
    "Scalar",
    "ScanFailed",
    "ScanStream",
    "ScanVerdict",
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
    """One member of a consumer group. Commit marks a delivery and all before it as done.
    Fetch and commit raise Unavailable when the bus cannot be reached within a bounded time."""

    async def fetch(self, *, max_records: int = 50, timeout: float = 1.0) -> Sequence[Delivery]: ...

    async def commit(self, delivery: Delivery) -> None: ...

    async def close(self) -> None: ...


_DEAD_LETTER_SUFFIX = ".dlq"  # contracts.topics.dead_letter(topic) == topic + ".dlq"


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each topic keeps its records, in hours; None keeps them forever.

    At ~6 KB of event log per uploaded image, 10,000 images a day grow the log by ~22 GB a
    year when nothing is pruned; a week (the default, Kafka's own default too) is ~0.4 GB and
    is longer than any outage a service is expected to catch up on. Dead-letter topics are
    the "never lose a file" safety net, so they are kept forever unless `dead_letter_hours`
    says otherwise. An entry in `overrides` (exact topic name) wins over both.
    """

    default_hours: float | None = 168.0
    dead_letter_hours: float | None = None
    overrides: Mapping[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        hours = [
            ("default_hours", self.default_hours),
            ("dead_letter_hours", self.dead_letter_hours),
        ]
        hours += [(f"overrides[{topic!r}]", value) for topic, value in self.overrides.items()]
        for name, value in hours:
            if value is not None and not value > 0:
                raise ValueError(f"retention {name} must be > 0 hours or None, got {value}")
        # Frozen all the way down: nobody changes a policy an adapter already holds.
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))

    def hours_for(self, topic: str) -> float | None:
        """The retention of `topic` in hours, None for forever."""
        if topic in self.overrides:
            return self.overrides[topic]
        if topic.endswith(_DEAD_LETTER_SUFFIX):
            return self.dead_letter_hours
        return self.default_hours

    def seconds_for(self, topic: str) -> float | None:
        hours = self.hours_for(topic)
        return None if hours is None else hours * 3600.0


@dataclass(frozen=True)
class PruneResult:
    """What one `EventBus.prune` did. `held` counts records past their retention that were
    kept because a consumer group (`held_by`) has not committed past them yet."""

    deleted: int = 0
    held: int = 0
    held_by: tuple[str, ...] = ()
    reclaimed_bytes: int = 0


class EventBus(Protocol):
    async def publish(self, topic: str, message: Message) -> None:
        """Raises Unavailable when the bus cannot take the message within a bounded time."""
        ...

    def consumer(self, *, group: str, topics: Sequence[str]) -> Consumer: ...

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        """Create missing topics with the given partition counts and apply the bus's
        retention policy to them (also to topics that already exist)."""
        ...

    async def prune(self) -> PruneResult:
        """Apply the retention policy now: delete records older than their topic's retention
        that every consumer group of that partition has committed past, give the space back.
        Call it periodically; where the broker applies retention itself it does nothing."""
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


@dataclass(frozen=True)
class ListedObject:
    """One complete object as `ObjectStore.list` reports it. `modified` is when it was last
    written, a timezone-aware datetime in UTC (S3 keeps it to the millisecond)."""

    key: str
    size: int
    modified: datetime


class ObjectStore(Protocol):
    """Every method raises Unavailable when the store cannot be reached within a bounded time,
    and a put raises StorageFull when the store has no room for it; either way a failed put
    leaves nothing behind."""

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

    def list(self, bucket: str, prefix: str = "") -> AsyncIterator[ListedObject]:
        """Stream the complete objects whose key starts with `prefix`, in key order (UTF-8
        byte order, as S3 lists), a page or a directory at a time, never all in memory.
        Writes still under way are not listed. A missing bucket lists nothing."""
        ...

    async def discard_incomplete(
        self, *, older_than_seconds: float, buckets: Sequence[str] | None = None
    ) -> int:
        """Remove this adapter's own leftovers of writes that never finished (a crashed put's
        temporary file and empty directories; an S3 multipart upload never completed) when
        nothing has been written to them for `older_than_seconds`; returns how many writes
        were discarded. `buckets` limits it to those (default: every bucket the store can
        see, which on a shared S3 server includes other applications' buckets)."""
        ...

    async def close(self) -> None: ...


# --- documents -------------------------------------------------------------------------------

Scalar = str | int | float | bool | None
"""A JSON value that is not a container: what `AnyOf` lists and `Collection.count_by` keys by."""


@dataclass(frozen=True)
class Range:
    """A filter value: the field lies between bounds, ``Range(gte="2026-01-01", lt="2026-02-01")``.

    Bounds are all strings (compared lexicographically, by code point: ISO-8601 instants in UTC
    sort chronologically) or all numbers (compared by value, ``1 == 1.0``); at most one lower
    (`gt` or `gte`) and one upper (`lt` or `lte`) bound. Only values of the bounds' kind match:
    a missing field, null, a boolean, a document or a value of the other kind never does.
    """

    gt: str | int | float | None = None
    gte: str | int | float | None = None
    lt: str | int | float | None = None
    lte: str | int | float | None = None

    def __post_init__(self) -> None:
        if self.gt is not None and self.gte is not None:
            raise ValueError("a Range takes gt or gte, not both")
        if self.lt is not None and self.lte is not None:
            raise ValueError("a Range takes lt or lte, not both")
        bounds = [b for b in (self.gt, self.gte, self.lt, self.lte) if b is not None]
        if not bounds:
            raise ValueError("a Range needs at least one bound (gt, gte, lt or lte)")
        for bound in bounds:
            if isinstance(bound, bool) or not isinstance(bound, (str, int, float)):
                raise TypeError(f"Range bounds are str, int or float, not {bound!r}")
        if len({isinstance(bound, str) for bound in bounds}) > 1:
            raise TypeError(f"Range bounds are all strings or all numbers, not {bounds!r}")

    def bounds(self) -> list[tuple[str, str | int | float]]:
        """The bounds given, as (operator name, value): ``[("gte", "2026-01-01"), ...]``."""
        named = (("gt", self.gt), ("gte", self.gte), ("lt", self.lt), ("lte", self.lte))
        return [(name, value) for name, value in named if value is not None]


@dataclass(frozen=True)
class AnyOf:
    """A filter value: the field equals one of `values` (each by the rules of equality, so a
    field holding an array matches when it contains one of them). ``AnyOf([])`` matches
    nothing. `values` are kept as a tuple."""

    values: Sequence[Scalar]

    def __post_init__(self) -> None:
        if isinstance(self.values, (str, bytes, Mapping)):
            raise TypeError(f"AnyOf takes a sequence of values, not {self.values!r}")
        values = tuple(self.values)
        for value in values:
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise TypeError(f"AnyOf values are str, int, float, bool or None, not {value!r}")
        object.__setattr__(self, "values", values)


@dataclass(frozen=True)
class Index:
    """A secondary index of one collection: `fields` are (dotted path, 1 ascending or -1
    descending), in order. An index serves filters on its leading fields and a sort by its
    fields in the directions given (ties are broken by ``_id`` ascending, which adapters add
    to non-unique indexes). `unique` refuses, with DuplicateKey, a second document with the
    same values (documents lacking the fields are not checked alike by every backend)."""

    fields: Sequence[tuple[str, int]]
    unique: bool = False

    def __post_init__(self) -> None:
        fields = tuple((path, direction) for path, direction in self.fields)
        if not fields:
            raise ValueError("an Index needs at least one field")
        for path, direction in fields:
            if isinstance(direction, bool) or direction not in (1, -1):
                raise ValueError(f"index direction for {path!r} must be 1 or -1, not {direction!r}")
        if len({path for path, _ in fields}) != len(fields):
            raise ValueError(f"an Index names each field once, not {fields!r}")
        object.__setattr__(self, "fields", fields)


class Collection(Protocol):
    """Documents keyed by a string `_id`. A filter (`where`) maps (dotted) fields to what they
    must hold: a JSON value (equality), a `Range` or an `AnyOf`; all must hold. The shared
    semantics are in `kit.docs_sqlite`'s docstring. Every method of a networked adapter raises
    Unavailable when the backend cannot be reached within a bounded time."""

    async def insert(self, doc: Document) -> None:
        """Raises DuplicateKey when `_id` (or the values of a unique index) exists."""
        ...

    async def get(self, doc_id: str) -> Document | None: ...

    async def put(self, doc: Document) -> None:
        """Insert or replace by `_id`; raises DuplicateKey when a unique index refuses it."""
        ...

    async def put_many(self, docs: Sequence[Document]) -> None:
        """`put` each document, in one round trip (bulk imports, seeding). All documents are
        checked before any is written; a DuplicateKey from a unique index may leave the ones
        before it written (MongoDB's bulk writes are not transactions)."""
        ...

    async def update(
        self,
        doc_id: str,
        *,
        set: Mapping[str, Any] | None = None,
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> Document | None:
        """Atomically set and increment (dotted) fields; returns the document after, or None.
        Raises DuplicateKey when a unique index refuses the result."""
        ...

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
        skip: int = 0,
    ) -> list[Document]:
        """Matching documents in `sort` order (ties by ``_id``), the first `skip` left out, at
        most `limit` (0: all) of them."""
        ...

    async def count(self, where: Mapping[str, Any] | None = None) -> int: ...

    async def count_by(
        self, field: str, where: Mapping[str, Any] | None = None
    ) -> dict[Scalar, int]:
        """How many matching documents hold each value of `field` (None: null or missing).
        Raises ValueError when a matching document holds an array or a document there."""
        ...

    async def delete(self, doc_id: str) -> bool: ...

    async def delete_many(self, where: Mapping[str, Any]) -> int:
        """Delete every matching document (``{}``: all of the collection); returns how many."""
        ...


class Documents(Protocol):
    def collection(self, name: str) -> Collection: ...

    async def ensure_indexes(self, collection: str, indexes: Sequence[Index]) -> None:
        """Create the missing ones of `indexes` on `collection` (cheap when they all exist; the
        first creation reads the whole collection). Raises DuplicateKey when existing
        documents break a unique one."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ScanVerdict:
    """What a malware scanner found in one stream of bytes."""

    infected: bool
    signature: str | None = None  # the scanner's name for what it found


class ScanStream(Protocol):
    """One stream being scanned: fed chunk by chunk while the bytes go elsewhere too (so a
    file is scanned as it is stored, never held whole)."""

    async def feed(self, chunk: bytes) -> None: ...

    async def verdict(self) -> ScanVerdict:
        """Ends the stream and answers. Raises `Unavailable` when the scanner cannot be
        reached or gives up (the caller retries later; nothing is assumed clean)."""
        ...


class MalwareScanner(Protocol):
    """A virus scanner (ClamAV's clamd in production, `kit.scanner_clamd`)."""

    def stream(self) -> contextlib.AbstractAsyncContextManager[ScanStream]: ...

    async def close(self) -> None: ...


class _Unscanned:
    async def feed(self, chunk: bytes) -> None:
        return None

    async def verdict(self) -> ScanVerdict:
        return ScanVerdict(infected=False)


class NoScanner:
    """No scanner configured: every stream passes (the structural checks of the archive
    reader still apply)."""

    @contextlib.asynccontextmanager
    async def stream(self) -> AsyncIterator[ScanStream]:
        yield _Unscanned()

    async def close(self) -> None:
        return None


class ScanFailed(KitError):
    """The scanner could not scan this stream and never will (it refused it: longer than the
    scanner accepts, or an error it reports about these bytes). Not transient, unlike
    `Unavailable`: the bytes were not scanned, so they must not be treated as clean."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
