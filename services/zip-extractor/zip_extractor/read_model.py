"""The entries found in archives: a read model written only by zip-extractor.

The job status shows each archive's entries by these names. They are never the original
entry names (a Remidio path starts with the patient's name and MRN): the patient folder is
replaced by the subject id, and the original is kept in the PHI vault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pydantic import BaseModel, ConfigDict

from kit.ports import Documents, DuplicateKey, Index

__all__ = [
    "ARCHIVE_ENTRIES",
    "ENTRY_HASHES",
    "INDEXES",
    "ArchiveEntries",
    "ArchiveEntry",
    "EntryHashes",
]

ARCHIVE_ENTRIES = "archive_entries"
# MD5 of every accepted entry → the child item that holds it: the duplicate check.
ENTRY_HASHES = "entry_hashes"
INDEXES: Mapping[str, Sequence[Index]] = {
    ARCHIVE_ENTRIES: (Index(fields=(("job_id", 1), ("archive_item_id", 1), ("position", 1))),),
}


class ArchiveEntry(BaseModel):
    """One entry of an archive that became a child item (accepted or refused)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    item_id: str
    job_id: str
    archive_item_id: str
    entry_index: int  # the entry's place in the archive (child ids derive from it)
    position: int = 0  # where it is shown: by patient folder, then capture time
    display_name: str  # redacted: "<subject_id>/FOP/0.02.16.099_PM.jpg"
    entry_kind: str | None = None  # image | pdf | dicom | other; None when refused unread
    layout: str = "generic"
    encounter_id: str | None = None
    subject_id: str | None = None
    captured_at: str | None = None
    size: int | None = None
    reason: str | None = None  # why it was refused, if it was


class ArchiveEntries:
    """The repository of `ArchiveEntry` documents."""

    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(ARCHIVE_ENTRIES)

    async def put(self, entry: ArchiveEntry) -> None:
        # Keyed by the (derived) child item id: a redelivered archive rewrites the same ones.
        await self._collection.put({"_id": entry.item_id, **entry.model_dump(mode="json")})

    async def put_many(self, entries: Sequence[ArchiveEntry]) -> None:
        await self._collection.put_many(
            [{"_id": e.item_id, **e.model_dump(mode="json")} for e in entries]
        )

    async def of_job(self, job_id: str) -> list[ArchiveEntry]:
        """A job's entries, archive by archive, each archive's by patient folder and
        capture time."""
        found = await self._collection.find(
            {"job_id": job_id}, sort=[("archive_item_id", 1), ("position", 1)]
        )
        return [ArchiveEntry.model_validate(doc) for doc in found]


class EntryHashes:
    """Claims on entries' contents: the first child item holding some bytes owns their MD5,
    so the same file again (in this archive or any later one) is a duplicate."""

    def __init__(self, *, docs: Documents) -> None:
        self._collection = docs.collection(ENTRY_HASHES)

    async def claim(self, md5: str, *, item_id: str, job_id: str) -> bool:
        """True when `item_id` owns `md5` (now, or already: a redelivery is no duplicate)."""
        try:
            await self._collection.insert({"_id": md5, "item_id": item_id, "job_id": job_id})
        except DuplicateKey:
            owner = await self._collection.get(md5)
            return owner is not None and owner.get("item_id") == item_id
        return True
