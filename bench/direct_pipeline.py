"""200 synthetic 2866x2866 fundus JPEGs from upload to `done`, vs the same anonymize-and-store
work in a plain loop in one process, measured in the same run.

Prints images per second for: the plain loop (baseline), the embedded system (`uploader serve`)
and the distributed system (every service its own process on Kafka, MinIO and FerretDB, two
anonymizers), each as a ratio of the baseline.
Run: uv run python bench/direct_pipeline.py [--images 200] [--size 2866]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

from anonymizer.fundus import anonymize_fundus
from testkit.engines import ensure_built, start_all
from testkit.harness import Process, cli, start_process, upload, uploader_env, wait_for_job
from testkit.synthetic import fundus_image

BATCH = 100  # DIRECT_UPLOAD_MAX_FILES default


def make_images(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"fundus{i:03}.jpg"
        path.write_bytes(fundus_image(size=size, seed=10_000 + i))
        paths.append(path)
    return paths


def plain_loop(images: list[Path], out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for path in images:
        clean = anonymize_fundus(path.read_bytes(), output_format="auto")
        (out / f"{path.stem}.jpg").write_bytes(clean.image)
        (out / f"{path.stem}.thumb.jpg").write_bytes(clean.thumbnail)
    return time.perf_counter() - started


def through_system(images: list[Path], gateway: Process, token: str) -> float:
    started = time.perf_counter()
    jobs = []
    for start in range(0, len(images), BATCH):
        files = [(p.name, p.read_bytes(), "image/jpeg") for p in images[start : start + BATCH]]
        response = upload(gateway.url, token, files)
        if response.status_code != 201 or response.json()["rejected"]:
            raise SystemExit(f"upload refused: {response.status_code} {response.text[:500]}")
        jobs.append(response.json()["job_id"])
    for job_id in jobs:
        final = wait_for_job(gateway.url, token, job_id, timeout=1800)
        if final["status"] != "done":
            raise SystemExit(f"job {job_id} ended {final['status']}: {final['message']}")
    return time.perf_counter() - started


def site(env: dict[str, str], count: int) -> str:
    cli(
        [
            "users",
            "create",
            "bench",
            "--role",
            "uploader",
            "--lab-unit",
            "city-retina-clinic",
            "--password",
            "bench-pass-1",
            "--quota",
            str(count),
        ],
        env,
    )
    return cli(["tokens", "create", "bench"], env).strip()


def embedded(work: Path, images: list[Path]) -> float:
    env = uploader_env(work / "var")
    token = site(env, len(images))
    server = start_process("serve", ["serve"], env=env, log_dir=work)
    try:
        return through_system(images, server, token)
    finally:
        server.stop()


def distributed(work: Path, images: list[Path]) -> float:
    ensure_built()
    engines = start_all(work / "engines")
    processes: list[Process] = []
    try:
        database = "bench_" + uuid.uuid4().hex[:6]
        env = uploader_env(
            work / "var", {**engines.env(select_backends=True), "UPLOADER_MONGO_DATABASE": database}
        )
        token = site(env, len(images))
        names = [
            "gateway",
            "zip-extractor",
            "pdf-parser",
            "anonymizer",
            "anonymizer",
            "ingest",
            "job-tracker",
        ]
        for index, name in enumerate(names):
            processes.append(start_process(f"{name}-{index}", ["run", name], env=env, log_dir=work))
        return through_system(images, processes[0], token)
    finally:
        for process in processes:
            process.stop()
        engines.stop()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=2866)
    parser.add_argument("--skip-distributed", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        work = Path(tmp)
        images = make_images(work / "images", args.images, args.size)
        n = len(images)
        baseline = plain_loop(images, work / "loop")
        print(f"{n} images of {args.size}x{args.size}")
        print(f"plain loop   {n / baseline:6.2f} images/s  (baseline)")
        seconds = embedded(work / "embedded", images)
        print(f"embedded     {n / seconds:6.2f} images/s  ratio {baseline / seconds:5.2f}")
        if not args.skip_distributed:
            seconds = distributed(work / "distributed", images)
            print(f"distributed  {n / seconds:6.2f} images/s  ratio {baseline / seconds:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
