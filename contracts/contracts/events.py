"""Every event of the flow, as frozen pydantic payloads with a versioned CloudEvents type.

No payload carries PHI: no patient names, MRNs, birth dates, and no original filenames
(a filename can hold a name); those stay in documents the gateway owns or in the PHI vault.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.envelope import SOURCE_PREFIX, CloudEvent, utcnow

__all__ = [
    "EVENT_TYPES",
    "ArchiveEntryExtracted",
    "ArchiveExtracted",
    "ArchiveUploadMetadata",
    "DicomAnonymized",
    "DirectUploadMetadata",
    "EncounterRef",
    "Event",
    "ImageAnonymized",
    "Ingested",
    "ItemStatus",
    "ItemStatusChanged",
    "JobOpened",
    "ObjectRef",
    "PipelineRunFinished",
    "PipelineRunStarted",
    "RejectedEntry",
    "ReportField",
    "ReportParsed",
    "ReportTile",
    "UnknownEventType",
    "UploadDeleted",
    "UploadMetadata",
    "UploadMetadataChanged",
    "UploadReceived",
    "ValueChange",
    "decode",
    "encode",
]

TYPE_PREFIX = "org.imaging-uploader."

ItemStatus = Literal["queued", "processing", "completed", "error"]
UploadKind = Literal["image", "archive", "scan"]
EntryKind = Literal["image", "pdf", "dicom", "other"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ObjectRef(_Frozen):
    """Where bytes live in the object store, with what was computed while writing them."""

    bucket: str
    key: str
    size: int = Field(ge=0)
    md5: str
    sha256: str
    content_type: str


class DirectUploadMetadata(_Frozen):
    hospital_id: str
    lab_unit_id: str
    camera_id: str
    disease_id: str
    area_id: str
    mydriatic: bool


class ArchiveUploadMetadata(_Frozen):
    """What the ZIP upload form asks: where the archive's visits took place."""

    hospital_id: str
    lab_unit_id: str


# Direct uploads name all six fields; archives only the hospital and lab unit.
UploadMetadata = DirectUploadMetadata | ArchiveUploadMetadata


class EncounterRef(_Frozen):
    """One patient visit found in an archive (a Remidio patient folder), pseudonymous: the
    name and MRN behind `subject_id` live only in the PHI vault."""

    encounter_id: str
    subject_id: str
    capture_date: str | None = None  # ISO date of the visit, from the folder's name


class ReportField(_Frozen):
    """One value read from a report, with how sure the reader is of it (0-1). A value the
    reader could not trust is None with `needs_review` set, never a guess."""

    value: str | int | float | bool | tuple[str, ...] | None = None
    confidence: float = Field(default=0.0, ge=0, le=1)
    needs_review: bool = False


class ReportTile(_Frozen):
    """An image tile printed in a report: its eye badge and a perceptual hash of its pixels
    (`kit.phash.fundus_phash`, hex), to find the capture it shows."""

    page: int = Field(ge=1)
    eye: Literal["RE", "LE"] | None = None
    phash: str
    confidence: float = Field(default=0.0, ge=0, le=1)


class RejectedEntry(_Frozen):
    entry_index: int
    reason: str


class Event(_Frozen):
    """A payload; `event_type` names it on the wire and carries its version."""

    event_type: ClassVar[str]
    job_id: str

    def subject(self) -> str:
        return self.job_id


