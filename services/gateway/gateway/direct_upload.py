"""Direct upload: stream each JPG/PNG into `raw` while checking it, then open a job.

Every check is applied while the bytes flow (size, type sniffed from the first bytes, MD5
computed by the store on the way), so a 200 MB file is refused without being held anywhere.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import magic

from contracts.envelope import utcnow
from contracts.events import DirectUploadMetadata, ItemStatusChanged, JobOpened, UploadReceived
from contracts.topics import ITEM_STATUS, UPLOADS_RECEIVED
from gateway.accounts import Accounts, User
from gateway.multipart import FormPart, read_text
from gateway.reference import ReferenceData
from gateway.settings import GatewaySettings
from kit import tracing
from kit.blobs import RAW, to_ref
from kit.ports import Documents, DuplicateKey, EventBus, ObjectStore, StoredObject
from kit.runtime import Emit, publish_events

__all__ = [
    "ALL_FIELDS_REQUIRED",
    "DUPLICATE",
    "NO_ACCESS",
    "NO_FILE",
    "QUOTA_EXCEEDED",
    "Audit",
    "FormRejected",
    "UploadResult",
    "receive_direct_upload",
]

SERVICE = "gateway"
JOBS, FILE_HASHES = "jobs", "file_hashes"
ALLOWED_TYPES = {"image/jpeg", "image/png"}
FIELDS = ("hospital", "lab_unit", "camera", "disease", "area", "mydriatic")

ALL_FIELDS_REQUIRED = "All fields are required"
NO_ACCESS = "You don't have access to the selected lab unit"
BAD_COMBINATION = "Invalid hospital/lab unit combination"
NO_FILE = "No selected file"
DUPLICATE = "Duplicate file"
QUOTA_EXCEEDED = "Upload quota exceeded"
SNIFF_BYTES = 2048


def too_large(settings: GatewaySettings) -> str:
    return f"File too large (max {settings.max_size_label})"


def invalid_type(mime: str) -> str:
    return f"Invalid file type: {mime}. Only JPG/PNG allowed."


def too_many_files(limit: int) -> str:
    return f"Too many files in one upload (max {limit}). Please upload fewer files at a time."


class FormRejected(Exception):
    """The whole form is refused; nothing of it is kept."""

    def __init__(self, message: str, *, status_code: int = 400) -> None:
        super().__init__(message)
        self.message, self.status_code = message, status_code


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
    claimed_hash: bool = False


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


def _basename(filename: str) -> str:
    return filename.replace("\\", "/").rsplit("/", 1)[-1]


async def _sniffed(chunks: AsyncIterator[bytes]) -> tuple[str, AsyncIterator[bytes]]:
    """Read just enough to know the type from the bytes (never the name), then hand back a
    stream that still starts at the first byte."""
    source = chunks.__aiter__()
    head = bytearray()
    async for chunk in source:
        head += chunk
        if len(head) >= SNIFF_BYTES:
            break
    mime = magic.from_buffer(bytes(head[:SNIFF_BYTES]), mime=True)
    if mime not in ALLOWED_TYPES:
        raise _FileRejected(invalid_type(mime))

    async def whole() -> AsyncIterator[bytes]:
        yield bytes(head)
        async for chunk in source:
            yield chunk

    return mime, whole()


async def _limited(chunks: AsyncIterator[bytes], *, max_bytes: int, label: str
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


@dataclass
class _Upload:
    """One request's state while it streams; undone whole if the form turns out invalid."""

    user: User
    settings: GatewaySettings
    store: ObjectStore
    docs: Documents
    accounts: Accounts
    job_id: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    items: list[_Item] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    seen_md5: set[str] = field(default_factory=set)
    file_parts: int = 0

    async def take_file(self, part: FormPart) -> None:
        self.file_parts += 1
        if self.file_parts > self.settings.direct_upload_max_files:
            await _drain(part.chunks)
            return
        item = _Item(item_id=uuid.uuid4().hex, filename=_basename(part.filename or ""))
        self.items.append(item)
        if not item.filename:
            await _drain(part.chunks)
            item.reason = NO_FILE
            return
        quota = self.user.quota(self.settings.max_files_per_upload)
        if not await self.accounts.reserve_upload(self.user.username, quota=quota):
            await _drain(part.chunks)
            item.reason = QUOTA_EXCEEDED
            return
        try:
            mime, stream = await _sniffed(part.chunks)
            item.stored = await self.store.put(
                RAW,
                f"{self.job_id}/{item.item_id}",
                _limited(stream, max_bytes=self.settings.direct_upload_max_bytes,
                         label=too_large(self.settings)),
                content_type=mime,
            )
            await self._claim_hash(item.stored.md5)
            item.claimed_hash = True
        except _FileRejected as rejected:
            await _drain(part.chunks)
            await self._unstore(item)
            item.reason = rejected.reason
        except BaseException:
            await self._unstore(item)
            raise

    async def _claim_hash(self, md5: str) -> None:
        if md5 in self.seen_md5:
            raise _FileRejected(DUPLICATE)
        try:
            await self.docs.collection(FILE_HASHES).insert(
                {"_id": md5, "job_id": self.job_id, "at": utcnow().isoformat()}
            )
        except DuplicateKey:
            raise _FileRejected(DUPLICATE) from None
        self.seen_md5.add(md5)

    async def _unstore(self, item: _Item) -> None:
        """Undo what storing one file did: the object, its hash claim, its quota count."""
        if item.stored is not None:
            await self.store.delete(RAW, item.stored.key)
            if item.claimed_hash:
                self.seen_md5.discard(item.stored.md5)
                await self.docs.collection(FILE_HASHES).delete(item.stored.md5)
                item.claimed_hash = False
            item.stored = None
        await self.accounts.release_upload(self.user.username)

    async def rollback(self) -> None:
        for item in self.items:
            if item.reason is None:
                await self._unstore(item)


