"""Documents in MongoDB through PyMongo's async API: the distributed `Documents` adapter.

Only the subset of MongoDB that FerretDB v1 also serves is used: plain CRUD, filters with
equality, ``$gt``/``$gte``/``$lt``/``$lte`` and ``$in``, sort/skip/limit, `findAndModify` with
``$set``/``$inc``, `count_documents`, `createIndexes` (plain and unique), and `aggregate` with
``$match`` + ``$group`` summing 1; no transactions, change streams, other aggregation stages or
operators, or TTL indexes.

Documents follow the same rules as the SQLite adapter (see `kit.docs_sqlite`, whose docstring
states the shared query semantics): plain JSON with a string ``_id``; a `datetime` or any other
non-JSON value is refused with a `TypeError` before it reaches the server, so both adapters
store and return exactly the same documents. Filters and updates are checked by the same
functions, so a ``$`` operator can never slip in through a filter value; `Range` and `AnyOf`
become ``$gt``... and ``$in`` here.

Atomicity. MongoDB applies ``$set``/``$inc`` atomically per document. FerretDB v1 (which the
tests run against) does not: it reads the document, applies the operators in Go and writes the
whole document back, so concurrent updates of one document lose increments (measured: 40 tasks
x 5 ``$inc`` gave 20 instead of 200). This adapter therefore also serialises its own
`update`/`put` calls per (collection, ``_id``) with an asyncio lock: exact within one process
on any server, exact across processes on MongoDB, *not* across processes on FerretDB v1.

Unavailability. Every PyMongo `ConnectionFailure` (server selection timeout, lost connection,
network timeout, ...) is raised as `kit.ports.Unavailable`. PyMongo waits 30 s for a server by
default; this adapter waits `server_selection_timeout` (5 s unless told otherwise), so a caller
learns quickly that the database is down and can tell its user, or retry, instead of hanging.

The client is created in the constructor, which does no I/O; it connects on first use and binds
to the event loop it is first used on (a PyMongo rule), so create one instance per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from pymongo import (
    ASCENDING,
    DESCENDING,
    AsyncMongoClient,
    IndexModel,
    ReplaceOne,
    ReturnDocument,
)
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
)

from kit.docs_sqlite import (
    check_collection_name,
    check_delete_filter,
    check_document,
    check_field,
    check_indexes,
    check_sort,
    check_update,
    check_where,
)
from kit.ports import AnyOf, DuplicateKey, Index, Range, Scalar, Unavailable

__all__ = ["MongoDocuments"]

Document = dict[str, Any]

# MongoDB error codes TypeMismatch and PathNotViable.
_BAD_UPDATE_CODES = frozenset({14, 28})
_DUPLICATE_KEY_CODE = 11000
_DEFAULT_SERVER_SELECTION_TIMEOUT = 5.0


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    """Raise PyMongo's connection errors (AutoReconnect, NetworkTimeout, server selection
    timeout, ... all `ConnectionFailure`s) as the port's `Unavailable`."""
    try:
        yield
    except ConnectionFailure as error:
        raise Unavailable(f"MongoDB cannot be reached: {error}") from error


def _is_duplicate(error: OperationFailure) -> bool:
    if isinstance(error, DuplicateKeyError):
        return True
    return _is_duplicate_code(error.code, str(error))


def _is_duplicate_code(code: object, message: object) -> bool:
    # FerretDB v1 reports a unique index refusing a replace or findAndModify as code 1
    # (InternalError) "... UNIQUE constraint failed: index ..."; an insert gets 11000.
    return code == _DUPLICATE_KEY_CODE or (code == 1 and "UNIQUE constraint failed" in str(message))


def _query(where: Mapping[str, Any] | None) -> Document:
    """A checked filter in MongoDB's terms."""
    query: Document = {}
    for path, value in check_where(where).items():
        if isinstance(value, Range):
            query[path] = {f"${name}": bound for name, bound in value.bounds()}
        elif isinstance(value, AnyOf):
            query[path] = {"$in": list(value.values)}
        else:
            query[path] = value
    return query


