"""The web pages: sign-in, CSRF, the upload form and its endpoint, job pages, recent jobs."""

from __future__ import annotations

import re
from typing import Any

import httpx

from testkit.synthetic import fundus_image, pdf_bytes

FORM = {
    "hospital": "city-general",
    "lab_unit": "city-retina-clinic",
    "camera": "remidio-fop",
    "disease": "dr",
    "area": "left-eye",
    "mydriatic": "true",
}
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_INPUT.search(page.text)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def sign_in(site: Any, username: str, password: str, *, next: str = "") -> httpx.Response:
    page = await site.client.get("/login" + (f"?next={next}" if next else ""))
    response: httpx.Response = await site.client.post(
        "/login",
        data={
            "username": username,
            "password": password,
            "csrf_token": csrf_of(page),
            "next": next,
        },
    )
    return response


async def page_token(site: Any, path: str = "/direct/upload") -> str:
    page = await site.client.get(path)
    assert page.status_code == 200, page.text
    return csrf_of(page)


def jpeg(seed: int) -> tuple[str, bytes, str]:
    return (f"eye{seed}.jpg", fundus_image(size=256, seed=seed), "image/jpeg")


# --- sign-in --------------------------------------------------------------------------------


async def test_signing_in_sets_the_session_and_opens_the_page_asked_for(site: Any) -> None:
    response = await sign_in(site, "camp", "pw-camp-1", next="/jobs")
    assert response.status_code == 303
    assert response.headers["location"] == "/jobs"
    assert "uploader_session" in response.cookies
    page = await site.client.get("/direct/upload")
    assert page.status_code == 200
    assert "Direct Upload" in page.text and "camp" in page.text


async def test_a_wrong_password_shows_a_message_and_signs_nobody_in(site: Any) -> None:
    response = await sign_in(site, "camp", "wrong-password")
    assert response.status_code == 401
    assert "Incorrect username or password." in response.text
    assert 'value="camp"' in response.text  # the username is kept for the next try
    page = await site.client.get("/direct/upload")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")


async def test_pages_redirect_to_sign_in_and_come_back_after(site: Any) -> None:
    for path in (
        "/direct/upload",
        "/jobs",
        "/direct/upload/processing/abc",
        "/direct/upload/results/abc",
        "/admin/users",
        "/admin/reference",
    ):
        response = await site.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/login?next=" + path.replace("/", "%2F")
    assert (await site.client.get("/")).headers["location"] == "/login"


async def test_after_sign_in_only_paths_on_this_site_are_followed(site: Any) -> None:
    response = await sign_in(site, "camp", "pw-camp-1", next="//evil.example/phish")
    assert response.headers["location"] == "/direct/upload"


async def test_sign_in_without_the_forms_token_is_refused(site: Any) -> None:
    response = await site.client.post("/login", data={"username": "camp", "password": "pw-camp-1"})
    assert response.status_code == 403
    assert "Please reload the page and try again" in response.text
    assert (await site.client.get("/direct/upload")).status_code == 303


