"""What an adversarial review found, one test (at least) per finding: refused or failed
requests change nothing, names in any script survive, access follows the lab unit, sessions
and tokens can be ended, sign-in is throttled, forms are bounded, errors are answers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events import ObjectRef
from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.audit import AuditLog
from gateway.reference import seed_reference_data
from gateway.settings import GatewaySettings
from gateway.uploads import FIELDS_TOO_LARGE, TOO_MANY_FIELDS
from ingest.read_model import Catalogue, CatalogueRecord, QueueEntry
from kit.bus_sqlite import SqliteEventBus
from kit.docs_sqlite import SqliteDocuments
from kit.store_fs import FilesystemObjectStore
from testkit.fs import small_tmpfs
from testkit.synthetic import fundus_image

FORM = {
    "hospital": "city-general",
    "lab_unit": "city-retina-clinic",
    "camera": "remidio-fop",
    "disease": "dr",
    "area": "left-eye",
    "mydriatic": "false",
}
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def jpeg(seed: int, name: str | None = None) -> tuple[str, bytes, str]:
    return (name or f"img{seed}.jpg", fundus_image(size=200, seed=seed), "image/jpeg")


def raw_files(site: Any) -> list[Path]:
    raw = site.objects / "raw"
    return [p for p in raw.rglob("*") if p.is_file()] if raw.exists() else []


async def count_of(site: Any, user: str) -> int:
    found = await site.accounts.get(user)
    assert found is not None
    return found.file_upload_count


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "xYz1") -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body += data + b"\r\n"
    return body


def form_parts() -> list[tuple[str, str | None, bytes]]:
    return [(k, None, v.encode()) for k, v in FORM.items()]


async def sign_in(client: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    page = await client.get("/login")
    token = CSRF_INPUT.search(page.text)
    assert token is not None
    return await client.post(
        "/login", data={"username": username, "password": password, "csrf_token": token.group(1)}
    )


async def page_csrf(client: httpx.AsyncClient, path: str = "/direct/upload") -> str:
    token = CSRF_INPUT.search((await client.get(path)).text)
    assert token is not None
    return token.group(1)


@contextlib.asynccontextmanager
async def own_site(
    tmp_path: Path, settings: GatewaySettings, *, objects: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, Accounts, str, SqliteDocuments]]:
    """A gateway of its own (settings, object store folder), with the uploader "camp"."""
    docs = SqliteDocuments(path=tmp_path / "documents.sqlite3")
    bus = SqliteEventBus(path=tmp_path / "events.sqlite3")
    await seed_reference_data(docs)
    accounts = Accounts(docs=docs)
    await accounts.create_user(
        username="camp", role="uploader", password="pw-camp-1", lab_unit_ids=("city-retina-clinic",)
    )
    token, _ = await accounts.create_token("camp")
    app = create_app(
        settings=settings, bus=bus, store=FilesystemObjectStore(root=objects), docs=docs
    )
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as client:
            yield client, accounts, token, docs
    finally:
        await bus.close()
        await docs.close()


# --- 1. refused requests leave the quota exactly as it was -----------------------------------


async def test_a_request_cut_off_inside_a_file_leaves_the_quota_exactly_as_it_was(
    site: Any,
) -> None:
    name, data, _ = jpeg(1)
    for _ in range(10):
        # Ends inside the second file: no closing boundary, Content-Length exact.
        body = multipart([*form_parts(), ("files", "whole.jpg", jpeg(2)[1])])
        body += (
            b'--xYz1\r\nContent-Disposition: form-data; name="files"; filename="'
            + name.encode()
            + b'"\r\n\r\n'
            + data[: len(data) // 2]
        )
        response = await site.client.post(
            "/api/direct/upload",
            content=body,
            headers={**site.auth("camp"), "Content-Type": "multipart/form-data; boundary=xYz1"},
        )
        assert response.status_code == 400
        assert response.json()["detail"] == "the request ended in the middle of a file"
    assert await count_of(site, "camp") == 0
    assert raw_files(site) == []
    assert await site.docs.collection("file_hashes").count() == 0
    assert await site.docs.collection("upload_requests").count() == 0
    # And the quota still holds: 50 accepted, then "Upload quota exceeded".
    accepted = 0
    for batch in range(9):
        files = [jpeg(100 + batch * 6 + i) for i in range(6)]
        response = await site.client.post(
            "/api/direct/upload",
            headers=site.auth("camp"),
            data=FORM,
            files=[("files", f) for f in files],
        )
        accepted += len(response.json()["accepted"])
    assert accepted == 50
    assert await count_of(site, "camp") == 50


async def test_a_full_disk_answers_507_with_the_message_and_changes_nothing(
    tmp_path: Path,
) -> None:
    settings = GatewaySettings(data_dir=tmp_path, direct_upload_max_file_size_mb=5)
    big = fundus_image(size=200, seed=1) + bytes(1500 * 1024)  # larger than the disk
    with small_tmpfs(tmp_path / "small", "1m") as mount:
        async with own_site(tmp_path, settings, objects=mount / "objects") as site:
            client, accounts, token, docs = site
            response = await client.post(
                "/api/direct/upload",
                headers={"Authorization": f"Bearer {token}"},
                data=FORM,
                files=[("files", jpeg(2)), ("files", ("big.jpg", big, "image/jpeg"))],
            )
            assert response.status_code == 507
            assert response.json()["detail"] == (
                "The server has no storage space left; nothing was kept. Please try again later."
            )
            user = await accounts.get("camp")
            assert user is not None and user.file_upload_count == 0
            assert [p for p in (mount / "objects").rglob("*") if p.is_file()] == []
            assert await docs.collection("file_hashes").count() == 0
            assert await docs.collection("jobs").count() == 0


# --- 3. names in any script ------------------------------------------------------------------

NAMES = ["रोगी_眼底.jpg", "患者の眼底.jpg", "眼睛👁️.jpg", "مريض_עין.jpg", "café.jpg"]


async def test_filenames_in_any_script_are_kept_intact_through_the_api(site: Any) -> None:
    files = [jpeg(10 + i, name) for i, name in enumerate(NAMES)]
    response = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data=FORM,
        files=[("files", f) for f in files],
    )
    assert response.status_code == 201, response.text
    assert [a["filename"] for a in response.json()["accepted"]] == NAMES
    job = await site.docs.collection("jobs").get(response.json()["job_id"])
    assert [i["filename"] for i in job["items"]] == NAMES


async def test_raw_utf8_names_and_rfc5987_names_arrive_and_control_characters_go(
    site: Any,
) -> None:
    body = multipart(
        [
            *form_parts(),
            ("files", "रोगी_眼底.jpg", jpeg(20)[1]),
            ("files", "bad\x1b[31mred\x7f.jpg", jpeg(21)[1]),
        ]
    )
    body += (
        b'--xYz1\r\nContent-Disposition: form-data; name="files"; filename="x.jpg"; '
        b"filename*=UTF-8''caf%C3%A9%20%F0%9F%91%81.jpg\r\n\r\n" + jpeg(22)[1] + b"\r\n--xYz1--\r\n"
    )
    response = await site.client.post(
        "/api/direct/upload",
        content=body,
        headers={**site.auth("camp"), "Content-Type": "multipart/form-data; boundary=xYz1"},
    )
    assert response.status_code == 201, response.text
    assert [a["filename"] for a in response.json()["accepted"]] == [
        "रोगी_眼底.jpg",
        "bad[31mred.jpg",
        "café 👁.jpg",
    ]


async def test_both_web_form_paths_keep_non_latin_names(site: Any) -> None:
    assert (await sign_in(site.client, "camp", "pw-camp-1")).status_code == 303
    token = await page_csrf(site.client)
    scripted = await site.client.post(
        "/direct/upload",
        headers={"X-CSRF-Token": token},
        data=FORM,
        files=[("files", jpeg(30, "रोगी_1.jpg"))],
    )
    assert scripted.status_code == 201, scripted.text
    assert scripted.json()["accepted"][0]["filename"] == "रोगी_1.jpg"
    plain = await site.client.post(
        "/direct/upload",
        data={"csrf_token": token, **FORM},
        files=[("files", jpeg(31, "眼底_2.jpg"))],
    )
    assert plain.status_code == 303, plain.text
    job_id = plain.headers["location"].rsplit("/", 1)[-1]
    job = await site.docs.collection("jobs").get(job_id)
    assert [i["filename"] for i in job["items"]] == ["眼底_2.jpg"]


# --- 4. access follows the lab unit ----------------------------------------------------------


def _ref(key: str) -> ObjectRef:
    return ObjectRef(
        bucket="clean", key=key, size=1, md5="m", sha256="s", content_type="image/jpeg"
    )


async def _catalogue(site: Any, item_id: str, *, lab_unit: str, uploader: str, job: str) -> None:
    catalogue = Catalogue(docs=site.docs)
    hospital = "riverside-eye" if lab_unit == "riverside-outpatient" else "city-general"
    await catalogue.put(
        CatalogueRecord(
            item_id=item_id,
            job_id=job,
            uploader_id=uploader,
            hospital_id=hospital,
            lab_unit_id=lab_unit,
            camera_id="remidio-fop",
            disease_id="dr",
            area_id="left-eye",
            mydriatic=False,
            raw=_ref(f"{job}/{item_id}"),
            clean=_ref(f"{job}/{item_id}.jpg"),
            thumbnail=_ref(f"{job}/{item_id}.thumb.jpg"),
            md5=item_id,
            sha256=item_id,
            size=1,
            width=10,
            height=10,
            masked=True,
            ingested_at=f"2026-01-01T00:00:0{len(item_id)}",
        )
    )
    await catalogue.enqueue(
        QueueEntry(
            record_id=item_id,
            job_id=job,
            disease_id="dr",
            hospital_id=hospital,
            lab_unit_id=lab_unit,
            queued_at=f"2026-01-01T00:00:{item_id[-1]}0",
        )
    )


async def test_uploaders_see_only_their_lab_units_images_and_no_foreign_job_ids(
    site: Any,
) -> None:
    await site.accounts.create_user(
        username="nurse",
        role="uploader",
        password="pw-nurse-1",
        lab_unit_ids=("city-retina-clinic",),
    )
    await site.accounts.create_user(
        username="other",
        role="uploader",
        password="pw-other-1",
        lab_unit_ids=("riverside-outpatient",),
    )
    await site.accounts.create_user(username="dm", role="data_manager", password="pw-dm-123")
    tokens = {u: (await site.accounts.create_token(u))[0] for u in ("nurse", "other", "dm")}
    await _catalogue(site, "own1", lab_unit="city-retina-clinic", uploader="camp", job="jobA")
    await _catalogue(site, "unit2", lab_unit="city-retina-clinic", uploader="nurse", job="jobB")
    await _catalogue(site, "far3", lab_unit="riverside-outpatient", uploader="other", job="jobC")

    def auth(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[user]}"} if user in tokens else site.auth(user)

    camp = (await site.client.get("/api/grading/queue", headers=auth("camp"))).json()
    assert {(e["id"], e["job_id"]) for e in camp["items"]} == {("own1", "jobA"), ("unit2", None)}
    far = await site.client.get(
        "/api/grading/queue?lab_unit=riverside-outpatient", headers=auth("camp")
    )
    assert far.json()["items"] == []
    manager = (await site.client.get("/api/grading/queue", headers=auth("dm"))).json()
    assert {(e["id"], e["job_id"]) for e in manager["items"]} == {
        ("own1", "jobA"),
        ("unit2", "jobB"),
        ("far3", "jobC"),
    }
    for kind in ("clean", "thumbnail"):
        refused = await site.client.get(f"/api/images/far3/{kind}", headers=auth("camp"))
        assert refused.status_code == 404
        assert refused.json()["detail"] == "Image not found"


# --- 5. sessions end for real ----------------------------------------------------------------


async def _cookie_after_sign_in(site: Any, username: str, password: str) -> str:
    async with httpx.AsyncClient(
        transport=site.client._transport, base_url="http://gateway"
    ) as browser:
        assert (await sign_in(browser, username, password)).status_code == 303
        cookie = browser.cookies["uploader_session"]
    return cookie


async def _signed_in_with(site: Any, cookie: str) -> bool:
    async with httpx.AsyncClient(
        transport=site.client._transport,
        base_url="http://gateway",
        cookies={"uploader_session": cookie},
    ) as thief:
        response = await thief.get("/api/me")
    return response.status_code == 200


async def test_a_copied_cookie_stops_working_at_sign_out(site: Any) -> None:
    async with httpx.AsyncClient(
        transport=site.client._transport, base_url="http://gateway"
    ) as browser:
        await sign_in(browser, "camp", "pw-camp-1")
        copied = browser.cookies["uploader_session"]
        assert await _signed_in_with(site, copied)
        token = await page_csrf(browser)
        assert (await browser.post("/logout", data={"csrf_token": token})).status_code == 303
    assert not await _signed_in_with(site, copied)


async def test_a_password_change_deactivation_or_sign_out_everywhere_ends_sessions(
    site: Any,
) -> None:
    boss = site.auth("boss")
    first = await _cookie_after_sign_in(site, "camp", "pw-camp-1")
    changed = await site.client.patch(
        "/api/admin/users/camp", headers=boss, json={"password": "a-new-pass-1"}
    )
    assert changed.status_code == 200
    assert not await _signed_in_with(site, first)

    second = await _cookie_after_sign_in(site, "camp", "a-new-pass-1")
    ended = await site.client.post("/api/admin/users/camp/sign-out", headers=boss)
    assert ended.json() == {"sessions_ended": 1}
    assert not await _signed_in_with(site, second)

    third = await _cookie_after_sign_in(site, "camp", "a-new-pass-1")
    await site.client.patch("/api/admin/users/camp", headers=boss, json={"active": False})
    assert not await _signed_in_with(site, third)
    await site.client.patch("/api/admin/users/camp", headers=boss, json={"active": True})
    assert not await _signed_in_with(site, third)  # ended, not merely refused while disabled


# --- 6. sign-in is throttled -----------------------------------------------------------------


async def test_repeated_wrong_passwords_lock_the_account_with_a_plain_message(
    site: Any,
) -> None:
    for _ in range(5):
        assert (await sign_in(site.client, "camp", "wrong")).status_code == 401
    locked = await sign_in(site.client, "camp", "wrong")
    assert locked.status_code == 429
    assert "Too many failed sign-ins. Try again in 1 minute." in locked.text
    assert int(locked.headers["retry-after"]) > 0
    # While locked, even the right password is not checked.
    assert (await sign_in(site.client, "camp", "pw-camp-1")).status_code == 429
    failures = await AuditLog(docs=site.docs).recent(action="sign_in_failed")
    assert len(failures) == 5
    assert {f.subject for f in failures} == {"camp"}
    assert {f.ip for f in failures} == {"203.0.113.7"}


async def test_many_failures_from_one_address_lock_that_address_for_every_account(
    site: Any,
) -> None:
    for attempt in range(20):
        await sign_in(site.client, f"nobody{attempt}", "wrong")
    assert (await sign_in(site.client, "boss", "pw-boss-1")).status_code == 429


# --- 7. tokens can be listed, labelled, expired and revoked ----------------------------------


async def test_tokens_are_listed_with_their_label_and_last_use_and_can_be_revoked(
    site: Any,
) -> None:
    made = await site.client.post(
        "/api/tokens",
        headers=site.auth("camp"),
        json={"label": "camp laptop", "expires_in_days": 30},
    )
    assert made.status_code == 201
    token, token_id = made.json()["token"], made.json()["token_id"]
    mine = {"Authorization": f"Bearer {token}"}
    assert (await site.client.get("/api/me", headers=mine)).status_code == 200
    listed = (await site.client.get("/api/tokens", headers=site.auth("camp"))).json()
    entry = next(t for t in listed["tokens"] if t["token_id"] == token_id)
    assert entry["label"] == "camp laptop"
    assert entry["last_used_at"] is not None and entry["expires_at"] is not None
    assert "token" not in entry
    # Someone else may not revoke it; an administrator may list it.
    other = await site.client.delete(f"/api/tokens/{token_id}", headers=site.auth("small"))
    assert other.status_code == 404
    seen = await site.client.get("/api/tokens?username=camp", headers=site.auth("boss"))
    assert token_id in {t["token_id"] for t in seen.json()["tokens"]}
    revoked = await site.client.delete(f"/api/tokens/{token_id}", headers=site.auth("camp"))
    assert revoked.status_code == 204
    assert (await site.client.get("/api/me", headers=mine)).status_code == 401


async def test_an_expired_token_no_longer_works(site: Any) -> None:
    token, info = await site.accounts.create_token("camp", expires_in_days=1)
    await site.docs.collection("api_tokens").update(
        next(
            d["_id"]
            for d in await site.docs.collection("api_tokens").find({"token_id": info.token_id})
        ),
        set={"expires_at": "2020-01-01T00:00:00+00:00"},
    )
    response = await site.client.get("/api/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_the_account_page_shows_and_revokes_your_own_tokens(site: Any) -> None:
    await sign_in(site.client, "camp", "pw-camp-1")
    token = await page_csrf(site.client, "/account")
    made = await site.client.post("/account/tokens", data={"csrf_token": token, "label": "script"})
    assert made.status_code == 201
    new_token = re.search(r'id="new-token">([^<]+)<', made.text)
    assert new_token is not None and new_token.group(1).startswith("iu_")
    [info] = [t for t in await site.accounts.tokens("camp") if t.label == "script"]
    page = (await site.client.get("/account")).text
    assert info.token_id in page and new_token.group(1) not in page  # shown once only
    await site.client.post(f"/account/tokens/{info.token_id}/revoke", data={"csrf_token": token})
    assert info.token_id not in {t.token_id for t in await site.accounts.tokens("camp")}


# --- 8. and 9. bounded forms, errors as answers ----------------------------------------------


async def test_a_form_with_too_many_or_too_large_fields_is_refused_clearly(site: Any) -> None:
    many = {f"f{i}": "x" for i in range(60)}
    response = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data={**FORM, **many},
        files=[("files", jpeg(40))],
    )
    assert (response.status_code, response.json()["detail"]) == (400, TOO_MANY_FIELDS)
    large = {f"f{i}": "y" * 30_000 for i in range(3)}
    response = await site.client.post(
        "/api/direct/upload",
        headers=site.auth("camp"),
        data={**FORM, **large},
        files=[("files", jpeg(41))],
    )
    assert (response.status_code, response.json()["detail"]) == (400, FIELDS_TOO_LARGE)
    assert await count_of(site, "camp") == 0
    login = await site.client.post("/login", data={f"f{i}": "x" for i in range(200)})
    assert login.status_code in (400, 403)


async def test_a_huge_boundary_is_a_bad_request_not_a_server_error(site: Any) -> None:
    boundary = "b" * 5000
    response = await site.client.post(
        "/api/direct/upload",
        content=b"--" + boundary.encode() + b"--\r\n",
        headers={**site.auth("camp"), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]


async def test_an_absurd_quota_is_refused_as_invalid_not_a_server_error(site: Any) -> None:
    boss = site.auth("boss")
    patched = await site.client.patch(
        "/api/admin/users/camp", headers=boss, json={"upload_quota": 99999999999999999999}
    )
    assert patched.status_code == 422
    created = await site.client.post(
        "/api/admin/users",
        headers=boss,
        json={
            "username": "x1",
            "role": "uploader",
            "password": "long-enough-1",
            "upload_quota": 99999999999999999999,
        },
    )
    assert created.status_code == 422


# --- 10. hardening ---------------------------------------------------------------------------


async def test_pages_carry_the_security_headers(site: Any) -> None:
    page = await site.client.get("/login")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert (
        "script-src 'self'" in csp
        and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    )
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    api = await site.client.get("/api/me", headers=site.auth("camp"))
    assert api.headers["x-content-type-options"] == "nosniff"


async def test_cookies_are_secure_when_the_site_is_served_over_https(site: Any) -> None:
    async with httpx.AsyncClient(
        transport=site.client._transport, base_url="https://gateway"
    ) as browser:
        page = await browser.get("/login")
        assert "secure" in page.headers["set-cookie"].lower()
    plain = await site.client.get("/login")
    assert "secure" not in plain.headers["set-cookie"].lower()


async def test_a_request_body_that_stops_arriving_is_ended_with_408(tmp_path: Path) -> None:
    settings = GatewaySettings(data_dir=tmp_path, http_body_timeout_seconds=0.5)

    async def trickle() -> Any:
        yield multipart(form_parts())
        yield b'--xYz1\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
        await asyncio.sleep(3)  # then nothing for longer than the deadline
        yield b"never"

    async with own_site(tmp_path, settings, objects=tmp_path / "objects") as site:
        client, accounts, token, _ = site
        response = await client.post(
            "/api/direct/upload",
            content=trickle(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "multipart/form-data; boundary=xYz1",
            },
        )
        assert response.status_code == 408
        assert response.json()["detail"] == (
            "The upload stalled: no data arrived for 0.5 seconds. Please try again."
        )
        user = await accounts.get("camp")
        assert user is not None and user.file_upload_count == 0


# --- 11. what a newcomer saw -----------------------------------------------------------------


async def test_a_retired_camera_keeps_its_name_on_old_jobs(site: Any) -> None:
    response = await site.client.post(
        "/api/direct/upload", headers=site.auth("camp"), data=FORM, files=[("files", jpeg(50))]
    )
    job_id = response.json()["job_id"]
    retired = await site.client.delete(
        "/api/admin/reference/cameras/remidio-fop", headers=site.auth("boss")
    )
    assert retired.status_code == 204
    await sign_in(site.client, "camp", "pw-camp-1")
    page = await site.client.get(f"/direct/upload/results/{job_id}")
    assert "Remidio Fundus on Phone" in page.text
    form = await site.client.get("/direct/upload")
    assert "Remidio Fundus on Phone" not in form.text  # no longer offered
    again = await site.client.post(
        "/api/direct/upload", headers=site.auth("camp"), data=FORM, files=[("files", jpeg(51))]
    )
    assert again.status_code == 400


async def test_at_zero_quota_the_form_says_so_at_once(site: Any) -> None:
    await site.accounts.update("small", file_upload_count=2)
    await sign_in(site.client, "small", "pw-small-1")
    page = await site.client.get("/direct/upload")
    assert "Upload quota exceeded" in page.text
    assert re.search(r'<button[^>]*id="upload-button"[^>]*disabled', page.text)


async def test_the_api_docs_work_without_the_internet(site: Any) -> None:
    docs = await site.client.get("/docs")
    assert docs.status_code == 200
    scripts = re.findall(r'src="([^"]+)"', docs.text)
    assert scripts and all(s.startswith("/") for s in scripts)
    for path in [*scripts, *re.findall(r'href="(/docs-assets/[^"]+)"', docs.text)]:
        asset = await site.client.get(path)
        assert asset.status_code == 200, path
    assert "<script>" not in docs.text  # nothing inline: the CSP allows only files


async def test_the_site_has_an_icon(site: Any) -> None:
    icon = await site.client.get("/favicon.ico")
    assert icon.status_code == 200
    assert icon.headers["content-type"] == "image/x-icon"
    assert icon.content[:4] == b"\x00\x00\x01\x00"


async def test_an_unknown_page_is_a_styled_page_for_browsers_and_json_for_the_api(
    site: Any,
) -> None:
    page = await site.client.get("/no/such/page", headers={"Accept": "text/html"})
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert "Page not found" in page.text and "Imaging Uploader" in page.text
    api = await site.client.get("/api/no/such", headers={"Accept": "text/html"})
    assert api.status_code == 404
    assert api.json() == {"detail": "Not Found"}


@pytest.mark.parametrize("path", ["/jobs", "/direct/upload", "/account"])
async def test_pages_load_only_this_sites_scripts(site: Any, path: str) -> None:
    await sign_in(site.client, "camp", "pw-camp-1")
    page = await site.client.get(path)
    assert page.status_code == 200
    assert not re.search(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", page.text)
