"""Zip-extractor: an uploaded archive becomes one child item per entry, each stored, scanned
and announced, or refused with its own reason; then one event for the archive as a whole.

Child item ids, encounter ids and (through the runtime) event ids all derive from the archive
item id, so a redelivered archive makes the very same children, objects and events. Names
and MRNs from patient folders go to the PHI vault only; events, object keys, documents and
log lines carry subject ids and redacted display names.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import tempfile
import threading
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from contracts.events import (
    ArchiveEntryExtracted,
    ArchiveExtracted,
    EncounterRef,
    Event,
    RejectedEntry,
    UploadReceived,
)
from contracts.topics import ARCHIVE_ENTRIES, ARCHIVES_EXTRACTED, UPLOADS_RECEIVED
from kit.blobs import RAW, to_ref
from kit.phi import PhiRecord, PhiVault, subject_id
from kit.ports import (
    Documents,
    MalwareScanner,
    ObjectStore,
    ScanFailed,
    ScanStream,
    StoredObject,
)
from kit.runtime import Emit, Route, emit_status
from kit.settings import PlatformSettings
from zip_extractor.archive import (
    HEAD,
    Entry,
    EntryRefused,
    InvalidArchive,
    Limits,
    TotalBudget,
    classify,
    list_entries,
    read_entry,
    total_too_large_reason,
)
from zip_extractor.layouts import GENERIC, Placement, display_name, place_entries
from zip_extractor.read_model import ArchiveEntries, ArchiveEntry, EntryHashes

__all__ = [
    "DUPLICATE",
    "NAME",
    "Extractor",
    "child_item_id",
    "extract_archive",
    "limits_from_settings",
    "malicious_reason",
    "routes",
    "unscannable_reason",
]

NAME = "zip-extractor"
DUPLICATE = "Duplicate file"
log = logging.getLogger(__name__)
_IDS = uuid.UUID("6f1b7d0e-3c1a-4d52-9a59-8f1f0c9e2b10")  # namespace of derived ids
# Inflated chunks waiting for the store: inflating runs in a thread of its own, ahead of the
# store's hashing and writing (see bench/zip_extract.py for what the overlap buys).
_READ_AHEAD = 2
_PARALLEL_ENTRIES = 3


def unscannable_reason(detail: str) -> str:
    return f"Could not be scanned for malicious content ({detail})"


def malicious_reason(signature: str | None) -> str:
    return f"Malicious content detected ({signature or 'unknown'})"


def child_item_id(archive_item_id: str, entry_index: int) -> str:
    """The child item of entry `entry_index`: the same on every delivery of the archive."""
    return uuid.uuid5(_IDS, f"{archive_item_id}/entry/{entry_index}").hex


def _encounter_id(archive_item_id: str, subject: str, capture_date: str) -> str:
    return uuid.uuid5(_IDS, f"{archive_item_id}/encounter/{subject}/{capture_date}").hex


def limits_from_settings(settings: PlatformSettings) -> Limits:
    return Limits.from_mb(
        max_entries=settings.zip_max_entries,
        max_entry_mb=settings.zip_max_entry_mb,
        max_total_mb=settings.zip_max_total_mb,
        max_ratio=settings.zip_max_ratio,
    )


@dataclass(frozen=True, kw_only=True)
class Extractor:
    """What the handler works with."""

    store: ObjectStore
    docs: Documents
    scanner: MalwareScanner
    subject_key: bytes
    limits: Limits = field(default_factory=Limits)


@dataclass
class _Child:
    entry: Entry
    placement: Placement
    item_id: str
    subject_id: str | None
    encounter: EncounterRef | None
    display_name: str


async def _download(store: ObjectStore, bucket: str, key: str, into: IO[bytes]) -> None:
    async for chunk in store.get(bucket, key):
        await asyncio.to_thread(into.write, chunk)
    await asyncio.to_thread(into.flush)


async def _inflated(
    spool: BinaryIO, entry: Entry, *, limits: Limits, budget: TotalBudget
) -> AsyncGenerator[bytes, None]:
    """`read_entry` in a worker thread, up to `_READ_AHEAD` chunks ahead of the consumer."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    slots = threading.Semaphore(_READ_AHEAD)
    stop = threading.Event()

    def hand_over(item: bytes | BaseException | None) -> None:
        loop.call_soon_threadsafe(ready.put_nowait, item)

    def work() -> None:
        try:
            for chunk in read_entry(spool, entry, limits=limits, budget=budget):
                while not slots.acquire(timeout=0.05):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                hand_over(chunk)
            hand_over(None)
        except BaseException as error:  # handed to the consumer, raised there
            hand_over(error)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await ready.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            slots.release()
            yield item
    finally:
        stop.set()
        await asyncio.wait([worker])


