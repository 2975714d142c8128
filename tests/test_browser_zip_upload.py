"""ZIP upload of a Remidio camera export, end to end, in real Chromium against `uploader serve`:
the `/upload_files` page (hospital pill, lab unit, several .zip files, "Upload & Queue"), then
the job's status page, which lists each archive's entries as they are found and shows every
entry's status as it changes. Screenshots go to test-results/browser/."""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest

from testkit.harness import Process
from testkit.remidio_export import ZipMember, build_export, write_zip
from testkit.remidio_report import draw_report, random_report_values
from tests.test_browser_direct_upload import PASSWORD, USER, launch, server, shots

__all__ = ["server", "shots"]  # the fixtures, shared with the direct upload's browser test

pytestmark = pytest.mark.browser

# Every status each row's badge showed, in order, recorded by the page itself.
WATCH_ROWS = """
(() => {
  window.__seen = {};
  const note = () => {
    document.querySelectorAll("#file-status-rows tr").forEach((row) => {
      const badge = row.querySelector(".badge");
      const id = row.dataset.itemId || row.cells[1].textContent;
      const seen = (window.__seen[id] = window.__seen[id] || []);
      const text = badge ? badge.textContent.trim() : "";
      if (text && seen[seen.length - 1] !== text) seen.push(text);
    });
  };
  document.addEventListener("DOMContentLoaded", () => {
    note();
    const rows = document.getElementById("file-status-rows");
    if (rows) new MutationObserver(note).observe(rows, {subtree: true, childList: true,
                                                          characterData: true, attributes: true});
  });
})();
"""


def test_a_zip_upload_in_a_real_browser_shows_each_entry_as_it_changes(
    server: Process, shots: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    rng = random.Random(4242)
    export = build_export(rng, layout="fop", report_pdf=None, images=3, image_size=1400)
    captures = [m for m in export.members if m.name.endswith(".jpg")]
    values = dataclasses.replace(
        random_report_values(rng, tiles=[("RE", captures[0].data), ("LE", captures[1].data)]),
        name=export.name,
        mrn=export.mrn,
    )
    report = ZipMember(f"{export.folder}/REPORTS/5.59.59.000_PM.pdf", draw_report(values))
    with_report = tmp_path / export.file_name
    with_report.write_bytes(write_zip([*export.members, report]))
    second = build_export(rng, layout="pristine", report_pdf=None, images=2, image_size=900)
    pristine = tmp_path / second.file_name
    pristine.write_bytes(second.data)
    not_a_zip = tmp_path / "photo.zip"  # a picture renamed: the bytes decide
    not_a_zip.write_bytes(captures[2].data)

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900}, locale="en-GB", timezone_id="UTC"
            )
            context.add_init_script(WATCH_ROWS)
            page = context.new_page()
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)
            page.goto(server.url + "/login?next=%2Fupload_files")
            page.fill("#username", USER)
            page.fill("#password", PASSWORD)
            page.click("button:has-text('Sign in')")
            expect(page).to_have_url(server.url + "/upload_files")

            # The menu has it; the page asks only for the hospital and lab unit.
            page.click("summary:has-text('Upload')")
            expect(page.locator(".dropdown-panel a:has-text('ZIP Upload')")).to_be_visible()
            page.keyboard.press("Escape")
            expect(page.locator("h1")).to_have_text("ZIP Upload")
            expect(page.locator("#limits")).to_contain_text("64MB per file")
            expect(page.locator("#camera")).to_have_count(0)
            page.click("label.pill:has-text('City General Hospital')")
            expect(page.locator("#lab_unit")).to_have_value("city-retina-clinic")
            page.set_input_files("#file-input", [str(with_report), str(pristine), str(not_a_zip)])
            rows = page.locator("#file-list tr")
            expect(rows).to_have_count(3)
            page.screenshot(path=str(shots / "11-zip-upload-form.png"), full_page=True)

            page.click("#upload-button:has-text('Upload & Queue')")
            page.wait_for_url(re.compile(r"/upload_files/processing/[\w-]+$"))
            badge = page.locator("#job-status-badge")
            # 3 archives, then 5 entries of the first (3 captures, its report) and 2 of the
            # second appear under them as they are extracted.
            file_rows = page.locator("#file-status-rows tr")
            expect(file_rows).to_have_count(3 + 4 + 2, timeout=60_000)
            page.screenshot(path=str(shots / "12-zip-processing.png"), full_page=True)
            expect(badge).to_have_class(re.compile(r"\bbadge-error\b"), timeout=180_000)
            page.click("#stay-here")  # rather than the results, opened after 3 seconds
            expect(file_rows.locator("td.reason")).to_contain_text(
                ["Invalid file type: image/jpeg. Only ZIP files allowed."]
            )
            names = file_rows.locator("td.filename").all_text_contents()
            assert sum(1 for n in names if "/FOP/" in n) == 3
            assert sum(1 for n in names if "/REPORTS/" in n) == 1
            assert not any(export.mrn in n or second.mrn in n for n in names), names
            assert not any(w in n for w in export.name.split() for n in names if len(w) > 2)
            statuses = [b for b in file_rows.locator(".badge").all_text_contents()]
            assert statuses.count("Completed") == 8 and statuses.count("Error") == 1
            seen: dict[str, list[str]] = page.evaluate("window.__seen")
            page.screenshot(path=str(shots / "13-zip-processed.png"), full_page=True)
        finally:
            browser.close()

    # Each entry was watched changing: shown before it was done, then done.
    entry_histories = [h for h in seen.values() if h[-1] == "Completed"]
    assert len(entry_histories) == 8, seen
    assert any(len(h) >= 2 for h in entry_histories), seen
    assert all(h[0] in ("Queued", "Processing", "Completed") for h in entry_histories)
    for name in ("11-zip-upload-form", "12-zip-processing", "13-zip-processed"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
