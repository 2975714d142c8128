"""The distributed system under faults: each engine (Kafka, MinIO, FerretDB) and the faust
job-tracker is killed in the middle of a 50-file job, and every file still ends `completed`,
catalogued exactly once, with exact counts.

Every test starts its own engines (not the session's, which other tests share and which must
stay up) and its own six service processes, so a fault never leaks into another test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from minio import Minio
from pymongo import MongoClient
from pymongo.database import Database

from gateway.accounts import Accounts
from kit.docs_mongo import MongoDocuments
from testkit.engines import Engines, start_all
from testkit.harness import (
    Process,
    job_status,
    start_processes,
    stop_processes,
    upload,
    uploader_env,
)
from testkit.synthetic import fundus_image

pytestmark = pytest.mark.engines

SERVICES = ("gateway", "zip-extractor", "pdf-parser", "anonymizer", "ingest", "job-tracker")
FILES = 50
IMAGE_SIDE = 320  # small: the faults are the point, not the image processing
USER = "camp"
STORAGE_UNAVAILABLE = "Storage is unavailable; nothing was kept. Please try again shortly."
# Six Python processes starting at once on 2 cores take ~30 s; more on a busy machine.
START_SECONDS = 180.0
# How long a job may take to finish once the fault is over (the system has to notice the
# engine is back, rejoin consumer groups and catch up).
RECOVERY_SECONDS = 180.0


@dataclass
class System:
    """One private set of engines and the six services on them."""

    engines: Engines
    env: dict[str, str]
    processes: dict[str, Process]
    token: str
    database: Database[dict[str, Any]]  # what the services wrote, read as any client reads it

    @property
    def gateway(self) -> Process:
        return self.processes["gateway"]

    def object_store(self) -> Minio:
        minio = self.engines.minio
        return Minio(
            minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
        )

    def logs(self) -> str:
        """Where to look when a test fails: every process's log tail."""
        parts = [
            f"--- {p.name} ({p.log_path}) ---\n{p.log_tail(25)}" for p in self.processes.values()
        ]
        return "\n".join(parts)


async def create_uploader(mongo_url: str, database: str) -> str:
    """The job's uploader and an API token for it, as `uploader users create` and `uploader
    tokens create` make them (in this process: two CLI start-ups fewer per test)."""
    docs = MongoDocuments(url=mongo_url, database=database)
    try:
        accounts = Accounts(docs=docs)
        # A quota well above the job's 50 files: a refused file must be refused for the
        # outage, never for the quota.
        await accounts.create_user(
            username=USER,
            role="uploader",
            password="camp-pass-1",
            lab_unit_ids=("city-retina-clinic",),
            upload_quota=1000,
        )
        token, _ = await accounts.create_token(USER)
        return token
    finally:
        await docs.close()


@pytest.fixture
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[System]:
    import conftest  # the repository's root conftest: the one build-or-skip rule of engine tests

    conftest._build_or_skip(request.config)
    engines = start_all(tmp_path / "engines")
    processes: dict[str, Process] = {}
    mongo: MongoClient[dict[str, Any]] | None = None
    try:
        mongo = MongoClient(
            engines.ferretdb.url, directConnection=True, serverSelectionTimeoutMS=10_000
        )
        env = uploader_env(
            tmp_path / "var",
            {
                **engines.env(select_backends=True),
                "UPLOADER_MONGO_DATABASE": "faults",
                # Periodic clean-up often, so what it would give back shows within the test.
                "UPLOADER_MAINTENANCE_SECONDS": "2",
            },
        )
        token = asyncio.run(create_uploader(engines.ferretdb.url, env["UPLOADER_MONGO_DATABASE"]))
        processes = start_processes(
            {name: ["run", name] for name in SERVICES},
            env=env,
            log_dir=tmp_path,
            ready_timeout=START_SECONDS,
        )
        yield System(
            engines=engines,
            env=env,
            processes=processes,
            token=token,
            database=mongo[env["UPLOADER_MONGO_DATABASE"]],
        )
    finally:
        if mongo is not None:
            mongo.close()
        try:
            stop_processes(processes.values())
        finally:
            engines.stop()


def upload_job(system: System, *, seed: int) -> tuple[str, set[str]]:
    """Upload a 50-file direct upload; its job id and the ids of its (all accepted) files."""
    files = [
        (f"eye{i:02}.jpg", fundus_image(size=IMAGE_SIDE, seed=seed + i), "image/jpeg")
        for i in range(FILES)
    ]
    response = upload(system.gateway.url, system.token, files)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["rejected"] == [], body["rejected"]
    accepted = {item["item_id"] for item in body["accepted"]}
    assert len(accepted) == FILES
    return body["job_id"], accepted


def wait_until_mid_job(system: System, job_id: str, *, completed: int = 3) -> int:
    """Until at least `completed` files are done, and not all: where the fault goes."""
    deadline = time.monotonic() + 120
    succeeded = 0
    while time.monotonic() < deadline:
        succeeded = job_status(system.gateway.url, system.token, job_id)["succeeded"]
        if succeeded >= completed:
            break
        time.sleep(0.05)
    assert completed <= succeeded < FILES, (
        f"the fault must land mid-job (completed={succeeded})\n{system.logs()}"
    )
    return int(succeeded)


