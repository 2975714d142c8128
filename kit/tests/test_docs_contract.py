"""The Documents contract, pinned once and run against both adapters.

`TestSqliteDocuments` runs everywhere; `TestMongoDocuments` runs against a real MongoDB-wire
server (FerretDB v1, SQLite backend) from the root conftest's `mongo_url` fixture (marker
`engines`), in a database of its own per test.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sqlite3
import stat
import threading
import time
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
from kit.ports import AnyOf, Collection, Documents, DuplicateKey, Index, Range, Unavailable


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

    async def test_put_many_inserts_and_replaces_a_batch_in_one_call(
        self, items: Collection
    ) -> None:
        await items.put({"_id": "k0", "old": True})
        await items.put_many([{"_id": f"k{i}", "n": i} for i in range(250)])
        assert await items.count() == 250
        assert await items.get("k0") == {"_id": "k0", "n": 0}
        assert await items.get("k249") == {"_id": "k249", "n": 249}
        await items.put_many([])  # nothing to do is not an error

    async def test_put_many_checks_every_document_before_writing_any(
        self, items: Collection
    ) -> None:
        with pytest.raises(TypeError):
            await items.put_many([{"_id": "ok"}, {"_id": "bad", "at": datetime.now(UTC)}])
        assert await items.count() == 0

    async def test_put_many_is_refused_by_a_unique_index(self, documents: Documents) -> None:
        users = documents.collection("users")
        await documents.ensure_indexes("users", [Index(fields=(("username", 1),), unique=True)])
        await users.insert({"_id": "u1", "username": "ann"})
        with pytest.raises(DuplicateKey):
            await users.put_many(
                [{"_id": "u2", "username": "bob"}, {"_id": "u3", "username": "ann"}]
            )
        assert await users.get("u3") is None

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

    # --- typed filter operators: Range and AnyOf ------------------------------------------------

    async def test_a_range_compares_strings_lexicographically(self, items: Collection) -> None:
        for doc_id, at in [
            ("dec", "2025-12-31T23:59:59+00:00"),
            ("jan1", "2026-01-01T00:00:00+00:00"),
            ("jan15", "2026-01-15T08:30:00+00:00"),
            ("feb1", "2026-02-01T00:00:00+00:00"),
        ]:
            await items.insert({"_id": doc_id, "at": at})
        await items.insert({"_id": "ten", "code": "10"})
        await items.insert({"_id": "nine", "code": "9"})
        january = Range(gte="2026-01-01", lt="2026-02-01")
        assert ids(await items.find({"at": january})) == ["jan1", "jan15"]
        assert ids(await items.find({"at": Range(gt="2026-01-01T00:00:00+00:00")})) == [
            "feb1",
            "jan15",
        ]
        assert ids(await items.find({"at": Range(lte="2026-01-01T00:00:00+00:00")})) == [
            "dec",
            "jan1",
        ]
        # Strings, not numbers: "10" < "9".
        assert ids(await items.find({"code": Range(lt="9")})) == ["ten"]
        assert ids(await items.find({"code": Range(gt="10")})) == ["nine"]

    async def test_a_range_compares_numbers_by_value(self, items: Collection) -> None:
        for doc_id, n in [("neg", -1), ("int", 1), ("float", 1.0), ("half", 2.5), ("big", 2**40)]:
            await items.insert({"_id": doc_id, "n": n})
        assert ids(await items.find({"n": Range(gt=1)})) == ["big", "half"]
        assert ids(await items.find({"n": Range(gte=1, lte=2.5)})) == ["float", "half", "int"]
        assert ids(await items.find({"n": Range(gt=0.5, lt=1.5)})) == ["float", "int"]
        assert ids(await items.find({"n": Range(lte=-1)})) == ["neg"]
        assert ids(await items.find({"n": Range(lt=-1)})) == []

    async def test_a_range_matches_only_values_of_its_bounds_kind(self, items: Collection) -> None:
        values: list[Any] = [None, True, False, "5", 5, {"x": 5}]
        for i, value in enumerate(values):
            await items.insert({"_id": f"v{i}", "v": value})
        await items.insert({"_id": "missing"})
        assert ids(await items.find({"v": Range(gte=0)})) == ["v4"]
        assert ids(await items.find({"v": Range(gte="")})) == ["v3"]
        assert await items.count({"w": Range(lt="~")}) == 0  # a missing field matches nothing

    async def test_a_range_on_id_compares_ids(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"_id": Range(gte="b", lt="d")})) == ["b", "c"]
        assert ids(await items.find({"_id": Range(gt=1)})) == []

    async def test_any_of_matches_documents_equal_to_one_of_the_values(
        self, items: Collection
    ) -> None:
        await self.seed(items)
        assert ids(await items.find({"site.code": AnyOf(["S2", "S3", "S9"])})) == ["b", "e"]
        assert ids(await items.find({"state": AnyOf(("queued", "error"))})) == ["a", "d"]
        assert ids(await items.find({"n": AnyOf([1, 3])})) == ["a", "b", "d"]  # 1 == 1.0
        assert ids(await items.find({"n": AnyOf(["1", "3"])})) == []
        assert ids(await items.find({"flag": AnyOf([True])})) == ["c"]
        assert ids(await items.find({"flag": AnyOf([False, 2.5])})) == ["d"]
        assert ids(await items.find({"n": AnyOf([2.5, True])})) == ["c"]

    async def test_a_sorted_page_mixes_arrays_and_scalars_in_one_order(
        self, documents: Documents, items: Collection
    ) -> None:
        await documents.ensure_indexes("items", [Index(fields=(("tag", 1), ("at", 1)))])
        await items.put_many(
            [
                {"_id": "a", "tag": "x", "at": 5},
                {"_id": "b", "tag": ["y", "x"], "at": 1},
                {"_id": "c", "tag": "x", "at": 3},
                {"_id": "d", "tag": ["x"], "at": 4},
                {"_id": "e", "tag": "y", "at": 2},
                {"_id": "f", "tag": "x", "other": ["x"], "at": 0},
            ]
        )
        page = await items.find({"tag": "x"}, sort=[("at", 1)], limit=3)
        assert ids(page) == ["f", "b", "c"]
        assert ids(await items.find({"tag": "x"}, sort=[("at", 1)], limit=3, skip=3)) == ["d", "a"]
        assert ids(await items.find({"tag": AnyOf(["x", "y"])}, sort=[("at", -1)], limit=4)) == [
            "a",
            "d",
            "c",
            "e",
        ]

    async def test_any_of_matches_an_array_holding_one_of_the_values(
        self, items: Collection
    ) -> None:
        await self.seed(items)
        assert ids(await items.find({"tags": AnyOf(["y", "z"])})) == ["a"]
        assert ids(await items.find({"tags": AnyOf(["z"])})) == []

    async def test_any_of_with_none_matches_null_or_missing(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"flag": AnyOf([None])})) == ["a", "b", "e"]
        assert ids(await items.find({"flag": AnyOf([None, True])})) == ["a", "b", "c", "e"]

    async def test_an_empty_any_of_matches_nothing(self, items: Collection) -> None:
        await self.seed(items)
        assert await items.find({"state": AnyOf([])}) == []
        assert await items.count({"_id": AnyOf([])}) == 0

    async def test_any_of_finds_documents_by_id(self, items: Collection) -> None:
        await self.seed(items)
        assert ids(await items.find({"_id": AnyOf(["e", "a", "zz"])})) == ["a", "e"]
        assert ids(await items.find({"_id": AnyOf([1, None])})) == []

    async def test_any_of_takes_more_values_than_a_statement_has_parameters(
        self, items: Collection
    ) -> None:
        await self.seed(items)
        wanted = [f"id-{i}" for i in range(40_000)] + ["c", "a"]
        assert ids(await items.find({"_id": AnyOf(wanted)})) == ["a", "c"]
        assert await items.count({"state": AnyOf([f"s{i}" for i in range(40_000)])}) == 0

    async def test_operators_combine_with_equality(self, items: Collection) -> None:
        for doc_id, at, hospital, graded in [
            ("u1", "2026-01-05T10:00:00+00:00", "a", False),
            ("u2", "2026-01-20T10:00:00+00:00", "b", False),
            ("u3", "2026-01-25T10:00:00+00:00", "c", False),
            ("u4", "2026-01-28T10:00:00+00:00", "a", True),
            ("u5", "2026-02-02T10:00:00+00:00", "a", False),
        ]:
            await items.insert(
                {"_id": doc_id, "created_at": at, "hospital_id": hospital, "pre_graded": graded}
            )
        where = {
            "created_at": Range(gte="2026-01-01", lt="2026-02-01"),
            "hospital_id": AnyOf(["a", "b"]),
            "pre_graded": False,
        }
        assert ids(await items.find(where, sort=[("created_at", -1)])) == ["u2", "u1"]
        assert await items.count(where) == 2

    async def test_field_names_with_quotes_work_in_filters_sorts_and_indexes(
        self, documents: Documents
    ) -> None:
        odd = documents.collection("odd")
        await documents.ensure_indexes("odd", [Index(fields=(("it's", 1), ("a.b'c", -1)))])
        await odd.insert({"_id": "1", "it's": "x", "a": {"b'c": 2}})
        await odd.insert({"_id": "2", "it's": "y", "a": {"b'c": 1}})
        assert ids(await odd.find({"it's": "x"})) == ["1"]
        assert ids(await odd.find({"a.b'c": Range(gte=1)}, sort=[("a.b'c", 1)])) == ["2", "1"]
        assert await odd.count_by("it's") == {"x": 1, "y": 1}

    def test_ranges_and_any_of_are_checked_when_made(self) -> None:
        bad_ranges: list[dict[str, Any]] = [{}, {"gt": 1, "gte": 1}, {"lt": 1, "lte": 1}]
        for bad_range in bad_ranges:
            with pytest.raises(ValueError):
                Range(**bad_range)
        bad_bounds: list[dict[str, Any]] = [{"gte": True}, {"gte": "a", "lt": 5}, {"lt": [1]}]
        for bounds in bad_bounds:
            with pytest.raises(TypeError):
                Range(**bounds)
        for bad_values in ["ab", {"a": 1}, [{"a": 1}], [[1]], [b"x"]]:
            with pytest.raises(TypeError):
                AnyOf(bad_values)  # type: ignore[arg-type]
        assert AnyOf(["a", "b"]).values == ("a", "b")

    @pytest.mark.parametrize(
        "where",
        [
            {"n": Range(gt=float("nan"))},
            {"n": Range(lt=2**70)},
            {"n": AnyOf([float("inf")])},
            {"$n": Range(gt=1)},
        ],
        ids=["nan", "int-beyond-64-bits", "infinity", "dollar-field"],
    )
    async def test_operators_with_values_no_document_may_hold_are_refused(
        self, items: Collection, where: dict[str, Any]
    ) -> None:
        with pytest.raises(ValueError):
            await items.find(where)
        with pytest.raises(ValueError):
            await items.count(where)
        with pytest.raises(ValueError):
            await items.delete_many(where)

    async def test_operators_only_count_as_the_value_of_a_filter_field(
        self, items: Collection
    ) -> None:
        with pytest.raises(TypeError):
            await items.find({"a": {"b": Range(gt=1)}})
        with pytest.raises(TypeError):
            await items.count({"a": [AnyOf(["x"])]})

    # --- pagination, grouped counts, bulk deletes -------------------------------------------------

    async def test_find_skips_documents_for_offset_pagination(self, items: Collection) -> None:
        for i, rank in enumerate([3, 1, 2, 3, 1, 2, 3]):
            await items.insert({"_id": f"d{i}", "rank": rank})
        everything = ids(await items.find(sort=[("rank", -1)]))
        assert everything == ["d0", "d3", "d6", "d2", "d5", "d1", "d4"]  # ties by _id
        pages = [ids(await items.find(sort=[("rank", -1)], limit=3, skip=s)) for s in (0, 3, 6)]
        assert pages == [everything[0:3], everything[3:6], everything[6:]]
        assert ids(await items.find(sort=[("rank", -1)], skip=5)) == everything[5:]
        assert ids(await items.find({"rank": 3}, skip=1, limit=1)) == ["d3"]
        assert await items.find(skip=7) == []

    async def test_a_negative_skip_is_refused(self, items: Collection) -> None:
        with pytest.raises(ValueError):
            await items.find(skip=-1)

    async def test_count_by_counts_documents_per_value(self, items: Collection) -> None:
        await self.seed(items)
        assert await items.count_by("state") == {"queued": 1, "done": 3, "error": 1}
        assert await items.count_by("site.code") == {"S1": 3, "S2": 1, "S3": 1}
        assert await items.count_by("_id") == {key: 1 for key in "abcde"}

    async def test_count_by_groups_null_and_missing_under_none(self, items: Collection) -> None:
        await self.seed(items)
        assert await items.count_by("flag") == {None: 3, True: 1, False: 1}
        assert await items.count_by("nowhere") == {None: 5}

    async def test_count_by_counts_numbers_by_value(self, items: Collection) -> None:
        await self.seed(items)
        assert await items.count_by("n") == {3: 1, 1: 2, 2.5: 1, None: 1}

    async def test_count_by_counts_only_matching_documents(self, items: Collection) -> None:
        assert await items.count_by("state") == {}
        await self.seed(items)
        assert await items.count_by("state", {"site.code": "S1"}) == {
            "queued": 1,
            "done": 1,
            "error": 1,
        }
        assert await items.count_by("site.code", {"n": Range(lt=2)}) == {"S1": 1, "S2": 1}
        assert await items.count_by("state", {"_id": AnyOf(["b", "e"])}) == {"done": 2}
        assert await items.count_by("state", {"state": "nothing"}) == {}

    async def test_count_by_refuses_a_field_holding_arrays_or_documents(
        self, items: Collection
    ) -> None:
        await self.seed(items)
        with pytest.raises(ValueError):
            await items.count_by("tags")
        with pytest.raises(ValueError):
            await items.count_by("site")
        assert await items.count_by("tags", {"_id": "e"}) == {None: 1}

    @pytest.mark.parametrize("field", ["", "$state", "a..b", "a.$b"])
    async def test_count_by_refuses_invalid_fields(self, items: Collection, field: str) -> None:
        with pytest.raises(ValueError):
            await items.count_by(field)

    async def test_delete_many_deletes_what_matches_and_says_how_many(
        self, documents: Documents, items: Collection
    ) -> None:
        await self.seed(items)
        others = documents.collection("others")
        await others.insert({"_id": "a", "state": "done"})
        assert await items.delete_many({"state": "done"}) == 3
        assert ids(await items.find()) == ["a", "d"]
        assert await items.delete_many({"state": "done"}) == 0
        assert await items.delete_many({"n": Range(gte=2), "_id": AnyOf(["a", "x"])}) == 1
        assert ids(await items.find()) == ["d"]
        assert await others.count() == 1

    async def test_delete_many_with_an_empty_filter_empties_only_that_collection(
        self, documents: Documents, items: Collection
    ) -> None:
        await self.seed(items)
        others = documents.collection("others")
        await others.insert({"_id": "keep"})
        with pytest.raises(TypeError):
            await items.delete_many(None)  # type: ignore[arg-type]
        assert await items.count() == 5
        assert await items.delete_many({}) == 5
        assert await items.count() == 0
        assert await others.get("keep") == {"_id": "keep"}

    # --- secondary indexes ----------------------------------------------------------------------

    async def test_ensure_indexes_is_idempotent_and_changes_no_result(
        self, documents: Documents, items: Collection
    ) -> None:
        await self.seed(items)

        async def answers() -> list[Any]:
            return [
                ids(await items.find({"site.code": "S1"}, sort=[("n", -1)])),
                ids(await items.find({"n": Range(gte=1)}, sort=[("n", 1)], limit=3)),
                ids(await items.find({"tags": "x"})),
                ids(await items.find({"flag": None}, sort=[("state", 1)])),
                ids(await items.find({"state": AnyOf(["done", "error"])}, sort=[("n", -1)])),
                await items.count({"site.code": AnyOf(["S1", "S3"])}),
                await items.count_by("state", {"flag": AnyOf([None, False])}),
            ]

        before = await answers()
        indexes = [
            Index(fields=(("site.code", 1), ("n", -1))),
            Index(fields=(("n", 1),)),
            Index(fields=(("tags", 1),)),
            Index(fields=(("flag", 1), ("state", 1))),
            Index(fields=(("state", 1),)),
        ]
        await documents.ensure_indexes("items", indexes)
        await documents.ensure_indexes("items", indexes)
        await documents.ensure_indexes("items", [])
        assert await answers() == before
        await items.insert({"_id": "f", "site": {"code": "S1"}, "n": 9})
        assert ids(await items.find({"site.code": "S1"}, sort=[("n", -1)])) == ["f", *before[0]]

    async def test_a_unique_index_refuses_a_second_document_with_the_same_values(
        self, documents: Documents
    ) -> None:
        users = documents.collection("users")
        await documents.ensure_indexes("users", [Index(fields=(("username", 1),), unique=True)])
        await users.insert({"_id": "u1", "username": "ann", "n": 1})
        with pytest.raises(DuplicateKey):
            await users.insert({"_id": "u2", "username": "ann"})
        with pytest.raises(DuplicateKey):
            await users.put({"_id": "u2", "username": "ann"})
        await users.insert({"_id": "u2", "username": "bob"})
        with pytest.raises(DuplicateKey):
            await users.update("u2", set={"username": "ann"})
        with pytest.raises(DuplicateKey):
            await users.update("u3", set={"username": "ann"}, upsert=True)
        assert await users.get("u2") == {"_id": "u2", "username": "bob"}
        assert await users.get("u3") is None
        await users.put({"_id": "u1", "username": "ann", "n": 2})  # replacing itself is fine
        assert await users.update("u1", inc={"n": 1}) == {"_id": "u1", "username": "ann", "n": 3}
        # Per collection: other collections are not held to it.
        await documents.collection("others").insert({"_id": "u9", "username": "ann"})

    async def test_a_unique_index_compares_numbers_by_value_and_combines_fields(
        self, documents: Documents
    ) -> None:
        codes = documents.collection("codes")
        await documents.ensure_indexes(
            "codes",
            [
                Index(fields=(("n", 1),), unique=True),
                Index(fields=(("site", 1), ("code", 1)), unique=True),
            ],
        )
        await codes.insert({"_id": "1", "n": 1, "site": "a", "code": "x"})
        with pytest.raises(DuplicateKey):
            await codes.insert({"_id": "2", "n": 1.0, "site": "b", "code": "x"})
        await codes.insert({"_id": "3", "n": "1", "site": "a", "code": "y"})
        with pytest.raises(DuplicateKey):
            await codes.insert({"_id": "4", "n": 4, "site": "a", "code": "x"})
        assert ids(await codes.find()) == ["1", "3"]

    async def test_ensure_indexes_refuses_a_unique_index_the_documents_break(
        self, documents: Documents
    ) -> None:
        users = documents.collection("users")
        await users.insert({"_id": "u1", "username": "ann"})
        await users.insert({"_id": "u2", "username": "ann"})
        with pytest.raises(DuplicateKey):
            await documents.ensure_indexes("users", [Index(fields=(("username", 1),), unique=True)])
        await users.insert({"_id": "u3", "username": "ann"})  # no index was left behind

    async def test_an_index_declared_again_with_the_other_uniqueness_is_refused(
        self, documents: Documents
    ) -> None:
        await documents.ensure_indexes("users", [Index(fields=(("username", 1),))])
        with pytest.raises(ValueError):
            await documents.ensure_indexes("users", [Index(fields=(("username", 1),), unique=True)])
        await documents.ensure_indexes("users", [Index(fields=(("email", 1),), unique=True)])
        with pytest.raises(ValueError):
            await documents.ensure_indexes("users", [Index(fields=(("email", 1),))])
        await documents.ensure_indexes("users", [Index(fields=(("email", 1),), unique=True)])

    async def test_invalid_indexes_are_refused(self, documents: Documents) -> None:
        for fields in [(), (("a", 0),), (("a", 2),), (("a", 1), ("a", -1))]:
            with pytest.raises(ValueError):
                Index(fields=fields)
        with pytest.raises(ValueError):
            await documents.ensure_indexes("items", [Index(fields=(("$a", 1),))])
        with pytest.raises(ValueError):
            await documents.ensure_indexes("items", [Index(fields=(("a..b", 1),))])
        with pytest.raises(ValueError):
            await documents.ensure_indexes("bad name", [Index(fields=(("a", 1),))])
        with pytest.raises(TypeError):
            await documents.ensure_indexes("items", ["a"])  # type: ignore[list-item]


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

    # --- indexes are used -----------------------------------------------------------------------

    @staticmethod
    def query_plan(path: Path, sql: str, values: dict[str, Any]) -> str:
        db = sqlite3.connect(path)
        try:
            return "\n".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, values))
        finally:
            db.close()

    async def test_a_filtered_sorted_find_on_an_indexed_field_reads_the_index_in_order(
        self, documents: SqliteDocuments
    ) -> None:
        uploads = documents.collection("uploads")
        await documents.ensure_indexes(
            "uploads",
            [Index(fields=(("created_at", -1),)), Index(fields=(("hospital_id", 1),))],
        )
        for i in range(50):
            await uploads.insert(
                {"_id": f"u{i:02}", "created_at": f"2026-01-{1 + i % 28:02}", "hospital_id": "a"}
            )
        plans = {
            "range": uploads._find_sql(
                {"created_at": Range(gte="2026-01-10", lt="2026-01-20")},
                sort=[("created_at", -1)],
                limit=10,
                skip=10,
            ),
            "no filter": uploads._find_sql(None, sort=[("created_at", -1)], limit=10),
        }
        for name, (sql, values) in plans.items():
            plan = self.query_plan(documents.path, sql, values)
            assert "USING INDEX docs_uploads_" in plan, (name, plan)
            assert "TEMP B-TREE" not in plan, (name, plan)  # the index gives the order
        range_plan = self.query_plan(documents.path, *plans["range"])
        assert "<expr>>? AND <expr><?" in range_plan  # the range is looked up, not scanned
        found = await uploads.find(
            {"created_at": Range(gte="2026-01-10", lt="2026-01-20")}, sort=[("created_at", -1)]
        )
        assert [doc["created_at"] for doc in found] == sorted(
            (doc["created_at"] for doc in found), reverse=True
        )
        assert len(found) == 20

    # --- concurrency ----------------------------------------------------------------------------

    async def test_writes_and_lookups_complete_while_a_long_read_holds_a_reader(
        self, tmp_path: Path
    ) -> None:
        documents = SqliteDocuments(path=tmp_path / "d.sqlite3", readers=1)
        items = documents.collection("items")
        started, release = threading.Event(), threading.Event()

        def long_scan(db: sqlite3.Connection) -> int:
            # A statement stepped part-way keeps its read transaction (and its snapshot) open,
            # as a slow scan over 100,000 documents would.
            cursor = db.execute("SELECT body FROM documents")
            cursor.fetchone()
            started.set()
            release.wait(timeout=30)
            return 1 + len(cursor.fetchall())

        try:
            for i in range(10):
                await items.insert({"_id": f"old{i}", "v": i})
            scan = asyncio.ensure_future(documents._read(long_scan))
            assert await asyncio.to_thread(started.wait, 10)
            queued_count = asyncio.ensure_future(items.count())  # the only reader is busy

            await items.put({"_id": "new", "v": 1})
            assert await items.update("new", inc={"v": 1}) == {"_id": "new", "v": 2}
            assert await items.delete_many({"v": Range(gte=8)}) == 2
            assert await items.get("new") == {"_id": "new", "v": 2}
            assert await items.get("old9") is None
            await documents.ensure_indexes("items", [Index(fields=(("v", 1),))])

            assert not scan.done()
            assert not queued_count.done()
            release.set()
            assert await scan == 10  # its snapshot is from before the writes
            assert await queued_count == 9  # and the next read sees all of them
        finally:
            release.set()
            await documents.close()

    async def test_every_read_sees_the_writes_awaited_before_it(
        self, documents: SqliteDocuments
    ) -> None:
        items = documents.collection("items")

        async def write_then_read(i: int) -> None:
            await items.put({"_id": f"k{i}", "v": 0})
            for v in range(1, 4):
                await items.update(f"k{i}", set={"v": v})
                assert await items.get(f"k{i}") == {"_id": f"k{i}", "v": v}
                assert ids(await items.find({"_id": f"k{i}", "v": v})) == [f"k{i}"]
            await items.delete(f"k{i}")
            assert await items.count({"_id": f"k{i}"}) == 0

        await asyncio.gather(*(write_then_read(i) for i in range(30)))

    def test_the_number_of_readers_is_checked(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError):
            SqliteDocuments(path=tmp_path / "d.sqlite3", readers=0)

    # --- the file is private --------------------------------------------------------------------

    async def test_the_database_file_and_its_new_directory_are_private(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "new" / "dir" / "documents.sqlite3"
        shared_mode = stat.S_IMODE(os.stat(tmp_path).st_mode)
        previous = os.umask(0)  # the modes must not depend on the umask
        try:
            documents = SqliteDocuments(path=path)
            try:
                await documents.collection("vault").insert({"_id": "p", "name": "Ann"})
                assert await documents.collection("vault").count() == 1
                files = [
                    path,
                    path.with_name(path.name + "-wal"),
                    path.with_name(path.name + "-shm"),
                ]
                for file in files:
                    assert stat.S_IMODE(os.stat(file).st_mode) == 0o600, file
                for directory in (path.parent, path.parent.parent):
                    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
            finally:
                await documents.close()
        finally:
            os.umask(previous)
        assert stat.S_IMODE(os.stat(tmp_path).st_mode) == shared_mode  # not created: left alone


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


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # nothing listens once it is closed


async def each_call_raises_unavailable_promptly(documents: MongoDocuments) -> None:
    items = documents.collection("items")
    calls = [
        items.get("k"),
        items.insert({"_id": "k"}),
        items.update("k", inc={"n": 1}, upsert=True),
        items.find({"n": Range(gt=1)}, sort=[("n", 1)], skip=1),
        items.count_by("state"),
        items.delete_many({}),
        documents.ensure_indexes("items", [Index(fields=(("n", 1),))]),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(Unavailable):
            await call
        assert time.monotonic() - started < 5  # 0.3 s asked for; PyMongo's default is 30 s


# PyMongo's server monitor can leak its socket when the client is closed while it connects
# (pool_shared closes it on OSError and timeouts, not on cancellation); the socket is collected
# here, where the warning is expected, instead of failing some later test.
@pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning")
async def test_an_unreachable_mongodb_raises_unavailable_promptly() -> None:
    url = f"mongodb://127.0.0.1:{closed_port()}/"
    documents = MongoDocuments(url=url, database="d", server_selection_timeout=0.3)
    try:
        await each_call_raises_unavailable_promptly(documents)
    finally:
        await documents.close()
        del documents
        gc.collect()


def test_the_server_selection_timeout_is_checked() -> None:
    with pytest.raises(ValueError):
        MongoDocuments(url="mongodb://127.0.0.1:1/", database="d", server_selection_timeout=0)