async def test_signing_out_needs_the_token_and_ends_the_session(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    refused = await site.client.post("/logout", data={})
    assert refused.status_code == 403
    assert (await site.client.get("/direct/upload")).status_code == 200
    token = await page_token(site)
    response = await site.client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert "You have signed out." in (await site.client.get("/login")).text
    assert (await site.client.get("/direct/upload")).status_code == 303


async def test_a_disabled_account_cannot_sign_in(site: Any) -> None:
    await site.accounts.update("camp", active=False)
    response = await sign_in(site, "camp", "pw-camp-1")
    assert response.status_code == 401


# --- the upload form ------------------------------------------------------------------------


async def test_the_upload_form_offers_only_the_users_lab_units_and_shows_the_limits(
    site: Any,
) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    page = (await site.client.get("/direct/upload")).text
    assert 'value="city-retina-clinic"' in page
    assert 'value="city-screening-camp"' not in page
    assert 'value="riverside-eye"' not in page  # no lab unit of that hospital is theirs
    for text in (
        "Hospital",
        "Lab Unit",
        "Camera",
        "Disease",
        "Area",
        "Non Mydriatic",
        "Mydriatic",
        "Choose Files",
        "Upload Images",
        "1MB per image",
        "up to 6",
        "Recent Jobs",
    ):
        assert text in page, text
    assert re.search(r'id="quota-number">50<', page)


async def test_admins_may_choose_every_lab_unit(site: Any) -> None:
    await sign_in(site, "boss", "pw-boss-1")
    page = (await site.client.get("/direct/upload")).text
    for unit in ("city-retina-clinic", "city-screening-camp", "riverside-outpatient"):
        assert f'value="{unit}"' in page
    assert "Users" in page and "Reference data" in page  # admin menu


async def test_the_upload_api_refuses_the_session_cookie_without_the_csrf_header(
    site: Any,
) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    response = await site.client.post("/api/direct/upload", data=FORM, files=[("files", jpeg(1))])
    assert response.status_code == 403
    assert "reload the page" in response.json()["detail"]
    wrong = await site.client.post(
        "/api/direct/upload",
        data=FORM,
        files=[("files", jpeg(1))],
        headers={"X-CSRF-Token": "guess"},
    )
    assert wrong.status_code == 403
    assert (await site.accounts.get("camp")).file_upload_count == 0


async def test_the_upload_api_works_with_the_session_and_its_csrf_header(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    token = await page_token(site)
    response = await site.client.post(
        "/api/direct/upload", data=FORM, files=[("files", jpeg(2))], headers={"X-CSRF-Token": token}
    )
    assert response.status_code == 201, response.text
    assert response.json()["accepted"][0]["filename"] == "eye2.jpg"


async def test_the_pages_upload_endpoint_answers_json_for_the_script(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    token = await page_token(site)
    headers = {"X-CSRF-Token": token, "Accept": "application/json"}
    response = await site.client.post(
        "/direct/upload",
        data=FORM,
        headers=headers,
        files=[("files", jpeg(3)), ("files", ("r.jpg", pdf_bytes(["x"]), "image/jpeg"))],
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["processing_url"] == f"/direct/upload/processing/{body['job_id']}"
    assert body["rejected"] == [
        {
            "item_id": body["rejected"][0]["item_id"],
            "filename": "r.jpg",
            "reason": "Invalid file type: application/pdf. Only JPG/PNG allowed.",
        }
    ]
    forged = await site.client.post(
        "/direct/upload", data=FORM, files=[("files", jpeg(4))], headers={"X-CSRF-Token": "forged"}
    )
    assert forged.status_code == 403


async def test_whole_form_errors_come_back_with_the_exact_message(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    headers = {"X-CSRF-Token": await page_token(site)}
    cases = [
        ({**FORM, "camera": ""}, 400, "All fields are required"),
        (
            {**FORM, "hospital": "riverside-eye", "lab_unit": "riverside-outpatient"},
            403,
            "You don't have access to the selected lab unit",
        ),
        ({**FORM, "hospital": "riverside-eye"}, 400, "Invalid hospital/lab unit combination"),
    ]
    for form, code, message in cases:
        response = await site.client.post(
            "/direct/upload", data=form, headers=headers, files=[("files", jpeg(5))]
        )
        assert (response.status_code, response.json()["detail"]) == (code, message)
    too_many = await site.client.post(
        "/direct/upload",
        data=FORM,
        headers=headers,
        files=[("files", jpeg(10 + i)) for i in range(7)],
    )
    assert too_many.status_code == 413
    assert too_many.json()["detail"].startswith("Too many files in one upload (max 6)")
    assert (await site.accounts.get("camp")).file_upload_count == 0


async def test_the_form_also_works_without_javascript(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    token = await page_token(site)
    # A browser sends the fields in page order: the CSRF field is the first.
    response = await site.client.post(
        "/direct/upload", data={"csrf_token": token, **FORM}, files=[("files", jpeg(6))]
    )
    assert response.status_code == 303
    assert response.headers["location"].startswith("/direct/upload/processing/")
    missing = await site.client.post(
        "/direct/upload", data={"csrf_token": token, **FORM, "area": ""}, files=[("files", jpeg(7))]
    )
    assert missing.status_code == 400
    assert "All fields are required" in missing.text and "<form" in missing.text
    forged = await site.client.post("/direct/upload", data=FORM, files=[("files", jpeg(8))])
    assert forged.status_code == 403
    assert "reload the page" in forged.text


async def test_a_user_without_lab_units_is_told_to_ask_for_one(site: Any) -> None:
    await site.accounts.create_user(username="nobody", role="uploader", password="pw-nobody-1")
    await sign_in(site, "nobody", "pw-nobody-1")
    page = (await site.client.get("/direct/upload")).text
    assert "No lab unit assigned" in page
    assert 'id="upload-form"' not in page


async def test_a_long_open_page_can_fetch_the_sessions_current_token(site: Any) -> None:
    assert (await site.client.get("/session/csrf")).status_code == 401
    await sign_in(site, "camp", "pw-camp-1")
    token = (await site.client.get("/session/csrf")).json()["csrf_token"]
    assert token == await page_token(site)
    response = await site.client.post(
        "/direct/upload", data=FORM, files=[("files", jpeg(9))], headers={"X-CSRF-Token": token}
    )
    assert response.status_code == 201


async def test_the_script_is_told_when_the_session_has_ended(site: Any) -> None:
    response = await site.client.post(
        "/direct/upload", data=FORM, files=[("files", jpeg(9))], headers={"X-CSRF-Token": "stale"}
    )
    assert response.status_code == 401
    assert response.json()["detail"] == "Your session has ended. Please sign in again."


# --- job pages ------------------------------------------------------------------------------


async def _job_with_failures(site: Any) -> str:
    files = [
        jpeg(20),
        ("big.jpg", fundus_image(size=256, seed=21) + b"\0" * 1_100_000, "image/jpeg"),
        ("report.jpg", pdf_bytes(["x"]), "image/jpeg"),
    ]
    response = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data=FORM,
        files=[("files", f) for f in files],
    )
    assert response.status_code == 201
    job_id: str = response.json()["job_id"]
    return job_id


async def test_the_processing_page_shows_each_file_with_its_badge(site: Any) -> None:
    job_id = await _job_with_failures(site)
    await sign_in(site, "small", "pw-small-1")  # any signed-in user holding the token
    page = await site.client.get(f"/direct/upload/processing/{job_id}")
    assert page.status_code == 200
    text = page.text
    assert job_id in text and "Refresh now" in text and "View Results" in text
    assert f"/api/upload-jobs/{job_id}/status" in text
    assert text.count('class="badge badge-error"') == 2
    assert text.count('class="badge badge-queued"') == 1
    assert "File too large (max 1MB)" in text
    assert "203.0.113.7" not in text  # the IP address is for administrators


async def test_the_results_page_lists_every_failure_with_its_reason(site: Any) -> None:
    job_id = await _job_with_failures(site)
    await sign_in(site, "boss", "pw-boss-1")
    text = (await site.client.get(f"/direct/upload/results/{job_id}")).text
    failures = re.search(r'<table class="table" id="failures-table">(.*?)</table>', text, re.S)
    assert failures
    rows = re.findall(
        r'<td class="filename"[^>]*>(.*?)</td><td class="reason">(.*?)</td>', failures.group(1)
    )
    assert rows == [
        ("big.jpg", "File too large (max 1MB)"),
        ("report.jpg", "Invalid file type: application/pdf. Only JPG/PNG allowed."),
    ]
    assert "203.0.113.7" in text  # administrators see where it came from


async def test_an_unknown_job_is_a_friendly_not_found_page(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    response = await site.client.get("/direct/upload/processing/no-such-job")
    assert response.status_code == 404
    assert "Upload job not found" in response.text


async def test_recent_jobs_is_a_page_for_browsers_and_json_for_programs(site: Any) -> None:
    job_id = await _job_with_failures(site)
    await sign_in(site, "camp", "pw-camp-1")
    page = await site.client.get("/jobs", headers={"Accept": "text/html,*/*"})
    assert page.headers["content-type"].startswith("text/html")
    assert job_id in page.text and "Recent Jobs" in page.text
    assert f"/direct/upload/processing/{job_id}" in page.text
    for response in (
        await site.client.get("/jobs", headers={"Accept": "application/json"}),
        await site.client.get("/jobs?format=json"),
    ):
        assert response.headers["content-type"] == "application/json"
        jobs = response.json()["jobs"]
        assert [j["job_id"] for j in jobs] == [job_id]
        assert jobs[0]["rejected_count"] == 2
        assert "ip" not in jobs[0]
    by_token = await site.client.get(
        "/jobs", headers={**site.auth("boss"), "Accept": "application/json"}
    )
    assert by_token.json()["jobs"][0]["ip"] == "203.0.113.7"


async def test_recent_jobs_as_json_needs_sign_in_and_does_not_redirect(site: Any) -> None:
    response = await site.client.get("/jobs?format=json")
    assert response.status_code == 401


async def test_static_files_are_served_with_a_version(site: Any) -> None:
    await sign_in(site, "camp", "pw-camp-1")
    page = (await site.client.get("/direct/upload")).text
    for name in ("app.css", "app.js", "upload.js"):
        found = re.search(rf"/static/{re.escape(name)}\?v=([0-9a-f]+)", page)
        assert found, name
        asset = await site.client.get(f"/static/{name}")
        assert asset.status_code == 200


async def test_a_filename_with_markup_is_shown_as_text_not_run(site: Any) -> None:
    name = '<img src=x onerror="alert(1)">.jpg'
    response = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data=FORM,
        files=[("files", (name, b"nope", "image/jpeg"))],
    )
    job_id = response.json()["job_id"]
    await sign_in(site, "camp", "pw-camp-1")
    for page in ("processing", "results"):
        text = (await site.client.get(f"/direct/upload/{page}/{job_id}")).text
        assert "<img src=x" not in text
        assert "&lt;img src=x onerror=" in text