async def _scanned(chunks: AsyncIterator[bytes], scan: ScanStream) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        await scan.feed(chunk)
        yield chunk


async def _store_entry(
    x: Extractor, spool: BinaryIO, child: _Child, *, job_id: str, budget: TotalBudget
) -> tuple[StoredObject, str]:
    """Store and scan one entry; (the object, its kind) or `EntryRefused`. Every byte that
    is read is scanned, also those of an entry refused for its type: "Malicious content"
    is the reason that matters most (EICAR in a ".jpg" is text, and malware)."""
    chunks = _inflated(spool, child.entry, limits=x.limits, budget=budget)
    key = f"{job_id}/{child.item_id}"  # never an original name in a key
    try:
        async with x.scanner.stream() as scan:
            head = await anext(chunks, b"")
            try:
                kind, mime = classify(head[:HEAD])
            except EntryRefused as refused:
                await scan.feed(head)
                async for chunk in chunks:
                    await scan.feed(chunk)
                verdict = await scan.verdict()
                if verdict.infected:
                    raise EntryRefused(malicious_reason(verdict.signature)) from refused
                raise

            async def everything() -> AsyncIterator[bytes]:
                if head:
                    yield head
                async for chunk in chunks:
                    yield chunk

            stored = await x.store.put(RAW, key, _scanned(everything(), scan), content_type=mime)
            try:
                verdict = await scan.verdict()
            except BaseException:
                await x.store.delete(RAW, key)  # nothing unscanned stays; a retry stores it again
                raise
    finally:
        await chunks.aclose()
    if verdict.infected:
        await x.store.delete(RAW, key)
        raise EntryRefused(malicious_reason(verdict.signature))
    return stored, kind


async def _stored_or_refused(
    x: Extractor, spool: BinaryIO, child: _Child, *, job_id: str, budget: TotalBudget
) -> tuple[StoredObject | None, str | None, str | None]:
    try:
        stored, kind = await _store_entry(x, spool, child, job_id=job_id, budget=budget)
    except EntryRefused as refused:
        return None, None, refused.reason
    except ScanFailed as failed:
        # The scanner refused this stream (e.g. over its StreamMaxLength): never kept unscanned.
        return None, None, unscannable_reason(failed.reason)
    return stored, kind, None


async def _claimed(x: Extractor, child: _Child, stored: StoredObject, job_id: str) -> bool:
    """Claim the entry's MD5; a duplicate's object is removed (its twin keeps its own)."""
    if await EntryHashes(docs=x.docs).claim(stored.md5, item_id=child.item_id, job_id=job_id):
        return True
    await x.store.delete(RAW, stored.key)
    return False


def _site(event: UploadReceived) -> str:
    return event.metadata.hospital_id if event.metadata is not None else ""


