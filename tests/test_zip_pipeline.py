"""ZIP exports of Remidio cameras, end to end in one process on embedded backends with a real
clamd: upload → zip-extractor → anonymizer / pdf-parser (OCR) → ingest → encounters, with
every entry's status in the job, and no patient name or MRN anywhere but the PHI vault."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.settings import GatewaySettings
from kit.blobs import CLEAN, RAW, REPORTS
from kit.telemetry import quiet_readers_of_patient_files
from testkit.clamd import ClamdEngine
from testkit.hostile_zip import mixed_archive, too_many_entries, truncated
from testkit.remidio_export import RemidioExport, ZipMember, build_export, remidio_time, write_zip
from testkit.remidio_report import draw_report, random_report_values
from uploader.bootstrap import WORKERS, open_platform, prepare, runner

ZIP_FORM = {"hospital": "city-general", "lab_unit": "city-retina-clinic"}
NOT_GRADABLE = "Image not gradable"


@dataclasses.dataclass
class System:
    client: httpx.AsyncClient
    tokens: dict[str, str]
    data_dir: Path
    platform: Any

    def auth(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[user]}"}


@pytest.fixture
async def system(tmp_path: Path, clamd: ClamdEngine) -> AsyncIterator[System]:
    settings = GatewaySettings(
        data_dir=tmp_path,
        retry_base_seconds=0.01,
        clamd_address=clamd.address,
        zip_max_entries=30,
    )
    platform = open_platform(settings)
    await prepare(platform)
    accounts = Accounts(docs=platform.docs)
    await accounts.create_user(
        username="camp", role="uploader", password="pw-1", lab_unit_ids=("city-retina-clinic",)
    )
    await accounts.create_user(username="boss", role="admin", password="pw-2")
    await accounts.create_user(username="dm", role="data_manager", password="pw-3")
    tokens = {u: (await accounts.create_token(u))[0] for u in ("camp", "boss", "dm")}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(runner(name, platform).run(stop)) for name in WORKERS]
    app = create_app(settings=settings, bus=platform.bus, store=platform.store, docs=platform.docs)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        yield System(client, tokens, tmp_path, platform)
    stop.set()
    await asyncio.gather(*tasks)
    await platform.close()


async def upload_zips(system: System, files: list[tuple[str, bytes]]) -> str:
    response = await system.client.post(
        "/api/zip/upload",
        headers=system.auth("camp"),
        data=ZIP_FORM,
        files=[("files", (name, data, "application/zip")) for name, data in files],
    )
    assert response.status_code == 201, response.text
    assert response.json()["rejected"] == []
    job_id: str = response.json()["job_id"]
    return job_id


async def finished(system: System, job_id: str, *, until: Any = None) -> dict[str, Any]:
    status: dict[str, Any] = {}
    for _ in range(1200):
        status = (
            await system.client.get(
                f"/api/upload-jobs/{job_id}/status", headers=system.auth("camp")
            )
        ).json()
        if status["status"] in ("done", "error") and (until is None or until(status)):
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"job did not finish: {status}")


def export_with_report(rng: random.Random) -> tuple[RemidioExport, Any]:
    """A FOP export whose image-only report shows two of its three captures (RE, LE) and
    leaves out its failed black capture, like the camera's own."""
    export = build_export(
        rng, layout="fop", report_pdf=None, images=3, black_capture=True, image_size=900
    )
    by_path = {m.name: m for m in export.members}
    captures = sorted(
        (e for e in export.entries if e.kind == "image" and not e.black_capture),
        key=lambda e: e.captured_at or "",
    )
    shown = [("RE", by_path[captures[0].path].data), ("LE", by_path[captures[1].path].data)]
    values = dataclasses.replace(
        random_report_values(rng, tiles=shown), name=export.name, mrn=export.mrn
    )
    report_path = f"{export.folder}/REPORTS/{remidio_time_of(captures[-1].captured_at)}.pdf"
    members = [*export.members, ZipMember(report_path, draw_report(values))]
    export = dataclasses.replace(export, data=write_zip(members), members=tuple(members))
    return export, (values, captures)


def phi_finder(*, mrns: list[str], names: list[str]) -> Callable[[str], set[str]]:
    """What of these MRNs and names (each word, in any case, as a whole word: "Devi" is not
    in "Device") a text holds."""
    words = {w for name in names for w in re.split(r"[\s_]+", name) if len(w) >= 3}
    patterns = {m: re.compile(re.escape(m)) for m in mrns} | {
        w: re.compile(rf"(?<![A-Za-z]){re.escape(w)}(?![A-Za-z])", re.IGNORECASE) for w in words
    }

    def leaks(text: str) -> set[str]:
        return {secret for secret, pattern in patterns.items() if pattern.search(text)}

    return leaks


