"""1 GiB through the gateway's upload endpoint vs a direct object-store write of the same bytes.

Prints, for the embedded store (files on disk) and S3 (a real MinIO):
  - throughput of the upload through the gateway and of the direct write, and their ratio;
  - the gateway process's peak RSS growth during the upload (must stay under 100 MiB).
Run: uv run python bench/streaming_upload.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
from minio import Minio

from testkit.engines import ensure_built, start_minio
from testkit.harness import FORM, cli, start_process, uploader_env
from testkit.synthetic import large_jpeg_like

MiB = 1024 * 1024
RSS_LIMIT_MIB = 100


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.baseline) / MiB


def upload_through_gateway(
    work: Path, payload: Path, extra_env: dict[str, str]
) -> tuple[float, float]:
    """Seconds for the upload and the gateway's peak RSS growth in MiB."""
    env = uploader_env(work / "var", {"DIRECT_UPLOAD_MAX_FILE_SIZE_MB": "4096", **extra_env})
    cli(["users", "create", "bench", "--role", "admin", "--password", "bench-pass-1"], env)
    token = cli(["tokens", "create", "bench"], env).strip()
    gateway = start_process("gateway", ["run", "gateway"], env=env, log_dir=work)
    try:
        assert gateway.popen is not None
        httpx.get(gateway.url + "/readyz", timeout=5)
        with PeakRss(gateway.popen.pid) as rss, payload.open("rb") as handle:
            started = time.perf_counter()
            response = httpx.post(
                gateway.url + "/api/direct/upload",
                headers={"Authorization": f"Bearer {token}"},
                data=FORM,
                files=[("files", ("big.jpg", handle, "image/jpeg"))],
                timeout=900,
            )
            seconds = time.perf_counter() - started
        body = response.json()
        if response.status_code != 201 or body["rejected"]:
            raise SystemExit(f"upload failed: {response.status_code} {body}")
    finally:
        gateway.stop()
    return seconds, rss.growth_mib


def direct_file_write(payload: Path, target: Path) -> float:
    """The embedded store's job done directly: the bytes on disk, durably (fsync), like a put."""
    started = time.perf_counter()
    with payload.open("rb") as source, target.open("wb") as sink:
        shutil.copyfileobj(source, sink, 1 * MiB)
        sink.flush()
        os.fsync(sink.fileno())
    return time.perf_counter() - started


def direct_s3_write(payload: Path, endpoint: str, access: str, secret: str) -> float:
    client = Minio(endpoint, access_key=access, secret_key=secret, secure=False)
    if not client.bucket_exists("baseline"):
        client.make_bucket("baseline")
    started = time.perf_counter()
    client.fput_object("baseline", "big.jpg", str(payload), part_size=16 * MiB)
    return time.perf_counter() - started


def report(name: str, size: int, ours: float, direct: float, growth: float) -> bool:
    ours_rate, direct_rate = size / MiB / ours, size / MiB / direct
    ok = growth < RSS_LIMIT_MIB
    print(
        f"{name:9} gateway {ours_rate:7.1f} MiB/s   direct write {direct_rate:7.1f} MiB/s   "
        f"ratio {ours_rate / direct_rate:5.2f}   gateway peak RSS growth {growth:6.1f} MiB "
        f"({'ok' if ok else 'OVER'} < {RSS_LIMIT_MIB} MiB)"
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mib * MiB
    ok = True
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        work = Path(tmp)
        payload = large_jpeg_like(work / "payload.jpg", size)
        print(f"payload: {size / MiB:.0f} MiB")

        (work / "fs").mkdir()
        direct = direct_file_write(payload, work / "fs-direct.bin")
        (work / "fs-direct.bin").unlink()
        ours, growth = upload_through_gateway(work / "fs", payload, {})
        ok &= report("embedded", size, ours, direct, growth)
        shutil.rmtree(work / "fs")

        ensure_built()
        minio = start_minio(work / "minio")
        try:
            direct = direct_s3_write(payload, minio.endpoint, minio.access_key, minio.secret_key)
            (work / "s3").mkdir()
            ours, growth = upload_through_gateway(
                work / "s3",
                payload,
                {
                    "UPLOADER_STORE": "s3",
                    "UPLOADER_S3_ENDPOINT": minio.endpoint,
                    "UPLOADER_S3_ACCESS_KEY": minio.access_key,
                    "UPLOADER_S3_SECRET_KEY": minio.secret_key,
                },
            )
            ok &= report("s3", size, ours, direct, growth)
        finally:
            minio.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
