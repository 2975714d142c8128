"""Administration: reference data and users, through the API and the pages."""

from __future__ import annotations

import re
from typing import Any

import httpx

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


def csrf_of(page: httpx.Response) -> str:
    found = CSRF_INPUT.search(page.text)
    assert found
    return found.group(1)


async def sign_in(site: Any, username: str, password: str) -> str:
    """Sign in with the browser's cookie; returns the session's CSRF token."""
    page = await site.client.get("/login")
    response = await site.client.post(
        "/login", data={"username": username, "password": password, "csrf_token": csrf_of(page)}
    )
    assert response.status_code == 303
    return csrf_of(await site.client.get("/direct/upload"))


def jpeg(seed: int) -> tuple[str, bytes, str]:
    return (f"eye{seed}.jpg", fundus_image(size=200, seed=seed), "image/jpeg")


async def upload(site: Any, user: str, count: int, first_seed: int) -> httpx.Response:
    response: httpx.Response = await site.client.post(
        "/api/direct/upload",
        headers=site.auth(user),
        data=FORM,
        files=[("files", jpeg(first_seed + i)) for i in range(count)],
    )
    return response


# --- reference data -------------------------------------------------------------------------


async def test_an_admin_adds_renames_and_retires_reference_data(site: Any) -> None:
    auth = site.auth("boss")
    added = await site.client.post(
        "/api/admin/reference/hospitals", headers=auth, json={"name": "Hill Clinic"}
    )
    assert added.status_code == 201
    assert added.json() == {"id": "hill-clinic", "name": "Hill Clinic"}
    unit = await site.client.post(
        "/api/admin/reference/lab_units",
        headers=auth,
        json={"name": "Mobile Camp", "hospital_id": "hill-clinic"},
    )
    assert unit.json() == {"id": "mobile-camp", "name": "Mobile Camp", "hospital_id": "hill-clinic"}
    renamed = await site.client.put(
        "/api/admin/reference/lab_units/mobile-camp",
        headers=auth,
        json={"name": "Mobile Camp North"},
    )
    assert renamed.json() == {
        "id": "mobile-camp",
        "name": "Mobile Camp North",
        "hospital_id": "hill-clinic",
    }
    camera = await site.client.post(
        "/api/admin/reference/cameras", headers=auth, json={"name": "Optos Daytona"}
    )
    assert camera.status_code == 201
    reference = (await site.client.get("/api/reference", headers=site.auth("camp"))).json()
    assert {
        "id": "mobile-camp",
        "name": "Mobile Camp North",
        "hospital_id": "hill-clinic",
    } in reference["lab_units"]
    assert "Optos Daytona" in {c["name"] for c in reference["cameras"]}

    busy = await site.client.delete("/api/admin/reference/hospitals/hill-clinic", headers=auth)
    assert busy.status_code == 409
    assert "still has lab units (Mobile Camp North)" in busy.json()["detail"]
    for path in ("lab_units/mobile-camp", "hospitals/hill-clinic", "cameras/optos-daytona"):
        gone = await site.client.delete(f"/api/admin/reference/{path}", headers=auth)
        assert gone.status_code == 204, path
    offered = (await site.client.get("/api/reference", headers=site.auth("camp"))).json()
    assert "hill-clinic" not in {h["id"] for h in offered["hospitals"]}
    assert "optos-daytona" not in {c["id"] for c in offered["cameras"]}
    after = (await site.client.get("/api/admin/reference", headers=auth)).json()
    assert {"id": "optos-daytona", "name": "Optos Daytona", "retired": True} in after["cameras"]


async def test_two_hospitals_may_each_have_a_lab_unit_of_the_same_name(site: Any) -> None:
    auth = site.auth("boss")
    first = await site.client.post(
        "/api/admin/reference/lab_units",
        headers=auth,
        json={"name": "Eye Ward", "hospital_id": "city-general"},
    )
    second = await site.client.post(
        "/api/admin/reference/lab_units",
        headers=auth,
        json={"name": "Eye Ward", "hospital_id": "riverside-eye"},
    )
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    again = await site.client.post(
        "/api/admin/reference/lab_units",
        headers=auth,
        json={"name": "eye ward", "hospital_id": "riverside-eye"},
    )
    assert again.status_code == 409


async def test_reference_data_refuses_duplicates_unknown_hospitals_and_blank_names(
    site: Any,
) -> None:
    auth = site.auth("boss")
    again = await site.client.post(
        "/api/admin/reference/diseases", headers=auth, json={"name": "glaucoma"}
    )
    assert again.status_code == 409
    orphan = await site.client.post(
        "/api/admin/reference/lab_units",
        headers=auth,
        json={"name": "Ward 9", "hospital_id": "nowhere"},
    )
    assert orphan.status_code == 400
    assert orphan.json()["detail"] == "Unknown hospital: choose one from the list."
    blank = await site.client.post("/api/admin/reference/areas", headers=auth, json={"name": "   "})
    assert blank.status_code == 422
    unknown_kind = await site.client.post(
        "/api/admin/reference/patients", headers=auth, json={"name": "x"}
    )
    assert unknown_kind.status_code == 404
    missing = await site.client.delete("/api/admin/reference/cameras/nope", headers=auth)
    assert missing.status_code == 404


