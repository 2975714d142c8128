"""Changes to catalogued uploads after the fact: metadata corrections and deletions.

`UploadChanges` is the one writer of such changes to the ingest-owned collections (`uploads`,
`grading_queue`) and the object store; `UploadHistory` keeps one document per change (who,
when, from where, each field's old and new value), newest first, for the upload's history.
Both hold no PHI: metadata are reference-data ids, never names, MRNs or file names.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.envelope import utcnow
from contracts.events import ObjectRef
from ingest.read_model import CATALOGUE, GRADING_QUEUE, CatalogueRecord
from kit.ports import Documents, Index, ObjectStore

__all__ = [
    "HISTORY",
    "INDEXES",
    "METADATA_FIELDS",
    "QUEUE_FIELDS",
    "ChangeKind",
    "FieldChange",
    "RemovedUpload",
    "UploadChange",
    "UploadChanges",
    "UploadHistory",
    "metadata_changes",
]

HISTORY = "upload_history"
ChangeKind = Literal["metadata", "image", "delete"]

# The fields an editor may correct, by their names on the catalogue record; the grading queue
# copies three of them to filter by, so those are kept in step.
METADATA_FIELDS = ("hospital_id", "lab_unit_id", "camera_id", "disease_id", "area_id", "mydriatic")
QUEUE_FIELDS = ("hospital_id", "lab_unit_id", "disease_id")
# Objects an upload may reference beyond raw/clean/thumbnail: an edited image (issue 8's
# image editor) and its thumbnail, stored on the record's document as ObjectRefs.
EXTRA_OBJECT_FIELDS = ("edited", "edited_thumbnail")

INDEXES: Mapping[str, Sequence[Index]] = {
    HISTORY: (
        Index(fields=(("item_id", 1), ("at", -1))),
        Index(fields=(("announced", 1), ("at", 1))),  # the maintenance round's outbox query
    ),
}


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FieldChange(_Model):
    old: Any = None
    new: Any = None


def _new_id() -> str:
    return uuid.uuid4().hex


class UploadChange(_Model):
    """One change to one upload, as its history shows it."""

    change_id: str = Field(default_factory=_new_id)
    item_id: str
    job_id: str
    at: str = Field(default_factory=lambda: utcnow().isoformat())
    actor: str
    ip: str | None = None
    user_agent: str | None = None
    kind: ChangeKind = "metadata"
    changes: dict[str, FieldChange] = {}
    # Whether the change's event is on the bus yet (an outbox flag: a bus outage must not
    # lose the news other hospital systems follow; see `UploadHistory.unannounced`).
    announced: bool = False


class UploadHistory:
    """The history of changes to uploads: one document per change."""

    def __init__(self, *, docs: Documents) -> None:
        self._changes = docs.collection(HISTORY)

    async def record(self, change: UploadChange) -> None:
        doc = change.model_dump(mode="json")
        await self._changes.put({"_id": change.change_id, **doc})

    async def of(self, item_id: str, *, limit: int = 200) -> list[UploadChange]:
        """The upload's changes, newest first."""
        found = await self._changes.find({"item_id": item_id}, sort=[("at", -1)], limit=limit)
        return [UploadChange.model_validate(doc) for doc in found]

    async def mark_announced(self, change_id: str) -> None:
        await self._changes.update(change_id, set={"announced": True})

    async def unannounced(self, *, limit: int = 500) -> list[UploadChange]:
        """Changes whose event a bus outage held back, oldest first."""
        found = await self._changes.find({"announced": False}, sort=[("at", 1)], limit=limit)
        return [UploadChange.model_validate(doc) for doc in found]


def metadata_changes(
    record: CatalogueRecord, proposed: Mapping[str, Any]
) -> dict[str, FieldChange]:
    """The fields of `proposed` (catalogue field names) whose value differs from the record's:
    only real changes are applied and recorded."""
    changes: dict[str, FieldChange] = {}
    for field in METADATA_FIELDS:
        if field not in proposed:
            continue
        old, new = getattr(record, field), proposed[field]
        if old != new:
            changes[field] = FieldChange(old=old, new=new)
    return changes


@dataclass(frozen=True)
class RemovedUpload:
    """What deleting an upload removed."""

    record: CatalogueRecord
    objects: tuple[ObjectRef, ...]
    queue_entry: bool


def _objects_of(doc: Mapping[str, Any], record: CatalogueRecord) -> tuple[ObjectRef, ...]:
    refs = [record.raw, record.clean, record.thumbnail]
    for field in EXTRA_OBJECT_FIELDS:
        value = getattr(record, field, None) or doc.get(field)
        if isinstance(value, ObjectRef):
            refs.append(value)
        elif isinstance(value, Mapping):
            try:
                refs.append(ObjectRef.model_validate(value))
            except ValidationError:
                continue
    return tuple(dict.fromkeys(refs))  # the same object named twice is deleted once


class UploadChanges:
    """Applies metadata corrections and deletions to the catalogue, the grading queue and the
    object store."""

    def __init__(self, *, docs: Documents, store: ObjectStore) -> None:
        self._records = docs.collection(CATALOGUE)
        self._queue = docs.collection(GRADING_QUEUE)
        self._store = store

    async def apply_metadata(
        self, item_id: str, changes: Mapping[str, FieldChange]
    ) -> CatalogueRecord | None:
        """Set the new values on the record and on its grading-queue entry (if it is still
        waiting to be graded: a graded or pre-graded upload has none); the record after, or
        None if there is no such upload."""
        unknown = set(changes) - set(METADATA_FIELDS)
        if unknown:
            raise ValueError(f"not metadata fields: {sorted(unknown)}")
        values = {field: change.new for field, change in changes.items()}
        if not values:
            doc = await self._records.get(item_id)
        else:
            doc = await self._records.update(item_id, set=values)
        if doc is None:
            return None
        queued = {f: v for f, v in values.items() if f in QUEUE_FIELDS}
        if queued:
            await self._queue.update(item_id, set=queued)  # no entry: nothing to do
        return CatalogueRecord.model_validate(doc)

    async def delete(self, item_id: str) -> RemovedUpload | None:
        """Delete the upload: every object it references, its queue entry, then its record;
        None if there is no such upload. The record goes last so that a delete interrupted
        by a store outage can be repeated (deleting a missing object is not an error) and
        never leaves objects nobody knows of."""
        doc = await self._records.get(item_id)
        if doc is None:
            return None
        record = CatalogueRecord.model_validate(doc)
        objects = _objects_of(doc, record)
        for ref in objects:
            await self._store.delete(ref.bucket, ref.key)
        queue_entry = await self._queue.delete(item_id)
        await self._records.delete(item_id)
        return RemovedUpload(record=record, objects=objects, queue_entry=queue_entry)
