"""Pre-graded uploads (the fundus help's "Pre-Graded Upload"): images sent together with a
sheet of their known grades (`.xlsx` or `.csv`) and a mapping of its columns. Matching images
become pre-graded uploads: graded already from the sheet, not queued for grading, image
editing disabled. Every row that cannot be used is reported with its row number and reason.

The page (Upload → Pre-Graded Upload) reads the sheet's header first (`POST
/api/pregraded/header`) so the user can map columns; a mapping can be saved for next time.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from contracts.envelope import utcnow
from gateway.api import run_upload
from gateway.deps import CurrentUser, GatewayDep
from gateway.grade_sheet import GRADE_FIELDS, GradeSheetError, Mapping, SheetResult, read_header
from gateway.grade_sheet import read_rows as read_sheet_rows
from gateway.multipart import read_parts
from gateway.uploads import Attachment, FormRejected, direct_rules
from ingest.read_model import Catalogue, GradingRecord

__all__ = ["GRADES_FIELD", "MAPPINGS", "NO_SHEET", "router"]

router = APIRouter(prefix="/api")
GRADES_FIELD = "grades"
MAX_SHEET_BYTES = 10 * 1024 * 1024
MAPPINGS = "grade_mappings"  # one saved mapping per user
NO_SHEET = "Please choose the grades file (.xlsx or .csv)"
NO_MAPPING = "Please map the columns of the grades file (the mapping is missing)"


class SavedMapping(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filename: str
    grades: dict[str, str]


def _sheet(attachments: dict[str, Attachment]) -> Attachment:
    sheet = attachments.get(GRADES_FIELD)
    if sheet is None or not sheet.data:
        raise FormRejected(NO_SHEET)
    return sheet


@router.post("/pregraded/header")
async def sheet_header(request: Request, gateway: GatewayDep, user: CurrentUser) -> dict[str, Any]:
    """Multipart `grades`: the sheet's column names, the grade fields they can map to, and
    the mapping this user saved last time (if any)."""
    found: dict[str, Attachment] = {}
    async for part in read_parts(request.headers.get("content-type", ""), request.stream()):
        chunks = bytearray()
        async for chunk in part.chunks:
            chunks += chunk
            if len(chunks) > MAX_SHEET_BYTES:
                raise FormRejected("The grades file is too large (max 10 MB)", status_code=413)
        if part.name == GRADES_FIELD and part.is_file:
            found[GRADES_FIELD] = Attachment(filename=part.filename or "", data=bytes(chunks))
    sheet = _sheet(found)
    try:
        columns = read_header(sheet.data, sheet.filename)
    except GradeSheetError as refused:
        raise FormRejected(refused.reason) from None
    saved = await gateway.docs.collection(MAPPINGS).get(user.username)
    return {
        "columns": columns,
        "fields": [{"name": f.name, "label": f.label} for f in GRADE_FIELDS.values()],
        "saved_mapping": json.loads(saved["mapping"]) if saved else None,
    }


@router.put("/pregraded/mapping")
async def save_mapping(
    mapping: SavedMapping, gateway: GatewayDep, user: CurrentUser
) -> dict[str, Any]:
    """Keep this column mapping for the user's next pre-graded upload."""
    try:
        checked = Mapping.from_json(mapping.model_dump_json())
    except GradeSheetError as refused:
        raise FormRejected(refused.reason) from None
    # Kept as JSON text: column and field names are the user's, not document field names.
    await gateway.docs.collection(MAPPINGS).put(
        {
            "_id": user.username,
            "mapping": checked.model_dump_json(),
            "saved_at": utcnow().isoformat(),
        }
    )
    return checked.model_dump()


@router.post("/pregraded/upload", status_code=201)
async def pregraded_upload(
    request: Request, gateway: GatewayDep, user: CurrentUser
) -> dict[str, Any]:
    """Multipart: `files` (the images), `grades` (the sheet), `mapping` (JSON:
    `{"filename": "<column>", "grades": {"dr_grade": "<column>", ...}}`) and the direct
    upload's fields. A sheet or mapping that cannot be used refuses the whole form."""
    outcome: dict[str, Any] = {}
    catalogue = Catalogue(docs=gateway.docs)

    async def grade(
        job_id: str,
        accepted: list[tuple[str, str]],
        attachments: dict[str, Attachment],
        fields: dict[str, str],
    ) -> None:
        sheet = _sheet(attachments)
        if not fields.get("mapping"):
            raise FormRejected(NO_MAPPING)
        try:
            mapping = Mapping.from_json(fields["mapping"])
            result: SheetResult = read_sheet_rows(
                sheet.data, sheet.filename, mapping, uploaded=[name for _, name in accepted]
            )
        except GradeSheetError as refused:
            raise FormRejected(refused.reason) from None
        now = utcnow().isoformat()
        graded: list[str] = []
        # Written before the files are announced, so ingest finds them when it catalogues.
        for item_id, name in accepted:
            grades = result.grades.get(name)
            if grades is None:
                continue
            await catalogue.put_grading(
                GradingRecord(
                    record_id=item_id,
                    job_id=job_id,
                    source="pre_graded",
                    grades=dict(grades),
                    graded_by=user.username,
                    graded_at=now,
                )
            )
            graded.append(name)
        outcome.update(
            pre_graded=graded,
            problems=[p.model_dump() for p in result.problems],
            images_without_row=list(result.images_without_row),
        )

    answer = await run_upload(
        request,
        gateway,
        user,
        rules=direct_rules(gateway.settings),
        attachments={GRADES_FIELD: MAX_SHEET_BYTES},
        before_record=grade,
    )
    return {**answer, **outcome}
