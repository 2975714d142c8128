"""Direct upload of fundus images, end to end, in real Chromium against `uploader serve`.

Signs in, fills the form (hospital pill, lab unit, camera, disease, area, mydriatic toggle),
chooses files with the file picker AND drops files on the drop area, uploads five files (two
good, one too large, one PDF named .jpg, one duplicate), follows the processing page until it
stops at `error` with two completed files, and reads the three exact failure reasons on the
results page. Screenshots go to test-results/browser/.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.harness import REPO, Process, cli, start_process, uploader_env
from testkit.synthetic import fundus_image, pdf_bytes

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = REPO / "test-results" / "browser"
USER, PASSWORD = "camp1", "camp1-password"
ADMIN, ADMIN_PASSWORD = "admin1", "admin1-password"
MB = 1024 * 1024

TOO_LARGE = "File too large (max 5MB)"
NOT_AN_IMAGE = "Invalid file type: application/pdf. Only JPG/PNG allowed."
DUPLICATE = "Duplicate file"

DROP_FILES = """
async (files) => {
  const transfer = new DataTransfer();
  for (const file of files) {
    const bytes = Uint8Array.from(atob(file.b64), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], file.name, { type: file.type }));
  }
  const zone = document.getElementById("dropzone");
  for (const type of ["dragenter", "dragover", "drop"]) {
    zone.dispatchEvent(new DragEvent(type, { bubbles: true, cancelable: true,
                                             dataTransfer: transfer }));
  }
}
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Process]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: `make test` installs it (Debian chromium)")
    env = uploader_env(tmp_path / "var")
    cli(
        [
            "users",
            "create",
            USER,
            "--role",
            "uploader",
            "--lab-unit",
            "city-retina-clinic",
            "--password",
            PASSWORD,
        ],
        env,
    )
    cli(["users", "create", ADMIN, "--role", "admin", "--password", ADMIN_PASSWORD], env)
    process = start_process("serve", ["serve"], env=env, log_dir=tmp_path)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def sign_in(page: Any, base_url: str, username: str, password: str) -> None:
    page.goto(base_url + "/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button:has-text('Sign in')")
    page.wait_for_url(base_url + "/direct/upload")


