"""Documents in one SQLite file: the embedded adapter of the `Documents` port.

Production code for small sites. One table holds every collection: ``(collection, id, body)``
with `body` the document as JSON (``_id`` included). Filters, sorts and groupings are SQL on
`json_extract`, with each JSON path written into the statement as a literal, not bound as a
parameter: SQLite uses an expression index only for a query holding the very same expression.
`ensure_indexes` creates ``(collection, json_extract(body, '$."field"') ..., id)`` indexes that
filters and sorts on those fields then use, and the first time it runs in an instance it
refreshes the planner's statistics (ANALYZE); without an index a `find` reads the whole
collection.

Concurrency. Several processes may open the same file: WAL journal, a 30 s busy timeout, and
read-modify-write updates inside ``BEGIN IMMEDIATE`` so they serialise across processes.
Within one instance every write runs, in order, on one writer thread with its own connection,
and reads run on other connections (WAL lets readers and one writer work at once): `find`,
`count` and `count_by` on a small pool (`readers`), `get` on a connection of its own. So a
slow scan holds up neither a write nor a lookup by id. With one thread for everything, two
clients polling a heavy list pushed a one-image upload from 65 ms to 1.4 s (p95); measured at
100,000 documents with two clients polling a list that reads them all, an update's p95 went
from 1.3 s to 24 ms and a get's from 1.2 s to 7 ms with this split. An awaited write is
committed, so every read started after it sees it.

The file is private (documents include the PHI vault): created with mode 0600, which SQLite
gives its -wal and -shm files too, in a directory created 0700 when it is missing.

The document rules below (`check_document`, `check_where`, `check_update`, ...) are shared with
the MongoDB adapter so both accept and refuse the same documents.

**Documents are plain JSON**: dicts with string keys, lists, str, int (64-bit), finite float,
bool and None; exactly what `json.loads` produces. Anything else, notably `datetime`, is
refused with a `TypeError` *by both adapters* (MongoDB would store a BSON date and SQLite could
not). Store instants as ISO-8601 strings in UTC, ``datetime.now(UTC).isoformat()``; written
the same way they sort chronologically as strings. Refused with a `ValueError`: field names
that are empty, start with ``$`` or contain ``.`` or ``"`` (MongoDB's rules plus JSON-path
quoting), integers beyond 64 bits, NaN/infinity, and an array directly inside an array
(FerretDB v1 cannot store ``[[1, 2]]``; use ``[{"xy": [1, 2]}]``).

Query semantics shared with MongoDB (and pinned by the contract tests):
- ``{"a.b": v}`` matches documents whose nested field equals `v`; numbers compare by value
  (``1 == 1.0``), ``True`` only matches booleans, ``None`` matches null *or missing*, a dict or
  list value must match exactly (key order included); a scalar also matches an array field
  that contains it (``{"tags": "x"}`` matches ``{"tags": ["x", "y"]}``).
- ``{"at": Range(gte="2026-01-01", lt="2026-02-01")}`` (`kit.ports.Range`): strings compare
  lexicographically by code point, numbers by value; only values of the bounds' kind match, so
  a missing field, null, a boolean or a document never does.
- ``{"site": AnyOf(["a", "b"])}`` (`kit.ports.AnyOf`): equal to one of the values, each by
  the equality rules above (an array field matches when it contains one of them, ``None``
  matches null or missing); ``AnyOf([])`` matches nothing.
- Operators are typed values, never ``$`` strings: a ``$`` field name is refused, and a
  `Range` or `AnyOf` only counts as the value of a field of the filter itself.
- `find`: `sort` on fields of one type per field; documents missing the field come first
  ascending and last descending; ties are broken by ``_id`` ascending; then `skip` documents
  are left out and at most `limit` (0: no limit) returned.
- `count_by(field)`: matching documents per value of `field`, null and missing together under
  None, ``1`` and ``1.0`` one value; a matching document holding an array or a document there
  raises `ValueError`.
- `delete_many(where)` returns how many it deleted; ``{}`` deletes the whole collection.
- `update`: ``set`` and ``inc`` take dotted paths (missing documents on the way are created);
  ``_id``, overlapping paths (``a`` with ``a.b``), ``$inc`` of a non-number and a path through
  a non-document raise `ValueError`; a missing field is incremented from 0.
- `ensure_indexes` is idempotent; a unique index makes `insert`/`put`/`update` raise
  `DuplicateKey` for a second document with the same values (1 and 1.0 are the same), and
  `ensure_indexes` itself raises it when existing documents already break the index; an index
  declared again with the other uniqueness raises `ValueError` (drop the old one by hand).
Not shared, so do not rely on them: mixed-type sort order, paths that step *through* arrays
(``items.name`` over a list of dicts), numeric path segments as array positions in filters, a
`Range` on a field holding an array (MongoDB matches when each bound is met by some element,
SQLite matches no array), which key `count_by` reports for a field holding both booleans and
the numbers 0/1 (``True == 1`` as a Python dict key), several documents lacking the fields of
a unique index (SQLite and FerretDB v1 allow it, MongoDB allows one), and a unique index on a
field holding arrays (MongoDB indexes each element, SQLite the whole array) or booleans
(SQLite takes true for 1 there).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kit.ports import AnyOf, DuplicateKey, Index, Range, Scalar

__all__ = [
    "SqliteDocuments",
    "check_collection_name",
    "check_delete_filter",
    "check_document",
    "check_field",
    "check_indexes",
    "check_sort",
    "check_update",
    "check_where",
]

Document = dict[str, Any]
_T = TypeVar("_T")

_COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BUSY_TIMEOUT_SECONDS = 30.0
_DEFAULT_READERS = 4
_REANALYSE_AFTER_WRITES = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (collection, id)
)
"""