def _keys(index: Index) -> list[tuple[str, int]]:
    keys = [(path, ASCENDING if direction == 1 else DESCENDING) for path, direction in index.fields]
    if not index.unique and all(path != "_id" for path, _ in index.fields):
        # As in the SQLite adapter: every sort ends with the tie-break _id ascending, which
        # the index then serves too.
        keys.append(("_id", ASCENDING))
    return keys


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

    def _refused(self, doc_id: str) -> DuplicateKey:
        return DuplicateKey(f"{self._collection.name}/{doc_id}: a unique index refuses it")

    async def insert(self, doc: Document) -> None:
        doc_id = check_document(doc)
        with _reachable():
            try:
                # A copy: the driver adds fields (like a generated _id) to the dict it is given.
                await self._collection.insert_one(dict(doc))
            except DuplicateKeyError:
                raise DuplicateKey(f"{self._collection.name}/{doc_id}") from None

    async def get(self, doc_id: str) -> Document | None:
        with _reachable():
            return await self._collection.find_one({"_id": doc_id})

    async def put(self, doc: Document) -> None:
        doc_id = check_document(doc)
        async with self._lock(doc_id):
            with _reachable():
                try:
                    await self._collection.replace_one({"_id": doc_id}, dict(doc), upsert=True)
                except OperationFailure as error:
                    if _is_duplicate(error):
                        raise self._refused(doc_id) from None
                    raise

    async def put_many(self, docs: Sequence[Document]) -> None:
        ids = [check_document(doc) for doc in docs]
        if not ids:
            return
        requests = [
            ReplaceOne({"_id": doc_id}, dict(doc), upsert=True)
            for doc_id, doc in zip(ids, docs, strict=True)
        ]
        with _reachable():
            try:
                await self._collection.bulk_write(requests, ordered=True)
            except KeyError:
                # FerretDB v1 answers an update batch that hit a unique index without the
                # `nModified` count PyMongo reads; replaying the batch one by one (each put
                # is idempotent) finds the document it refuses and raises DuplicateKey.
                for doc in docs:
                    await self.put(doc)
            except BulkWriteError as error:
                if any(
                    _is_duplicate_code(e.get("code"), e.get("errmsg"))
                    for e in error.details.get("writeErrors", [])
                ):
                    raise DuplicateKey(
                        f"{self._collection.name}: a unique index refuses a document"
                    ) from None
                raise

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
            with _reachable():
                if not change:
                    # MongoDB refuses an empty update; "nothing to change" means read (or create).
                    if upsert:
                        with contextlib.suppress(DuplicateKeyError):
                            await self._collection.insert_one({"_id": doc_id})
                    return await self._collection.find_one({"_id": doc_id})
                try:
                    return await self._find_one_and_update(doc_id, change, upsert)
                except DuplicateKey:
                    if not upsert:
                        raise
                    # Two upserts of a new _id raced (other processes) and this one lost the
                    # insert; the document exists now, so the same update applies to it. (When
                    # a unique index refused it instead, it refuses the retry too.)
                    return await self._find_one_and_update(doc_id, change, upsert)

    async def _find_one_and_update(
        self, doc_id: str, change: Document, upsert: bool
    ) -> Document | None:
        try:
            return await self._collection.find_one_and_update(
                {"_id": doc_id}, change, upsert=upsert, return_document=ReturnDocument.AFTER
            )
        except OperationFailure as error:
            if _is_duplicate(error):
                raise self._refused(doc_id) from None
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
        skip: int = 0,
    ) -> list[Document]:
        query = _query(where)
        check_sort(sort, limit, skip)
        order = [(path, ASCENDING if direction == 1 else DESCENDING) for path, direction in sort]
        # Same tie-break as the SQLite adapter, so results come back in one defined order.
        if not any(path == "_id" for path, _ in sort):
            order.append(("_id", ASCENDING))
        with _reachable():
            cursor = self._collection.find(query, sort=order, skip=skip, limit=limit)
            return await cursor.to_list()

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        query = _query(where)
        with _reachable():
            return await self._collection.count_documents(query)

    async def count_by(
        self, field: str, where: Mapping[str, Any] | None = None
    ) -> dict[Scalar, int]:
        check_field(field)
        # $match + $group with $sum is all of the aggregation FerretDB v1 is relied on for.
        pipeline: list[Document] = [
            {"$match": _query(where)},
            {"$group": {"_id": f"${field}", "n": {"$sum": 1}}},
        ]
        with _reachable():
            cursor = await self._collection.aggregate(pipeline)
            groups = await cursor.to_list()
        counts: dict[Scalar, int] = {}
        for group in groups:
            key = group["_id"]  # None for null and for a missing field alike
            if isinstance(key, (list, dict)):
                held = "an array" if isinstance(key, list) else "a document"
                raise ValueError(
                    f"count_by({field!r}): a document holds {held} there; only str, number, "
                    "bool and null values can be counted by"
                )
            counts[key] = counts.get(key, 0) + int(group["n"])  # 1 and 1.0: one key
        return counts

    async def delete(self, doc_id: str) -> bool:
        with _reachable():
            result = await self._collection.delete_one({"_id": doc_id})
        return result.deleted_count > 0

    async def delete_many(self, where: Mapping[str, Any]) -> int:
        query = _query(check_delete_filter(where))
        with _reachable():
            result = await self._collection.delete_many(query)
        return result.deleted_count


