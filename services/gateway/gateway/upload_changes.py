"""Correcting and deleting catalogued uploads: one at a time or up to MAX_BULK selected.

Who may change what follows `gateway.access`: uploaders the uploads of their own lab units,
data managers and administrators every upload. An upload someone may not see is answered
like one that does not exist (404), so ids cannot be probed. Every change is applied by
ingest's repository (`ingest.upload_history.UploadChanges`), kept in the upload's history
(who, when, from where, old and new values), written to the audit log and published on
`uploads.changes` for other hospital systems. Nothing of it names a patient or a file.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict

from contracts.events import Event, UploadDeleted, UploadMetadataChanged, ValueChange
from contracts.topics import UPLOAD_CHANGES
from gateway.access import Access
from gateway.deps import AccessDep, Gateway, GatewayDep, client_address
from gateway.errors import GatewayError
from gateway.intake import CLAIMS
from gateway.reference import ReferenceData
from gateway.uploads import BAD_COMBINATION, NO_ACCESS
from ingest.read_model import Catalogue, CatalogueRecord
from ingest.upload_history import (
    FieldChange,
    UploadChange,
    UploadChanges,
    UploadHistory,
    metadata_changes,
)
from kit.ports import Documents, EventBus, Unavailable
from kit.runtime import Emit, publish_events

__all__ = [
    "DELETE_CONFIRMATION",
    "MAX_BULK",
    "NOTHING_SELECTED",
    "NOTHING_TO_CHANGE",
    "UPLOAD_NOT_FOUND",
    "BulkDelete",
    "BulkEdit",
    "MetadataEdit",
    "announce_pending_changes",
    "delete_confirmation",
    "router",
    "too_many_selected",
]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api")

SERVICE = "gateway"
MAX_BULK = 50
UPLOAD_NOT_FOUND = "Upload not found"
NOTHING_SELECTED = "Select at least one upload"
NOTHING_TO_CHANGE = (
    "Nothing to change: give at least one of hospital, lab unit, camera, disease, area, mydriatic"
)
# What the page asks before a bulk delete; `delete_confirmation(n)` fills it in.
DELETE_CONFIRMATION = "Delete {n} uploads? Deleted images cannot be recovered."


def too_many_selected(count: int) -> str:
    return f"At most {MAX_BULK} uploads can be changed at once; you selected {count}."


def delete_confirmation(count: int) -> str:
    return DELETE_CONFIRMATION.format(n=count)


class MetadataEdit(BaseModel):
    """The fields to correct (any of them), as ids from `/api/reference`."""

    model_config = ConfigDict(extra="forbid")

    hospital: str | None = None
    lab_unit: str | None = None
    camera: str | None = None
    disease: str | None = None
    area: str | None = None
    mydriatic: bool | None = None

    def given(self) -> bool:
        return bool(self.model_dump(exclude_none=True))


class BulkEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str]
    changes: MetadataEdit


class BulkDelete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str]


def _selected(ids: list[str]) -> list[str]:
    wanted = list(dict.fromkeys(i.strip() for i in ids if i.strip()))
    if not wanted:
        raise GatewayError(NOTHING_SELECTED)
    if len(wanted) > MAX_BULK:
        raise GatewayError(too_many_selected(len(wanted)))
    return wanted


async def _proposed(
    edit: MetadataEdit, record: CatalogueRecord, *, access: Access, reference: ReferenceData
) -> dict[str, Any]:
    """The new values by catalogue field name, checked as the upload form checks them: the
    lab unit must belong to the hospital (the new or the current one) and the editor must
    be allowed to use it; cameras, diseases and areas must be ones still offered. A value
    equal to the current one is not checked again (a since-retired camera stays valid)."""
    proposed: dict[str, Any] = {}
    hospital_id = edit.hospital.strip() if edit.hospital is not None else record.hospital_id
    lab_unit_id = edit.lab_unit.strip() if edit.lab_unit is not None else record.lab_unit_id
    if (hospital_id, lab_unit_id) != (record.hospital_id, record.lab_unit_id):
        hospital = await reference.active("hospitals", hospital_id or "")
        lab_unit = await reference.active("lab_units", lab_unit_id or "")
        if hospital is None or lab_unit is None or lab_unit["hospital_id"] != hospital["id"]:
            raise GatewayError(BAD_COMBINATION)
        # Data managers see and fix every lab unit's uploads, so they may move one to any.
        if not access.may_see_lab_unit(lab_unit["id"]):
            raise GatewayError(NO_ACCESS, status_code=403)
        proposed["hospital_id"], proposed["lab_unit_id"] = hospital["id"], lab_unit["id"]
    for kind, name, value in (
        ("cameras", "camera", edit.camera),
        ("diseases", "disease", edit.disease),
        ("areas", "area", edit.area),
    ):
        if value is None or value.strip() == getattr(record, f"{name}_id"):
            continue
        if await reference.active(kind, value.strip()) is None:
            raise GatewayError(f"Unknown {name}: please choose one from the list")
        proposed[f"{name}_id"] = value.strip()
    if edit.mydriatic is not None:
        proposed["mydriatic"] = edit.mydriatic
    return proposed


async def _visible(catalogue: Catalogue, item_id: str, access: Access) -> CatalogueRecord | None:
    record = await catalogue.get(item_id)
    if record is None or not access.may_see_lab_unit(record.lab_unit_id):
        return None
    return record


def _change(
    request: Request, record: CatalogueRecord, *, actor: str, **fields: Any
) -> UploadChange:
    return UploadChange(
        item_id=record.item_id,
        job_id=record.job_id,
        actor=actor,
        ip=client_address(request),
        user_agent=(request.headers.get("user-agent") or "")[:300] or None,
        **fields,
    )


def _event(change: UploadChange) -> Event:
    if change.kind == "delete":
        return UploadDeleted(
            job_id=change.job_id,
            item_id=change.item_id,
            deleted_by=change.actor,
            at=datetime.fromisoformat(change.at),
        )
    return UploadMetadataChanged(
        job_id=change.job_id,
        item_id=change.item_id,
        changes={f: ValueChange(old=c.old, new=c.new) for f, c in change.changes.items()},
        changed_by=change.actor,
        at=datetime.fromisoformat(change.at),
    )


async def _announce(change: UploadChange, *, bus: EventBus, history: UploadHistory) -> None:
    """Publish the change's event; its id derives from the change's, so announcing again
    after an outage publishes the very same event and consumers drop the copy."""
    await publish_events(
        bus,
        [Emit(UPLOAD_CHANGES, _event(change), key=change.item_id)],
        source=SERVICE,
        caused_by=f"upload-change:{change.change_id}",
    )
    await history.mark_announced(change.change_id)


async def _record(change: UploadChange, *, gateway: Gateway) -> None:
    history = UploadHistory(docs=gateway.docs)
    await history.record(change)
    try:
        await _announce(change, bus=gateway.bus, history=history)
    except Unavailable:
        # The change is made and kept; `announce_pending_changes` publishes it once the bus
        # is back (the gateway's maintenance round).
        log.warning(
            "upload %s changed; the event bus is unavailable, announcing it later", change.item_id
        )


async def announce_pending_changes(*, docs: Documents, bus: EventBus) -> int:
    """Publish the events a bus outage held back; how many."""
    history = UploadHistory(docs=docs)
    pending = await history.unannounced()
    for change in pending:
        await _announce(change, bus=bus, history=history)
    return len(pending)


def _changes_json(changes: dict[str, FieldChange]) -> dict[str, dict[str, Any]]:
    return {field: {"old": c.old, "new": c.new} for field, c in changes.items()}


def _metadata(record: CatalogueRecord) -> dict[str, Any]:
    return {
        "id": record.item_id,
        "hospital_id": record.hospital_id,
        "lab_unit_id": record.lab_unit_id,
        "camera_id": record.camera_id,
        "disease_id": record.disease_id,
        "area_id": record.area_id,
        "mydriatic": record.mydriatic,
        "pre_graded": record.pre_graded,
    }


async def _edit(
    request: Request,
    gateway: Gateway,
    access: Access,
    record: CatalogueRecord,
    edit: MetadataEdit,
) -> tuple[CatalogueRecord, dict[str, FieldChange]]:
    proposed = await _proposed(edit, record, access=access, reference=gateway.reference)
    changes = metadata_changes(record, proposed)
    if not changes:
        return record, changes
    updated = await UploadChanges(docs=gateway.docs, store=gateway.store).apply_metadata(
        record.item_id, changes
    )
    if updated is None:  # deleted meanwhile
        raise HTTPException(404, UPLOAD_NOT_FOUND)
    actor = access.user.username
    await _record(_change(request, record, actor=actor, changes=changes), gateway=gateway)
    await gateway.audit_request(
        request,
        "upload.edited",
        actor=actor,
        subject=record.item_id,
        changes=_changes_json(changes),
    )
    return updated, changes


@router.patch("/uploads/{item_id}")
async def edit_upload(
    item_id: str, edit: MetadataEdit, request: Request, gateway: GatewayDep, access: AccessDep
) -> dict[str, Any]:
    """Correct an upload's metadata; answers the upload after and what changed."""
    if not edit.given():
        raise GatewayError(NOTHING_TO_CHANGE)
    record = await _visible(Catalogue(docs=gateway.docs), item_id, access)
    if record is None:
        raise HTTPException(404, UPLOAD_NOT_FOUND)
    updated, changes = await _edit(request, gateway, access, record, edit)
    return {**_metadata(updated), "changes": _changes_json(changes)}