# --- rules shared by both adapters ------------------------------------------------------------


def check_collection_name(name: str) -> None:
    if not _COLLECTION_NAME.fullmatch(name):
        raise ValueError(
            f"invalid collection name {name!r}: 1-63 letters, digits, '_' or '-', "
            "starting with a letter"
        )


def _check_field_name(name: object, where: str) -> None:
    if not isinstance(name, str):
        raise TypeError(f"{where}: field names must be str, not {type(name).__name__}")
    if not name or name.startswith("$") or "." in name or '"' in name or "\x00" in name:
        raise ValueError(
            f"{where}: invalid field name {name!r} (empty, starts with '$', or contains "
            "'.', '\"' or NUL)"
        )


def _check_value(value: object, where: str) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{where}: integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a JSON number")
        return
    if isinstance(value, dict):
        for name, item in value.items():
            _check_field_name(name, where)
            _check_value(item, f"{where}.{name}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            if isinstance(item, list):
                raise ValueError(
                    f"{where}[{index}]: an array directly inside an array is not supported "
                    "(FerretDB v1 refuses it); wrap the inner one in an object"
                )
            _check_value(item, f"{where}[{index}]")
        return
    hint = (
        "; store instants as ISO-8601 strings, e.g. datetime.now(UTC).isoformat()"
        if hasattr(value, "isoformat")
        else ""
    )
    raise TypeError(
        f"{where}: {type(value).__name__} is not a JSON type (dict, list, str, int, float, "
        f"bool, None){hint}"
    )


def check_document(doc: Mapping[str, Any]) -> str:
    """Refuse anything that is not a plain JSON document with a string `_id`; return the id."""
    if not isinstance(doc, dict):
        raise TypeError(f"a document must be a dict, not {type(doc).__name__}")
    doc_id = doc.get("_id")
    if not isinstance(doc_id, str) or not doc_id:
        raise ValueError(f"a document needs a non-empty str _id, got {doc_id!r}")
    for name, value in doc.items():
        _check_field_name(name, "document")
        _check_value(value, name)
    return doc_id


def _path_segments(path: object) -> list[str]:
    if not isinstance(path, str):
        raise TypeError(f"field paths must be str, not {type(path).__name__}")
    segments = path.split(".")
    for segment in segments:
        _check_field_name(segment, f"path {path!r}")
    return segments


def check_where(where: Mapping[str, Any] | None) -> dict[str, Any]:
    """Dotted paths to JSON values (equality), `Range`s or `AnyOf`s; no ``$`` operators."""
    if where is None:
        return {}
    for path, value in where.items():
        _path_segments(path)
        if isinstance(value, Range):
            for name, bound in value.bounds():
                _check_value(bound, f"{path} {name}")
        elif isinstance(value, AnyOf):
            for item in value.values:
                _check_value(item, f"{path} AnyOf")
        else:
            _check_value(value, path)
    return dict(where)


def check_delete_filter(where: Mapping[str, Any]) -> dict[str, Any]:
    """`check_where`, but a filter is required: ``{}`` deletes everything, None is a mistake."""
    if where is None:
        raise TypeError("delete_many needs a filter ({} deletes the whole collection)")
    return check_where(where)


def check_field(field: str) -> None:
    """A dotted path, as `count_by` groups by."""
    _path_segments(field)


def check_sort(sort: Sequence[tuple[str, int]], limit: int, skip: int = 0) -> None:
    for path, direction in sort:
        _path_segments(path)
        if isinstance(direction, bool) or direction not in (1, -1):
            raise ValueError(f"sort direction for {path!r} must be 1 or -1, not {direction!r}")
    for name, value in (("limit", limit), ("skip", skip)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {value!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 means no limit), not {limit}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, not {skip}")


def check_indexes(indexes: Sequence[Index]) -> list[Index]:
    """`Index` values (their shape is checked when they are made) on valid field paths."""
    checked: list[Index] = []
    for index in indexes:
        if not isinstance(index, Index):
            raise TypeError(f"indexes are kit.ports.Index values, not {index!r}")
        for path, _ in index.fields:
            _path_segments(path)
        checked.append(index)
    return checked


def check_update(set: Mapping[str, Any] | None, inc: Mapping[str, int] | None) -> None:
    """MongoDB's update rules, enforced up front so both adapters fail the same way."""
    paths: list[list[str]] = []
    for path, value in (set or {}).items():
        paths.append(_path_segments(path))
        _check_value(value, path)
    for path, amount in (inc or {}).items():
        paths.append(_path_segments(path))
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise TypeError(f"inc {path!r}: amount must be int or float, not {amount!r}")
        _check_value(amount, path)
    for segments in paths:
        if segments[0] == "_id":
            raise ValueError("_id cannot be updated")
    for i, first in enumerate(paths):
        for second in paths[i + 1 :]:
            shorter = min(len(first), len(second))
            if first[:shorter] == second[:shorter]:
                raise ValueError(
                    f"updating {'.'.join(first)!r} and {'.'.join(second)!r} together conflicts"
                )


# --- applying an update in Python (the SQLite side of `update`) -------------------------------


def _parent_of(doc: Document, segments: list[str], full: str) -> dict[str, Any] | list[Any]:
    """The container that holds the last segment, creating missing documents on the way."""
    node: Any = doc
    for segment in segments[:-1]:
        if isinstance(node, dict):
            if segment not in node:
                node[segment] = {}
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit():
            index = int(segment)
            if index >= len(node):
                node.extend([None] * (index - len(node)))
                node.append({})
            node = node[index]
        else:
            raise ValueError(f"cannot update {full!r}: {segment!r} is not inside a document")
    if isinstance(node, dict) or (isinstance(node, list) and segments[-1].isdigit()):
        return node
    raise ValueError(f"cannot update {full!r}: its parent is not a document")


_MISSING = object()


def _set_path(doc: Document, path: str, value: Any) -> None:
    segments = path.split(".")
    parent = _parent_of(doc, segments, path)
    if isinstance(parent, list):
        index = int(segments[-1])
        parent.extend([None] * (index + 1 - len(parent)))
        parent[index] = value
    else:
        parent[segments[-1]] = value


def _inc_path(doc: Document, path: str, amount: int | float) -> None:
    segments = path.split(".")
    parent = _parent_of(doc, segments, path)
    current: Any
    if isinstance(parent, list):
        index = int(segments[-1])
        current = parent[index] if index < len(parent) else _MISSING
    else:
        current = parent.get(segments[-1], _MISSING)
    if current is _MISSING:
        current = 0
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ValueError(f"cannot increment {path!r}: it holds {current!r}, not a number")
    _set_path(doc, path, current + amount)


# --- SQL for filters, sorts and indexes -------------------------------------------------------


def _json_path(path: str) -> str:
    return "$" + "".join(f'."{segment}"' for segment in path.split("."))


def _path_literal(path: str) -> str:
    """The JSON path of `path` as an SQL string literal. A literal, not a bound parameter,
    because SQLite uses an expression index only for a query holding the very same expression;
    safe because field names are checked (no ``"``, ``.`` or NUL) and ``'`` is doubled."""
    return "'" + _json_path(path).replace("'", "''") + "'"


def _value_sql(path: str) -> str:
    return f"json_extract(body, {_path_literal(path)})"


def _type_sql(path: str) -> str:
    return f"json_type(body, {_path_literal(path)})"


_NUMBER_TYPES = "('integer', 'real')"
_RANGE_OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}


class _Params:
    """Named SQL parameters, collected while the statement is built."""

    def __init__(self, **initial: Any) -> None:
        self.values: dict[str, Any] = dict(initial)

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


def _listed(values: Sequence[Any], params: _Params) -> str:
    """``= :p`` for one value, else ``IN`` a JSON array: one parameter however many values
    (SQLite caps the number of parameters of a statement)."""
    if len(values) == 1:
        return f"= {params(values[0])}"
    return f"IN (SELECT value FROM json_each({params(_dumps(list(values)))}))"


def _any_of_sql(
    path: str, values: Sequence[Scalar], params: _Params, *, arrays: bool = True
) -> str:
    """True when the field equals one of the scalars `values`, or (unless `arrays` is False)
    is an array holding one."""
    if path == "_id":
        # _id is always a non-empty str, kept in the `id` column. Only strings are looked up:
        # the column's TEXT affinity would turn 1 into "1" and match it.
        ids = [value for value in values if isinstance(value, str)]
        return f"id {_listed(ids, params)}" if ids else "0"
    value, kind = _value_sql(path), _type_sql(path)
    scalar: list[str] = []
    element: list[str] = []
    strings = [v for v in values if isinstance(v, str)]
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if strings:
        listed = _listed(strings, params)
        scalar.append(f"({value} {listed} AND {kind} = 'text')")
        element.append(f"(element.type = 'text' AND element.value {listed})")
    if numbers:
        listed = _listed(numbers, params)
        scalar.append(f"({value} {listed} AND {kind} IN {_NUMBER_TYPES})")
        element.append(f"(element.type IN {_NUMBER_TYPES} AND element.value {listed})")
    for flag in sorted({v for v in values if isinstance(v, bool)}):
        name = "true" if flag else "false"
        # json_extract gives a boolean as 1 or 0: the value test is what an index can serve.
        scalar.append(f"({value} = {int(flag)} AND {kind} = '{name}')")
        element.append(f"element.type = '{name}'")
    if any(v is None for v in values):
        scalar.append(f"{value} IS NULL")  # JSON null, or no such field
        element.append("element.type = 'null'")
    if not scalar:
        return "0"
    if not arrays:
        return "(" + " OR ".join(scalar) + ")"
    # MongoDB semantics: a scalar also matches an array that contains it. json_extract gives
    # an array as its JSON text, which starts with "[": that range adds nothing to the
    # json_type test but lets SQLite find the arrays through an index on the field as well
    # (a MULTI-INDEX OR) instead of reading every document.
    array = (
        f"({value} >= '[' AND {value} < '\\' AND {kind} = 'array' AND EXISTS "
        f"(SELECT 1 FROM json_each(body, {_path_literal(path)}) AS element "
        f"WHERE {' OR '.join(element)}))"
    )
    return "(" + " OR ".join([*scalar, array]) + ")"


def _range_sql(path: str, bounds: Range, params: _Params) -> str:
    given = bounds.bounds()
    strings = isinstance(given[0][1], str)
    if path == "_id":
        if not strings:
            return "0"
        return "(" + " AND ".join(f"id {_RANGE_OPERATORS[o]} {params(b)}" for o, b in given) + ")"
    value = _value_sql(path)
    # Each bound on its own, ANDed with the type test, so an index on the field serves it.
    # Arrays never match (json_type is 'array'), a difference from MongoDB the docstring states.
    terms = [f"{value} {_RANGE_OPERATORS[o]} {params(b)}" for o, b in given]
    kind = _type_sql(path)
    terms.append(f"{kind} = 'text'" if strings else f"{kind} IN {_NUMBER_TYPES}")
    return "(" + " AND ".join(terms) + ")"


def _equals_sql(path: str, value: Any, params: _Params) -> str:
    if isinstance(value, (dict, list)):
        kind = "object" if isinstance(value, dict) else "array"
        return (
            f"({_type_sql(path)} = '{kind}' AND {_value_sql(path)} = json({params(_dumps(value))}))"
        )
    return _any_of_sql(path, [value], params)


def _where_sql(where: Mapping[str, Any], params: _Params) -> str:
    clauses: list[str] = []
    for path, value in where.items():
        if isinstance(value, Range):
            clauses.append(_range_sql(path, value, params))
        elif isinstance(value, AnyOf):
            clauses.append(_any_of_sql(path, value.values, params))
        else:
            clauses.append(_equals_sql(path, value, params))
    return " AND ".join(clauses) or "1"


def _scalar_where_sql(where: Mapping[str, Any], params: _Params) -> tuple[str, list[str]]:
    """`where` for documents whose filtered fields hold no arrays (an index serves it, sort
    included), and the fields whose array branch it leaves out."""
    clauses: list[str] = []
    arrays: list[str] = []
    for path, value in where.items():
        if isinstance(value, Range):
            clauses.append(_range_sql(path, value, params))
        elif isinstance(value, AnyOf) or not isinstance(value, (dict, list)):
            values = value.values if isinstance(value, AnyOf) else [value]
            clauses.append(_any_of_sql(path, values, params, arrays=False))
            if path != "_id":
                arrays.append(path)
        else:
            clauses.append(_equals_sql(path, value, params))
    return " AND ".join(clauses) or "1", arrays


def _holds_an_array_sql(paths: Sequence[str]) -> str:
    # The range finds arrays through an index on the field (their JSON text starts with "[").
    return (
        "("
        + " OR ".join(
            f"({_value_sql(p)} >= '[' AND {_value_sql(p)} < '\\' AND {_type_sql(p)} = 'array')"
            for p in paths
        )
        + ")"
    )


def _order_sql(sort: Sequence[tuple[str, int]]) -> str:
    terms: list[str] = []
    for path, direction in sort:
        order = "ASC" if direction == 1 else "DESC"
        terms.append(f"{'id' if path == '_id' else _value_sql(path)} {order}")
    if not any(path == "_id" for path, _ in sort):
        terms.append("id ASC")
    return " ORDER BY " + ", ".join(terms)


def _index_name(collection: str, index: Index) -> str:
    spec = json.dumps([collection, index.fields, index.unique])
    return f"docs_{collection}_{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


def _index_sql(collection: str, index: Index) -> str:
    columns = ["collection"]
    for path, direction in index.fields:
        expression = "id" if path == "_id" else _value_sql(path)
        columns.append(f"{expression} {'ASC' if direction == 1 else 'DESC'}")
    if not index.unique and all(path != "_id" for path, _ in index.fields):
        # Every sort ends with the tie-break `id ASC`; with `id` in the index that comes from
        # the index too, so sorting by its fields needs no temporary B-tree at all.
        columns.append("id")
    unique = "UNIQUE " if index.unique else ""
    return (
        f'CREATE {unique}INDEX IF NOT EXISTS "{_index_name(collection, index)}" '
        f"ON documents ({', '.join(columns)})"
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _group_key(field: str, kind: str | None, value: Any) -> Scalar:
    if kind in ("array", "object"):
        held = "an array" if kind == "array" else "a document"
        raise ValueError(
            f"count_by({field!r}): a document holds {held} there; only str, number, bool and "
            "null values can be counted by"
        )
    if kind in ("true", "false"):
        return kind == "true"
    result: Scalar = value  # None for null and for a missing field alike
    return result


# --- the adapter ------------------------------------------------------------------------------


class _SqliteCollection:
    def __init__(self, owner: SqliteDocuments, name: str) -> None:
        self._owner = owner
        self._name = name

    async def insert(self, doc: Document) -> None:
        doc_id = check_document(doc)
        body = _dumps(doc)

        def run(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?)",
                    (self._name, doc_id, body),
                )
            except sqlite3.IntegrityError:
                raise DuplicateKey(f"{self._name}/{doc_id}") from None

        await self._owner._write(run)

    async def get(self, doc_id: str) -> Document | None:
        def run(db: sqlite3.Connection) -> Document | None:
            rows = db.execute(
                "SELECT body FROM documents WHERE collection = ? AND id = ?",
                (self._name, doc_id),
            ).fetchall()
            return _loads(rows[0][0]) if rows else None

        return await self._owner._lookup(run)

    async def put(self, doc: Document) -> None:
        doc_id = check_document(doc)
        body = _dumps(doc)

        def run(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
                    (self._name, doc_id, body),
                )
            except sqlite3.IntegrityError:  # a unique index, the primary key is handled above
                raise DuplicateKey(f"{self._name}/{doc_id}: a unique index refuses it") from None

        await self._owner._write(run)

    async def put_many(self, docs: Sequence[Document]) -> None:
        rows = [(self._name, check_document(doc), _dumps(doc)) for doc in docs]
        if not rows:
            return

        def run(db: sqlite3.Connection) -> None:
            # One transaction, so one fsync for the lot (measured: 2.5 ms a document one by
            # one, about 20 µs each in a batch of 1,000).
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
                    rows,
                )
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                raise DuplicateKey(f"{self._name}: a unique index refuses a document") from None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        await self._owner._write(run, writes=len(rows))

    async def update(
        self,
        doc_id: str,
        *,
        set: Mapping[str, Any] | None = None,
        inc: Mapping[str, int] | None = None,
        upsert: bool = False,
    ) -> Document | None:
        check_update(set, inc)
        changes = dict(set or {})
        increments = dict(inc or {})

        def run(db: sqlite3.Connection) -> Document | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT body FROM documents WHERE collection = ? AND id = ?",
                    (self._name, doc_id),
                ).fetchone()
                if row is None and not upsert:
                    db.execute("ROLLBACK")
                    return None
                doc: Document = {"_id": doc_id} if row is None else _loads(row[0])
                for path, value in changes.items():
                    _set_path(doc, path, _copy(value))
                for path, amount in increments.items():
                    _inc_path(doc, path, amount)
                db.execute(
                    "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?) "
                    "ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
                    (self._name, doc_id, _dumps(doc)),
                )
                db.execute("COMMIT")
                return doc
            except BaseException as error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(error, sqlite3.IntegrityError):
                    raise DuplicateKey(
                        f"{self._name}/{doc_id}: a unique index refuses it"
                    ) from None
                raise

        return await self._owner._write(run)

    def _find_sql(
        self,
        where: Mapping[str, Any] | None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
        skip: int = 0,
    ) -> tuple[str, dict[str, Any]]:
        conditions = check_where(where)
        check_sort(sort, limit, skip)
        params = _Params(collection=self._name)
        scalar_where, array_paths = _scalar_where_sql(conditions, params)
        if sort and limit and array_paths:
            # "A scalar also matches an array holding it" makes each equality an OR, and an
            # OR keeps SQLite from reading an index in sort order: it would sort every match
            # to keep `limit` (measured at 60,000 documents: 150 ms for 100 of 20,000). So:
            # the first page of documents without arrays in those fields (in index order, it
            # stops after `limit`), plus that of documents with one, merged and cut again.
            page = f" LIMIT {params(limit + skip)}"
            order = _order_sql(sort)
            scalar = (
                f"SELECT id, body FROM documents WHERE collection = :collection AND "
                f"{scalar_where}{order}{page}"
            )
            with_arrays = (
                f"SELECT id, body FROM documents WHERE collection = :collection "
                f"AND {_holds_an_array_sql(array_paths)} AND "
                f"{_where_sql(conditions, params)}{order}{page}"
            )
            sql = (
                f"SELECT body FROM (SELECT * FROM ({scalar}) UNION ALL "
                f"SELECT * FROM ({with_arrays})){order}"
                f" LIMIT {params(limit)} OFFSET {params(skip)}"
            )
            return sql, params.values
        sql = (
            "SELECT body FROM documents WHERE collection = :collection AND "
            f"{_where_sql(conditions, params)}{_order_sql(sort)}"
        )
        if limit or skip:
            sql += f" LIMIT {params(limit or -1)} OFFSET {params(skip)}"
        return sql, params.values

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
        skip: int = 0,
    ) -> list[Document]:
        sql, values = self._find_sql(where, sort=sort, limit=limit, skip=skip)

        def run(db: sqlite3.Connection) -> list[Document]:
            return [_loads(body) for (body,) in db.execute(sql, values).fetchall()]

        return await self._owner._read(run)

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        params = _Params(collection=self._name)
        sql = "SELECT count(*) FROM documents WHERE collection = :collection AND " + _where_sql(
            check_where(where), params
        )

        def run(db: sqlite3.Connection) -> int:
            ((total,),) = db.execute(sql, params.values).fetchall()
            return int(total)

        return await self._owner._read(run)

    async def count_by(
        self, field: str, where: Mapping[str, Any] | None = None
    ) -> dict[Scalar, int]:
        check_field(field)
        params = _Params(collection=self._name)
        grouped = "'text', id" if field == "_id" else f"{_type_sql(field)}, {_value_sql(field)}"
        # Grouped by JSON type as well, or true would count as 1 (json_extract gives 1).
        sql = (
            f"SELECT {grouped}, count(*) FROM documents WHERE collection = :collection AND "
            f"{_where_sql(check_where(where), params)} GROUP BY 1, 2"
        )

        def run(db: sqlite3.Connection) -> list[tuple[str | None, Any, int]]:
            return db.execute(sql, params.values).fetchall()

        counts: dict[Scalar, int] = {}
        for kind, value, number in await self._owner._read(run):
            key = _group_key(field, kind, value)
            counts[key] = counts.get(key, 0) + int(number)  # 1 and 1.0: one key
        return counts

    async def delete(self, doc_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "DELETE FROM documents WHERE collection = ? AND id = ?", (self._name, doc_id)
            )
            return cursor.rowcount > 0

        return await self._owner._write(run)

    async def delete_many(self, where: Mapping[str, Any]) -> int:
        params = _Params(collection=self._name)
        sql = "DELETE FROM documents WHERE collection = :collection AND " + _where_sql(
            check_delete_filter(where), params
        )

        def run(db: sqlite3.Connection) -> int:
            return db.execute(sql, params.values).rowcount

        return await self._owner._write(run)