def test_direct_upload_in_a_real_browser_reports_each_failure_exactly(
    server: Process, shots: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    good_a = fundus_image(size=700, seed=501)
    good_b = fundus_image(size=700, seed=502)
    big = fundus_image(size=700, seed=503)
    big += b"\0" * (int(5.6 * MB) - len(big))  # still a JPEG by its bytes, just too large
    folder = tmp_path / "camera-export"
    folder.mkdir()
    for name, data in (
        ("OD_0001.jpg", good_a),
        ("OS_0002.jpg", good_b),
        ("OD_0003_large.jpg", big),
    ):
        (folder / name).write_bytes(data)
    dropped = [
        {
            "name": "report_0004.jpg",
            "type": "image/jpeg",
            "b64": base64.b64encode(
                pdf_bytes(["DR screening report", "Patient: synthetic"])
            ).decode(),
        },
        {
            "name": "OD_0001_copy.jpg",
            "type": "image/jpeg",
            "b64": base64.b64encode(good_a).decode(),
        },
    ]

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC"
            )
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)

            # --- sign in (the upload page sends us to the sign-in page first) ---------------
            page.goto(server.url + "/direct/upload")
            expect(page).to_have_url(re.compile(r"/login\?next=%2Fdirect%2Fupload$"))
            page.fill("#username", USER)
            page.fill("#password", "not-the-password")
            page.click("button:has-text('Sign in')")
            expect(page.locator("#login-error")).to_have_text("Incorrect username or password.")
            page.fill("#password", PASSWORD)
            page.screenshot(path=str(shots / "01-login.png"))
            page.click("button:has-text('Sign in')")
            expect(page).to_have_url(server.url + "/direct/upload")

            # --- the menu: Upload > Direct Upload / Recent Jobs ------------------------------
            page.click("summary:has-text('Upload')")
            expect(page.locator(".dropdown-panel a:has-text('Direct Upload')")).to_be_visible()
            expect(page.locator(".dropdown-panel a:has-text('Recent Jobs')")).to_be_visible()
            page.keyboard.press("Escape")

            # --- the form: limits shown, nothing chosen is refused in the page --------------
            limits = page.locator("#limits")
            expect(limits).to_contain_text("5MB per image")
            expect(limits).to_contain_text("up to 100")
            expect(page.locator("#quota-number")).to_have_text("50")
            page.click("#upload-button")
            expect(page.locator("#form-error")).to_have_text("All fields are required")
            expect(page.locator("#camera")).to_have_class(re.compile(r"\binvalid\b"))

            page.click("label.pill:has-text('City General Hospital')")
            lab_units = page.locator("#lab_unit option")
            expect(lab_units).to_have_count(2)  # the placeholder and the one unit allowed
            # (one hospital and one lab unit: both come chosen already)
            expect(page.locator("#lab_unit")).to_have_value("city-retina-clinic")
            page.select_option("#lab_unit", "city-retina-clinic")
            page.select_option("#camera", label="Remidio Fundus on Phone")
            page.select_option("#disease", label="DR")
            page.select_option("#area", label="Right eye")
            page.click("label[for='mydriatic-yes']")
            expect(page.locator("#mydriatic-yes")).to_be_checked()

            # Three files from the file picker, two dropped on the drop area.
            page.set_input_files(
                "#file-input",
                [
                    str(folder / "OD_0001.jpg"),
                    str(folder / "OS_0002.jpg"),
                    str(folder / "OD_0003_large.jpg"),
                ],
            )
            page.evaluate(DROP_FILES, dropped)
            rows = page.locator("#file-list tr")
            expect(rows).to_have_count(5)
            expect(rows.locator("td.filename")).to_have_text(
                [
                    "OD_0001.jpg",
                    "OS_0002.jpg",
                    "OD_0003_large.jpg",
                    "report_0004.jpg",
                    "OD_0001_copy.jpg",
                ]
            )
            expect(rows.nth(2)).to_contain_text("File too large (max 5MB): will be refused")
            expect(page.locator("#file-summary")).to_contain_text("5 files chosen")
            page.screenshot(path=str(shots / "02-upload-form.png"), full_page=True)

            # --- the session ends while the files are chosen: nothing is lost ----------------
            context.clear_cookies()
            page.click("#upload-button")
            expect(page.locator("#form-error")).to_contain_text("Your session has ended.")
            expect(page.locator("#form-error")).to_contain_text("your files are still selected")
            expect(rows).to_have_count(5)
            page.screenshot(path=str(shots / "02b-session-ended.png"))
            other_tab = context.new_page()
            sign_in(other_tab, server.url, USER, PASSWORD)
            other_tab.close()

            # --- upload, then watch the processing page ------------------------------------
            status_polls: list[str] = []
            page.on(
                "request",
                lambda r: status_polls.append(r.url) if "/api/upload-jobs/" in r.url else None,
            )
            page.click("#upload-button")
            page.wait_for_url(re.compile(r"/direct/upload/processing/[\w-]+$"))
            job_id = page.url.rsplit("/", 1)[-1]
            expect(page.locator("#job-id")).to_have_text(job_id)
            badge = page.locator("#job-status-badge")
            expect(badge).to_have_class(re.compile(r"\bbadge-error\b"), timeout=120_000)
            expect(badge).to_have_text("Error")
            polls_at_the_end = len(status_polls)
            file_rows = page.locator("#file-status-rows tr")
            expect(file_rows).to_have_count(5)
            expect(file_rows.locator(".badge")).to_have_text(
                ["Completed", "Completed", "Error", "Error", "Error"]
            )
            expect(file_rows.locator(".badge")).to_have_class(
                [re.compile(r"badge-completed")] * 2 + [re.compile(r"badge-error")] * 3
            )
            expect(file_rows.locator("td.reason")).to_have_text(
                ["", "", TOO_LARGE, NOT_AN_IMAGE, DUPLICATE]
            )
            for i in (0, 1):  # completed files show when they started and finished
                expect(file_rows.nth(i).locator("time")).to_have_count(2)
            expect(page.locator("#count-failed")).to_have_text("3")
            expect(page.locator("#error-counter")).to_have_class(re.compile(r"has-errors"))
            expect(page.locator("#count-succeeded")).to_have_text("2")
            expect(page.locator("#progress-text")).to_have_text("5 of 5 files processed (100%)")
            expect(page.locator("#view-results")).to_be_visible()
            expect(page.locator("#redirect-note")).to_be_visible()
            expect(page.locator("#job")).to_contain_text("Mydriatic")
            page.screenshot(path=str(shots / "03-processing.png"), full_page=True)
            page.wait_for_timeout(1_700)  # longer than one polling interval
            assert len(status_polls) == polls_at_the_end, "polling must stop at error"

            # --- results, opened automatically ---------------------------------------------
            page.wait_for_url(server.url + f"/direct/upload/results/{job_id}", timeout=15_000)
            expect(page.locator("#overall-status")).to_have_text("Error")
            expect(page.locator("#count-processed")).to_have_text("5")
            expect(page.locator("#count-succeeded")).to_have_text("2")
            expect(page.locator("#count-failed")).to_have_text("3")
            failures = page.locator("#failures-table tbody tr")
            expect(failures).to_have_count(3)
            expect(failures.locator("td.filename")).to_have_text(
                ["OD_0003_large.jpg", "report_0004.jpg", "OD_0001_copy.jpg"]
            )
            expect(failures.locator("td.reason")).to_have_text([TOO_LARGE, NOT_AN_IMAGE, DUPLICATE])
            expect(page.locator("#successes-table tbody tr td.filename")).to_have_text(
                ["OD_0001.jpg", "OS_0002.jpg"]
            )
            page.screenshot(path=str(shots / "04-results.png"), full_page=True)

            # --- recent jobs lists it, with its rejection count -----------------------------
            page.click(".head-actions a:has-text('Recent Jobs')")
            job_row = page.locator(f"#jobs-table tr[data-job-id='{job_id}']")
            expect(job_row.locator(".badge")).to_have_text("Error")
            expect(page.locator("#quota-number")).to_have_count(0)
            page.screenshot(path=str(shots / "05-recent-jobs.png"), full_page=True)
            page.goto(server.url + "/direct/upload")
            expect(page.locator("#quota-number")).to_have_text("48")  # two files counted
        finally:
            browser.close()

    for name in ("01-login", "02-upload-form", "03-processing", "04-results", "05-recent-jobs"):
        assert (shots / f"{name}.png").stat().st_size > 10_000