def _children(event: UploadReceived, entries: Sequence[Entry], key: bytes) -> list[_Child]:
    """One child per entry, ordered for display: by patient folder (as first met), then by
    capture time (an export's entries are not stored in time order), then as stored."""
    placements = place_entries([e.name for e in entries])
    subjects: dict[str, str] = {}
    encounters: dict[tuple[str, str], EncounterRef] = {}
    children: list[_Child] = []
    for entry, placement in zip(entries, placements, strict=True):
        subject, encounter = None, None
        if placement.folder is not None:
            folder = placement.folder
            if folder.mrn not in subjects:
                subjects[folder.mrn] = subject_id(mrn=folder.mrn, site=_site(event), key=key)
            subject = subjects[folder.mrn]
            visit = (subject, folder.capture_date)
            if visit not in encounters:
                encounters[visit] = EncounterRef(
                    encounter_id=_encounter_id(event.item_id, *visit),
                    subject_id=subject,
                    capture_date=folder.capture_date,
                )
            encounter = encounters[visit]
        children.append(
            _Child(
                entry=entry,
                placement=placement,
                item_id=child_item_id(event.item_id, entry.index),
                subject_id=subject,
                encounter=encounter,
                display_name=display_name(placement, subject_id=subject),
            )
        )
    order = {e.encounter_id: n for n, e in enumerate(encounters.values())}

    def sort_key(child: _Child) -> tuple[int, bool, str, int]:
        visit = order[child.encounter.encounter_id] if child.encounter else len(order)
        at = child.placement.captured_at
        return visit, at is None, at or "", child.entry.index

    return sorted(children, key=sort_key)


async def _record_phi(x: Extractor, event: UploadReceived, children: Sequence[_Child]) -> None:
    vault = PhiVault(docs=x.docs)
    seen: dict[str, int] = {}
    folders: set[tuple[str, str]] = set()
    for child in children:
        folder = child.placement.folder
        if folder is None or child.subject_id is None:
            continue
        if (child.subject_id, folder.folder) not in folders:
            folders.add((child.subject_id, folder.folder))
            # One record per folder: a second visit of the same person in a batch gets its own.
            count = seen.get(child.subject_id, 0)
            seen[child.subject_id] = count + 1
            await vault.record(
                PhiRecord(
                    subject_id=child.subject_id,
                    source_kind="patient_folder",
                    job_id=event.job_id,
                    item_id=event.item_id if count == 0 else f"{event.item_id}#{count}",
                    site=_site(event),
                    mrn=folder.mrn,
                    name=folder.name,
                    capture_date=folder.capture_date,
                    original=folder.folder,
                )
            )
        await vault.record(
            PhiRecord(
                subject_id=child.subject_id,
                source_kind="entry_name",
                job_id=event.job_id,
                item_id=child.item_id,
                site=_site(event),
                mrn=folder.mrn,
                original=child.entry.name,
            )
        )


