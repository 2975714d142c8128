"""Documents in one SQLite file: the embedded adapter of the `Documents` port.

Production code for small sites. One table holds every collection: ``(collection, id, body)``
with `body` the document as JSON (``_id`` included). Filters are equality on dotted paths,
evaluated with `json_extract`; there are no secondary indexes, so a `find` reads the whole
collection; that is fine for the tens of thousands of documents a small site holds.

Several processes may open the same file: WAL journal, a 30 s busy timeout, and
read-modify-write updates inside ``BEGIN IMMEDIATE`` so they serialise across processes.
Within one instance every sqlite call runs on its single worker thread, in order.

The document rules below (`check_document`, `check_where`, `check_update`) are shared with the
MongoDB adapter so both accept and refuse the same documents.

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
- `sort` on fields of one type per field; documents missing the field come first ascending and
  last descending; ties are broken by ``_id`` ascending.
- `update`: ``set`` and ``inc`` take dotted paths (missing documents on the way are created);
  ``_id``, overlapping paths (``a`` with ``a.b``), ``$inc`` of a non-number and a path through
  a non-document raise `ValueError`; a missing field is incremented from 0.
Not shared, so do not rely on them: mixed-type sort order, paths that step *through* arrays
(``items.name`` over a list of dicts), numeric path segments as array positions in filters.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kit.ports import DuplicateKey

__all__ = [
    "SqliteDocuments",
    "check_collection_name",
    "check_document",
    "check_sort",
    "check_update",
    "check_where",
]

Document = dict[str, Any]
_T = TypeVar("_T")

_COLLECTION_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,62}")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_BUSY_TIMEOUT_SECONDS = 30.0

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
    """Equality filters only: dotted paths to JSON values (no ``$`` operators)."""
    if where is None:
        return {}
    for path, value in where.items():
        _path_segments(path)
        _check_value(value, path)
    return dict(where)


def check_sort(sort: Sequence[tuple[str, int]], limit: int) -> None:
    for path, direction in sort:
        _path_segments(path)
        if direction not in (1, -1):
            raise ValueError(f"sort direction for {path!r} must be 1 or -1, not {direction!r}")
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 means no limit), not {limit}")


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


# --- SQL for filters and sorts ----------------------------------------------------------------


def _json_path(path: str) -> str:
    return "$" + "".join(f'."{segment}"' for segment in path.split("."))


class _Params:
    """Named SQL parameters, collected while the statement is built."""

    def __init__(self, **initial: Any) -> None:
        self.values: dict[str, Any] = dict(initial)

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


def _match(type_sql: str, value_sql: str, value: Any, params: _Params) -> str:
    """SQL that is true when the JSON value described by (type, value) equals `value`."""
    if value is None:
        return f"({type_sql} IS NULL OR {type_sql} = 'null')"
    if isinstance(value, bool):
        return f"{type_sql} = '{'true' if value else 'false'}'"
    if isinstance(value, (int, float)):
        return f"({type_sql} IN ('integer', 'real') AND {value_sql} = {params(value)})"
    if isinstance(value, str):
        return f"({type_sql} = 'text' AND {value_sql} = {params(value)})"
    kind = "object" if isinstance(value, dict) else "array"
    return f"({type_sql} = '{kind}' AND {value_sql} = json({params(_dumps(value))}))"


def _where_sql(where: Mapping[str, Any], params: _Params) -> str:
    clauses: list[str] = []
    for path, value in where.items():
        if path == "_id" and isinstance(value, str):
            clauses.append(f"id = {params(value)}")
            continue
        json_path = params(_json_path(path))
        field = _match(
            f"json_type(body, {json_path})", f"json_extract(body, {json_path})", value, params
        )
        if isinstance(value, (dict, list)):
            clauses.append(field)
            continue
        # MongoDB semantics: a scalar also matches an array that contains it.
        element = _match("element.type", "element.value", value, params)
        clauses.append(
            f"({field} OR (json_type(body, {json_path}) = 'array' AND EXISTS "
            f"(SELECT 1 FROM json_each(body, {json_path}) AS element WHERE {element})))"
        )
    return " AND ".join(clauses) or "1"


def _order_sql(sort: Sequence[tuple[str, int]], params: _Params) -> str:
    terms: list[str] = []
    for path, direction in sort:
        order = "ASC" if direction == 1 else "DESC"
        if path == "_id":
            terms.append(f"id {order}")
        else:
            terms.append(f"json_extract(body, {params(_json_path(path))}) {order}")
    if not any(path == "_id" for path, _ in sort):
        terms.append("id ASC")
    return " ORDER BY " + ", ".join(terms)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


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

        await self._owner._run(run)

    async def get(self, doc_id: str) -> Document | None:
        def run(db: sqlite3.Connection) -> Document | None:
            row = db.execute(
                "SELECT body FROM documents WHERE collection = ? AND id = ?",
                (self._name, doc_id),
            ).fetchone()
            return None if row is None else _loads(row[0])

        return await self._owner._run(run)

    async def put(self, doc: Document) -> None:
        doc_id = check_document(doc)
        body = _dumps(doc)

        def run(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO documents (collection, id, body) VALUES (?, ?, ?) "
                "ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
                (self._name, doc_id, body),
            )

        await self._owner._run(run)

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
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        return await self._owner._run(run)

    async def find(
        self,
        where: Mapping[str, Any] | None = None,
        *,
        sort: Sequence[tuple[str, int]] = (),
        limit: int = 0,
    ) -> list[Document]:
        conditions = check_where(where)
        check_sort(sort, limit)
        params = _Params(collection=self._name)
        sql = (
            "SELECT body FROM documents WHERE collection = :collection AND "
            f"{_where_sql(conditions, params)}{_order_sql(sort, params)}"
        )
        if limit:
            sql += f" LIMIT {params(limit)}"

        def run(db: sqlite3.Connection) -> list[Document]:
            return [_loads(body) for (body,) in db.execute(sql, params.values)]

        return await self._owner._run(run)

    async def count(self, where: Mapping[str, Any] | None = None) -> int:
        params = _Params(collection=self._name)
        sql = "SELECT count(*) FROM documents WHERE collection = :collection AND " + _where_sql(
            check_where(where), params
        )

        def run(db: sqlite3.Connection) -> int:
            (total,) = db.execute(sql, params.values).fetchone()
            return int(total)

        return await self._owner._run(run)

    async def delete(self, doc_id: str) -> bool:
        def run(db: sqlite3.Connection) -> bool:
            cursor = db.execute(
                "DELETE FROM documents WHERE collection = ? AND id = ?", (self._name, doc_id)
            )
            return cursor.rowcount > 0

        return await self._owner._run(run)


def _loads(body: str) -> Document:
    doc: Document = json.loads(body)
    return doc


def _copy(value: Any) -> Any:
    # Values from the caller must not alias into the stored document.
    return json.loads(_dumps(value)) if isinstance(value, (dict, list)) else value


class SqliteDocuments:
    """`Documents` in the SQLite file at `path` (created with its parent directory if needed)."""

    def __init__(self, *, path: Path) -> None:
        self.path = Path(path)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-docs")
        self._db: sqlite3.Connection | None = None
        self._closed = False

    def collection(self, name: str) -> _SqliteCollection:
        check_collection_name(name)
        return _SqliteCollection(self, name)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_SECONDS,
            isolation_level=None,  # autocommit; transactions are explicit
            check_same_thread=False,  # only ever used on the worker thread, but closed there too
        )
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.execute(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._closed:
            raise RuntimeError("SqliteDocuments is closed")

        def call() -> _T:
            if self._db is None:
                self._db = self._connect()
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._worker, call)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def close_db() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._worker, close_db)
        self._worker.shutdown(wait=False)
