"""The read APIs at 1k, 10k and 100k catalogued images, on the embedded backend.

Seeds the read models through the adapters (catalogue records, open grading-queue entries,
job records and job statuses: 10 images a job, three lab units, two uploaders), then asks
each endpoint the way the pages do, in process (httpx over ASGI: the app and the adapters,
no network). Prints each endpoint's p50 and p95 per size, the ratio of 100k to 1k (goal:
<= 1.5) and whether p95 at 100k is under 50 ms. Then, at the largest size, `uploader serve`
runs on the seeded data and a one-image upload's p95 is measured alone and while two other
processes poll the grading queue as fast as they can (a slow read must not stall writes), as
a ratio of the two.
Run: uv run python bench/read_scale.py [--sizes 1000 10000 100000] [--repeat 60]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from contracts.events import DirectUploadMetadata, ObjectRef
from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.jobs import JOBS, JobItem, JobRecord
from gateway.settings import GatewaySettings
from ingest.read_model import CATALOGUE, GRADING_QUEUE, CatalogueRecord, QueueEntry
from job_tracker.read_model import COLLECTION as JOB_STATUS
from job_tracker.read_model import ItemState, JobStatus
from testkit.harness import start_process, uploader_env
from testkit.synthetic import fundus_image
from uploader.bootstrap import SPECS, open_platform, prepare

LAB_UNITS = ("city-retina-clinic", "city-screening-camp", "riverside-outpatient")
HOSPITAL = {
    "city-retina-clinic": "city-general",
    "city-screening-camp": "city-general",
    "riverside-outpatient": "riverside-eye",
}
DISEASES = ("dr", "glaucoma", "amd")
PER_JOB = 5  # 200 jobs at 1k: a full page of 100 for each uploader at every size
BATCH = 2000
GOAL_RATIO, GOAL_P95_MS = 1.5, 50.0


def _ref(bucket: str, key: str) -> ObjectRef:
    return ObjectRef(
        bucket=bucket,
        key=key,
        size=100_000,
        md5="0" * 32,
        sha256="0" * 64,
        content_type="image/jpeg",
    )


def _documents(index: int) -> tuple[dict[str, Any], dict[str, Any], str]:
    job_id, item_id = f"job{index // PER_JOB:07}", f"item{index:08}"
    lab_unit = LAB_UNITS[index % len(LAB_UNITS)]
    at = f"2026-{1 + index % 12:02}-{1 + index % 28:02}T{index % 24:02}:00:{index % 60:02}"
    record = CatalogueRecord(
        item_id=item_id,
        job_id=job_id,
        uploader_id="camp" if index % 2 else "nurse",
        hospital_id=HOSPITAL[lab_unit],
        lab_unit_id=lab_unit,
        camera_id="remidio-fop",
        disease_id=DISEASES[index % 3],
        area_id="left-eye",
        mydriatic=False,
        raw=_ref("raw", f"{job_id}/{item_id}"),
        clean=_ref("clean", f"{job_id}/{item_id}.jpg"),
        thumbnail=_ref("clean", f"{job_id}/{item_id}.thumb.jpg"),
        md5=f"{index:032x}",
        sha256=f"{index:064x}",
        size=100_000,
        width=2866,
        height=2866,
        masked=True,
        ingested_at=at,
    )
    entry = QueueEntry(
        record_id=item_id,
        job_id=job_id,
        disease_id=record.disease_id,
        hospital_id=record.hospital_id,
        lab_unit_id=lab_unit,
        queued_at=at,
    )
    return record.document(item_id), entry.document(item_id), job_id


def _job_documents(job_index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    job_id = f"job{job_index:07}"
    items = [f"item{job_index * PER_JOB + i:08}" for i in range(PER_JOB)]
    lab_unit = LAB_UNITS[job_index % len(LAB_UNITS)]
    record = JobRecord(
        job_id=job_id,
        uploader="camp" if job_index % 2 else "nurse",
        created_at=f"2026-01-01T00:00:00.{job_index:07}",
        announced=True,
        metadata=DirectUploadMetadata(
            hospital_id=HOSPITAL[lab_unit],
            lab_unit_id=lab_unit,
            camera_id="remidio-fop",
            disease_id="dr",
            area_id="left-eye",
            mydriatic=False,
        ),
        items=tuple(JobItem(item_id=i, filename=f"{i}.jpg", size=100_000) for i in items),
    )
    status = JobStatus(
        job_id=job_id,
        kind="direct",
        item_ids=tuple(items),
        opened=True,
        items={i: ItemState(status="completed") for i in items},
        status="done",
        total=PER_JOB,
        completed_count=PER_JOB,
    )
    return (
        {"_id": job_id, **record.model_dump(mode="json")},
        {"_id": job_id, **status.model_dump(mode="json")},
    )


async def seed(platform: Any, start: int, stop: int) -> None:
    docs = platform.docs
    for first in range(start, stop, BATCH):
        rows = [_documents(i) for i in range(first, min(first + BATCH, stop))]
        await docs.collection(CATALOGUE).put_many([r[0] for r in rows])
        await docs.collection(GRADING_QUEUE).put_many([r[1] for r in rows])
        jobs = [
            _job_documents(j) for j in range(first // PER_JOB, min(first + BATCH, stop) // PER_JOB)
        ]
        await docs.collection(JOBS).put_many([j[0] for j in jobs])
        await docs.collection(JOB_STATUS).put_many([j[1] for j in jobs])


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def timed(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> float:
    started = time.perf_counter()
    response = await client.get(path, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    return elapsed


async def measure(
    client: httpx.AsyncClient,
    endpoints: dict[str, tuple[str, dict[str, str]]],
    *,
    repeat: int,
    jobs: int,
) -> dict[str, tuple[float, float]]:
    out = {}
    rng = random.Random(7)
    for name, (path, headers) in endpoints.items():
        samples = []
        for _ in range(repeat):
            concrete = path.replace("{job}", f"job{rng.randrange(jobs):07}")
            samples.append(await timed(client, concrete, headers))
        out[name] = (statistics.median(samples), percentile(samples, 0.95))
    return out


FORM = {
    "hospital": "city-general",
    "lab_unit": "city-retina-clinic",
    "camera": "remidio-fop",
    "disease": "dr",
    "area": "left-eye",
    "mydriatic": "false",
}
POLLER = """
import sys, httpx
url, token = sys.argv[1], sys.argv[2]
with httpx.Client(headers={"Authorization": "Bearer " + token}, timeout=60) as client:
    while True:
        client.get(url + "/api/grading/queue?limit=100").raise_for_status()
