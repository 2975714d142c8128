"""The embedded system as a user runs it: one `uploader serve` process, SQLite and files."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from kit.docs_sqlite import SqliteDocuments
from testkit.harness import cli, job_status, start_process, upload, uploader_env, wait_for_job
from testkit.synthetic import fundus_image


def _catalogue(data_dir: Path) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        docs = SqliteDocuments(path=data_dir / "documents.sqlite3")
        try:
            return await docs.collection("uploads").find()
        finally:
            await docs.close()

    return asyncio.run(read())


@pytest.fixture
def site(tmp_path: Path) -> tuple[dict[str, str], str]:
    env = uploader_env(tmp_path / "var")
    cli(["users", "create", "camp1", "--role", "uploader", "--lab-unit", "city-retina-clinic",
         "--password", "s3cret-pass"], env)
    token = cli(["tokens", "create", "camp1"], env).strip()
    return env, token


def test_an_upload_through_serve_reaches_done_and_is_catalogued(
    site: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, token = site
    server = start_process("serve", ["serve"], env=env, log_dir=tmp_path)
    try:
        files = [(f"eye{i}.jpg", fundus_image(size=600, seed=i), "image/jpeg") for i in range(3)]
        response = upload(server.url, token, files)
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        final = wait_for_job(server.url, token, job_id)
        assert final["status"] == "done", final
        assert [i["status"] for i in final["items"]] == ["completed"] * 3
        assert all(i["started_at"] and i["finished_at"] for i in final["items"])
        assert final["completed_at"] is not None
    finally:
        server.stop()
    records = _catalogue(Path(env["UPLOADER_DATA_DIR"]))
    assert sorted(r["item_id"] for r in records) == sorted(i["item_id"] for i in final["items"])
    clean_dir = Path(env["UPLOADER_DATA_DIR"]) / "objects" / "clean" / job_id
    assert len(list(clean_dir.glob("*.thumb.jpg"))) == 3


def test_serve_killed_in_the_middle_of_a_job_finishes_it_after_restart(
    site: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    env, token = site
    files = [(f"f{i:02}.jpg", fundus_image(size=1400, seed=100 + i), "image/jpeg")
             for i in range(20)]
    server = start_process("serve-1", ["serve"], env=env, log_dir=tmp_path)
    try:
        response = upload(server.url, token, files)
        assert response.status_code == 201, response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + 120
        completed = 0
        while time.monotonic() < deadline:
            completed = job_status(server.url, token, job_id)["succeeded"]
            if completed >= 2:
                break
            time.sleep(0.05)
    finally:
        server.kill()
    assert 2 <= completed < 20, f"the kill must land mid-job (completed={completed})"

    server = start_process("serve-2", ["serve"], env=env, log_dir=tmp_path)
    try:
        final = wait_for_job(server.url, token, job_id)
    finally:
        server.stop()
    assert final["status"] == "done", final
    assert final["succeeded"] == 20
    records = _catalogue(Path(env["UPLOADER_DATA_DIR"]))
    assert len(records) == 20
    assert len({r["md5"] for r in records}) == 20
    assert {r["item_id"] for r in records} == {i["item_id"] for i in final["items"]}
