"""A file far over the limit is refused while it streams, without the gateway holding it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import psutil

from testkit.harness import FORM, cli, start_process, uploader_env
from testkit.synthetic import large_jpeg_like

MiB = 1024 * 1024


def test_a_200_mb_file_is_refused_without_the_gateway_memory_growing(tmp_path: Path) -> None:
    env = uploader_env(tmp_path / "var")
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
    big = large_jpeg_like(tmp_path / "big.jpg", 200 * MiB)
    gateway = start_process("gateway", ["run", "gateway"], env=env, log_dir=tmp_path)
    try:
        assert gateway.popen is not None
        process = psutil.Process(gateway.popen.pid)
        # Warm the request path once so lazy imports don't count as growth.
        httpx.get(gateway.url + "/readyz", timeout=5)
        baseline = process.memory_info().rss
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            with big.open("rb") as handle:
                response = httpx.post(
                    gateway.url + "/api/direct/upload",
                    headers={"Authorization": f"Bearer {token}"},
                    data=FORM,
                    files=[("files", ("huge.jpg", handle, "image/jpeg"))],
                    timeout=300,
                )
        finally:
            done.set()
            sampler.join()
    finally:
        gateway.stop()
    assert response.status_code == 201, response.text
    assert response.json()["rejected"] == [
        {
            "item_id": response.json()["rejected"][0]["item_id"],
            "filename": "huge.jpg",
            "reason": "File too large (max 5MB)",
        }
    ]
    growth = (peak - baseline) / MiB
    assert growth < 40, f"gateway RSS grew {growth:.1f} MiB while refusing a 200 MiB file"
    raw = tmp_path / "var" / "objects" / "raw"
    assert not raw.exists() or not any(p.is_file() for p in raw.rglob("*"))