def _loads(body: str) -> Document:
    doc: Document = json.loads(body)
    return doc


def _copy(value: Any) -> Any:
    # Values from the caller must not alias into the stored document.
    return json.loads(_dumps(value)) if isinstance(value, (dict, list)) else value


def _create_private(path: Path) -> None:
    """Create the missing directories of `path` (0700) and the empty database file (0600),
    exactly these modes whatever the umask: the documents include the PHI vault. SQLite creates
    the -wal and -shm files with the mode of the database file."""
    missing: list[Path] = []
    directory = path.parent
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else, whose mode it keeps
        directory.chmod(0o700)  # mkdir's mode is masked by the umask
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # an existing file keeps the mode its owner gave it
    try:
        os.fchmod(fd, 0o600)  # the umask may have masked the mode given to open
    finally:
        os.close(fd)


def _nothing(db: sqlite3.Connection) -> None:
    return None


class _Lane:
    """Threads that each own one connection, opened on the thread's first call."""

    def __init__(
        self, *, name: str, threads: int, connect: Callable[[], sqlite3.Connection]
    ) -> None:
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._connect = connect
        # Raised when the planner's statistics change: connections then reopen, to load them.
        self.generation = 0
        self._local = threading.local()
        self._opened: list[sqlite3.Connection] = []
        self._opened_lock = threading.Lock()

    def _call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is not None and getattr(self._local, "generation", 0) != self.generation:
            # Statistics are loaded with the schema, and ANALYZE on another connection does
            # not make this one reload them (measured: a page of the grading queue at 100,000
            # documents took 600 ms on statistics of 1,000, 1 ms after a reconnect).
            with self._opened_lock:
                self._opened.remove(db)
            db.close()
            db = None
        if db is None:
            db = self._connect()
            self._local.db = db
            self._local.generation = self.generation
            with self._opened_lock:
                self._opened.append(db)
        return fn(db)

    async def run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, fn)

    def close(self) -> None:
        """Blocks until the calls already queued are done, then closes the connections."""
        self._executor.shutdown(wait=True)
        with self._opened_lock:
            for db in self._opened:
                db.close()
            self._opened.clear()


