"""Requests that once ended in a server error (500) get a clear 4xx answer instead.

JSON can carry a lone surrogate (the escape ``"\\ud800"``), which Python decodes into a `str`
that no UTF-8 store or answer can encode. The schemathesis run (`test_api_schemathesis`) never
sends one: it generates valid UTF-8 text only.
"""

from __future__ import annotations

from typing import Any

import httpx

JSON = {"Content-Type": "application/json"}
# The JSON escape, written out: httpx's `json=` cannot encode the character itself to UTF-8.
LONE_SURROGATE = '"\\ud800"'
UNICODE_ERROR = {
    "type": "string_unicode",
    "msg": "Input should be a valid string, unable to parse raw data as a unicode string",
}


async def post_raw(site: Any, url: str, body: str, user: str = "boss") -> httpx.Response:
    response: httpx.Response = await site.client.post(
        url, headers={**site.auth(user), **JSON}, content=body.encode()
    )
    return response


async def test_a_lab_unit_whose_hospital_id_holds_a_lone_surrogate_is_refused_as_invalid(
    site: Any,
) -> None:
    response = await post_raw(
        site,
        "/api/admin/reference/lab_units",
        f'{{"name": "Night Camp", "hospital_id": {LONE_SURROGATE}}}',
    )
    assert response.status_code == 422
    assert response.json() == {"detail": [{**UNICODE_ERROR, "loc": ["body", "hospital_id"]}]}
    units = (await site.client.get("/api/admin/reference", headers=site.auth("boss"))).json()[
        "lab_units"
    ]
    assert "Night Camp" not in [u["name"] for u in units]


async def test_a_new_user_whose_lab_unit_ids_hold_a_lone_surrogate_is_refused_as_invalid(
    site: Any,
) -> None:
    response = await post_raw(
        site,
        "/api/admin/users",
        '{"username": "nurse", "role": "uploader", "password": "pw-nurse-1", '
        f'"lab_unit_ids": ["city-retina-clinic", {LONE_SURROGATE}]}}',
    )
    assert response.status_code == 422
    assert response.json() == {"detail": [{**UNICODE_ERROR, "loc": ["body", "lab_unit_ids", 1]}]}
    assert await site.accounts.get("nurse") is None


async def test_a_user_change_whose_lab_unit_ids_hold_a_lone_surrogate_is_refused_as_invalid(
    site: Any,
) -> None:
    response: httpx.Response = await site.client.patch(
        "/api/admin/users/camp",
        headers={**site.auth("boss"), **JSON},
        content=f'{{"lab_unit_ids": [{LONE_SURROGATE}]}}'.encode(),
    )
    assert response.status_code == 422
    assert response.json() == {"detail": [{**UNICODE_ERROR, "loc": ["body", "lab_unit_ids", 0]}]}
    camp = await site.accounts.get("camp")
    assert camp is not None and camp.lab_unit_ids == ("city-retina-clinic",)
