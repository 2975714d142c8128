"""Pre-graded uploads: images with a sheet of their grades, end to end in one process.
Good rows make pre-graded uploads with grading records, kept out of the grading queue; every
unusable row is reported with its row number."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from testkit.grade_sheets import xlsx_sheet
from testkit.harness import FORM
from testkit.synthetic import fundus_image
from tests.test_grading_queue import system

__all__ = ["system"]  # the fixture: an in-process system with every worker running

MAPPING = {"filename": "Image", "grades": {"dr_grade": "DR", "dme": "DME", "notes": "Notes"}}


async def wait(client: httpx.AsyncClient, auth: dict[str, str], job_id: str) -> dict[str, Any]:
    for _ in range(600):
        status: dict[str, Any] = (
            await client.get(f"/api/upload-jobs/{job_id}/status", headers=auth)
        ).json()
        if status["status"] in ("done", "error"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(status)


async def test_a_pre_graded_upload_grades_its_good_rows_and_reports_the_others(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    auth = {"Authorization": f"Bearer {tokens['camp']}"}
    images = [(f"p{i}.jpg", fundus_image(size=400, seed=900 + i)) for i in range(4)]
    sheet = xlsx_sheet(
        [
            ["Image", "DR", "DME", "Notes"],
            ["p0.jpg", 2, "yes", "mild"],  # row 2: good
            ["P1.JPG", 0, "no", None],  # row 3: good (names match in any case)
            ["missing.jpg", 1, "no", None],  # row 4: not uploaded
            ["p2.jpg", 7, "no", None],  # row 5: out of range
            ["p0.jpg", 3, "no", None],  # row 6: duplicate of row 2
        ]
    )

    response = await client.post(
        "/api/pregraded/upload",
        headers=auth,
        data={**FORM, "mapping": json.dumps(MAPPING)},
        files=[("grades", ("grades.xlsx", sheet, "application/octet-stream"))]
        + [("files", (name, data, "image/jpeg")) for name, data in images],
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert sorted(body["pre_graded"]) == ["p0.jpg", "p1.jpg"]
    assert [(p["row"], p["reason"]) for p in body["problems"]] == [
        (4, "File not among the uploaded files: missing.jpg"),
        (5, "DR grade must be 0-4, not 7"),
        (6, "Duplicate row for p0.jpg (first on row 2)"),
    ]
    assert body["images_without_row"] == ["p3.jpg"]
    status = await wait(client, auth, body["job_id"])
    assert status["status"] == "done"
    ids = {a["filename"]: a["item_id"] for a in body["accepted"]}
    queue = (await client.get("/api/grading/queue", headers=auth)).json()
    assert sorted(i["id"] for i in queue["items"]) == sorted([ids["p2.jpg"], ids["p3.jpg"]])
    uploads = (await client.get("/api/uploads?pre_graded=true", headers=auth)).json()
    assert sorted(u["id"] for u in uploads["items"]) == sorted([ids["p0.jpg"], ids["p1.jpg"]])
    assert {u["grading_status"] for u in uploads["items"]} == {"graded"}
    edit = await client.post(
        f"/api/uploads/{ids['p0.jpg']}/image-edits", headers=auth, json={"rotate": 90}
    )
    assert edit.status_code == 409


async def test_a_sheet_that_cannot_be_read_refuses_the_whole_upload(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    auth = {"Authorization": f"Bearer {tokens['camp']}"}
    files = [("files", ("q0.jpg", fundus_image(size=300, seed=950), "image/jpeg"))]

    broken = await client.post(
        "/api/pregraded/upload",
        headers=auth,
        data={**FORM, "mapping": json.dumps(MAPPING)},
        files=[("grades", ("grades.xlsx", b"PK\x03\x04 not really", "application/zip")), *files],
    )
    unmapped = await client.post(
        "/api/pregraded/upload",
        headers=auth,
        data=FORM,
        files=[("grades", ("g.xlsx", xlsx_sheet([["Image"], ["q0.jpg"]]), "x")), *files],
    )

    assert broken.status_code == 400
    assert broken.json()["detail"] == (
        "The grades file could not be read: it is not a valid Excel workbook"
    )
    assert unmapped.status_code == 400
    me = (await client.get("/api/me", headers=auth)).json()
    assert me["file_upload_count"] == 0  # nothing of the refused uploads was kept


async def test_the_page_reads_the_header_and_offers_the_mapping_saved_last_time(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    auth = {"Authorization": f"Bearer {tokens['camp']}"}
    sheet = ("grades.xlsx", xlsx_sheet([["Image", "DR", "Notes"], ["a.jpg", 1, ""]]), "x")

    first = await client.post("/api/pregraded/header", headers=auth, files={"grades": sheet})
    saved = await client.put("/api/pregraded/mapping", headers=auth, json=MAPPING)
    again = await client.post("/api/pregraded/header", headers=auth, files={"grades": sheet})

    assert first.status_code == 200, first.text
    assert first.json()["columns"] == ["Image", "DR", "Notes"]
    assert "dr_grade" in [f["name"] for f in first.json()["fields"]]
    assert first.json()["saved_mapping"] is None
    assert saved.status_code == 200
    assert again.json()["saved_mapping"] == MAPPING
