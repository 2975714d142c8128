"""Uploads through a form: stream each file into `raw` while checking it, then open a job.

Direct uploads (JPG/PNG fundus images) and ZIP uploads (camera exports) follow the same steps
with their own `UploadRules`. Every check is applied while the bytes flow (size, type sniffed
from the first bytes, MD5 computed by the store on the way), so a 200 MB file is refused
without being held anywhere.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import unicodedata
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import magic

from contracts.envelope import utcnow
from contracts.events import (
    ArchiveUploadMetadata,
    DirectUploadMetadata,
    ItemStatusChanged,
    JobOpened,
    UploadMetadata,
    UploadReceived,
)
from contracts.topics import ITEM_STATUS, UPLOADS_RECEIVED
from gateway.accounts import Accounts, User
from gateway.errors import GatewayError
from gateway.intake import Claimed, Intake, PendingUpload
from gateway.jobs import JobItem, JobRecord, JobRecords
from gateway.multipart import FormPart, read_text
from gateway.reference import ReferenceData
from gateway.settings import GatewaySettings
from kit import tracing
from kit.blobs import RAW, to_ref
from kit.ports import Documents, EventBus, ObjectStore, StoredObject, Unavailable
from kit.runtime import Emit, publish_events

__all__ = [
    "ALL_FIELDS_REQUIRED",
    "DUPLICATE",
    "NO_ACCESS",
    "NO_FILE",
    "QUOTA_EXCEEDED",
    "Attachment",
    "Audit",
    "BeforeRecord",
    "FormRejected",
    "UploadResult",
    "UploadRules",
    "announce_job",
    "clean_filename",
    "direct_rules",
    "receive_upload",
    "upload_messages",
    "zip_rules",
]

log = logging.getLogger(__name__)

SERVICE = "gateway"
ALLOWED_TYPES = {"image/jpeg", "image/png"}
FIELDS = ("hospital", "lab_unit", "camera", "disease", "area", "mydriatic")
ZIP_FIELDS = ("hospital", "lab_unit")
# A ZIP archive starts with a local file header; an empty archive (only the end record) holds
# nothing to upload.
ZIP_MAGIC = b"PK\x03\x04"

ALL_FIELDS_REQUIRED = "All fields are required"
NO_ACCESS = "You don't have access to the selected lab unit"
BAD_COMBINATION = "Invalid hospital/lab unit combination"
NO_FILE = "No selected file"
DUPLICATE = "Duplicate file"
QUOTA_EXCEEDED = "Upload quota exceeded"
SNIFF_BYTES = 2048
# The form has six fields; a hostile one with thousands of large fields must not cost memory
# (measured before the cap: 3,000 fields of 60 KB raised the gateway's RSS by 170 MB).
MAX_FIELDS = 50
MAX_FIELD_BYTES = 64 * 1024
TOO_MANY_FIELDS = f"The form has too many fields (at most {MAX_FIELDS})."
FIELDS_TOO_LARGE = f"The form's fields are too large (at most {MAX_FIELD_BYTES // 1024} KB in all)."
MAX_FILENAME_CHARS = 255


def too_large(size_label: str) -> str:
    return f"File too large (max {size_label})"


def _mb_label(size_bytes: int) -> str:
    size = size_bytes / (1024 * 1024)
    return f"{int(size)}MB" if float(size).is_integer() else f"{size:.1f}MB"


def invalid_type(mime: str) -> str:
    return f"Invalid file type: {mime}. Only JPG/PNG allowed."


def invalid_zip(mime: str) -> str:
    return f"Invalid file type: {mime}. Only ZIP files allowed."


def too_many_files(limit: int) -> str:
    return f"Too many files in one upload (max {limit}). Please upload fewer files at a time."


def upload_messages(rules: UploadRules) -> dict[str, str]:
    """The messages an upload page's script shows before sending, worded as the server's."""
    return {
        "all_fields_required": ALL_FIELDS_REQUIRED,
        "no_file": NO_FILE,
        "quota_exceeded": QUOTA_EXCEEDED,
        "too_many_files": too_many_files(rules.max_files),
        "too_large": rules.too_large,
    }


class FormRejected(GatewayError):
    """The whole form is refused; nothing of it is kept."""


class _FileRejected(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Audit:
    ip: str | None
    user_agent: str | None


@dataclass
class _Item:
    item_id: str
    filename: str
    stored: StoredObject | None = None
    reason: str | None = None


@dataclass
class UploadResult:
    job_id: str
    items: list[_Item] = field(default_factory=list)

    @property
    def accepted(self) -> list[dict[str, Any]]:
        return [{"item_id": i.item_id, "filename": i.filename} for i in self.items if not i.reason]

    @property
    def rejected(self) -> list[dict[str, Any]]:
        return [
            {"item_id": i.item_id, "filename": i.filename, "reason": i.reason}
            for i in self.items
            if i.reason
        ]


def clean_filename(filename: str) -> str:
    """The name as the user's computer calls it, kept intact in any script (Devanagari, CJK,
    right-to-left, emoji), without a path and without control characters (C0, DEL, C1:
    an ESC in a name could drive a terminal that prints it)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(ch for ch in base if unicodedata.category(ch) != "Cc")
    return kept.strip()[:MAX_FILENAME_CHARS]