# --- users ----------------------------------------------------------------------------------


async def test_an_admin_creates_and_changes_users(site: Any) -> None:
    auth = site.auth("boss")
    created = await site.client.post(
        "/api/admin/users",
        headers=auth,
        json={
            "username": "Nurse.Asha",
            "role": "uploader",
            "password": "long-enough-1",
            "lab_unit_ids": ["city-screening-camp"],
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (
        body["username"],
        body["lab_unit_ids"],
        body["upload_quota"],
        body["upload_quota_effective"],
        body["file_upload_count"],
    ) == ("nurse.asha", ["city-screening-camp"], None, 50, 0)
    assert await site.accounts.authenticate("nurse.asha", "long-enough-1") is not None

    changed = await site.client.patch(
        "/api/admin/users/nurse.asha",
        headers=auth,
        json={
            "role": "data_manager",
            "lab_unit_ids": ["city-retina-clinic", "riverside-outpatient"],
        },
    )
    assert changed.json()["role"] == "data_manager"
    assert changed.json()["lab_unit_ids"] == ["city-retina-clinic", "riverside-outpatient"]

    listed = (await site.client.get("/api/admin/users", headers=auth)).json()
    assert listed["default_quota"] == 50
    by_name = {u["username"]: u for u in listed["users"]}
    assert set(by_name) == {"boss", "camp", "small", "nurse.asha"}
    assert by_name["small"]["upload_quota"] == 2
    assert all("password_hash" not in u for u in listed["users"])

    duplicate = await site.client.post(
        "/api/admin/users",
        headers=auth,
        json={"username": "camp", "role": "uploader", "password": "long-enough-1"},
    )
    assert duplicate.status_code == 409
    short = await site.client.post(
        "/api/admin/users",
        headers=auth,
        json={"username": "x", "role": "uploader", "password": "short"},
    )
    assert short.status_code == 422
    bad_unit = await site.client.patch(
        "/api/admin/users/camp", headers=auth, json={"lab_unit_ids": ["atlantis"]}
    )
    assert bad_unit.status_code == 400
    assert bad_unit.json()["detail"] == "Unknown lab unit: atlantis"


async def test_an_admin_cannot_lock_themselves_out(site: Any) -> None:
    auth = site.auth("boss")
    demote = await site.client.patch(
        "/api/admin/users/boss", headers=auth, json={"role": "uploader"}
    )
    assert demote.status_code == 409
    disable = await site.client.patch("/api/admin/users/boss", headers=auth, json={"active": False})
    assert disable.status_code == 409
    assert (await site.accounts.get("boss")).is_admin


async def test_a_quota_override_changes_what_the_upload_allows(site: Any) -> None:
    auth = site.auth("boss")
    await site.client.patch("/api/admin/users/camp", headers=auth, json={"upload_quota": 1})
    limited = await upload(site, "camp", 2, first_seed=100)
    assert [r["reason"] for r in limited.json()["rejected"]] == ["Upload quota exceeded"]

    raised = await site.client.patch(
        "/api/admin/users/camp", headers=auth, json={"upload_quota": 3}
    )
    assert (raised.json()["upload_quota"], raised.json()["file_upload_count"]) == (3, 1)
    more = await upload(site, "camp", 3, first_seed=110)
    assert len(more.json()["accepted"]) == 2
    assert [r["reason"] for r in more.json()["rejected"]] == ["Upload quota exceeded"]

    back_to_default = await site.client.patch(
        "/api/admin/users/camp", headers=auth, json={"upload_quota": None}
    )
    assert back_to_default.json()["upload_quota"] is None
    assert back_to_default.json()["upload_quota_effective"] == 50
    assert len((await upload(site, "camp", 1, first_seed=120)).json()["accepted"]) == 1
    me = (await site.client.get("/api/me", headers=site.auth("camp"))).json()
    assert (me["file_upload_count"], me["upload_quota_effective"]) == (4, 50)


async def test_non_admins_get_403_from_the_api_and_a_friendly_page(site: Any) -> None:
    auth = site.auth("camp")
    for method, path, body in (
        ("GET", "/api/admin/users", None),
        (
            "POST",
            "/api/admin/users",
            {"username": "z", "role": "admin", "password": "long-enough-1"},
        ),
        ("PATCH", "/api/admin/users/camp", {"upload_quota": 1000}),
        ("GET", "/api/admin/reference", None),
        ("POST", "/api/admin/reference/hospitals", {"name": "Mine"}),
        ("DELETE", "/api/admin/reference/hospitals/city-general", None),
    ):
        response = await site.client.request(method, path, headers=auth, json=body)
        assert response.status_code == 403, (method, path)
    assert (await site.accounts.get("camp")).upload_quota is None
    anonymous = await site.client.get("/api/admin/users")
    assert anonymous.status_code == 401

    await sign_in(site, "camp", "pw-camp-1")
    for path in ("/admin/users", "/admin/reference", "/admin/users/camp"):
        page = await site.client.get(path)
        assert page.status_code == 403
        assert "for administrators only" in page.text
    refused = await site.client.post("/admin/users", data={"username": "x"})
    assert refused.status_code == 403


async def test_the_admin_api_with_the_session_needs_the_csrf_header(site: Any) -> None:
    token = await sign_in(site, "boss", "pw-boss-1")
    without = await site.client.post("/api/admin/reference/cameras", json={"name": "Cam X"})
    assert without.status_code == 403
    with_token = await site.client.post(
        "/api/admin/reference/cameras", json={"name": "Cam X"}, headers={"X-CSRF-Token": token}
    )
    assert with_token.status_code == 201


# --- the admin pages ------------------------------------------------------------------------


async def test_the_reference_page_adds_renames_retires_and_restores(site: Any) -> None:
    token = await sign_in(site, "boss", "pw-boss-1")
    page = await site.client.get("/admin/reference")
    assert page.status_code == 200
    for heading in ("Hospitals", "Lab units", "Cameras", "Diseases", "Areas"):
        assert heading in page.text
    added = await site.client.post(
        "/admin/reference/lab_units",
        data={"csrf_token": token, "name": "Eye Camp 2", "hospital_id": "riverside-eye"},
    )
    assert added.status_code == 303
    assert "Added lab unit “Eye Camp 2”." in (await site.client.get("/admin/reference")).text
    await site.client.post(
        "/admin/reference/lab_units/eye-camp-2",
        data={
            "csrf_token": token,
            "action": "rename",
            "name": "Eye Camp Two",
            "hospital_id": "riverside-eye",
        },
    )
    assert (await site.docs.collection("lab_units").get("eye-camp-2"))["name"] == "Eye Camp Two"
    refused = await site.client.post(
        "/admin/reference/hospitals/riverside-eye", data={"csrf_token": token, "action": "delete"}
    )
    assert refused.status_code == 303
    assert "still has lab units" in (await site.client.get("/admin/reference")).text
    await site.client.post(
        "/admin/reference/lab_units/eye-camp-2", data={"csrf_token": token, "action": "delete"}
    )
    assert (await site.docs.collection("lab_units").get("eye-camp-2"))["retired"] is True
    page = (await site.client.get("/admin/reference")).text
    assert "Retired lab units (1)" in page
    await site.client.post(
        "/admin/reference/lab_units/eye-camp-2", data={"csrf_token": token, "action": "restore"}
    )
    assert (await site.docs.collection("lab_units").get("eye-camp-2"))["retired"] is False
    forged = await site.client.post("/admin/reference/cameras", data={"name": "Forged"})
    assert forged.status_code == 403
    assert await site.docs.collection("cameras").get("forged") is None


async def test_the_users_pages_create_a_user_and_set_a_quota(site: Any) -> None:
    token = await sign_in(site, "boss", "pw-boss-1")
    listing = (await site.client.get("/admin/users")).text
    assert "Files uploaded" in listing and "(default)" in listing and "(override)" in listing
    created = await site.client.post(
        "/admin/users",
        data={
            "csrf_token": token,
            "username": "camp7",
            "role": "uploader",
            "password": "camp7-password",
            "lab_unit_ids": ["city-retina-clinic", "city-screening-camp"],
            "upload_quota": "",
        },
    )
    assert created.status_code == 303
    user = await site.accounts.get("camp7")
    assert user.lab_unit_ids == ("city-retina-clinic", "city-screening-camp")
    assert user.upload_quota is None
    edit = await site.client.get("/admin/users/camp7")
    assert edit.status_code == 200 and "camp7" in edit.text
    saved = await site.client.post(
        "/admin/users/camp7",
        data={
            "csrf_token": token,
            "role": "uploader",
            "lab_unit_ids": "city-retina-clinic",
            "upload_quota": "5",
            "active": "on",
        },
    )
    assert saved.status_code == 303 and saved.headers["location"] == "/admin/users"
    user = await site.accounts.get("camp7")
    assert (user.upload_quota, user.lab_unit_ids, user.active) == (5, ("city-retina-clinic",), True)
    bad = await site.client.post(
        "/admin/users/camp7",
        data={"csrf_token": token, "role": "uploader", "upload_quota": "-3", "active": "on"},
    )
    assert bad.status_code == 303
    assert (
        "Upload quota must be a whole number" in (await site.client.get("/admin/users/camp7")).text
    )
    short = await site.client.post(
        "/admin/users",
        data={"csrf_token": token, "username": "camp8", "role": "uploader", "password": "x"},
    )
    assert short.status_code == 303
    assert (
        "Password must be at least 8 characters long."
        in (await site.client.get("/admin/users")).text
    )
    assert await site.accounts.get("camp8") is None