class MongoDocuments:
    """`Documents` in database `database` of the MongoDB (or FerretDB) server at `url`;
    operations raise `Unavailable` when no server answers within `server_selection_timeout`
    seconds (also the timeout for opening a connection)."""

    def __init__(
        self,
        *,
        url: str,
        database: str,
        server_selection_timeout: float = _DEFAULT_SERVER_SELECTION_TIMEOUT,
    ) -> None:
        if not server_selection_timeout > 0:
            raise ValueError(
                f"server_selection_timeout must be > 0 seconds, not {server_selection_timeout}"
            )
        timeout_ms = max(1, round(server_selection_timeout * 1000))
        self._client: AsyncMongoClient[Document] = AsyncMongoClient(
            url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
        )
        self._database = self._client[database]
        self._locks = _KeyedLocks()

    def collection(self, name: str) -> _MongoCollection:
        check_collection_name(name)
        return _MongoCollection(self._database[name], self._locks)

    async def ensure_indexes(self, collection: str, indexes: Sequence[Index]) -> None:
        check_collection_name(collection)
        wanted = check_indexes(indexes)
        if not wanted:
            return
        target = self._database[collection]
        with _reachable():
            listed = await (await target.list_indexes()).to_list()
            existing = {
                tuple((path, int(direction)) for path, direction in info["key"].items()): bool(
                    info.get("unique", False)
                )
                for info in listed
            }
            for index in wanted:
                keys = _keys(index)
                if existing.get(tuple(keys)) == index.unique:
                    continue
                other = Index(fields=index.fields, unique=not index.unique)
                if existing.get(tuple(_keys(other))) == other.unique:
                    raise ValueError(
                        f"{collection}: an index on {index.fields} exists with unique="
                        f"{other.unique}; an index's uniqueness is not changed here (drop the "
                        "old one by hand)"
                    )
                # Only the missing ones, one per command: FerretDB v1 panics (and drops the
                # connection) when one createIndexes names several indexes that exist.
                try:
                    await target.create_indexes([IndexModel(keys, unique=index.unique)])
                except OperationFailure as error:
                    if _is_duplicate(error):
                        raise DuplicateKey(
                            f"{collection}: existing documents break unique index {index.fields}"
                        ) from None
                    raise
                existing[tuple(keys)] = index.unique

    async def close(self) -> None:
        await self._client.close()
