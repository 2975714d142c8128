"""The Direct Upload Dashboard's API: `/api/uploads` (filters, pages), `/api/uploads/kpis` and
`/api/uploads/{id}`, over catalogue records seeded straight into the read model."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.events import ObjectRef
from gateway.dashboard import UPLOAD_NOT_FOUND, UPLOADER_FILTER_REFUSED
from ingest.read_model import CATALOGUE, Catalogue, CatalogueRecord
from ingest.uploads_query import INDEXES

from .conftest import Site

CITY, CAMP_UNIT, RIVER = "city-retina-clinic", "city-screening-camp", "riverside-outpatient"
HOSPITAL = {CITY: "city-general", CAMP_UNIT: "city-general", RIVER: "riverside-eye"}


def _ref(bucket: str, key: str) -> ObjectRef:
    return ObjectRef(
        bucket=bucket, key=key, size=1000, md5="0" * 32, sha256="0" * 64, content_type="image/jpeg"
    )


def record(item_id: str, **fields: Any) -> CatalogueRecord:
    lab_unit = fields.pop("lab_unit_id", CITY)
    values: dict[str, Any] = {
        "item_id": item_id,
        "job_id": f"job-{item_id}",
        "uploader_id": "camp",
        "hospital_id": HOSPITAL[lab_unit],
        "lab_unit_id": lab_unit,
        "camera_id": "remidio-fop",
        "disease_id": "dr",
        "area_id": "left-eye",
        "mydriatic": False,
        "raw": _ref("raw", f"{item_id}.jpg"),
        "clean": _ref("clean", f"{item_id}.jpg"),
        "thumbnail": _ref("clean", f"{item_id}.thumb.jpg"),
        "md5": "0" * 32,
        "sha256": "0" * 64,
        "size": 1000,
        "width": 640,
        "height": 480,
        "masked": True,
        "ingested_at": "2026-03-01T08:00:00+00:00",
        **fields,
    }
    return CatalogueRecord(**values)


async def seed(site: Site, *records: CatalogueRecord) -> None:
    catalogue = Catalogue(docs=site.docs)
    for one in records:
        await catalogue.put(one)


async def grade(site: Site, item_id: str, *, by: str, at: str) -> None:
    """What grading writes on a record (not part of `CatalogueRecord` yet)."""
    await site.docs.collection(CATALOGUE).update(item_id, set={"graded_by": by, "graded_at": at})


# Six uploads across three lab units and two hospitals; each filter below picks a known few.
VARIED = (
    record("u01", ingested_at="2026-03-01T08:00:00+00:00"),
    record(
        "u02",
        ingested_at="2026-03-01T23:59:59+00:00",
        area_id="right-eye",
        pre_graded=True,
    ),
    record(
        "u03",
        ingested_at="2026-03-02T00:00:00+00:00",
        camera_id="zeiss-visucam",
        disease_id="glaucoma",
        uploader_id="small",
    ),
    record(
        "u04",
        ingested_at="2026-03-05T12:00:00+00:00",
        disease_id="amd",
        uploader_id="small",
        pre_graded=True,
        needs_review=True,
        review_reason="no optic disc found",
    ),
    record(
        "u05",
        lab_unit_id=CAMP_UNIT,
        ingested_at="2026-02-28T23:59:59+00:00",
        camera_id="topcon-nw400",
        uploader_id="nurse",
        needs_review=True,
    ),
    record(
        "u06",
        lab_unit_id=RIVER,
        ingested_at="2026-03-03T10:00:00+00:00",
        camera_id="topcon-nw400",
        disease_id="glaucoma",
        area_id="right-eye",
        uploader_id="nurse",
    ),
)


@pytest.fixture
async def varied(site: Site) -> Site:
    await site.docs.ensure_indexes(CATALOGUE, INDEXES[CATALOGUE])
    await seed(site, *VARIED)
    await grade(site, "u03", by="dr-rao", at="2026-03-04T09:00:00+00:00")
    await grade(site, "u04", by="dr-rao", at="2026-03-06T09:00:00+00:00")
    return site


async def listed(site: Site, query: str, user: str = "boss") -> list[str]:
    response = await site.client.get(f"/api/uploads?{query}", headers=site.auth(user))
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# Query string → the uploads it lists (as an admin), newest first.
FILTERED = [
    ("", ["u04", "u06", "u03", "u02", "u01", "u05"]),
    ("from=2026-03-01", ["u04", "u06", "u03", "u02", "u01"]),
    ("to=2026-03-01", ["u02", "u01", "u05"]),
    ("from=2026-03-02&to=2026-03-03", ["u06", "u03"]),
    ("hospital=riverside-eye", ["u06"]),
    (f"lab_unit={CAMP_UNIT}", ["u05"]),
    ("camera=topcon-nw400", ["u06", "u05"]),
    ("disease=glaucoma", ["u06", "u03"]),
    ("area=right-eye", ["u06", "u02"]),
    ("uploader=small", ["u04", "u03"]),
    ("pre_graded=true", ["u04", "u02"]),
    ("pre_graded=false", ["u06", "u03", "u01", "u05"]),
    ("graded=true", ["u04", "u03"]),
    ("graded=false", ["u06", "u02", "u01", "u05"]),
    ("needs_review=true", ["u04", "u05"]),
    ("needs_review=false", ["u06", "u03", "u02", "u01"]),
    ("disease=dr&camera=remidio-fop&pre_graded=false", ["u01"]),
    ("hospital=&camera=&from=", ["u04", "u06", "u03", "u02", "u01", "u05"]),
]


async def test_each_filter_lists_only_the_uploads_that_match_it_newest_first(
    varied: Site,
) -> None:
    for query, expected in FILTERED:
        assert await listed(varied, query) == expected, query


async def test_an_item_carries_its_metadata_grading_status_and_image_urls(varied: Site) -> None:
    response = await varied.client.get("/api/uploads", headers=varied.auth("boss"))
    items = {item["id"]: item for item in response.json()["items"]}
    assert items["u04"] == {
        "id": "u04",
        "hospital_id": "city-general",
        "lab_unit_id": CITY,
        "camera_id": "remidio-fop",
        "disease_id": "amd",
        "area_id": "left-eye",
        "mydriatic": False,
        "uploader": "small",
        "uploaded_at": "2026-03-05T12:00:00+00:00",
        "size": 1000,
        "width": 640,
        "height": 480,
        "pre_graded": True,
        "grading_status": "graded",
        "graded_by": "dr-rao",
        "graded_at": "2026-03-06T09:00:00+00:00",
        "needs_review": True,
        "review_reason": "no optic disc found",
        "encounter_id": None,
        "laterality": "unknown",
        "flags": [],
        "image_url": "/api/images/u04/clean",
        "thumbnail_url": "/api/images/u04/thumbnail",
        "edited": False,
    }
    assert (items["u02"]["grading_status"], items["u02"]["graded_by"]) == ("pre_graded", None)
    assert items["u01"]["grading_status"] == "not_graded"


async def test_an_upload_with_an_edited_version_is_marked_edited(varied: Site) -> None:
    await Catalogue(docs=varied.docs).set_edited(
        "u01", edited=_ref("clean", "u01.edit1.jpg"), thumbnail=None, version=1
    )

    response = await varied.client.get("/api/uploads/u01", headers=varied.auth("boss"))

    assert response.status_code == 200
    assert response.json()["edited"] is True


async def test_the_kpis_count_the_filtered_set_and_all_time(varied: Site) -> None:
    response = await varied.client.get(
        "/api/uploads/kpis?camera=remidio-fop", headers=varied.auth("boss")
    )

    assert response.status_code == 200
    assert response.json() == {
        "total": 3,
        "all_time": 6,
        "camera_types": 1,
        "cameras": [{"id": "remidio-fop", "count": 3}],
        "disease_types": 2,
        "diseases": [{"id": "dr", "count": 2}, {"id": "amd", "count": 1}],
        "area_types": 2,
        "areas": [{"id": "left-eye", "count": 2}, {"id": "right-eye", "count": 1}],
    }


async def test_the_kpis_name_the_three_most_frequent_of_each_ties_by_id(site: Site) -> None:
    cameras = {"cam-a": 5, "cam-b": 4, "cam-c": 3, "cam-d": 2, "cam-e": 1}
    diseases = ["dr"] * 6 + ["amd"] * 3 + ["glaucoma"] * 3 + ["rop"] * 3
    areas = ["left-eye"] * 7 + ["right-eye"] * 7 + [None]
    made = [camera for camera, times in cameras.items() for _ in range(times)]
    await seed(
        site,
        *(
            record(f"k{i:02}", camera_id=made[i], disease_id=diseases[i], area_id=areas[i])
            for i in range(15)
        ),
    )

    response = await site.client.get("/api/uploads/kpis", headers=site.auth("boss"))

    kpis = response.json()
    assert (kpis["total"], kpis["all_time"]) == (15, 15)
    assert kpis["camera_types"] == 5
    assert kpis["cameras"] == [
        {"id": "cam-a", "count": 5},
        {"id": "cam-b", "count": 4},
        {"id": "cam-c", "count": 3},
    ]
    assert kpis["disease_types"] == 4
    assert kpis["diseases"] == [
        {"id": "dr", "count": 6},
        {"id": "amd", "count": 3},
        {"id": "glaucoma", "count": 3},
    ]
    # An upload without an area is counted in the total, not as a kind of area.
    assert kpis["area_types"] == 2
    assert kpis["areas"] == [{"id": "left-eye", "count": 7}, {"id": "right-eye", "count": 7}]


async def test_pages_split_the_list_without_overlap_and_say_how_many_there_are(
    site: Site,
) -> None:
    # 23 uploads, pairs of them at the same instant: ties go by id.
    await seed(
        site,
        *(
            record(f"p{i:02}", ingested_at=f"2026-03-{1 + i // 2:02}T10:00:00+00:00")
            for i in range(23)
        ),
    )
    newest_first = sorted((f"p{i:02}" for i in range(23)), key=lambda r: (-(int(r[1:]) // 2), r))

    answers = []
    for page in (1, 2, 3, 4):
        response = await site.client.get(
            f"/api/uploads?per_page=10&page={page}", headers=site.auth("boss")
        )
        assert response.status_code == 200
        answers.append(response.json())

    assert [(a["total"], a["page"], a["per_page"], a["pages"]) for a in answers] == [
        (23, 1, 10, 3),
        (23, 2, 10, 3),
        (23, 3, 10, 3),
        (23, 4, 10, 3),
    ]
    assert [len(a["items"]) for a in answers] == [10, 10, 3, 0]
    assert [item["id"] for a in answers for item in a["items"]] == newest_first


async def test_a_page_holds_fifty_uploads_unless_asked_otherwise(site: Site) -> None:
    await seed(site, *(record(f"d{i:02}") for i in range(51)))

    answer = (await site.client.get("/api/uploads", headers=site.auth("boss"))).json()

    assert (answer["per_page"], answer["pages"], len(answer["items"])) == (50, 2, 50)


async def test_a_filtered_view_is_paged_within_the_filter(varied: Site) -> None:
    response = await varied.client.get(
        "/api/uploads?disease=glaucoma&per_page=1&page=2", headers=varied.auth("boss")
    )

    answer = response.json()
    assert (answer["total"], answer["pages"]) == (2, 2)
    assert [item["id"] for item in answer["items"]] == ["u03"]


async def test_an_uploader_sees_only_the_uploads_of_their_own_lab_units(varied: Site) -> None:
    assert await listed(varied, "", user="camp") == ["u04", "u03", "u02", "u01"]
    assert await listed(varied, "camera=topcon-nw400", user="camp") == []

    kpis = (await varied.client.get("/api/uploads/kpis", headers=varied.auth("camp"))).json()
    assert (kpis["total"], kpis["all_time"]) == (4, 4)
    assert {camera["id"] for camera in kpis["cameras"]} == {"remidio-fop", "zeiss-visucam"}


async def test_an_uploader_asking_for_another_lab_unit_gets_an_empty_list(varied: Site) -> None:
    response = await varied.client.get(
        f"/api/uploads?lab_unit={RIVER}", headers=varied.auth("camp")
    )
    kpis = await varied.client.get(
        f"/api/uploads/kpis?lab_unit={RIVER}", headers=varied.auth("camp")
    )

    assert (response.json()["total"], response.json()["items"]) == (0, [])
    assert (kpis.json()["total"], kpis.json()["all_time"], kpis.json()["cameras"]) == (0, 4, [])


async def test_another_lab_units_upload_is_not_found_like_a_missing_one(varied: Site) -> None:
    other = await varied.client.get("/api/uploads/u06", headers=varied.auth("camp"))
    missing = await varied.client.get("/api/uploads/no-such-upload", headers=varied.auth("camp"))
    own = await varied.client.get("/api/uploads/u01", headers=varied.auth("camp"))

    assert (other.status_code, missing.status_code) == (404, 404)
    assert other.json() == missing.json() == {"detail": UPLOAD_NOT_FOUND}
    assert own.status_code == 200 and own.json()["id"] == "u01"


async def test_an_admin_opens_any_lab_units_upload(varied: Site) -> None:
    response = await varied.client.get("/api/uploads/u06", headers=varied.auth("boss"))

    assert response.status_code == 200
    assert response.json()["lab_unit_id"] == RIVER


async def test_only_admins_and_data_managers_may_filter_by_uploader(varied: Site) -> None:
    await varied.accounts.create_user(username="dm", role="data_manager", password="pw-dm-1")
    token = (await varied.accounts.create_token("dm"))[0]

    refused = await varied.client.get("/api/uploads?uploader=small", headers=varied.auth("camp"))
    refused_kpis = await varied.client.get(
        "/api/uploads/kpis?uploader=small", headers=varied.auth("camp")
    )
    manager = await varied.client.get(
        "/api/uploads?uploader=nurse", headers={"Authorization": f"Bearer {token}"}
    )

    assert (refused.status_code, refused_kpis.status_code) == (403, 403)
    assert refused.json() == {"detail": UPLOADER_FILTER_REFUSED}
    assert [item["id"] for item in manager.json()["items"]] == ["u06", "u05"]


# A bad query value → the parameter the error names and what its message says.
BAD_QUERIES = [
    ("from=31-03-2026", "from", "from must be a day as YYYY-MM-DD"),
    ("to=2026-02-30", "to", "to must be a day as YYYY-MM-DD"),
    ("from=2026-03-01T10:00:00", "from", "from must be a day as YYYY-MM-DD"),
    ("from=2026-03-05&to=2026-03-01", "to", "the date range is empty"),
    ("page=0", "page", "greater than or equal to 1"),
    ("page=184467440737095517", "page", "less than or equal to 1000000"),
    ("per_page=201", "per_page", "less than or equal to 200"),
    ("per_page=0", "per_page", "greater than or equal to 1"),
    ("graded=perhaps", "graded", "valid boolean"),
]


async def test_a_bad_query_value_is_refused_with_a_message_naming_it(varied: Site) -> None:
    for query, parameter, message in BAD_QUERIES:
        paths = ["/api/uploads"] + ([] if "page" in parameter else ["/api/uploads/kpis"])
        for path in paths:
            response = await varied.client.get(f"{path}?{query}", headers=varied.auth("boss"))

            assert response.status_code == 422, (path, query, response.text)
            (error,) = response.json()["detail"]
            assert error["loc"] == ["query", parameter], query
            assert message in error["msg"], (query, error)


async def test_the_dashboard_api_asks_for_a_sign_in(site: Site) -> None:
    for path in ("/api/uploads", "/api/uploads/kpis", "/api/uploads/u01"):
        assert (await site.client.get(path)).status_code == 401