async def extract_file(event: UploadReceived, spool: BinaryIO, x: Extractor) -> list[Emit]:
    """The handler's core over an archive already on local disk (`spool`)."""

    def status(item_id: str, state: str, reason: str | None = None) -> Emit:
        parent = None if item_id == event.item_id else event.item_id
        return emit_status(
            event,
            item_id=item_id,
            status=state,
            service=NAME,
            reason=reason,
            parent_item_id=parent,
        )

    try:
        listing = await asyncio.to_thread(list_entries, spool, limits=x.limits)
    except InvalidArchive as error:
        return [status(event.item_id, "error", str(error))]
    children = _children(event, listing.entries, x.subject_key)
    await _record_phi(x, event, children)

    emits: list[Emit] = []
    documents: list[ArchiveEntry] = []
    rejected: list[RejectedEntry] = []
    budget = TotalBudget(remaining=x.limits.max_total_bytes)
    # A few entries at once: one entry's fsync and rename no longer stall the inflating of
    # the next (bench/zip_extract.py). Results are taken, and MD5s claimed, in order, so
    # which of two equal entries is the duplicate does not depend on timing.
    running: collections.deque[asyncio.Task[tuple[StoredObject | None, str | None, str | None]]] = (
        collections.deque()
    )
    upcoming = iter(children)
    try:
        for position, child in enumerate(children):
            while len(running) < _PARALLEL_ENTRIES and (ahead := next(upcoming, None)) is not None:
                running.append(
                    asyncio.ensure_future(
                        _stored_or_refused(x, spool, ahead, job_id=event.job_id, budget=budget)
                    )
                )
            stored, kind, reason = await running.popleft()
            if stored is not None and not await _claimed(x, child, stored, event.job_id):
                stored, kind, reason = None, None, DUPLICATE
            emits.append(status(child.item_id, "queued"))
            layout = child.placement.layout
            documents.append(
                ArchiveEntry(
                    item_id=child.item_id,
                    job_id=event.job_id,
                    archive_item_id=event.item_id,
                    entry_index=child.entry.index,
                    position=position,
                    display_name=child.display_name,
                    entry_kind=kind,
                    layout=layout,
                    encounter_id=child.encounter.encounter_id if child.encounter else None,
                    subject_id=child.subject_id,
                    captured_at=child.placement.captured_at,
                    size=stored.size if stored else None,
                    reason=reason,
                )
            )
            if reason is not None or stored is None or kind is None:
                rejected.append(RejectedEntry(entry_index=child.entry.index, reason=str(reason)))
                emits.append(status(child.item_id, "error", reason))
                continue
            emits.append(
                Emit(
                    ARCHIVE_ENTRIES,
                    ArchiveEntryExtracted(
                        job_id=event.job_id,
                        archive_item_id=event.item_id,
                        item_id=child.item_id,
                        entry_index=child.entry.index,
                        entry_kind=kind,  # type: ignore[arg-type]
                        layout=layout,
                        object=to_ref(stored),
                        uploader_id=event.uploader_id,
                        metadata=event.metadata,
                        encounter=child.encounter,
                        captured_at=child.placement.captured_at,
                    ),
                    key=child.item_id,
                )
            )
    finally:
        for task in running:  # the handler failed (an outage): leave nothing running
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
    await ArchiveEntries(docs=x.docs).put_many(documents)

    reason = listing.reason or (total_too_large_reason(x.limits) if budget.exceeded else None)
    encounters = list(
        {c.encounter.encounter_id: c.encounter for c in children if c.encounter}.values()
    )
    layouts = [c.placement.layout for c in children if c.placement.layout != GENERIC]
    emits.append(
        Emit(
            ARCHIVES_EXTRACTED,
            ArchiveExtracted(
                job_id=event.job_id,
                item_id=event.item_id,
                layout=layouts[0] if layouts else GENERIC,
                entry_count=len(children),
                rejected=tuple(rejected),
                subject_ids=tuple(dict.fromkeys(e.subject_id for e in encounters)),
                encounters=tuple(encounters),
                ignored_count=listing.ignored,
                reason=reason,
            ),
            key=event.item_id,
        )
    )
    # Last: the children's statuses above share its topic and key (the job), so they come first.
    emits.append(status(event.item_id, "error" if reason else "completed", reason))
    log.info(
        "archive %s of job %s: %d entries, %d refused, %d ignored",
        event.item_id,
        event.job_id,
        len(children),
        len(rejected),
        listing.ignored,
    )
    return emits


async def extract_archive(event: UploadReceived, x: Extractor) -> list[Emit]:
    """Spool the archive from `raw` to a temporary file, then `extract_file`."""
    fd, tmp = tempfile.mkstemp(prefix="archive-", suffix=".zip")
    try:
        with os.fdopen(fd, "w+b") as spool:
            await _download(x.store, event.object.bucket, event.object.key, spool)
            return await extract_file(event, spool, x)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _archive_item(event: Event) -> str | None:
    return event.item_id if isinstance(event, UploadReceived) and event.kind == "archive" else None


def routes(
    *,
    store: ObjectStore,
    docs: Documents,
    scanner: MalwareScanner,
    subject_key: bytes,
    limits: Limits,
) -> dict[str, Route]:
    if not subject_key:
        raise ValueError("zip-extractor needs the subject key (kit.phi.load_subject_key)")
    extractor = Extractor(
        store=store, docs=docs, scanner=scanner, subject_key=subject_key, limits=limits
    )

    async def on_upload(event: Event) -> Sequence[Emit]:
        if not isinstance(event, UploadReceived) or event.kind != "archive":
            return ()
        return await extract_archive(event, extractor)

    return {UPLOADS_RECEIVED: Route(on_upload, starts_item=_archive_item)}
