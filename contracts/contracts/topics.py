"""Topic names: one constant per stream of events; keys are job ids unless noted."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ALL_TOPICS",
    "ANONYMIZED_DICOM",
    "ANONYMIZED_IMAGES",
    "ARCHIVES_EXTRACTED",
    "ARCHIVE_ENTRIES",
    "INGESTED",
    "ITEM_STATUS",
    "PIPELINE_RUNS",
    "REPORTS_PARSED",
    "UPLOADS_RECEIVED",
    "UPLOAD_CHANGES",
    "TopicSpec",
    "dead_letter",
]


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    events: tuple[str, ...]
    description: str


# Work topics are keyed by item id so one job's files spread over partitions (and over the
# consumers of a group); the status topic is keyed by job id so one job's statuses stay in order.
UPLOADS_RECEIVED = "uploads.received"
ARCHIVE_ENTRIES = "archives.entries"
ARCHIVES_EXTRACTED = "archives.extracted"
REPORTS_PARSED = "reports.parsed"
ANONYMIZED_IMAGES = "images.anonymized"
ANONYMIZED_DICOM = "dicom.anonymized"
INGESTED = "items.ingested"
PIPELINE_RUNS = "pipeline.runs"
ITEM_STATUS = "items.status"
# Edits and deletions of catalogued uploads, keyed by item id (one upload's changes in order).
UPLOAD_CHANGES = "uploads.changes"

_T = "org.imaging-uploader."
ALL_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(UPLOADS_RECEIVED, 4, (_T + "upload.received.v2",), "A file was stored in `raw`."),
    TopicSpec(ARCHIVE_ENTRIES, 4, (_T + "archive.entry.extracted.v2",), "One entry of an archive."),
    TopicSpec(ARCHIVES_EXTRACTED, 2, (_T + "archive.extracted.v2",), "An archive was unpacked."),
    TopicSpec(REPORTS_PARSED, 2, (_T + "report.parsed.v2",), "A PDF report was parsed."),
    TopicSpec(ANONYMIZED_IMAGES, 4, (_T + "image.anonymized.v2",), "A clean image exists."),
    TopicSpec(ANONYMIZED_DICOM, 2, (_T + "dicom.anonymized.v1",), "A de-identified DICOM."),
    TopicSpec(INGESTED, 2, (_T + "item.ingested.v1",), "An item is in the catalogue."),
    TopicSpec(
        PIPELINE_RUNS,
        2,
        (_T + "pipeline.run.started.v1", _T + "pipeline.run.finished.v1"),
        "Insertion pipeline runs.",
    ),
    TopicSpec(
        ITEM_STATUS,
        4,
        (_T + "job.opened.v1", _T + "item.status.v1"),
        "Job and per-file status changes, keyed by job id.",
    ),
    TopicSpec(
        UPLOAD_CHANGES,
        2,
        (_T + "upload.metadata.changed.v1", _T + "upload.deleted.v1"),
        "Catalogued uploads edited or deleted, keyed by item id.",
    ),
)


def dead_letter(topic: str) -> str:
    return topic + ".dlq"