class UploadReceived(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "upload.received.v2"
    item_id: str
    kind: UploadKind
    object: ObjectRef
    uploader_id: str
    metadata: UploadMetadata | None = None
    received_at: datetime = Field(default_factory=utcnow)


class ArchiveEntryExtracted(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "archive.entry.extracted.v2"
    archive_item_id: str
    item_id: str
    entry_index: int = Field(ge=0)
    entry_kind: EntryKind
    layout: str
    object: ObjectRef
    uploader_id: str
    metadata: UploadMetadata | None = None
    encounter: EncounterRef | None = None
    # Local capture time from the entry's name (Remidio: "0.02.16.099_PM"), ISO without zone.
    captured_at: str | None = None


class ArchiveExtracted(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "archive.extracted.v2"
    item_id: str
    layout: str
    entry_count: int = Field(ge=0)
    rejected: tuple[RejectedEntry, ...] = ()
    # The people and visits found (pseudonymous); the gateway redacts its own records of
    # the archive (its file name can hold an MRN) once these are known.
    subject_ids: tuple[str, ...] = ()
    encounters: tuple[EncounterRef, ...] = ()
    ignored_count: int = Field(default=0, ge=0)  # __MACOSX/, ._* and the like
    reason: str | None = None  # what was wrong with the archive as a whole, if anything


class ReportParsed(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "report.parsed.v2"
    item_id: str
    report_kind: Literal["dr", "glaucoma", "combined", "unknown"]
    method: Literal["text", "ocr"]
    subject_id: str | None = None
    findings: dict[str, str] = Field(default_factory=dict)  # v1's free-form values (unused)
    encounter: EncounterRef | None = None
    metadata: UploadMetadata | None = None
    # The kind of each page ("dr", "glaucoma", "unknown"); the values read, by field name
    # (gender, age, doctor, report_date, dr_result, ... see pdf-parser); never a name or MRN.
    page_kinds: tuple[str, ...] = ()
    fields: dict[str, ReportField] = Field(default_factory=dict)
    tiles: tuple[ReportTile, ...] = ()
    raw_text: str = ""  # with the patient's name and MRN replaced by the subject id
    parser_version: str = ""
    report: ObjectRef | None = None  # the PDF, kept in the restricted `reports` bucket


class ImageAnonymized(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "image.anonymized.v2"
    item_id: str
    uploader_id: str
    source: ObjectRef
    clean: ObjectRef
    thumbnail: ObjectRef
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    masked: bool
    review_reason: str | None = None
    metadata: UploadMetadata | None = None
    encounter: EncounterRef | None = None
    captured_at: str | None = None
    # Perceptual hash of the clean image (`kit.phash.fundus_phash`), to match report tiles.
    phash: str | None = None
    flags: tuple[str, ...] = ()  # e.g. "Image not gradable"


class DicomAnonymized(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "dicom.anonymized.v1"
    item_id: str
    source: ObjectRef
    clean: ObjectRef
    removed_elements: int = Field(ge=0)


class Ingested(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "item.ingested.v1"
    item_id: str
    record_id: str
    kind: UploadKind


class PipelineRunStarted(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "pipeline.run.started.v1"
    run_id: str
    item_id: str
    trigger: Literal["auto", "manual"]


class PipelineRunFinished(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "pipeline.run.finished.v1"
    run_id: str
    item_id: str
    outcome: Literal["success", "failure"]
    exit_code: int
    message: str = ""


class JobOpened(Event):
    """A job exists with these items; the tracker needs the full list to know when it ends."""

    event_type: ClassVar[str] = TYPE_PREFIX + "job.opened.v1"
    kind: Literal["direct", "archive", "scan"]
    item_ids: tuple[str, ...]
    opened_at: datetime = Field(default_factory=utcnow)


class ItemStatusChanged(Event):
    event_type: ClassVar[str] = TYPE_PREFIX + "item.status.v1"
    item_id: str
    status: ItemStatus
    reason: str | None = None
    at: datetime = Field(default_factory=utcnow)
    service: str
    parent_item_id: str | None = None


class ValueChange(_Frozen):
    """One field's value before and after an edit (reference-data ids, or a bool)."""

    old: str | bool | None = None
    new: str | bool | None = None


class UploadMetadataChanged(Event):
    """Someone corrected a catalogued upload's metadata (hospital, lab unit, camera, disease,
    area, mydriatic), so other hospital systems can follow. Only fields that really changed
    are listed, by the catalogue's field names (`hospital_id`, ..., `mydriatic`)."""

    event_type: ClassVar[str] = TYPE_PREFIX + "upload.metadata.changed.v1"
    item_id: str
    changes: dict[str, ValueChange]
    changed_by: str  # the editor's username (staff, not a patient)
    at: datetime = Field(default_factory=utcnow)


class UploadDeleted(Event):
    """A catalogued upload was deleted with all its images; it cannot be recovered."""

    event_type: ClassVar[str] = TYPE_PREFIX + "upload.deleted.v1"
    item_id: str
    deleted_by: str
    at: datetime = Field(default_factory=utcnow)


_ALL: tuple[type[Event], ...] = (
    UploadReceived,
    ArchiveEntryExtracted,
    ArchiveExtracted,
    ReportParsed,
    ImageAnonymized,
    DicomAnonymized,
    Ingested,
    PipelineRunStarted,
    PipelineRunFinished,
    JobOpened,
    ItemStatusChanged,
    UploadMetadataChanged,
    UploadDeleted,
)
EVENT_TYPES: dict[str, type[Event]] = {cls.event_type: cls for cls in _ALL}

# Old wire versions are upcast to the current model here: {old_type: (new_type, fn(data))}.
# v1 → v2 (issue 7, archives): v2 only adds optional fields (encounters, report fields, tiles,
# perceptual hashes, flags) and lets `metadata` be an archive's; a v1 payload is a valid v2 one.
UPCASTERS: dict[str, tuple[str, Any]] = {
    TYPE_PREFIX + f"{name}.v1": (TYPE_PREFIX + f"{name}.v2", dict)
    for name in (
        "upload.received",
        "archive.entry.extracted",
        "archive.extracted",
        "report.parsed",
        "image.anonymized",
    )
}


class UnknownEventType(ValueError):
    pass


def encode(event: Event, *, source: str) -> CloudEvent:
    return CloudEvent.new(
        source=SOURCE_PREFIX + source,
        type=event.event_type,
        subject=event.subject(),
        data=event.model_dump(mode="json"),
    )


def decode(envelope: CloudEvent) -> Event:
    event_type, data = envelope.type, envelope.data
    while event_type in UPCASTERS:
        event_type, upcast = UPCASTERS[event_type]
        data = upcast(data)
    model = EVENT_TYPES.get(event_type)
    if model is None:
        raise UnknownEventType(event_type)
    return model.model_validate(data)
