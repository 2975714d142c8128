"""Documents in MongoDB through PyMongo's async API: the distributed `Documents` adapter.

Only the subset of MongoDB that FerretDB v1 also serves is used (plain CRUD, equality filters,
sort/limit, `findAndModify` with ``$set``/``$inc``, `count`); no transactions, change streams,
aggregation stages beyond that, or TTL indexes.

Documents follow the same rules as the SQLite adapter (see `kit.docs_sqlite`): plain JSON with a
string ``_id``; a `datetime` or any other non-JSON value is refused with a `TypeError` before it
reaches the server, so both adapters store and return exactly the same documents. Filters and
updates are checked by the same functions, so a ``$`` operator can never slip in through a
filter value.

Atomicity. MongoDB applies ``$set``/``$inc`` atomically per document. FerretDB v1 (which the
tests run against) does not: it reads the document, applies the operators in Go and writes the
whole document back, so concurrent updates of one document lose increments (measured: 40 tasks
x 5 ``$inc`` gave 20 instead of 200). This adapter therefore also serialises its own
`update`/`put` calls per (collection, ``_id``) with an asyncio lock: exact within one process
on any server, exact across processes on MongoDB, *not* across processes on FerretDB v1.

The client is created in the constructor, which does no I/O; it connects on first use and binds
to the event loop it is first used on (a PyMongo rule), so create one instance per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError, OperationFailure

from kit.docs_sqlite import (
    check_collection_name,
    check_document,
    check_sort,
    check_update,
    check_where,
)
from kit.ports import DuplicateKey

__all__ = ["MongoDocuments"]

Document = dict[str, Any]

# MongoDB error codes TypeMismatch and PathNotViable.
_BAD_UPDATE_CODES = frozenset({14, 28})


class _KeyedLocks:
    """One asyncio lock per key, kept only while someone holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class _MongoCollection:
    def __init__(self, collection: AsyncCollection[Document], locks: _KeyedLocks) -> None:
        self._collection = collection
        self._locks = locks

    def _lock(self, doc_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locks.hold((self._collection.name, doc_id))

    async def insert(self, doc: Document) -> None:
        doc_id = check_document(doc)
        try:
            # A copy: the driver adds fields (like a generated _id) to the dict it is given.
            await self._collection.insert_one(dict(doc))
        except DuplicateKeyError:
            raise DuplicateKey(f"{self._collection.name}/{doc_id}") from None

    async def get(self, doc_id: str) -> Document | None:
        return await self._collection.find_one({"_id": doc_id})

    async def put(self, doc: Document) -> None:
        doc_id = check_document(doc)
        async with self._lock(doc_id):
            await self._collection.replace_one({"_id": doc_id}, dict(doc), upsert=True)

    async def update(
        self,
        doc_id: str,
        *,
        set: Mapping[str, Any] | None = None,
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> Document | None:
        check_update(set, inc)
        change: Document = {}
        if set:
            change["$set"] = dict(set)
        if inc:
            change["$inc"] = dict(inc)
        async with self._lock(doc_id):
            if not change:
                # MongoDB refuses an empty update; "nothing to change" means read (or create).
                if upsert:
                    with contextlib.suppress(DuplicateKeyError):
                        await self._collection.insert_one({"_id": doc_id})
                return await self.get(doc_id)
            try:
                return await self._find_one_and_update(doc_id, change, upsert)
            except DuplicateKeyError:
                if not upsert:
                    raise
                # Two upserts of a new _id raced (other processes) and this one lost the
                # insert; the document exists now, so the same update applies to it.
                return await self._find_one_and_update(doc_id, change, upsert)

    async def _find_one_and_update(
        self, doc_id: str, change: Document, upsert: bool
    ) -> Document | None:
        try:
            return await self._collection.find_one_and_update(
                {"_id": doc_id}, change, upsert=upsert, return_document=ReturnDocument.AFTER
            )
        except OperationFailure as error:
            # $inc of a non-number, or a dotted path through a non-document: the caller's
            # mistake, reported as the SQLite adapter reports it.
            if error.code in _BAD_UPDATE_CODES:
                raise ValueError(f"cannot update {doc_id!r}: {error.details or error}") from None
            raise

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]:
        conditions = check_where(where)
        check_sort(sort, limit)
        order = [(path, ASCENDING if direction == 1 else DESCENDING) for path, direction in sort]
        # Same tie-break as the SQLite adapter, so results come back in one defined order.
        if not any(path == "_id" for path, _ in sort):
            order.append(("_id", ASCENDING))
        cursor = self._collection.find(conditions, sort=order, limit=limit)
        return await cursor.to_list()

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        return await self._collection.count_documents(check_where(where))

    async def delete(self, doc_id: str) -> bool:
        result = await self._collection.delete_one({"_id": doc_id})
        return result.deleted_count > 0


class MongoDocuments:
    """`Documents` in database `database` of the MongoDB (or FerretDB) server at `url`."""

    def __init__(self, *, url: str, database: str) -> None:
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(url)
        self._database = self._client[database]
        self._locks = _KeyedLocks()

    def collection(self, name: str) -> _MongoCollection:
        check_collection_name(name)
        return _MongoCollection(self._database[name], self._locks)

    async def close(self) -> None:
        await self._client.close()