async def _validated_metadata(
    form: dict[str, str], *, user: User, reference: ReferenceData
) -> DirectUploadMetadata:
    values = {name: form.get(name, "").strip() for name in FIELDS}
    if any(not v for v in values.values()):
        raise FormRejected(ALL_FIELDS_REQUIRED)
    lab_unit = await reference.get("lab_units", values["lab_unit"])
    hospital = await reference.get("hospitals", values["hospital"])
    if hospital is None or lab_unit is None or lab_unit["hospital_id"] != hospital["id"]:
        raise FormRejected(BAD_COMBINATION)
    if not user.may_use_lab_unit(lab_unit["id"]):
        raise FormRejected(NO_ACCESS, status_code=403)
    for kind, name in (("cameras", "camera"), ("diseases", "disease"), ("areas", "area")):
        if await reference.get(kind, values[name]) is None:
            raise FormRejected(f"Unknown {name}: please choose one from the list")
    mydriatic = values["mydriatic"].lower()
    if mydriatic not in ("true", "false", "1", "0", "yes", "no", "on", "off",
                         "mydriatic", "non-mydriatic", "non_mydriatic"):
        raise FormRejected("Mydriatic must be Mydriatic or Non Mydriatic")
    return DirectUploadMetadata(
        hospital_id=hospital["id"],
        lab_unit_id=lab_unit["id"],
        camera_id=values["camera"],
        disease_id=values["disease"],
        area_id=values["area"],
        mydriatic=mydriatic in ("true", "1", "yes", "on", "mydriatic"),
    )


async def receive_direct_upload(
    parts: AsyncIterator[FormPart],
    *,
    user: User,
    audit: Audit,
    settings: GatewaySettings,
    store: ObjectStore,
    docs: Documents,
    bus: EventBus,
    accounts: Accounts,
    reference: ReferenceData,
) -> UploadResult:
    upload = _Upload(user=user, settings=settings, store=store, docs=docs, accounts=accounts)
    metadata: DirectUploadMetadata | None = None
    try:
        async for part in parts:
            if not part.is_file:
                upload.fields[part.name] = await read_text(part)
                continue
            if part.name != "files":
                await _drain(part.chunks)
                continue
            if metadata is None and all(upload.fields.get(n) for n in FIELDS):
                # Fields came first (as the form sends them): refuse a bad form before
                # storing a single byte.
                metadata = await _validated_metadata(upload.fields, user=user,
                                                     reference=reference)
            await upload.take_file(part)
        if metadata is None:
            metadata = await _validated_metadata(upload.fields, user=user, reference=reference)
        if upload.file_parts == 0:
            raise FormRejected(NO_FILE)
        if upload.file_parts > settings.direct_upload_max_files:
            raise FormRejected(too_many_files(settings.direct_upload_max_files),
                               status_code=413)
    except BaseException:
        await upload.rollback()
        raise
    await _open_job(upload, metadata=metadata, audit=audit, bus=bus)
    return UploadResult(job_id=upload.job_id, items=upload.items)


async def _open_job(
    upload: _Upload, *, metadata: DirectUploadMetadata, audit: Audit, bus: EventBus
) -> None:
    now = utcnow().isoformat()
    job_doc = {
        "_id": upload.job_id,
        "job_id": upload.job_id,
        "kind": "direct",
        "uploader": upload.user.username,
        "ip": audit.ip,
        "user_agent": audit.user_agent,
        "created_at": now,
        "metadata": metadata.model_dump(),
        "items": [
            {
                "item_id": i.item_id,
                "filename": i.filename,
                "size": i.stored.size if i.stored else None,
                "md5": i.stored.md5 if i.stored else None,
                "rejected_reason": i.reason,
            }
            for i in upload.items
        ],
        "rejected_count": sum(1 for i in upload.items if i.reason),
    }
    await upload.docs.collection(JOBS).put(job_doc)
    job_id = upload.job_id
    emits: list[Emit] = [
        Emit(ITEM_STATUS, JobOpened(job_id=job_id, kind="direct",
                                    item_ids=tuple(i.item_id for i in upload.items)))
    ]
    for item in upload.items:
        emits.append(Emit(ITEM_STATUS, ItemStatusChanged(
            job_id=job_id, item_id=item.item_id, status="error" if item.reason else "queued",
            reason=item.reason, service=SERVICE)))
    await publish_events(bus, emits, source=SERVICE)
    for item in upload.items:
        if item.stored is None or item.reason is not None:
            continue
        received = UploadReceived(job_id=job_id, item_id=item.item_id, kind="image",
                                  object=to_ref(item.stored),
                                  uploader_id=upload.user.username, metadata=metadata)
        # One trace per file, from here through every service that handles it.
        with tracing.span("gateway receive file", job_id=job_id, item_id=item.item_id):
            await publish_events(bus, [Emit(UPLOADS_RECEIVED, received, key=item.item_id)],
                                 source=SERVICE)
