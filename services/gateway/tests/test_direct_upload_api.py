"""Every check of the direct upload, with the exact messages of the user's help document."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from contracts.envelope import CloudEvent
from contracts.events import UploadReceived, decode
from contracts.topics import UPLOADS_RECEIVED
from testkit.synthetic import fundus_image, pdf_bytes

FORM = {
    "hospital": "city-general",
    "lab_unit": "city-retina-clinic",
    "camera": "remidio-fop",
    "disease": "dr",
    "area": "left-eye",
    "mydriatic": "false",
}


async def post(
    site: Any, user: str, files: list[tuple[str, bytes, str]], form: dict[str, str] | None = None
) -> httpx.Response:
    return await site.client.post(
        "/api/direct/upload",
        headers=site.auth(user),
        data=FORM if form is None else form,
        files=[("files", f) for f in files],
    )


def jpeg(seed: int) -> tuple[str, bytes, str]:
    return (f"img{seed}.jpg", fundus_image(size=300, seed=seed), "image/jpeg")


def stored_raw(site: Any) -> list[Path]:
    raw = site.objects / "raw"
    return [p for p in raw.rglob("*") if p.is_file()] if raw.exists() else []


def reasons(response: httpx.Response) -> dict[str, str]:
    return {r["filename"]: r["reason"] for r in response.json()["rejected"]}


async def test_good_images_are_stored_untouched_and_announced(site: Any) -> None:
    files = [jpeg(1), jpeg(2)]
    response = await post(site, "camp", files)
    assert response.status_code == 201, response.text
    body = response.json()
    assert [a["filename"] for a in body["accepted"]] == ["img1.jpg", "img2.jpg"]
    assert body["rejected"] == []
    assert sorted(p.read_bytes() for p in stored_raw(site)) == sorted(f[1] for f in files)
    consumer = site.bus.consumer(group="t", topics=[UPLOADS_RECEIVED])
    deliveries = await consumer.fetch(timeout=1)
    await consumer.close()
    events = [decode(CloudEvent.from_bytes(d.message.value)) for d in deliveries]
    assert all(isinstance(e, UploadReceived) and e.job_id == body["job_id"] for e in events)
    assert {e.object.content_type for e in events} == {"image/jpeg"}  # type: ignore[attr-defined]
    user = await site.accounts.get("camp")
    assert user.file_upload_count == 2


async def test_a_file_over_the_size_limit_is_refused_with_the_limit_in_the_message(
    site: Any,
) -> None:
    big = fundus_image(size=300, seed=3) + b"\0" * (1024 * 1024)
    response = await post(site, "camp", [("big.jpg", big, "image/jpeg"), jpeg(4)])
    assert response.status_code == 201
    assert reasons(response) == {"big.jpg": "File too large (max 1MB)"}
    assert len(stored_raw(site)) == 1


async def test_a_pdf_renamed_jpg_is_refused_by_its_bytes_not_its_name(site: Any) -> None:
    response = await post(site, "camp", [("scan.jpg", pdf_bytes(["Report"]), "image/jpeg")])
    assert reasons(response) == {
        "scan.jpg": "Invalid file type: application/pdf. Only JPG/PNG allowed."
    }
    assert stored_raw(site) == []


async def test_the_same_bytes_twice_in_one_request_or_later_are_duplicates(site: Any) -> None:
    same = jpeg(5)
    first = await post(site, "camp", [same, ("copy.jpg", same[1], "image/jpeg")])
    assert reasons(first) == {"copy.jpg": "Duplicate file"}
    again = await post(site, "camp", [same])
    assert reasons(again) == {"img5.jpg": "Duplicate file"}
    assert len(stored_raw(site)) == 1
    user = await site.accounts.get("camp")
    assert user.file_upload_count == 1


async def test_the_lifetime_quota_counts_accepted_files_only(site: Any) -> None:
    first = await post(site, "small", [jpeg(6), ("bad.jpg", b"not an image", "image/jpeg")])
    assert len(first.json()["accepted"]) == 1
    second = await post(site, "small", [jpeg(7), jpeg(8)])
    assert [a["filename"] for a in second.json()["accepted"]] == ["img7.jpg"]
    assert reasons(second) == {"img8.jpg": "Upload quota exceeded"}
    user = await site.accounts.get("small")
    assert user.file_upload_count == 2


async def test_an_empty_file_input_is_no_selected_file(site: Any) -> None:
    # What a browser sends for a file input left empty: filename="" and no bytes.
    boundary = "EmptyInput"
    fields = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
        for k, v in FORM.items()
    )
    body = (
        fields + f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        f'filename=""\r\nContent-Type: application/octet-stream\r\n\r\n\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    response = await site.client.post(
        "/api/direct/upload",
        content=body,
        headers={**site.auth("camp"), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["rejected"][0]["reason"] == "No selected file"


async def test_a_form_with_a_missing_field_is_refused_whole_and_keeps_nothing(
    site: Any,
) -> None:
    form = {k: v for k, v in FORM.items() if k != "camera"}
    response = await post(site, "camp", [jpeg(10)], form=form)
    assert response.status_code == 400
    assert response.json()["detail"] == "All fields are required"
    assert stored_raw(site) == []
    assert (await site.accounts.get("camp")).file_upload_count == 0


async def test_fields_sent_after_the_files_are_still_checked_and_rolled_back(
    site: Any,
) -> None:
    # Build the multipart body by hand: the file part first, then an incomplete form.
    boundary = "b0undary"
    name, data, _ = jpeg(11)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"'
        f"\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        + f'--{boundary}\r\nContent-Disposition: form-data; name="hospital"\r\n\r\n'
        f"city-general\r\n--{boundary}--\r\n".encode()
    )
    response = await site.client.post(
        "/api/direct/upload",
        content=body,
        headers={**site.auth("camp"), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "All fields are required"
    assert stored_raw(site) == []


async def test_a_lab_unit_not_assigned_to_the_user_is_refused(site: Any) -> None:
    form = {**FORM, "hospital": "riverside-eye", "lab_unit": "riverside-outpatient"}
    response = await post(site, "camp", [jpeg(12)], form=form)
    assert response.status_code == 403
    assert response.json()["detail"] == "You don't have access to the selected lab unit"


async def test_a_lab_unit_of_another_hospital_is_an_invalid_combination(site: Any) -> None:
    form = {**FORM, "hospital": "riverside-eye"}
    response = await post(site, "boss", [jpeg(13)], form=form)
    assert response.status_code == 400
    assert response.json()["detail"] == "Invalid hospital/lab unit combination"


async def test_more_files_than_allowed_in_one_request_is_refused_clearly(site: Any) -> None:
    response = await post(site, "camp", [jpeg(20 + i) for i in range(7)])
    assert response.status_code == 413
    assert "Too many files in one upload (max 6)" in response.json()["detail"]
    assert stored_raw(site) == []


async def test_a_request_without_files_is_no_selected_file(site: Any) -> None:
    response = await site.client.post(
        "/api/direct/upload", headers=site.auth("camp"), data=FORM, files={"other": ("x.txt", b"x")}
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "No selected file"


async def test_uploading_needs_a_valid_token(site: Any) -> None:
    response = await site.client.post(
        "/api/direct/upload",
        headers={"Authorization": "Bearer nope"},
        data=FORM,
        files=[("files", jpeg(14))],
    )
    assert response.status_code == 401


async def test_the_job_shows_rejected_files_at_once_and_the_ip_to_admins_only(
    site: Any,
) -> None:
    response = await post(site, "camp", [jpeg(15), ("doc.png", b"%PDF-1.4 x", "image/png")])
    job_id = response.json()["job_id"]
    mine = (
        await site.client.get(f"/api/upload-jobs/{job_id}/status", headers=site.auth("camp"))
    ).json()
    assert mine["uploader"] == "camp"
    assert "ip" not in mine
    by_name = {i["filename"]: i for i in mine["items"]}
    assert by_name["doc.png"]["status"] == "error"
    assert by_name["doc.png"]["reason"].startswith("Invalid file type: ")
    assert by_name["img15.jpg"]["status"] == "queued"
    as_admin = (
        await site.client.get(f"/api/upload-jobs/{job_id}/status", headers=site.auth("boss"))
    ).json()
    assert as_admin["ip"] == "203.0.113.7"
    missing = await site.client.get("/api/upload-jobs/nope/status", headers=site.auth("camp"))
    assert missing.status_code == 404


async def test_reference_data_lists_every_kind_with_ids(site: Any) -> None:
    body = (await site.client.get("/api/reference", headers=site.auth("camp"))).json()
    assert set(body) == {"hospitals", "lab_units", "cameras", "diseases", "areas"}
    assert {d["name"] for d in body["diseases"]} == {"DR", "Glaucoma", "AMD"}
    assert all("hospital_id" in u for u in body["lab_units"])


async def test_uploaders_list_their_own_jobs_and_admins_everyones(site: Any) -> None:
    mine = (await post(site, "camp", [jpeg(30)])).json()["job_id"]
    theirs = (await post(site, "small", [jpeg(31)])).json()["job_id"]
    listed = (await site.client.get("/api/jobs", headers=site.auth("camp"))).json()["jobs"]
    assert [j["job_id"] for j in listed] == [mine]
    everyone = (await site.client.get("/api/jobs", headers=site.auth("boss"))).json()["jobs"]
    assert {j["job_id"] for j in everyone} == {mine, theirs}
    assert all("ip" in j for j in everyone)