def test_an_admin_sets_up_a_hospital_and_a_user_with_a_quota_in_the_browser(
    server: Process, shots: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            page.set_default_timeout(30_000)
            sign_in(page, server.url, ADMIN, ADMIN_PASSWORD)

            # Reference data: a new hospital and a lab unit that belongs to it.
            page.click("summary:has-text('Admin')")
            page.click(".dropdown-panel a:has-text('Reference data')")
            hospitals = page.locator("section#hospitals")
            hospitals.locator("input[name=name][placeholder]").fill("Hill District Hospital")
            hospitals.locator("button:has-text('Add hospital')").click()
            expect(page.locator(".alert-success")).to_have_text(
                "Added hospital “Hill District Hospital”."
            )
            units = page.locator("section#lab_units")
            units.locator("input[name=name][placeholder]").fill("Mobile Screening Van")
            units.locator(".add-row select[name=hospital_id]").select_option(
                label="Hill District Hospital"
            )
            units.locator("button:has-text('Add lab unit')").click()
            expect(page.locator(".alert-success")).to_have_text(
                "Added lab unit “Mobile Screening Van”."
            )
            expect(
                page.locator(
                    "section#lab_units tr[data-id='mobile-screening-van'] select[name=hospital_id]"
                )
            ).to_have_value("hill-district-hospital")
            page.screenshot(path=str(shots / "06-admin-reference.png"), full_page=True)

            # Users: create one for the new lab unit, then give it a quota override.
            page.click("summary:has-text('Admin')")
            page.click(".dropdown-panel a:has-text('Users')")
            create = page.locator("#create-user")
            create.locator("input[name=username]").fill("camp2")
            create.locator("input[name=password]").fill("camp2-password")
            create.locator("label.check:has-text('Mobile Screening Van') input").check()
            create.locator("button:has-text('Create user')").click()
            expect(page.locator(".alert-success")).to_have_text("Created user “camp2”.")
            row = page.locator("#users-table tr[data-username='camp2']")
            expect(row).to_contain_text("Mobile Screening Van")
            expect(row).to_contain_text("(default)")
            row.locator("a:has-text('Edit')").click()
            page.fill("#upload_quota", "3")
            page.click("button:has-text('Save changes')")
            expect(page.locator(".alert-success")).to_have_text("Saved user “camp2”.")
            expect(row.locator("td.num").nth(1)).to_contain_text("3 (override)")
            page.screenshot(path=str(shots / "07-admin-users.png"), full_page=True)

            # The new user sees only the new hospital and their quota of 3.
            page.click("button:has-text('Sign out')")
            expect(page.locator(".alert-success")).to_have_text("You have signed out.")
            sign_in(page, server.url, "camp2", "camp2-password")
            expect(page.locator("label.pill")).to_have_text(["Hill District Hospital"])
            expect(page.locator("#lab_unit")).to_have_value("mobile-screening-van")
            expect(page.locator("#quota-remaining")).to_have_text("3 of 3 images")
            expect(page.locator("summary:has-text('Admin')")).to_have_count(0)
            page.goto(server.url + "/admin/users")
            expect(page.locator("h1")).to_have_text("Administrators only")
        finally:
            browser.close()


LONG_NAME = "OD_2026-11-30_screening-camp_patient-record_left-eye_capture_0001_final.jpg"


def test_what_a_newcomer_saw_is_fixed_in_a_real_browser(
    server: Process, shots: Path, tmp_path: Path
) -> None:
    """Layouts at 1366 and 390 px, whole file names, a countdown in good English, the quota
    said at once, offline API docs, an icon, styled 404s, and no script the CSP refuses."""
    from playwright.sync_api import expect, sync_playwright

    env = uploader_env(Path(server.env["UPLOADER_DATA_DIR"]))
    token = cli(["tokens", "create", USER], env).strip()
    cli(
        [
            "users",
            "create",
            "spent",
            "--role",
            "uploader",
            "--lab-unit",
            "city-retina-clinic",
            "--password",
            "spent-password",
            "--quota",
            "0",
        ],
        env,
    )
    import httpx

    response = httpx.post(
        server.url + "/api/direct/upload",
        headers={
            "Authorization": f"Bearer {token}",
            "User-Agent": "Mozilla/5.0" + " (a very long agent)" * 12,
        },
        data={
            "hospital": "city-general",
            "lab_unit": "city-retina-clinic",
            "camera": "remidio-fop",
            "disease": "dr",
            "area": "left-eye",
            "mydriatic": "false",
        },
        files=[("files", (LONG_NAME, fundus_image(size=500, seed=601), "image/jpeg"))],
        timeout=60,
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            refused: list[str] = []
            context = browser.new_context(viewport={"width": 1366, "height": 800})
            page = context.new_page()
            page.on(
                "console",
                lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None,
            )
            page.set_default_timeout(30_000)

            # The processing page: the long name is whole on one line, shortened with "…".
            sign_in(page, server.url, USER, PASSWORD)
            page.goto(server.url + f"/direct/upload/processing/{job_id}")
            cell = page.locator("#file-status-rows td.filename").first
            expect(cell).to_have_attribute("title", LONG_NAME)
            box = cell.bounding_box()
            line = page.evaluate(
                "parseFloat(getComputedStyle(document.querySelector("
                "'#file-status-rows td.filename')).lineHeight)"
            )
            assert box is not None and box["height"] < 2 * line + 24, "the name wrapped"
            # The countdown to the results counts in good English down to "1 second".
            expect(page.locator("#redirect-seconds")).to_have_text("1 second", timeout=60_000)
            page.screenshot(path=str(shots / "08-processing-long-name.png"), full_page=True)

            # The admin's Recent Jobs at 1366 px: the table stays inside its card.
            page.click("button:has-text('Sign out')")
            sign_in(page, server.url, ADMIN, ADMIN_PASSWORD)
            page.goto(server.url + "/jobs")
            overflow = page.evaluate("""() => {
                const card = document.querySelector('#jobs-table').closest('.card');
                const table = document.querySelector('#jobs-table');
                return table.getBoundingClientRect().right - card.getBoundingClientRect().right;
            }""")
            page.screenshot(path=str(shots / "09-admin-jobs-1366.png"), full_page=True)
            assert overflow <= 0, f"the jobs table sticks out of its card by {overflow}px"

            # Swagger UI from this site's own files; an icon; a styled page for a bad link.
            page.goto(server.url + "/docs")
            expect(page.locator(".swagger-ui .info .title")).to_contain_text("imaging-uploader")
            assert page.request.get(server.url + "/favicon.ico").status == 200
            page.goto(server.url + "/no/such/page")
            expect(page.locator("h1")).to_have_text("Page not found")

            # At zero quota the form says so at once, and cannot be sent.
            page.goto(server.url + "/direct/upload")
            page.click("button:has-text('Sign out')")
            sign_in(page, server.url, "spent", "spent-password")
            expect(page.locator("#form-error")).to_contain_text("Upload quota exceeded")
            expect(page.locator("#upload-button")).to_be_disabled()
            assert refused == [], refused

            # A phone, 390 px wide: "Sign out" is whole and on the screen.
            phone = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
            sign_in(phone, server.url, USER, PASSWORD)
            button = phone.locator("button:has-text('Sign out')").bounding_box()
            assert (
                button is not None and button["x"] >= 0 and button["x"] + button["width"] <= 390
            ), button
            phone.screenshot(path=str(shots / "10-phone-390.png"), full_page=True)
        finally:
            browser.close()