def _image_type(head: bytes, filename: str) -> str:
    mime = magic.from_buffer(head, mime=True)
    if mime not in ALLOWED_TYPES:
        raise _FileRejected(invalid_type(mime))
    return mime


def _zip_type(head: bytes, filename: str) -> str:
    # The bytes decide (a renamed file is refused), and so does the name: an Office document
    # or a Java archive is a ZIP too, but not a camera export.
    if not head.startswith(ZIP_MAGIC) or not filename.lower().endswith(".zip"):
        mime = magic.from_buffer(head, mime=True)
        raise _FileRejected(invalid_zip("application/zip" if mime == "application/zip" else mime))
    return "application/zip"


async def _sniffed(
    chunks: AsyncIterator[bytes], *, filename: str, rules: UploadRules
) -> tuple[str, AsyncIterator[bytes]]:
    """Read just enough to know the type from the bytes, then hand back a stream that still
    starts at the first byte."""
    source = chunks.__aiter__()
    head = bytearray()
    async for chunk in source:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    mime = rules.content_type(bytes(head[:SNIFF_BYTES]), filename)

    async def whole() -> AsyncIterator[bytes]:
        yield bytes(head)
        async for chunk in source:
            yield chunk

    return mime, whole()


async def _limited(
    chunks: AsyncIterator[bytes], *, max_bytes: int, label: str
) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in chunks:
        seen += len(chunk)
        if seen > max_bytes:
            raise _FileRejected(label)
        yield chunk


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    async for _ in chunks:
        pass


@dataclass(frozen=True)
class Attachment:
    """A small file sent with the upload that is read, not stored (a pre-graded upload's
    sheet of grades)."""

    filename: str
    data: bytes


# Called with the job id, the accepted files (item id, name), the attachments and the form's
# fields once
# every file is in, before the job is recorded: it may refuse the whole form (FormRejected)
# or prepare what must exist before the files are announced.
BeforeRecord = Callable[
    [str, list[tuple[str, str]], dict[str, Attachment], dict[str, str]], Awaitable[None]
]


async def _attachment(part: FormPart, *, limit: int) -> Attachment:
    data = bytearray()
    async for chunk in part.chunks:
        data += chunk
        if len(data) > limit:
            await _drain(part.chunks)
            raise FormRejected(
                f"The {part.name} file is too large (max {limit // (1024 * 1024)} MB)",
                status_code=413,
            )
    return Attachment(filename=clean_filename(part.filename or ""), data=bytes(data))


@dataclass(frozen=True, kw_only=True)
class UploadRules:
    """What one upload form accepts: its fields, which files, how many and how large."""

    job_kind: Literal["direct", "archive"]
    fields: tuple[str, ...]
    max_files: int
    max_bytes: int
    size_label: str  # "5MB": how the limit is written in messages and on the page
    # (first bytes, file name) → MIME type, or raises _FileRejected with the reason.
    content_type: Callable[[bytes, str], str]
    validate: Callable[[dict[str, str], User, ReferenceData], Awaitable[UploadMetadata]]

    @property
    def too_large(self) -> str:
        return too_large(self.size_label)


def direct_rules(settings: GatewaySettings) -> UploadRules:
    return UploadRules(
        job_kind="direct",
        fields=FIELDS,
        max_files=settings.direct_upload_max_files,
        max_bytes=settings.direct_upload_max_bytes,
        size_label=settings.max_size_label,
        content_type=_image_type,
        validate=_validated_metadata,
    )


def zip_rules(settings: GatewaySettings) -> UploadRules:
    """The ZIP upload (`/upload_files`): PER_FILE_MAX_BYTES each, MAX_FILES_PER_UPLOAD a request."""
    return UploadRules(
        job_kind="archive",
        fields=ZIP_FIELDS,
        max_files=settings.max_files_per_upload,
        max_bytes=settings.per_file_max_bytes,
        size_label=_mb_label(settings.per_file_max_bytes),
        content_type=_zip_type,
        validate=_validated_site,
    )


