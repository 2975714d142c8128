"""Upload → anonymize → catalogue → grading queue, in one process on embedded backends."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.settings import GatewaySettings
from testkit.harness import FORM
from testkit.synthetic import fundus_image, no_disc_image
from uploader.bootstrap import WORKERS, open_platform, prepare, runner


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    settings = GatewaySettings(data_dir=tmp_path, retry_base_seconds=0.01)
    platform = open_platform(settings)
    await prepare(platform)
    accounts = Accounts(docs=platform.docs)
    await accounts.create_user(
        username="camp",
        role="uploader",
        password="pw-1",
        lab_unit_ids=("city-retina-clinic", "city-screening-camp"),
    )
    await accounts.create_user(username="boss", role="admin", password="pw-2")
    tokens = {u: (await accounts.create_token(u))[0] for u in ("camp", "boss")}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(runner(name, platform).run(stop)) for name in WORKERS]
    app = create_app(settings=settings, bus=platform.bus, store=platform.store, docs=platform.docs)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        yield client, tokens
    stop.set()
    await asyncio.gather(*tasks)
    await platform.close()


async def upload_and_wait(
    client: httpx.AsyncClient, token: str, form: dict[str, str], files: list[tuple[str, bytes, str]]
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {token}"}
    response = await client.post(
        "/api/direct/upload", headers=auth, data=form, files=[("files", f) for f in files]
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    for _ in range(600):
        status: dict[str, Any] = (
            await client.get(f"/api/upload-jobs/{job_id}/status", headers=auth)
        ).json()
        if status["status"] in ("done", "error"):
            return status
        await asyncio.sleep(0.05)
    raise AssertionError(f"job did not finish: {status}")


async def test_processed_images_wait_in_the_grading_queue_with_their_images(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    camp = {"Authorization": f"Bearer {tokens['camp']}"}
    boss = {"Authorization": f"Bearer {tokens['boss']}"}
    dr = await upload_and_wait(
        client,
        tokens["camp"],
        FORM,
        [(f"dr{i}.jpg", fundus_image(size=500, seed=i), "image/jpeg") for i in range(2)],
    )
    glaucoma_form = {**FORM, "disease": "glaucoma", "lab_unit": "city-screening-camp"}
    glaucoma = await upload_and_wait(
        client,
        tokens["camp"],
        glaucoma_form,
        [("g.jpg", fundus_image(size=500, seed=9), "image/jpeg")],
    )
    assert dr["status"] == glaucoma["status"] == "done"

    everything = (await client.get("/api/grading/queue", headers=camp)).json()
    assert everything["count"] == 3
    only_dr = (await client.get("/api/grading/queue?disease=dr", headers=camp)).json()
    assert {e["id"] for e in only_dr["items"]} == {i["item_id"] for i in dr["items"]}
    by_unit = (
        await client.get("/api/grading/queue?lab_unit=city-screening-camp", headers=camp)
    ).json()
    assert [e["disease_id"] for e in by_unit["items"]] == ["glaucoma"]
    none = (await client.get("/api/grading/queue?hospital=riverside-eye", headers=camp)).json()
    assert none["count"] == 0

    entry = only_dr["items"][0]
    assert entry["pre_graded"] is False
    clean = await client.get(entry["image_url"], headers=camp)
    assert clean.status_code == 200
    assert Image.open(io.BytesIO(clean.content)).size == (entry["width"], entry["height"])
    thumb = await client.get(entry["thumbnail_url"], headers=camp)
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256
    raw_url = entry["image_url"].replace("/clean", "/raw")
    assert (await client.get(raw_url, headers=camp)).status_code == 403
    raw = await client.get(raw_url, headers=boss)
    assert raw.status_code == 200
    originals = {fundus_image(size=500, seed=i) for i in range(2)}
    assert raw.content in originals
    assert (await client.get(entry["image_url"])).status_code == 401


async def test_an_unreadable_image_fails_alone_and_the_rest_of_the_job_goes_on(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    # A JPEG header with nothing decodable after it: it passes the type check at the door
    # and fails in the anonymizer.
    broken = fundus_image(size=500, seed=3)[:2100]
    status = await upload_and_wait(
        client,
        tokens["camp"],
        FORM,
        [
            ("good.jpg", fundus_image(size=500, seed=4), "image/jpeg"),
            ("broken.jpg", broken, "image/jpeg"),
        ],
    )
    assert status["status"] == "error"
    assert status["message"] == "One or more files failed"
    by_name = {i["filename"]: i for i in status["items"]}
    assert by_name["good.jpg"]["status"] == "completed"
    assert by_name["broken.jpg"]["status"] == "error"
    assert by_name["broken.jpg"]["reason"]
    queue = (
        await client.get(
            "/api/grading/queue", headers={"Authorization": f"Bearer {tokens['camp']}"}
        )
    ).json()
    assert [e["id"] for e in queue["items"]] == [by_name["good.jpg"]["item_id"]]


async def test_an_image_without_a_fundus_disc_is_kept_unmasked_and_flagged_for_review(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    status = await upload_and_wait(
        client, tokens["camp"], FORM, [("form.jpg", no_disc_image(), "image/jpeg")]
    )
    assert status["status"] == "done"
    queue = (
        await client.get(
            "/api/grading/queue", headers={"Authorization": f"Bearer {tokens['camp']}"}
        )
    ).json()
    (entry,) = queue["items"]
    assert entry["needs_review"] is True
    assert entry["review_reason"] == "No fundus field of view detected; not masked"


async def test_a_file_that_failed_in_processing_gives_back_its_quota_and_can_be_sent_again(
    system: tuple[httpx.AsyncClient, dict[str, str]],
) -> None:
    client, tokens = system
    camp = {"Authorization": f"Bearer {tokens['camp']}"}
    broken = fundus_image(size=500, seed=5)[:2100]
    status = await upload_and_wait(
        client,
        tokens["camp"],
        FORM,
        [
            ("good.jpg", fundus_image(size=500, seed=6), "image/jpeg"),
            ("broken.jpg", broken, "image/jpeg"),
        ],
    )
    assert status["status"] == "error"
    for _ in range(200):  # the gateway hears of the failure as an event, a moment later
        me = (await client.get("/api/me", headers=camp)).json()
        if me["file_upload_count"] == 1:
            break
        await asyncio.sleep(0.05)
    assert me["file_upload_count"] == 1  # only the file that made it counts
    # "Re-upload only the failed files with corrections": not a duplicate.
    again = await client.post(
        "/api/direct/upload",
        headers=camp,
        data=FORM,
        files=[("files", ("broken.jpg", broken, "image/jpeg"))],
    )
    assert again.json()["rejected"] == []
    same_good = await client.post(
        "/api/direct/upload",
        headers=camp,
        data=FORM,
        files=[("files", ("good.jpg", fundus_image(size=500, seed=6), "image/jpeg"))],
    )
    assert [r["reason"] for r in same_good.json()["rejected"]] == ["Duplicate file"]