def remidio_time_of(iso: str | None) -> str:
    from datetime import datetime, timedelta

    assert iso is not None
    return remidio_time(datetime.fromisoformat(iso) + timedelta(minutes=3))


async def test_remidio_exports_become_encounters_with_their_reports_eyes_and_no_phi_leaks(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    quiet_readers_of_patient_files()  # as every process's logging does (kit.telemetry)
    rng = random.Random(7001)
    fop, (values, captures) = export_with_report(rng)
    pristine = build_export(rng, layout="pristine", report_pdf=None, images=2, image_size=700)

    job_id = await upload_zips(
        system, [(fop.file_name, fop.data), (pristine.file_name, pristine.data)]
    )
    # Archives are named by the MRN until the extractor has met the patient: then by the
    # subject id, like every entry.
    status = await finished(
        system, job_id, until=lambda s: all(i["filename"].startswith("S") for i in s["items"])
    )

    # The job: each archive, then its entries (child items) with their statuses.
    assert status["status"] == "done", status
    archives = [i for i in status["items"] if i["parent_item_id"] is None]
    children = [i for i in status["items"] if i["parent_item_id"] is not None]
    assert len(archives) == 2
    assert len(children) == 5 + 2  # 3 captures + black + report; 2 captures
    assert {i["status"] for i in status["items"]} == {"completed"}
    encounters = (
        await system.client.get(f"/api/encounters?job_id={job_id}", headers=system.auth("camp"))
    ).json()["encounters"]
    assert len(encounters) == 2
    subjects = {e["subject_id"] for e in encounters}
    for archive in archives:  # named by the MRN: redacted once the patient was known
        assert archive["filename"].split("_", 1)[0] in subjects, archive["filename"]
    fop_children = [c for c in children if c["parent_item_id"] == archives[0]["item_id"]]
    assert [c["filename"].split("/", 1)[1] for c in fop_children][:4] == [
        "FOP/" + e.path.rsplit("/", 1)[1]
        for e in sorted(
            (e for e in fop.entries if e.kind == "image"), key=lambda e: e.captured_at or ""
        )
    ]
    assert all(c["filename"].startswith(c["subject_id"] + "/") for c in children)

    # The encounters: subject, visit date, site; images with eyes from the report's tiles.
    by_date = {e["capture_date"]: e for e in encounters}
    visit = by_date[fop.capture_date]
    assert (visit["hospital_id"], visit["lab_unit_id"]) == ("city-general", "city-retina-clinic")
    assert visit["site"] == "\n".join(values.site_header)
    eyes = {i["captured_at"]: i["laterality"] for i in visit["images"]}
    assert eyes[captures[0].captured_at] == "right"
    assert eyes[captures[1].captured_at] == "left"
    assert eyes[captures[2].captured_at] == "unknown"
    flagged = [i for i in visit["images"] if NOT_GRADABLE in i["flags"]]
    black = next(e for e in fop.entries if e.black_capture)
    assert [i["captured_at"] for i in flagged] == [black.captured_at]
    [report] = visit["reports"]
    fields = {name: f["value"] for name, f in report["fields"].items()}
    assert fields["age"] == values.age and fields["gender"] == values.gender
    assert fields["report_date"] == values.report_date.isoformat()
    assert fields["dr_referable"] is values.dr_referable
    assert fields["glaucoma_referable"] is values.glaucoma_referable
    assert fields["vcdr_right"] == values.vcdr_right and fields["vcdr_left"] == values.vcdr_left
    assert fields["eye_labels"] == ["RE", "LE"]
    other = by_date[pristine.capture_date]
    assert other["reports"] == [] and {i["laterality"] for i in other["images"]} == {"unknown"}
    queue = (await system.client.get("/api/grading/queue", headers=system.auth("camp"))).json()
    assert queue["count"] == 6

    # The vault: admins and data managers only, every read audited.
    sid = visit["subject_id"]
    denied = await system.client.get(f"/api/subjects/{sid}/phi", headers=system.auth("camp"))
    assert denied.status_code == 403
    phi = (await system.client.get(f"/api/subjects/{sid}/phi", headers=system.auth("dm"))).json()
    assert phi["mrns"] == [fop.mrn]
    assert fop.name.replace("_", " ") in [n.replace("_", " ") for n in phi["names"]]
    assert fop.file_name in [s["original"] for s in phi["sources"]]
    audit = await system.platform.docs.collection("audit_log").find({"action": "phi_read"})
    assert [(a["actor"], a["subject"]) for a in audit] == [("dm", sid)]

    # No name or MRN outside the vault: object keys, events, logs, URLs and API answers, and
    # every other document.
    leaks = phi_finder(mrns=[fop.mrn, pristine.mrn], names=[fop.name, pristine.name])

    store = system.platform.store
    keys = [o.key for bucket in (RAW, CLEAN, REPORTS) async for o in store.list(bucket, "")]
    assert keys and leaks(" ".join(keys)) == set()
    with sqlite3.connect(system.data_dir / "events.sqlite3") as events:
        payloads = [bytes(v).decode() for (v,) in events.execute("SELECT value FROM records")]
        event_keys = [k for (k,) in events.execute("SELECT key FROM records")]
    assert len(payloads) > 50 and leaks("\n".join(payloads + event_keys)) == set()
    assert leaks(caplog.text + " ".join(str(r.args) for r in caplog.records)) == set()
    answers = []
    for path in (
        f"/api/upload-jobs/{job_id}/status",
        "/api/jobs",
        "/api/grading/queue",
        f"/api/encounters?job_id={job_id}",
        f"/upload_files/processing/{job_id}",
        f"/upload_files/results/{job_id}",
        "/jobs",
    ):
        answer = await system.client.get(path, headers=system.auth("boss"))
        assert answer.status_code == 200, path
        answers.append(answer.text)
    assert leaks("\n".join(answers)) == set()
    with sqlite3.connect(system.data_dir / "documents.sqlite3") as documents:
        rows = documents.execute(
            "SELECT collection, body FROM documents WHERE collection != 'phi_vault'"
        ).fetchall()
    leaked = {c for c, body in rows if leaks(body)}
    assert leaked == set()
    assert all(leaks(json.dumps(r)) for r in [phi])  # the vault does hold them


async def test_a_hostile_archive_fails_entry_by_entry_and_its_good_entries_complete(
    system: System,
) -> None:
    hostile, good, kinds = mixed_archive()
    many = too_many_entries(40)
    damaged = truncated(
        build_export(random.Random(3), report_pdf=None, images=4, image_size=300).data, keep=0.8
    )

    job_id = await upload_zips(
        system, [("hostile.zip", hostile), ("many.zip", many), ("damaged.zip", damaged)]
    )
    status = await finished(system, job_id)

    items = status["items"]
    archives = {i["filename"]: i for i in items if i["parent_item_id"] is None}
    children = {
        name: [i for i in items if i["parent_item_id"] == archive["item_id"]]
        for name, archive in archives.items()
    }
    assert status["status"] == "error"
    hostile_reasons = {c["filename"]: c["reason"] for c in children["hostile.zip"]}
    completed = sorted(c["filename"] for c in children["hostile.zip"] if c["status"] == "completed")
    assert completed == sorted(good)
    refused = {name: reason for name, reason in hostile_reasons.items() if reason}
    assert len(refused) == len(kinds)
    expected = {
        "Unsafe path in archive (leaves the archive folder)",
        "Unsafe path in archive (absolute path)",
        "Links are not accepted in archives",
        "Encrypted entry in archive",
        "Suspicious compression ratio (possible zip bomb)",
        "Unsupported file type in archive: application/x-dosexec",
    }
    assert expected <= set(refused.values()), refused
    assert any(r.startswith("Nested archives are not accepted") for r in refused.values())
    assert any(
        r.startswith("Malicious content detected (Uploader.Test.EICAR") for r in refused.values()
    ), refused
    assert archives["hostile.zip"]["status"] == "completed"

    assert archives["many.zip"]["status"] == "error"
    assert archives["many.zip"]["reason"] == (
        "Too many entries in archive (max 30); the first 30 were read"
    )
    assert [c["status"] for c in children["many.zip"]] == ["completed"] * 30

    assert archives["damaged.zip"]["status"] == "error"
    assert archives["damaged.zip"]["reason"].startswith("ZIP archive is truncated or damaged")
    recovered = [c for c in children["damaged.zip"] if c["status"] == "completed"]
    assert 1 <= len(recovered) < 4
