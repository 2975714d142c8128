"""The Direct Upload Dashboard's API: catalogued uploads, filtered, a page at a time, and the KPI
cards of the filtered set. Who sees what is the grading queue's policy (`gateway.access`):
uploaders their own lab units' uploads, admins and data managers all of them.

The filters are query parameters, so a filtered view is a URL that can be bookmarked and shared:
``from``, ``to`` (days, ``YYYY-MM-DD``, both inclusive), ``hospital``, ``lab_unit``, ``camera``,
``disease``, ``area``, ``uploader`` (admins and data managers only), ``pre_graded``,
``graded``, ``needs_review`` (``true`` or ``false``).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, status
from fastapi.exceptions import RequestValidationError

from gateway.deps import AccessDep, GatewayDep
from ingest.uploads_query import Upload, UploadFilter, UploadKpis, UploadsQuery, Usage

__all__ = [
    "MAX_PAGE",
    "MAX_PER_PAGE",
    "PER_PAGE",
    "UPLOADER_FILTER_REFUSED",
    "UPLOAD_NOT_FOUND",
    "router",
]

router = APIRouter(prefix="/api")
PER_PAGE, MAX_PER_PAGE = 50, 200
MAX_PAGE = 1_000_000  # 200 million uploads at the largest page size; keeps the offset in 64 bits
UPLOAD_NOT_FOUND = "Upload not found"
UPLOADER_FILTER_REFUSED = (
    "Only administrators and data managers can filter by uploader; "
    "uploaders see their own lab units' uploads"
)
_DAY = "a day as YYYY-MM-DD"


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value) if len(value) == 10 else _bad_day(value, name)
    except ValueError:
        return _bad_day(value, name)


def _bad_day(value: str, name: str) -> date:
    raise RequestValidationError(
        [
            {
                "type": "date_from_datetime_parsing",
                "loc": ("query", name),
                "msg": f"{name} must be {_DAY}, e.g. 2026-03-31, not {value!r}",
            }
        ]
    )


async def _upload_filter(
    access: AccessDep,
    date_from: Annotated[str | None, Query(alias="from", description=_DAY)] = None,
    date_to: Annotated[str | None, Query(alias="to", description=_DAY + ", inclusive")] = None,
    hospital: str | None = None,
    lab_unit: str | None = None,
    camera: str | None = None,
    disease: str | None = None,
    area: str | None = None,
    uploader: Annotated[str | None, Query(description="admins and data managers only")] = None,
    pre_graded: bool | None = None,
    graded: bool | None = None,
    needs_review: bool | None = None,
) -> UploadFilter:
    """The dashboard's filters from the query string. Empty values (an untouched form field)
    leave a criterion out."""
    if uploader and not access.sees_all:
        # Refused rather than ignored: ignoring it would show a shared link's reader a list
        # that silently is not what the link says.
        raise HTTPException(status.HTTP_403_FORBIDDEN, UPLOADER_FILTER_REFUSED)
    start, end = _day(date_from, "from"), _day(date_to, "to")
    if start and end and start > end:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "to"),
                    "msg": f"the date range is empty: from ({start}) is after to ({end})",
                }
            ]
        )
    return UploadFilter(
        date_from=start,
        date_to=end,
        hospital_id=hospital or None,
        lab_unit_id=lab_unit or None,
        camera_id=camera or None,
        disease_id=disease or None,
        area_id=area or None,
        uploader_id=uploader or None,
        pre_graded=pre_graded,
        graded=graded,
        needs_review=needs_review,
    )


UploadFilterDep = Annotated[UploadFilter, Depends(_upload_filter)]


def _item(upload: Upload) -> dict[str, Any]:
    record = upload.record
    item_id = record.item_id
    return {
        "id": item_id,
        "hospital_id": record.hospital_id,
        "lab_unit_id": record.lab_unit_id,
        "camera_id": record.camera_id,
        "disease_id": record.disease_id,
        "area_id": record.area_id,
        "mydriatic": record.mydriatic,
        "uploader": record.uploader_id,
        "uploaded_at": record.ingested_at,
        "size": record.size,
        "width": record.width,
        "height": record.height,
        "pre_graded": record.pre_graded,
        "grading_status": upload.grading_status,
        "graded_by": upload.graded_by,
        "graded_at": upload.graded_at,
        "needs_review": record.needs_review,
        "review_reason": record.review_reason,
        "encounter_id": record.encounter_id,
        "laterality": record.laterality,
        "flags": list(record.flags),
        "image_url": f"/api/images/{item_id}/clean",
        "thumbnail_url": f"/api/images/{item_id}/thumbnail",
        "edited": upload.edited,
    }


def _usages(usages: tuple[Usage, ...]) -> list[dict[str, Any]]:
    return [{"id": usage.id, "count": usage.count} for usage in usages]


def _kpis(kpis: UploadKpis) -> dict[str, Any]:
    return {
        "total": kpis.total,
        "all_time": kpis.all_time,
        "camera_types": kpis.camera_types,
        "cameras": _usages(kpis.cameras),
        "disease_types": kpis.disease_types,
        "diseases": _usages(kpis.diseases),
        "area_types": kpis.area_types,
        "areas": _usages(kpis.areas),
    }


@router.get("/uploads")
async def uploads(
    gateway: GatewayDep,
    access: AccessDep,
    upload_filter: UploadFilterDep,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="from 1")] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = PER_PAGE,
) -> dict[str, Any]:
    """Catalogued uploads the caller may see, newest first, one page of them."""
    found, total = await UploadsQuery(docs=gateway.docs).page(
        upload_filter, base=access.lab_unit_filter(), page=page, per_page=per_page
    )
    return {
        "total": total,
        "page": page,
        "per_page": per_page,
        "pages": -(-total // per_page),
        "items": [_item(upload) for upload in found],
    }


@router.get("/uploads/kpis")
async def upload_kpis(
    gateway: GatewayDep, access: AccessDep, upload_filter: UploadFilterDep
) -> dict[str, Any]:
    """The dashboard's KPI cards for the same filters as `/api/uploads`."""
    return _kpis(
        await UploadsQuery(docs=gateway.docs).kpis(upload_filter, base=access.lab_unit_filter())
    )


@router.get("/uploads/{upload_id}")
async def upload(upload_id: str, gateway: GatewayDep, access: AccessDep) -> dict[str, Any]:
    """One upload. Another lab unit's gets the same 404 as a missing one, so ids cannot be
    probed."""
    found = await UploadsQuery(docs=gateway.docs).get(upload_id)
    if found is None or not access.may_see_lab_unit(found.record.lab_unit_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, UPLOAD_NOT_FOUND)
    return _item(found)