@dataclass
class _Upload:
    """One request's state while it streams; undone whole if the form turns out invalid."""

    user: User
    settings: GatewaySettings
    rules: UploadRules
    store: ObjectStore
    pending: PendingUpload
    items: list[_Item] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    field_bytes: int = 0
    file_parts: int = 0
    attachments: dict[str, Attachment] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.pending.job_id

    def take_field(self, name: str, value: str) -> None:
        if len(self.fields) >= MAX_FIELDS:
            raise FormRejected(TOO_MANY_FIELDS)
        self.field_bytes += len(name) + len(value.encode())
        if self.field_bytes > MAX_FIELD_BYTES:
            raise FormRejected(FIELDS_TOO_LARGE)
        self.fields[name] = value

    async def take_file(self, part: FormPart) -> None:
        self.file_parts += 1
        if self.file_parts > self.rules.max_files:
            await _drain(part.chunks)
            return
        item = _Item(item_id=uuid.uuid4().hex, filename=clean_filename(part.filename or ""))
        self.items.append(item)
        if not item.filename:
            await _drain(part.chunks)
            item.reason = NO_FILE
            return
        if not await self.pending.take_quota(
            quota=self.user.quota(self.settings.max_files_per_upload)
        ):
            await _drain(part.chunks)
            item.reason = QUOTA_EXCEEDED
            return
        try:
            mime, stream = await _sniffed(part.chunks, filename=item.filename, rules=self.rules)
            item.stored = await self.store.put(
                RAW,
                f"{self.job_id}/{item.item_id}",
                _limited(stream, max_bytes=self.rules.max_bytes, label=self.rules.too_large),
                content_type=mime,
            )
            await self.pending.claim(item.stored.md5, item_id=item.item_id)
        except (_FileRejected, Claimed) as refused:
            # This file alone is refused; the request goes on.
            await _drain(part.chunks)
            if item.stored is not None:
                await self.store.delete(RAW, item.stored.key)
                item.stored = None
            await self.pending.give_back_quota()
            item.reason = refused.reason if isinstance(refused, _FileRejected) else DUPLICATE


