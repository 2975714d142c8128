"""Patient visits found in archives, with their images and parsed reports (pseudonymous), and
the PHI vault behind their subject ids, for the roles that need it (every read audited)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import StreamingResponse

from gateway.access import Access
from gateway.accounts import User
from gateway.catalogue import stream_object
from gateway.deps import AccessDep, CurrentUser, GatewayDep
from ingest.read_model import Catalogue, CatalogueRecord, Encounter, ReportRecord
from kit.phi import PhiVault

__all__ = ["REPORT_NOT_FOUND", "SUBJECT_NOT_FOUND", "router"]

router = APIRouter(prefix="/api")
SUBJECT_NOT_FOUND = "No patient details are kept for this subject"
REPORT_NOT_FOUND = "Report not found"
PHI_ROLES_ONLY = "Only administrators and data managers may see patient details"
MAX_PAGE = 200


def _image(record: CatalogueRecord) -> dict[str, Any]:
    return {
        "item_id": record.item_id,
        "laterality": record.laterality,
        "laterality_source": record.laterality_source,
        "captured_at": record.captured_at,
        "width": record.width,
        "height": record.height,
        "flags": list(record.flags),
        "needs_review": record.needs_review,
        "review_reason": record.review_reason,
        "clean_url": f"/api/images/{record.item_id}/clean",
        "thumbnail_url": f"/api/images/{record.item_id}/thumbnail",
    }


def _report(report: ReportRecord, access: Access) -> dict[str, Any]:
    view: dict[str, Any] = {
        "item_id": report.item_id,
        "report_kind": report.report_kind,
        "page_kinds": list(report.page_kinds),
        "method": report.method,
        "parser_version": report.parser_version,
        "needs_review": report.needs_review,
        # {value, confidence, needs_review} each: never a name or MRN (those are in the vault)
        "fields": report.fields,
        "filed_at": report.filed_at,
    }
    if access.sees_all and report.report is not None:
        view["pdf_url"] = f"/api/reports/{report.item_id}/pdf"  # the PDF shows name and MRN
    return view


def _encounter(
    encounter: Encounter,
    images: list[CatalogueRecord],
    reports: list[ReportRecord],
    access: Access,
    uploader_of: dict[str, str],
) -> dict[str, Any]:
    uploader = uploader_of.get(encounter.encounter_id)
    return {
        "encounter_id": encounter.encounter_id,
        "job_id": encounter.job_id if uploader and access.may_list_job(uploader) else None,
        "subject_id": encounter.subject_id,
        "capture_date": encounter.capture_date,
        "site": encounter.site,
        "hospital_id": encounter.hospital_id,
        "lab_unit_id": encounter.lab_unit_id,
        "images": [_image(i) for i in images],
        "reports": [_report(r, access) for r in reports],
    }


@router.get("/encounters")
async def encounters(
    gateway: GatewayDep,
    access: AccessDep,
    job_id: str | None = None,
    subject_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    skip: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> dict[str, Any]:
    """Visits found in uploaded archives, newest capture first, of the lab units the caller may
    see, each with its images (laterality `unknown` unless a report tile shows which eye) and
    its parsed reports."""
    where: dict[str, Any] = access.lab_unit_filter()
    if job_id:
        where["job_id"] = job_id
    if subject_id:
        where["subject_id"] = subject_id
    catalogue = Catalogue(docs=gateway.docs)
    found = await catalogue.encounters(where=where, limit=limit, skip=skip)
    ids = [e.encounter_id for e in found]
    images: dict[str, list[CatalogueRecord]] = {}
    for image in await catalogue.images_of(ids):
        images.setdefault(image.encounter_id or "", []).append(image)
    reports: dict[str, list[ReportRecord]] = {}
    for report in await catalogue.reports_of(ids):
        reports.setdefault(report.encounter_id or "", []).append(report)
    uploader_of = {eid: records[0].uploader_id for eid, records in images.items() if records}
    items = [
        _encounter(
            e, images.get(e.encounter_id, []), reports.get(e.encounter_id, []), access, uploader_of
        )
        for e in found
    ]
    return {"count": len(items), "encounters": items}


def _phi_reader(user: User) -> None:
    if user.role not in ("admin", "data_manager"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, PHI_ROLES_ONLY)


@router.get("/subjects/{subject_id}/phi")
async def subject_phi(
    subject_id: str, request: Request, gateway: GatewayDep, user: CurrentUser
) -> dict[str, Any]:
    """Who a subject is: names, MRNs, capture dates and where each was found. Administrators
    and data managers only; every read is in the audit log."""
    _phi_reader(user)
    records = await PhiVault(docs=gateway.docs).of_subject(subject_id)
    await gateway.audit_request(
        request, "phi_read", actor=user.username, subject=subject_id, found=bool(records)
    )
    if not records:
        raise HTTPException(status.HTTP_404_NOT_FOUND, SUBJECT_NOT_FOUND)
    return {
        "subject_id": subject_id,
        "names": sorted({r.name for r in records if r.name}),
        "mrns": sorted({r.mrn for r in records if r.mrn}),
        "capture_dates": sorted({r.capture_date for r in records if r.capture_date}),
        "sources": [
            {
                "kind": r.source_kind,
                "job_id": r.job_id,
                "item_id": r.item_id,
                "name": r.name,
                "mrn": r.mrn,
                "capture_date": r.capture_date,
                "original": r.original,
                "recorded_at": r.recorded_at,
            }
            for r in records
        ],
    }


@router.get("/reports/{item_id}/pdf")
async def report_pdf(
    item_id: str, request: Request, gateway: GatewayDep, user: CurrentUser
) -> StreamingResponse:
    """The report as uploaded (it prints the patient's name and MRN): administrators and data
    managers only, audited."""
    _phi_reader(user)
    reports = await Catalogue(docs=gateway.docs).report(item_id)
    if reports is None or reports.report is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, REPORT_NOT_FOUND)
    await gateway.audit_request(
        request,
        "report_pdf_read",
        actor=user.username,
        subject=reports.subject_id,
        item_id=item_id,
    )
    return await stream_object(gateway.store, reports.report, not_found=REPORT_NOT_FOUND)