@router.get("/uploads/{item_id}/history")
async def upload_history(item_id: str, gateway: GatewayDep, access: AccessDep) -> dict[str, Any]:
    """The upload's changes, newest first. Where they came from (IP address, browser) only
    for those who see audit details (`Access.sees_audit_details`)."""
    if await _visible(Catalogue(docs=gateway.docs), item_id, access) is None:
        raise HTTPException(404, UPLOAD_NOT_FOUND)
    changes = await UploadHistory(docs=gateway.docs).of(item_id)
    details = access.sees_audit_details
    items = [
        {
            "at": c.at,
            "actor": c.actor,
            "kind": c.kind,
            "ip": c.ip if details else None,
            "user_agent": c.user_agent if details else None,
            "changes": _changes_json(c.changes),
        }
        for c in changes
    ]
    return {"id": item_id, "count": len(items), "items": items}


Outcome = Literal["changed", "unchanged", "not_found", "refused", "deleted"]


def _result(item_id: str, outcome: Outcome, **fields: Any) -> dict[str, Any]:
    return {"id": item_id, "outcome": outcome, **fields}


@router.post("/uploads/bulk-edit")
async def bulk_edit(
    body: BulkEdit, request: Request, gateway: GatewayDep, access: AccessDep
) -> dict[str, Any]:
    """Apply the same corrections to up to MAX_BULK uploads; says per id what happened."""
    ids = _selected(body.ids)
    if not body.changes.given():
        raise GatewayError(NOTHING_TO_CHANGE)
    catalogue = Catalogue(docs=gateway.docs)
    results: list[dict[str, Any]] = []
    for item_id in ids:
        record = await _visible(catalogue, item_id, access)
        if record is None:
            results.append(_result(item_id, "not_found", reason=UPLOAD_NOT_FOUND))
            continue
        try:
            _, changes = await _edit(request, gateway, access, record, body.changes)
        except GatewayError as refused:
            results.append(_result(item_id, "refused", reason=refused.message))
            continue
        except HTTPException:
            results.append(_result(item_id, "not_found", reason=UPLOAD_NOT_FOUND))
            continue
        outcome: Outcome = "changed" if changes else "unchanged"
        results.append(_result(item_id, outcome, changes=_changes_json(changes)))
    changed = sum(1 for r in results if r["outcome"] == "changed")
    return {"selected": len(ids), "changed": changed, "results": results}