async def _site(
    values: dict[str, str], *, user: User, reference: ReferenceData
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The chosen hospital and lab unit, if they belong together and the user may use them."""
    lab_unit = await reference.active("lab_units", values["lab_unit"])
    hospital = await reference.active("hospitals", values["hospital"])
    if hospital is None or lab_unit is None or lab_unit["hospital_id"] != hospital["id"]:
        raise FormRejected(BAD_COMBINATION)
    if not user.may_use_lab_unit(lab_unit["id"]):
        raise FormRejected(NO_ACCESS, status_code=403)
    return hospital, lab_unit


def _required(form: dict[str, str], names: tuple[str, ...]) -> dict[str, str]:
    values = {name: form.get(name, "").strip() for name in names}
    if any(not v for v in values.values()):
        raise FormRejected(ALL_FIELDS_REQUIRED)
    return values


async def _validated_site(
    form: dict[str, str], user: User, reference: ReferenceData
) -> ArchiveUploadMetadata:
    values = _required(form, ZIP_FIELDS)
    hospital, lab_unit = await _site(values, user=user, reference=reference)
    return ArchiveUploadMetadata(hospital_id=hospital["id"], lab_unit_id=lab_unit["id"])


async def _validated_metadata(
    form: dict[str, str], user: User, reference: ReferenceData
) -> DirectUploadMetadata:
    values = _required(form, FIELDS)
    hospital, lab_unit = await _site(values, user=user, reference=reference)
    for kind, name in (("cameras", "camera"), ("diseases", "disease"), ("areas", "area")):
        if await reference.active(kind, values[name]) is None:
            raise FormRejected(f"Unknown {name}: please choose one from the list")
    mydriatic = values["mydriatic"].lower()
    if mydriatic not in (
        "true",
        "false",
        "1",
        "0",
        "yes",
        "no",
        "on",
        "off",
        "mydriatic",
        "non-mydriatic",
        "non_mydriatic",
    ):
        raise FormRejected("Mydriatic must be Mydriatic or Non Mydriatic")
    return DirectUploadMetadata(
        hospital_id=hospital["id"],
        lab_unit_id=lab_unit["id"],
        camera_id=values["camera"],
        disease_id=values["disease"],
        area_id=values["area"],
        mydriatic=mydriatic in ("true", "1", "yes", "on", "mydriatic"),
    )


async def receive_upload(
    parts: AsyncIterator[FormPart],
    *,
    rules: UploadRules,
    user: User,
    audit: Audit,
    settings: GatewaySettings,
    store: ObjectStore,
    docs: Documents,
    bus: EventBus,
    accounts: Accounts,
    reference: ReferenceData,
    attachments: Mapping[str, int] | None = None,
    before_record: BeforeRecord | None = None,
) -> UploadResult:
    """Stream the form's files into `raw` and open a job. `attachments` names file fields
    read into memory instead (at most so many bytes each)."""
    attachments = attachments or {}
    intake = Intake(docs=docs, store=store, accounts=accounts)
    pending = await intake.begin(job_id=secrets.token_urlsafe(18), username=user.username)
    upload = _Upload(user=user, settings=settings, rules=rules, store=store, pending=pending)
    metadata: UploadMetadata | None = None
    try:
        async for part in parts:
            if not part.is_file:
                upload.take_field(part.name, await read_text(part))
                continue
            if part.name in attachments and part.name not in upload.attachments:
                upload.attachments[part.name] = await _attachment(
                    part, limit=attachments[part.name]
                )
                continue
            if part.name != "files":
                await _drain(part.chunks)
                continue
            if metadata is None and all(upload.fields.get(n) for n in rules.fields):
                # Fields came first (as the form sends them): refuse a bad form before
                # storing a single byte.
                metadata = await rules.validate(upload.fields, user, reference)
            await upload.take_file(part)
        if metadata is None:
            metadata = await rules.validate(upload.fields, user, reference)
        if upload.file_parts == 0:
            raise FormRejected(NO_FILE)
        if upload.file_parts > rules.max_files:
            raise FormRejected(too_many_files(rules.max_files), status_code=413)
        if before_record is not None:
            accepted = [(i.item_id, i.filename) for i in upload.items if not i.reason]
            await before_record(upload.job_id, accepted, upload.attachments, upload.fields)
        record = _job_record(upload, metadata=metadata, audit=audit)
        await JobRecords(docs=docs).put(record)
    except BaseException:
        # Refused, failed or cancelled (the client went away): nothing of it is kept.
        try:
            await asyncio.shield(pending.give_back())
        except Exception:
            # The sweep gives it back later (the request's document says what it took).
            log.warning("could not give back what job %s took yet", pending.job_id, exc_info=True)
        raise
    await pending.confirm()
    try:
        await announce_job(record, bus=bus)
    except Unavailable:
        # The files are safe and the job recorded; the maintenance task announces it as soon
        # as the event bus is back (`JobRecords.unannounced`).
        log.warning(
            "job %s recorded; the event bus is unavailable, announcing it later", record.job_id
        )
    else:
        await JobRecords(docs=docs).mark_announced(record.job_id)
    return UploadResult(job_id=upload.job_id, items=upload.items)


def _job_record(upload: _Upload, *, metadata: UploadMetadata, audit: Audit) -> JobRecord:
    return JobRecord(
        job_id=upload.job_id,
        kind=upload.rules.job_kind,
        uploader=upload.user.username,
        ip=audit.ip,
        user_agent=audit.user_agent,
        created_at=utcnow().isoformat(),
        metadata=metadata,
        items=tuple(
            JobItem(
                item_id=i.item_id,
                filename=i.filename,
                size=i.stored.size if i.stored else None,
                md5=i.stored.md5 if i.stored else None,
                raw=to_ref(i.stored) if i.stored else None,
                rejected_reason=i.reason,
            )
            for i in upload.items
        ),
        item_count=len(upload.items),
        rejected_count=sum(1 for i in upload.items if i.reason),
    )


async def announce_job(record: JobRecord, *, bus: EventBus) -> None:
    """Publish the job's events: opened, each file's first status, each accepted file.

    Their ids derive from the job and item ids, so announcing again (after an outage, see
    `JobRecords.unannounced`) publishes the very same events and consumers drop copies."""
    job_id = record.job_id
    emits: list[Emit] = [
        Emit(
            ITEM_STATUS,
            JobOpened(
                job_id=job_id, kind=record.kind, item_ids=tuple(i.item_id for i in record.items)
            ),
        )
    ]
    for item in record.items:
        emits.append(
            Emit(
                ITEM_STATUS,
                ItemStatusChanged(
                    job_id=job_id,
                    item_id=item.item_id,
                    status="error" if item.rejected_reason else "queued",
                    reason=item.rejected_reason,
                    service=SERVICE,
                ),
            )
        )
    await publish_events(bus, emits, source=SERVICE, caused_by=f"job:{job_id}")
    metadata = record.metadata
    for item in record.items:
        if item.raw is None or item.rejected_reason is not None:
            continue
        received = UploadReceived(
            job_id=job_id,
            item_id=item.item_id,
            kind="archive" if record.kind == "archive" else "image",
            object=item.raw,
            uploader_id=record.uploader,
            metadata=metadata,
        )
        # One trace per file, from here through every service that handles it.
        with tracing.span("gateway receive file", job_id=job_id, item_id=item.item_id):
            await publish_events(
                bus,
                [Emit(UPLOADS_RECEIVED, received, key=item.item_id)],
                source=SERVICE,
                caused_by=f"item:{item.item_id}",
            )