"""


def upload_p95(url: str, token: str, *, count: int, seed: int) -> float:
    samples = []
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        for i in range(count):
            image = fundus_image(size=256, seed=seed + i)
            started = time.perf_counter()
            response = client.post(
                url + "/api/direct/upload",
                data=FORM,
                files=[("files", (f"u{i}.jpg", image, "image/jpeg"))],
            )
            samples.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 201 and not response.json()["rejected"], response.text
    return percentile(samples, 0.95)


def contention(data_dir: Path, token: str, *, count: int) -> tuple[float, float]:
    """Upload p95 against a real `uploader serve`, alone and with two polling processes."""
    env = uploader_env(data_dir, {"MAX_FILES_PER_UPLOAD": "1000000"})
    server = start_process("serve", ["serve"], env=env, log_dir=data_dir)
    pollers: list[subprocess.Popen[bytes]] = []
    try:
        alone = upload_p95(server.url, token, count=count, seed=1)
        pollers = [
            subprocess.Popen([sys.executable, "-c", POLLER, server.url, token]) for _ in range(2)
        ]
        time.sleep(2)  # both polling at full speed
        busy = upload_p95(server.url, token, count=count, seed=10_000)
    finally:
        for poller in pollers:
            poller.kill()
            poller.wait()
        server.stop()
    return alone, busy


async def run(sizes: Sequence[int], repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="read-scale-") as tmp:
        settings = GatewaySettings(data_dir=Path(tmp), max_files_per_upload=1_000_000)
        platform = open_platform(settings)
        await prepare(platform, SPECS)
        accounts = Accounts(docs=platform.docs)
        await accounts.create_user(
            username="camp",
            role="uploader",
            password="pw-camp-1",
            lab_unit_ids=("city-retina-clinic",),
        )
        await accounts.create_user(username="boss", role="admin", password="pw-boss-1")
        tokens = {u: (await accounts.create_token(u))[0] for u in ("camp", "boss")}
        auth = {u: {"Authorization": f"Bearer {t}"} for u, t in tokens.items()}
        endpoints = {
            "grading queue, uploader": ("/api/grading/queue?limit=100", auth["camp"]),
            "grading queue, admin, dr": ("/api/grading/queue?disease=dr&limit=100", auth["boss"]),
            "recent jobs, admin": ("/api/jobs", auth["boss"]),
            "recent jobs, uploader": ("/api/jobs", auth["camp"]),
            "one job's status": ("/api/upload-jobs/{job}/status", auth["boss"]),
        }
        app = create_app(
            settings=settings, bus=platform.bus, store=platform.store, docs=platform.docs
        )
        results: dict[int, dict[str, tuple[float, float]]] = {}
        seeded = 0
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=120
        ) as client:
            for size in sizes:
                started = time.perf_counter()
                await seed(platform, seeded, size)
                seeded = size
                # Start-up work of a real process: the indexes (and their statistics).
                await prepare(platform, SPECS)
                print(
                    f"seeded {size:>7} images in {time.perf_counter() - started:6.1f} s", flush=True
                )
                await measure(client, endpoints, repeat=5, jobs=size // PER_JOB)  # warm up
                results[size] = await measure(
                    client, endpoints, repeat=repeat, jobs=size // PER_JOB
                )
        await platform.close()
        alone, busy = contention(Path(tmp), tokens["camp"], count=40)

    smallest, largest = min(sizes), max(sizes)
    print(
        f"\n{'endpoint':<26}"
        + "".join(f"{f'p50/p95 @{s // 1000}k':>18}" for s in sizes)
        + f"{'p95 ratio':>11}  goal"
    )
    for name in endpoints:
        cells = "".join(f"{results[s][name][0]:8.1f}/{results[s][name][1]:6.1f} ms" for s in sizes)
        ratio = results[largest][name][1] / results[smallest][name][1]
        ok = ratio <= GOAL_RATIO and results[largest][name][1] < GOAL_P95_MS
        print(f"{name:<26}{cells}{ratio:>10.2f}x  {'met' if ok else 'MISSED'}")
    print(
        f"\none-image upload p95 @{largest // 1000}k: {alone:.1f} ms alone, {busy:.1f} ms "
        f"while two clients poll the grading queue ({busy / alone:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(sorted(args.sizes), args.repeat))


if __name__ == "__main__":
    main()