def wait_for_finished_job(
    system: System, job_id: str, *, timeout: float = RECOVERY_SECONDS
) -> dict[str, Any]:
    """The job's status once it is done or in error. The status API may answer an error (or
    not at all) while an engine it needs is still coming back: asked again until `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status = job_status(system.gateway.url, system.token, job_id)
        except httpx.HTTPError as error:
            last = error
        else:
            last = {k: v for k, v in status.items() if k != "items"}
            if status["status"] in ("done", "error"):
                return status
        time.sleep(0.3)
    raise AssertionError(
        f"job {job_id} not finished {timeout:.0f}s after the fault: {last}\n{system.logs()}"
    )


def assert_every_file_completed_once(system: System, job_id: str, accepted: set[str]) -> None:
    """Every accepted file `completed`, none still processing, exact counts, and exactly one
    catalogue record per file."""
    final = wait_for_finished_job(system, job_id)
    statuses = {item["item_id"]: item["status"] for item in final["items"]}
    not_completed = {item_id: s for item_id, s in statuses.items() if s != "completed"}
    assert not not_completed, f"{not_completed}\n{system.logs()}"
    assert set(statuses) == accepted
    assert final["status"] == "done", final
    counts = {k: final[k] for k in ("total", "succeeded", "failed", "processing", "queued")}
    assert counts == {"total": FILES, "succeeded": FILES, "failed": 0, "processing": 0, "queued": 0}
    records = list(system.database["uploads"].find({"job_id": job_id}))
    assert sorted(r["item_id"] for r in records) == sorted(accepted), (
        f"the catalogue must hold each file exactly once, got {len(records)} records"
    )


def test_kafka_killed_mid_job_and_restarted_every_file_completes_exactly_once(
    system: System,
) -> None:
    job_id, accepted = upload_job(system, seed=1000)
    wait_until_mid_job(system, job_id)
    kafka = system.engines.kafka
    kafka.kill()
    time.sleep(5)  # down long enough for every service to notice
    kafka.restart(timeout=120)
    assert_every_file_completed_once(system, job_id, accepted)


def test_minio_down_for_20s_mid_job_refuses_new_uploads_cleanly_and_the_job_completes(
    system: System,
) -> None:
    job_id, accepted = upload_job(system, seed=2000)
    users = system.database["users"]
    claims = system.database["file_hashes"]
    quota_used = users.find_one({"_id": USER})["file_upload_count"]
    assert quota_used == FILES
    wait_until_mid_job(system, job_id)

    minio = system.engines.minio
    minio.kill()
    down_since = time.monotonic()
    late = fundus_image(size=IMAGE_SIDE, seed=2999)
    refused = upload(system.gateway.url, system.token, [("late.jpg", late, "image/jpeg")])
    assert refused.status_code == 503, refused.text
    assert refused.json() == {"detail": STORAGE_UNAVAILABLE}
    time.sleep(max(0.0, 20 - (time.monotonic() - down_since)))
    minio.restart()

    assert_every_file_completed_once(system, job_id, accepted)
    # Nothing of the refused request remains: no raw object, no claim on its bytes, the
    # user's quota as before it, no upload left in flight (the periodic clean-up, every 2 s
    # here, has a few rounds to finish what the request could not give back at once).
    raw = [o.object_name for o in system.object_store().list_objects("raw", recursive=True)]
    assert len(raw) == FILES and all(key.startswith(f"{job_id}/") for key in raw), raw
    assert claims.count_documents({}) == FILES
    assert claims.count_documents({"job_id": {"$ne": job_id}}) == 0

    def leftovers() -> dict[str, int]:
        return {
            "quota used": users.find_one({"_id": USER})["file_upload_count"],
            "uploads in flight": system.database["upload_requests"].count_documents({}),
        }

    expected = {"quota used": quota_used, "uploads in flight": 0}
    deadline = time.monotonic() + 15  # a few rounds of the periodic clean-up
    while leftovers() != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    gateway_said = [
        line
        for line in system.gateway.log_path.read_text().splitlines()
        if "give back" in line or "gave back" in line
    ]
    assert leftovers() == expected, f"the refused upload left something behind: {gateway_said}"


def test_ferretdb_restarted_mid_job_every_file_completes_exactly_once(system: System) -> None:
    job_id, accepted = upload_job(system, seed=3000)
    wait_until_mid_job(system, job_id)
    ferretdb = system.engines.ferretdb
    ferretdb.kill()
    time.sleep(5)
    ferretdb.restart()
    assert_every_file_completed_once(system, job_id, accepted)


def test_job_tracker_killed_mid_job_and_restarted_every_file_completes_exactly_once(
    system: System,
) -> None:
    job_id, accepted = upload_job(system, seed=4000)
    wait_until_mid_job(system, job_id)
    tracker = system.processes["job-tracker"]
    tracker.kill()
    time.sleep(2)
    tracker.start(ready_timeout=START_SECONDS)
    assert_every_file_completed_once(system, job_id, accepted)
