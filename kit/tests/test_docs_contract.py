"""The Documents contract, pinned once and run against both adapters.

`TestSqliteDocuments` runs everywhere; `TestMongoDocuments` runs against a real MongoDB-wire
server (FerretDB v1, SQLite backend) from the root conftest's `mongo_url` fixture (marker
`engines`), in a database of its own per test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from kit.docs_mongo import MongoDocuments
from kit.docs_sqlite import SqliteDocuments
from kit.ports import Collection, Documents, DuplicateKey


def ids(docs: list[dict[str, Any]]) -> list[str]:
    return [doc["_id"] for doc in docs]


class DocumentsContract:
    """Behaviour every Documents adapter must have. Subclasses provide `documents`."""

    @pytest.fixture
    def items(self, documents: Documents) -> Collection:
        return documents.collection("items")

    async def seed(self, items: Collection) -> None:
        docs: list[dict[str, Any]] = [
            {"_id": "a", "site": {"code": "S1"}, "state": "queued", "n": 3, "tags": ["x", "y"]},
            {"_id": "b", "site": {"code": "S2"}, "state": "done", "n": 1, "tags": []},
            {"_id": "c", "site": {"code": "S1"}, "state": "done", "n": 2.5, "flag": True},
            {"_id": "d", "site": {"code": "S1"}, "state": "error", "n": 1.0, "flag": False},
            {"_id": "e", "site": {"code": "S3"}, "state": "done", "flag": None},
        ]
        for doc in docs:
            await items.insert(doc)

    # --- insert / get / put / delete ------------------------------------------------------------

    async def test_insert_then_get_round_trips_nested_json(self, items: Collection) -> None:
        doc = {
            "_id": "job-1",
            "name": "Ünïcödé ✓",
            "count": 2**40,
            "ratio": 0.25,
            "ok": True,
            "none": None,
            "nested": {"deep": {"list": [1, "two", {"three": 3.0}, {"four": [4]}, None, False]}},
            "empty": {"list": [], "dict": {}},
            "at": "2024-05-01T10:20:30.123456+00:00",
        }
        await items.insert(doc)
        assert await items.get("job-1") == doc

    async def test_get_of_a_missing_id_is_none(self, items: Collection) -> None:
        assert await items.get("nope") is None

    async def test_insert_of_an_existing_id_raises_duplicate_key(self, items: Collection) -> None:
        await items.insert({"_id": "k", "v": 1})
        with pytest.raises(DuplicateKey):
            await items.insert({"_id": "k", "v": 2})
        assert await items.get("k") == {"_id": "k", "v": 1}

    async def test_put_inserts_or_replaces_the_whole_document(self, items: Collection) -> None:
        await items.put({"_id": "k", "old": 1, "keep": "no"})
        assert await items.get("k") == {"_id": "k", "old": 1, "keep": "no"}
        await items.put({"_id": "k", "new": 2})
        assert await items.get("k") == {"_id": "k", "new": 2}

    async def test_delete_reports_whether_something_was_deleted(self, items: Collection) -> None:
        await items.insert({"_id": "k"})
        assert await items.delete("k") is True
        assert await items.get("k") is None
        assert await items.delete("k") is False

    async def test_collections_are_separate(self, documents: Documents) -> None:
        await documents.collection("jobs").insert({"_id": "same", "kind": "job"})
        await documents.collection("items").insert({"_id": "same", "kind": "item"})
        assert await documents.collection("jobs").get("same") == {"_id": "same", "kind": "job"}
        assert await documents.collection("items").count() == 1

    async def test_stored_documents_do_not_alias_the_callers_dict(self, items: Collection) -> None:
        doc: dict[str, Any] = {"_id": "k", "list": [1]}
        await items.insert(doc)
        doc["list"].append(2)
        assert await items.get("k") == {"_id": "k", "list": [1]}
        assert doc == {"_id": "k", "list": [1, 2]}

    # --- update ---------------------------------------------------------------------------------

    async def test_update_sets_and_increments_and_returns_the_document_after(
        self, items: Collection
    ) -> None:
        await items.insert({"_id": "job", "state": "queued", "counts": {"done": 1}, "x": 1})
        after = await items.update(
            "job",
            set={"state": "processing", "site.code": "S1", "meta": {"a": [1, 2]}},
            inc={"counts.done": 2, "counts.error": 1},
        )
        expected = {
            "_id": "job",
            "state": "processing",
            "counts": {"done": 3, "error": 1},
            "x": 1,
            "site": {"code": "S1"},
            "meta": {"a": [1, 2]},
        }
        assert after == expected
        assert await items.get("job") == expected

    async def test_update_of_a_missing_document_without_upsert_is_none(
        self, items: Collection
    ) -> None:
        assert await items.update("ghost", set={"a": 1}, inc={"n": 1}) is None
        assert await items.get("ghost") is None

    async def test_update_with_upsert_creates_the_document(self, items: Collection) -> None:
        after = await items.update("new", set={"a.b": "x"}, inc={"n": 5}, upsert=True)
        assert after == {"_id": "new", "a": {"b": "x"}, "n": 5}
        assert await items.get("new") == after

    async def test_an_empty_update_reads_or_creates(self, items: Collection) -> None:
        assert await items.update("k") is None
        assert await items.update("k", upsert=True) == {"_id": "k"}
        await items.update("k", set={"v": 1})
        assert await items.update("k", set={}, inc={}) == {"_id": "k", "v": 1}

    async def test_concurrent_increments_add_up_exactly(self, items: Collection) -> None:
        tasks, each = 40, 5

        async def bump() -> None:
            for _ in range(each):
                await items.update("counter", inc={"n": 1, "nested.m": 2}, upsert=True)

        await asyncio.gather(*(bump() for _ in range(tasks)))
        assert await items.get("counter") == {
            "_id": "counter",
            "n": tasks * each,
            "nested": {"m": 2 * tasks * each},
        }

    @pytest.mark.parametrize(
        ("set_", "inc"),
        [(None, {"s": 1}), (None, {"none": 1}), ({"s.x": 1}, None), (None, {"none.x": 1})],
    )
    async def test_updates_that_do_not_fit_the_document_are_refused(
        self, items: Collection, set_: dict[str, Any] | None, inc: dict[str, int] | None
    ) -> None:
        await items.insert({"_id": "k", "s": "text", "none": None})
        with pytest.raises(ValueError):
            await items.update("k", set=set_, inc=inc)
        assert await items.get("k") == {"_id": "k", "s": "text", "none": None}

    @pytest.mark.parametrize(
        ("set_", "inc"),
        [
            ({"_id": "other"}, None),
            (None, {"_id": 1}),
            ({"a": 1}, {"a": 1}),
            ({"a": 1, "a.b": 2}, None),
            ({"a.b": 1}, {"a": 1}),
            ({"$where": 1}, None),
            ({"": 1}, None),
        ],
    )
    async def test_conflicting_or_invalid_updates_are_refused(
        self, items: Collection, set_: dict[str, Any] | None, inc: dict[str, int] | None
    ) -> None:
        await items.insert({"_id": "k", "a": {"b": 0}})
        with pytest.raises(ValueError):
            await items.update("k", set=set_, inc=inc)
        assert await items.get("k") == {"_id": "k", "a": {"b": 0}}

    # --- find / count ---------------------------------------------------------------------------

    async def test_find_by_dotted_equality(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"site.code": "S1"})) == ["a", "c", "d"]
        assert ids(await items.find({"site.code": "S1", "state": "done"})) == ["c"]
        assert ids(await items.find({"site.code": "nowhere"})) == []
        assert ids(await items.find({"_id": "b"})) == ["b"]

    async def test_find_without_a_filter_returns_everything(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find()) == ["a", "b", "c", "d", "e"]
        assert ids(await items.find({})) == ["a", "b", "c", "d", "e"]

    async def test_numbers_compare_by_value_and_booleans_only_match_booleans(
        self, items: Collection
    ) -> None:
        await self.seed(items)
        assert ids(await items.find({"n": 1})) == ["b", "d"]
        assert ids(await items.find({"n": 2.5})) == ["c"]
        assert ids(await items.find({"flag": True})) == ["c"]
        assert ids(await items.find({"flag": False})) == ["d"]
        assert ids(await items.find({"n": "1"})) == []

    async def test_none_matches_null_or_missing(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"flag": None})) == ["a", "b", "e"]

    async def test_a_scalar_matches_an_array_containing_it(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"tags": "y"})) == ["a"]
        assert ids(await items.find({"tags": ["x", "y"]})) == ["a"]
        assert ids(await items.find({"tags": []})) == ["b"]

    async def test_a_document_value_matches_exactly(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"site": {"code": "S2"}})) == ["b"]
        assert ids(await items.find({"site": {"code": "S2", "more": 1}})) == []

    async def test_find_sorts_by_a_dotted_field_and_limits(self, items: Collection) -> None:
        for i, (code, at) in enumerate([("S2", "10:00"), ("S1", "09:00"), ("S3", "11:00")]):
            await items.insert({"_id": f"i{i}", "site": {"code": code}, "meta": {"at": at}})
        await items.insert({"_id": "i9", "site": {"code": "S1"}})  # no meta.at
        assert ids(await items.find(sort=[("meta.at", 1)])) == ["i9", "i1", "i0", "i2"]
        assert ids(await items.find(sort=[("meta.at", -1)])) == ["i2", "i0", "i1", "i9"]
        assert ids(await items.find(sort=[("meta.at", -1)], limit=2)) == ["i2", "i0"]
        assert ids(await items.find({"site.code": "S1"}, sort=[("meta.at", -1)], limit=1)) == ["i1"]
        # Ties broken by _id; several sort keys apply in order.
        assert ids(await items.find(sort=[("site.code", 1), ("_id", -1)])) == [
            "i9",
            "i1",
            "i0",
            "i2",
        ]

    async def test_numbers_sort_numerically(self, items: Collection) -> None:
        for i, n in enumerate([10, 2, 33.5, -1, 2.5]):
            await items.insert({"_id": f"n{i}", "n": n})
        found = await items.find(sort=[("n", 1)])
        assert [doc["n"] for doc in found] == [-1, 2, 2.5, 10, 33.5]

    async def test_count_with_and_without_a_filter(self, items: Collection) -> None:
        assert await items.count() == 0
        await self.seed(items)
        assert await items.count() == 5
        assert await items.count({"state": "done"}) == 3
        assert await items.count({"site.code": "S1", "state": "done"}) == 1
        assert await items.count({"tags": "x"}) == 1

    async def test_operators_are_not_accepted_in_filters(self, items: Collection) -> None:
        await self.seed(items)
        with pytest.raises(ValueError):
            await items.find({"n": {"$gt": 1}})
        with pytest.raises(ValueError):
            await items.find({"$or": [{"n": 1}]})
        with pytest.raises(ValueError):
            await items.count({"n": {"$ne": 1}})

    @pytest.mark.parametrize("sort", [[("n", 0)], [("n", 2)], [("$n", 1)]])
    async def test_invalid_sorts_are_refused(
        self, items: Collection, sort: list[tuple[str, int]]
    ) -> None:
        with pytest.raises(ValueError):
            await items.find(sort=sort)

    # --- what a document may hold ----------------------------------------------------------------

    @pytest.mark.parametrize(
        "value",
        [datetime.now(UTC), date(2024, 1, 2), Decimal("1.5"), b"bytes", {1, 2}, (1, 2), object()],
        ids=["datetime", "date", "decimal", "bytes", "set", "tuple", "object"],
    )
    async def test_non_json_values_are_refused_with_type_error(
        self, items: Collection, value: object
    ) -> None:
        with pytest.raises(TypeError):
            await items.insert({"_id": "k", "nested": {"v": value}})
        with pytest.raises(TypeError):
            await items.put({"_id": "k", "list": [value]})
        with pytest.raises(TypeError):
            await items.update("k", set={"v": value}, upsert=True)
        with pytest.raises(TypeError):
            await items.find({"v": value})
        assert await items.get("k") is None

    async def test_a_datetime_error_explains_what_to_store_instead(self, items: Collection) -> None:
        with pytest.raises(TypeError, match="ISO-8601"):
            await items.insert({"_id": "k", "at": datetime.now(UTC)})

    @pytest.mark.parametrize(
        "doc",
        [
            {"v": 1},
            {"_id": 5},
            {"_id": ""},
            {"_id": "k", "a.b": 1},
            {"_id": "k", "$set": 1},
            {"_id": "k", "n": {"$gt": 1}},
            {"_id": "k", "big": 2**64},
            {"_id": "k", "nan": float("nan")},
            {"_id": "k", "matrix": [[1, 2], [3, 4]]},
        ],
    )
    async def test_invalid_documents_are_refused_with_value_error(
        self, items: Collection, doc: dict[str, Any]
    ) -> None:
        with pytest.raises(ValueError):
            await items.insert(doc)
        with pytest.raises(ValueError):
            await items.put(doc)

    @pytest.mark.parametrize("name", ["", "has space", "dollar$", "1starts-with-digit", "x" * 64])
    def test_invalid_collection_names_are_refused(self, documents: Documents, name: str) -> None:
        with pytest.raises(ValueError):
            documents.collection(name)


class TestSqliteDocuments(DocumentsContract):
    @pytest.fixture
    async def documents(self, tmp_path: Path) -> AsyncIterator[SqliteDocuments]:
        documents = SqliteDocuments(path=tmp_path / "db" / "documents.sqlite3")
        yield documents
        await documents.close()

    async def test_two_instances_on_one_file_see_each_other_and_count_exactly(
        self, tmp_path: Path
    ) -> None:
        # Two instances = two connections with their own threads, as two processes would have.
        path = tmp_path / "shared.sqlite3"
        first, second = SqliteDocuments(path=path), SqliteDocuments(path=path)
        try:
            a, b = first.collection("counters"), second.collection("counters")

            async def bump(collection: Collection) -> None:
                for _ in range(50):
                    await collection.update("c", inc={"n": 1}, upsert=True)

            await asyncio.gather(*(bump(c) for c in (a, b, a, b)))
            assert await a.get("c") == {"_id": "c", "n": 200}
            assert await b.get("c") == {"_id": "c", "n": 200}
        finally:
            await first.close()
            await second.close()

    async def test_documents_survive_reopening(self, tmp_path: Path) -> None:
        path = tmp_path / "d.sqlite3"
        documents = SqliteDocuments(path=path)
        await documents.collection("jobs").insert({"_id": "j", "v": [1, {"a": None}]})
        await documents.close()
        reopened = SqliteDocuments(path=path)
        try:
            assert await reopened.collection("jobs").get("j") == {"_id": "j", "v": [1, {"a": None}]}
        finally:
            await reopened.close()


@pytest.mark.engines
class TestMongoDocuments(DocumentsContract):
    @pytest.fixture
    async def documents(self, mongo_url: str) -> AsyncIterator[MongoDocuments]:
        database = f"t_{uuid.uuid4().hex[:16]}"
        documents = MongoDocuments(url=mongo_url, database=database)
        yield documents
        await documents.close()
        admin: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_url)
        try:
            await admin.drop_database(database)
        finally:
            await admin.close()