async def _release_claim(docs: Documents, record: CatalogueRecord) -> bool:
    """Release the MD5 claim the upload's bytes hold (keyed by the raw file's MD5, see
    `gateway.intake`), so the same file can be uploaded again; only this upload's claim."""
    claims = docs.collection(CLAIMS)
    released = False
    for md5 in dict.fromkeys((record.raw.md5, record.md5)):
        claim = await claims.get(md5)
        if claim is not None and claim.get("item_id") == record.item_id:
            released = await claims.delete(md5) or released
    return released


@router.post("/uploads/bulk-delete")
async def bulk_delete(
    body: BulkDelete, request: Request, gateway: GatewayDep, access: AccessDep
) -> dict[str, Any]:
    """Delete up to MAX_BULK uploads with every image of theirs (the page first asks
    `delete_confirmation(n)`); says how many were deleted and per id what happened."""
    ids = _selected(body.ids)
    catalogue = Catalogue(docs=gateway.docs)
    changes = UploadChanges(docs=gateway.docs, store=gateway.store)
    actor = access.user.username
    results: list[dict[str, Any]] = []
    for item_id in ids:
        record = await _visible(catalogue, item_id, access)
        removed = None if record is None else await changes.delete(item_id)
        if record is None or removed is None:
            results.append(_result(item_id, "not_found", reason=UPLOAD_NOT_FOUND))
            continue
        claim_released = await _release_claim(gateway.docs, record)
        await _record(_change(request, record, actor=actor, kind="delete"), gateway=gateway)
        # The audit entry keeps what was deleted and where it was filed, never the image
        # or its file name (which can hold a patient's name).
        await gateway.audit_request(
            request,
            "upload.deleted",
            actor=actor,
            subject=item_id,
            job_id=record.job_id,
            hospital_id=record.hospital_id,
            lab_unit_id=record.lab_unit_id,
            uploader=record.uploader_id,
            objects_removed=len(removed.objects),
            claim_released=claim_released,
        )
        results.append(_result(item_id, "deleted"))
    deleted = sum(1 for r in results if r["outcome"] == "deleted")
    return {"selected": len(ids), "deleted": deleted, "results": results}
