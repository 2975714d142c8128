"""The distributed system for real: every service its own OS process, on Kafka, MinIO and
FerretDB (MongoDB wire protocol), with a second anonymizer sharing the work."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
from jsonschema import Draft202012Validator
from minio import Minio

from contracts.topics import ALL_TOPICS, ITEM_STATUS, UPLOADS_RECEIVED
from kit.docs_mongo import MongoDocuments
from testkit.harness import Process, cli, start_process, upload, uploader_env, wait_for_job
from testkit.synthetic import fundus_image

pytestmark = pytest.mark.engines
REPO = Path(__file__).resolve().parent.parent
WORKER_SERVICES = ("zip-extractor", "pdf-parser", "anonymizer", "ingest", "job-tracker")


@dataclass
class Distributed:
    env: dict[str, str]
    gateway: Process
    processes: dict[str, Process]
    token: str
    bootstrap: str


@pytest.fixture(scope="module")
def distributed(engines: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distributed]:
    tmp = tmp_path_factory.mktemp("distributed")
    env = uploader_env(
        tmp / "var",
        {
            **engines.env(select_backends=True),
            "UPLOADER_MONGO_DATABASE": "e2e_" + uuid.uuid4().hex[:8],
        },
    )
    cli(
        [
            "users",
            "create",
            "camp",
            "--role",
            "uploader",
            "--lab-unit",
            "city-retina-clinic",
            "--password",
            "camp-pass-1",
        ],
        env,
    )
    token = cli(["tokens", "create", "camp"], env).strip()
    processes: dict[str, Process] = {}
    try:
        for name in ("gateway", *WORKER_SERVICES):
            processes[name] = start_process(name, ["run", name], env=env, log_dir=tmp)
        processes["anonymizer-2"] = start_process(
            "anonymizer-2", ["run", "anonymizer"], env=env, log_dir=tmp
        )
        yield Distributed(
            env=env,
            gateway=processes["gateway"],
            processes=processes,
            token=token,
            bootstrap=engines.kafka.bootstrap,
        )
    finally:
        for process in processes.values():
            process.stop()


def processed_count(process: Process, *, service: str, topic: str) -> float:
    """The `uploader_events_total` counter of a process, for one service and topic."""
    metrics = httpx.get(process.url + "/metrics", timeout=5).text
    total = 0.0
    for match in re.finditer(r"^uploader_events_total\{([^}]*)\} (\S+)$", metrics, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if labels == {"service": service, "topic": topic, "outcome": "processed"}:
            total += float(match.group(2))
    return total


def test_twenty_files_through_six_processes_are_each_catalogued_exactly_once(
    distributed: Distributed,
) -> None:
    files = [
        (f"eye{i:02}.jpg", fundus_image(size=900, seed=500 + i), "image/jpeg") for i in range(20)
    ]
    response = upload(distributed.gateway.url, distributed.token, files)
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    final = wait_for_job(distributed.gateway.url, distributed.token, job_id, timeout=240)
    assert final["status"] == "done", final
    assert [i["status"] for i in final["items"]] == ["completed"] * 20

    async def catalogue() -> list[dict[str, Any]]:
        docs = MongoDocuments(
            url=distributed.env["UPLOADER_MONGO_URL"],
            database=distributed.env["UPLOADER_MONGO_DATABASE"],
        )
        try:
            return await docs.collection("uploads").find({"job_id": job_id})
        finally:
            await docs.close()

    records = asyncio.run(catalogue())
    assert len(records) == 20
    assert {r["item_id"] for r in records} == {i["item_id"] for i in final["items"]}
    assert len({r["md5"] for r in records}) == 20

    # Both members of the anonymizer group took a share of the partitions' work.
    shares = [
        processed_count(distributed.processes[name], service="anonymizer", topic=UPLOADS_RECEIVED)
        for name in ("anonymizer", "anonymizer-2")
    ]
    assert all(share > 0 for share in shares), shares
    assert sum(shares) >= 20


def test_an_outside_client_reads_item_status_events_that_match_the_published_schemas(
    distributed: Distributed,
) -> None:
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat, "kcat is installed by `make test` (Debian package kcat)"
    response = upload(
        distributed.gateway.url,
        distributed.token,
        [("kcat.jpg", fundus_image(size=400, seed=900), "image/jpeg")],
    )
    job_id = response.json()["job_id"]
    wait_for_job(distributed.gateway.url, distributed.token, job_id)
    done = subprocess.run(
        [
            kcat,
            "-C",
            "-b",
            distributed.bootstrap,
            "-t",
            ITEM_STATUS,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%k\t%s\n",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The topic is shared with other tests of the session; this job's messages are keyed by
    # its id, and every one of them must be valid.
    lines = [line.split("\t", 1) for line in done.stdout.splitlines() if "\t" in line]
    messages = [json.loads(value) for key, value in lines if key == job_id]
    assert len(messages) >= 4
    schemas = {p.stem: json.loads(p.read_text()) for p in (REPO / "docs/schemas").glob("*.json")}
    seen_types = set()
    for message in messages:
        schema = schemas[message["type"]]
        errors = list(Draft202012Validator(schema).iter_errors(message))
        assert errors == [], (message, errors[:3])
        seen_types.add(message["type"])
    assert seen_types == {
        "org.imaging-uploader.job.opened.v1",
        "org.imaging-uploader.item.status.v1",
    }
    assert any(m["subject"] == job_id for m in messages)


def test_a_remidio_export_through_six_processes_leaves_no_name_or_mrn_outside_the_vault(
    distributed: Distributed,
) -> None:
    from testkit.hostile_zip import mixed_archive
    from tests.test_zip_pipeline import export_with_report, phi_finder

    fop, (values, captures) = export_with_report(random.Random(8800))
    hostile, good, kinds = mixed_archive()
    auth = {"Authorization": f"Bearer {distributed.token}"}
    response = httpx.post(
        distributed.gateway.url + "/api/zip/upload",
        headers=auth,
        data={"hospital": "city-general", "lab_unit": "city-retina-clinic"},
        files=[
            ("files", (fop.file_name, fop.data, "application/zip")),
            ("files", ("hostile.zip", hostile, "application/zip")),
        ],
        timeout=120,
    )
    assert response.status_code == 201, response.text
    job_id = response.json()["job_id"]
    final = wait_for_job(distributed.gateway.url, distributed.token, job_id, timeout=240)
    entries = [i for i in final["items"] if i["parent_item_id"]]
    assert len(entries) == 5 + len(good) + len(kinds)
    assert sum(1 for i in entries if i["status"] == "completed") == 5 + len(good)
    assert sum(1 for i in entries if i["status"] == "error") == len(kinds)
    [visit] = httpx.get(
        distributed.gateway.url + f"/api/encounters?job_id={job_id}", headers=auth, timeout=10
    ).json()["encounters"]
    eyes = {i["captured_at"]: i["laterality"] for i in visit["images"]}
    assert (eyes[captures[0].captured_at], eyes[captures[1].captured_at]) == ("right", "left")
    [report] = visit["reports"]
    assert report["fields"]["age"]["value"] == values.age

    leaks = phi_finder(mrns=[fop.mrn], names=[fop.name])

    # Every topic, from the beginning, as an outside client reads it.
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    assert kcat
    for topic in [t.name for t in ALL_TOPICS]:
        dumped = subprocess.run(
            [
                kcat,
                "-C",
                "-b",
                distributed.bootstrap,
                "-t",
                topic,
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%k %h %s\n",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert leaks(dumped) == set(), topic
    # Every document but the vault's, and every object key.
    client = pymongo.MongoClient(distributed.env["UPLOADER_MONGO_URL"])
    try:
        database = client[distributed.env["UPLOADER_MONGO_DATABASE"]]
        for name in database.list_collection_names():
            text = json.dumps(list(database[name].find({})), default=str)
            if name == "phi_vault":
                assert fop.mrn in text
            else:
                assert leaks(text) == set(), name
    finally:
        client.close()
    minio = Minio(
        distributed.env["UPLOADER_S3_ENDPOINT"],
        access_key=distributed.env["UPLOADER_S3_ACCESS_KEY"],
        secret_key=distributed.env["UPLOADER_S3_SECRET_KEY"],
        secure=False,
    )
    keys = [
        o.object_name or ""
        for b in minio.list_buckets()
        for o in minio.list_objects(b.name, recursive=True)
    ]
    assert any(k.endswith(".pdf") for k in keys) and leaks(" ".join(keys)) == set()
    # And every line the six processes logged.
    for name, process in distributed.processes.items():
        assert leaks(process.log_tail(100_000)) == set(), name


def test_a_worker_stopped_with_sigterm_mid_job_finishes_its_event_and_hands_over(
    distributed: Distributed,
) -> None:
    files = [
        (f"t{i:02}.jpg", fundus_image(size=900, seed=700 + i), "image/jpeg") for i in range(12)
    ]
    response = upload(distributed.gateway.url, distributed.token, files)
    assert response.status_code == 201, response.text
    second = distributed.processes["anonymizer-2"]
    assert second.popen is not None
    second.popen.send_signal(signal.SIGTERM)
    assert second.popen.wait(timeout=40) == 0, second.log_tail()
    # What it had not committed goes to the other member of the group; nothing is lost.
    final = wait_for_job(
        distributed.gateway.url, distributed.token, response.json()["job_id"], timeout=240
    )
    assert final["status"] == "done" and final["succeeded"] == 12, final


def test_every_process_stops_cleanly_on_sigterm(distributed: Distributed) -> None:
    """Last in this module: `docker stop` / Kubernetes send SIGTERM; each process finishes
    the event in hand, closes its clients and exits 0."""
    for name, process in distributed.processes.items():
        if process.popen is not None and process.popen.poll() is None:
            assert process.stop() == 0, f"{name}:\n{process.log_tail()}"
