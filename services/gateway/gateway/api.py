"""The REST API for programs: same checks and messages as the web pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from gateway.access import Access
from gateway.deps import CurrentUser, GatewayDep, client_address
from gateway.jobs import find_job_view, recent_jobs
from gateway.multipart import read_parts
from gateway.uploads import (
    Audit,
    BeforeRecord,
    UploadRules,
    direct_rules,
    receive_upload,
    zip_rules,
)

__all__ = ["router"]

router = APIRouter(prefix="/api")


def audit_of(request: Request) -> Audit:
    return Audit(
        ip=client_address(request),
        user_agent=request.headers.get("user-agent"),
    )


def job_pages(kind: str, job_id: str) -> dict[str, str]:
    """Where a job's processing and results pages are (ZIP jobs have their own)."""
    base = "/upload_files" if kind == "archive" else "/direct/upload"
    return {
        "processing_url": f"{base}/processing/{job_id}",
        "results_url": f"{base}/results/{job_id}",
    }


async def run_upload(
    request: Request,
    gateway: GatewayDep,
    user: CurrentUser,
    *,
    rules: UploadRules,
    attachments: Mapping[str, int] | None = None,
    before_record: BeforeRecord | None = None,
) -> dict[str, Any]:
    """Receive an upload form through `rules` and answer what the upload APIs answer."""
    result = await receive_upload(
        read_parts(request.headers.get("content-type", ""), request.stream()),
        rules=rules,
        user=user,
        audit=audit_of(request),
        settings=gateway.settings,
        store=gateway.store,
        docs=gateway.docs,
        bus=gateway.bus,
        accounts=gateway.accounts,
        reference=gateway.reference,
        attachments=attachments,
        before_record=before_record,
    )
    return {
        "job_id": result.job_id,
        "status_url": f"/api/upload-jobs/{result.job_id}/status",
        "processing_url": job_pages(rules.job_kind, result.job_id)["processing_url"],
        "accepted": result.accepted,
        "rejected": result.rejected,
    }


@router.post("/direct/upload", status_code=201)
async def direct_upload(request: Request, gateway: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    """Multipart form: `files` (repeatable) and hospital, lab_unit, camera, disease, area,
    mydriatic (ids from /api/reference)."""
    return await run_upload(request, gateway, user, rules=direct_rules(gateway.settings))


@router.post("/zip/upload", status_code=201)
async def zip_upload(request: Request, gateway: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    """Multipart form: `files` (repeatable `.zip` archives, e.g. Remidio camera exports) and
    hospital, lab_unit (ids from /api/reference). Each archive's entries become child items
    of the job as they are extracted."""
    return await run_upload(request, gateway, user, rules=zip_rules(gateway.settings))


@router.get("/upload-jobs/{job_id}/status")
async def job_status(job_id: str, gateway: GatewayDep, user: CurrentUser) -> JSONResponse:
    view = await find_job_view(job_id, docs=gateway.docs, access=Access(user))
    if view is None:
        raise HTTPException(404, "No job with this token")
    return JSONResponse(view, headers={"Cache-Control": "no-store"})


@router.get("/jobs")
async def jobs(gateway: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    return {
        "jobs": await recent_jobs(
            docs=gateway.docs, access=Access(user), limit=gateway.settings.recent_jobs_limit
        )
    }


@router.get("/reference")
async def reference(gateway: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    return await gateway.reference.all()


@router.get("/me")
async def me(gateway: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    quota = user.quota(gateway.settings.max_files_per_upload)
    return {**user.model_dump(), "upload_quota_effective": quota}
