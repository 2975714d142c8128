"""The embedded system as a user runs it: one `uploader serve` process, SQLite and files."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from kit.docs_sqlite import SqliteDocuments
from testkit.harness import (
    FORM,
    cli,
    job_status,
    start_process,
    upload,
    uploader_env,
    wait_for_job,
)
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
    cli(
        [
            "users",
            "create",
            "camp1",
            "--role",
            "uploader",
            "--lab-unit",
            "city-retina-clinic",
            "--password",
            "s3cret-pass",
        ],
        env,
    )
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
    files = [
        (f"f{i:02}.jpg", fundus_image(size=1400, seed=100 + i), "image/jpeg") for i in range(20)
    ]
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


def _documents(data_dir: Path, collection: str) -> list[dict[str, object]]:
    async def read() -> list[dict[str, object]]:
        docs = SqliteDocuments(path=data_dir / "documents.sqlite3")
        try:
            return await docs.collection(collection).find()
        finally:
            await docs.close()

    return asyncio.run(read())


def _multipart_until_killed(
    files: list[tuple[str, bytes, str]], *, kill_in: int, kill: Callable[[], None]
) -> Iterator[bytes]:
    """A form streamed like a browser sends it, whose sender pulls the plug on the server
    half-way through file number `kill_in` (1-based)."""
    boundary = "CrashBoundary"
    for name, value in FORM.items():
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    for number, (name, data, mime) in enumerate(files, start=1):
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
            f'filename="{name}"\r\nContent-Type: {mime}\r\n\r\n'
        ).encode()
        if number == kill_in:
            yield data[: len(data) // 2]
            time.sleep(1.0)  # the half has reached the store
            kill()
            return
        yield data + b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def test_a_crash_in_the_middle_of_a_request_leaves_nothing_that_blocks_the_same_files(
    site: tuple[dict[str, str], str], tmp_path: Path
) -> None:
    """Finding 2: kill -9 while the 11th of 20 files streams in; after the restart the same
    20 files are all accepted and completed, and nothing without a job is left."""
    env, token = site
    env = {**env, "UPLOADER_INCOMPLETE_WRITE_SECONDS": "0"}
    data_dir = Path(env["UPLOADER_DATA_DIR"])
    files = [
        (f"c{i:02}.jpg", fundus_image(size=700, seed=300 + i), "image/jpeg") for i in range(20)
    ]
    server = start_process("serve-crash", ["serve"], env=env, log_dir=tmp_path)
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.post(
                server.url + "/api/direct/upload",
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "multipart/form-data; boundary=CrashBoundary",
                },
                content=_multipart_until_killed(files, kill_in=11, kill=server.kill),
                timeout=60,
            )
    finally:
        server.kill()
    # What the crash left: ten files stored and claimed, quota taken, a request in flight.
    raw = data_dir / "objects" / "raw"
    assert len([p for p in raw.rglob("*") if p.is_file() and p.suffix != ".tmp"]) >= 10
    assert len(_documents(data_dir, "file_hashes")) == 10
    assert len(_documents(data_dir, "upload_requests")) == 1

    server = start_process("serve-after", ["serve"], env=env, log_dir=tmp_path)
    try:
        # The start-up sweep gave everything back before the first request was answered.
        assert [p for p in raw.rglob("*")] == []
        assert _documents(data_dir, "file_hashes") == []
        assert _documents(data_dir, "upload_requests") == []
        assert [
            u["file_upload_count"] for u in _documents(data_dir, "users") if u["_id"] == "camp1"
        ] == [0]
        response = upload(server.url, token, files)
        assert response.status_code == 201, response.text
        assert response.json()["rejected"] == []
        final = wait_for_job(server.url, token, response.json()["job_id"])
    finally:
        server.stop()
    assert final["status"] == "done" and final["succeeded"] == 20
    assert [
        u["file_upload_count"] for u in _documents(data_dir, "users") if u["_id"] == "camp1"
    ] == [20]
    job_ids = {j["_id"] for j in _documents(data_dir, "jobs")}
    assert {c["job_id"] for c in _documents(data_dir, "file_hashes")} == job_ids
    assert {p.name for p in raw.iterdir()} == job_ids  # no folder without a job


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_sigterm_and_sigint(
    site: tuple[dict[str, str], str], tmp_path: Path, signum: signal.Signals
) -> None:
    """What `docker stop` and Kubernetes send: the event in hand is finished, consumers
    leave their groups, the SQLite files are closed (no WAL left), exit code 0."""
    env, token = site
    data_dir = Path(env["UPLOADER_DATA_DIR"])
    server = start_process("serve-stop", ["serve"], env=env, log_dir=tmp_path)
    files = [(f"s{i}.jpg", fundus_image(size=900, seed=500 + i), "image/jpeg") for i in range(6)]
    response = upload(server.url, token, files)
    assert response.status_code == 201
    assert server.popen is not None
    server.popen.send_signal(signum)
    assert server.popen.wait(timeout=40) == 0, server.log_tail()
    server.stop()
    assert not list(data_dir.glob("*-wal")), "a SQLite file was not closed"
    members = (
        sqlite3.connect(data_dir / "events.sqlite3")
        .execute("SELECT count(*) FROM group_members")
        .fetchone()[0]
    )
    assert members == 0, "a consumer did not leave its group"
    # And nothing was lost: after a restart the job completes.
    again = start_process("serve-again", ["serve"], env=env, log_dir=tmp_path)
    try:
        final = wait_for_job(again.url, token, response.json()["job_id"])
    finally:
        again.stop()
    assert final["succeeded"] == 6