class SqliteDocuments:
    """`Documents` in the SQLite file at `path`, created private (with its parent directory)
    if needed; `readers` connections serve `find`, `count` and `count_by` side by side."""

    def __init__(self, *, path: Path, readers: int = _DEFAULT_READERS) -> None:
        if isinstance(readers, bool) or not isinstance(readers, int) or readers < 1:
            raise ValueError(f"readers must be an int >= 1, not {readers!r}")
        self.path = Path(path)
        self._writer = _Lane(name="sqlite-docs-write", threads=1, connect=self._connect_writer)
        self._lookups = _Lane(name="sqlite-docs-get", threads=1, connect=self._connect_reader)
        self._scans = _Lane(name="sqlite-docs-read", threads=readers, connect=self._connect_reader)
        self._initialised = False
        self._analysed = False  # by ensure_indexes, on the writer thread
        # Statistics go stale as a site's data grows for months without a restart: they are
        # refreshed (on the writer) once the writes since the last ANALYZE outnumber the rows.
        self._writes_since_analyse = 0
        self._rows_at_analyse = 0
        self._closed = False

    def collection(self, name: str) -> _SqliteCollection:
        check_collection_name(name)
        return _SqliteCollection(self, name)

    async def ensure_indexes(self, collection: str, indexes: Sequence[Index]) -> None:
        check_collection_name(collection)
        wanted = [
            (i, _index_name(collection, i), _index_sql(collection, i))
            for i in check_indexes(indexes)
        ]

        def run(db: sqlite3.Connection) -> None:
            existing = {
                name
                for (name,) in db.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'documents'"
                ).fetchall()
            }
            created: list[str] = []
            for index, name, statement in wanted:
                if name in existing:
                    continue
                other = Index(fields=index.fields, unique=not index.unique)
                if _index_name(collection, other) in existing:
                    raise ValueError(
                        f"{collection}: an index on {index.fields} exists with unique="
                        f"{other.unique}; an index's uniqueness is not changed here (drop the "
                        "old one by hand)"
                    )
                try:
                    db.execute(statement)
                except sqlite3.IntegrityError:
                    raise DuplicateKey(
                        f"{collection}: existing documents break unique index {index.fields}"
                    ) from None
                created.append(name)
            # Planner statistics. Without them SQLite guesses that `collection = ?` selects
            # ~10 rows, so it reads a whole collection through the primary key instead of
            # looking an equality filter up in an index (measured at 100,000 documents: a
            # count by an indexed field, 350 ms instead of 55 ms). ANALYZE reads every index
            # (~0.1 s per 100,000 documents), so the whole table is analysed once per
            # instance, at start-up, and afterwards only the indexes created since.
            if not self._analysed:
                self._analyse(db)
                self._analysed = True
            else:
                for name in created:
                    db.execute(f'ANALYZE "{name}"')
                if created:
                    self._lookups.generation += 1
                    self._scans.generation += 1

        await self._write(run)

    def _analyse(self, db: sqlite3.Connection) -> None:
        db.execute("ANALYZE documents")
        (rows,) = db.execute("SELECT count(*) FROM documents").fetchone()
        self._rows_at_analyse, self._writes_since_analyse = int(rows), 0
        self._lookups.generation += 1
        self._scans.generation += 1

    def _open(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_SECONDS,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # used on its lane's thread only, but closed from another
        )

    def _connect_writer(self) -> sqlite3.Connection:
        _create_private(self.path)
        db = self._open()
        try:
            _enter_wal(db)
            db.execute("PRAGMA synchronous = FULL")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    def _connect_reader(self) -> sqlite3.Connection:
        # Opened only once the writer has made the file (WAL mode and schema included).
        db = self._open()
        try:
            db.execute("PRAGMA query_only = ON")
        except BaseException:
            db.close()
            raise
        return db

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("SqliteDocuments is closed")

    async def _write(self, fn: Callable[[sqlite3.Connection], _T], *, writes: int = 1) -> _T:
        self._check_open()

        def call(db: sqlite3.Connection) -> _T:
            result = fn(db)
            self._writes_since_analyse += writes
            if self._analysed and self._writes_since_analyse > max(
                _REANALYSE_AFTER_WRITES, self._rows_at_analyse
            ):
                # Doubling data: fresh statistics (about 0.1 s per 100,000 documents); the
                # other connections load them with the schema change ANALYZE makes.
                self._analyse(db)
            return result

        return await self._writer.run(call)

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """On the pool of reader connections, for scans."""
        self._check_open()
        await self._initialise()
        return await self._scans.run(fn)

    async def _lookup(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """On the connection kept for lookups by id, which never wait behind a scan."""
        self._check_open()
        await self._initialise()
        return await self._lookups.run(fn)

    async def _initialise(self) -> None:
        if not self._initialised:
            await self._writer.run(_nothing)  # the writer's connection creates the file
            self._initialised = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_lanes)

    def _close_lanes(self) -> None:
        for lane in (self._scans, self._lookups, self._writer):
            lane.close()


def _enter_wal(db: sqlite3.Connection) -> None:
    """Switch the file to WAL. Two processes opening a new file at once can make this fail
    with "database is locked" at once, without waiting out the busy timeout (seen in CI on a
    loaded machine), so it is retried for as long as that timeout."""
    deadline = time.monotonic() + _BUSY_TIMEOUT_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
