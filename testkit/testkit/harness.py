"""Start the real `uploader` processes for system tests and talk to them like a client does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]  # the checkout: `uploader` runs from here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def uploader_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOADER_")}
    env.update(
        {
            "UPLOADER_DATA_DIR": str(data_dir),
            "UPLOADER_RETRY_BASE_SECONDS": "0.05",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


def cli(args: Sequence[str], env: Mapping[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "uploader", *args],
        env=dict(env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise RuntimeError(f"uploader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass
class Process:
    name: str
    args: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    _log: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, ready_timeout: float = 90) -> Process:
        """Launch it (again, after a kill or a stop: same port, log appended) and wait until
        it is ready."""
        self.launch()
        try:
            return self.wait_ready(ready_timeout)
        except BaseException:
            self.kill()
            raise

    def launch(self) -> Process:
        """Start the OS process without waiting for it (see `start_processes`)."""
        self._close_log()
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "uploader", *self.args, "--port", str(self.port)],
            env=self.env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self, ready_timeout: float = 90) -> Process:
        """Until `/readyz` answers 200; raises if the process exits or the time runs out."""
        return self._wait_ready(ready_timeout)

    def _wait_ready(self, ready_timeout: float) -> Process:
        assert self.popen is not None
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready in {ready_timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a power cut."""
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        if self.popen:
            self.popen.wait(timeout=30)
        self._close_log()

    def stop(self) -> int | None:
        self.terminate()
        return self._reap(timeout=40)

    def terminate(self) -> None:
        """SIGTERM (a graceful stop), without waiting for it."""
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def _reap(self, *, timeout: float) -> int | None:
        if self.popen:
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._close_log()
        return self.popen.returncode if self.popen else None

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


def start_process(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    ready_timeout: float = 90,
) -> Process:
    return Process(
        name=name,
        args=list(args),
        env=dict(env),
        port=free_port(),
        log_path=log_dir / f"{name}.log",
    ).start(ready_timeout=ready_timeout)


def start_processes(
    commands: Mapping[str, Sequence[str]],
    *,
    env: Mapping[str, str],
    log_dir: Path,
    ready_timeout: float = 90,
) -> dict[str, Process]:
    """Start several processes (name -> `uploader` arguments) at once, then wait for each to
    be ready: their start-ups (imports, connecting) overlap, which on 2 cores takes about half
    as long as one after the other. All are stopped if one does not come up."""
    processes = {
        name: Process(
            name=name,
            args=list(args),
            env=dict(env),
            port=free_port(),
            log_path=log_dir / f"{name}.log",
        )
        for name, args in commands.items()
    }
    try:
        for process in processes.values():
            process.launch()
        for process in processes.values():
            process.wait_ready(ready_timeout)
    except BaseException:
        for process in processes.values():
            process.kill()
        raise
    return processes


def stop_processes(processes: Iterable[Process], *, timeout: float = 40) -> None:
    """SIGTERM them all first, so they stop in parallel; then wait for each (SIGKILL after
    `timeout` seconds)."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    for process in processes:
        process._reap(timeout=timeout)


FORM = {
    "hospital": "city-general",
    "lab_unit": "city-retina-clinic",
    "camera": "remidio-fop",
    "disease": "dr",
    "area": "left-eye",
    "mydriatic": "false",
}


def upload(
    base_url: str,
    token: str,
    files: Sequence[tuple[str, bytes, str]],
    form: Mapping[str, str] = FORM,
) -> httpx.Response:
    return httpx.post(
        base_url + "/api/direct/upload",
        headers={"Authorization": f"Bearer {token}"},
        data=dict(form),
        files=[("files", f) for f in files],
        timeout=120,
    )


def job_status(base_url: str, token: str, job_id: str) -> dict[str, Any]:
    response = httpx.get(
        f"{base_url}/api/upload-jobs/{job_id}/status",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


def wait_for_job(
    base_url: str,
    token: str,
    job_id: str,
    *,
    timeout: float = 180,
    until: Sequence[str] = ("done", "error"),
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = job_status(base_url, token, job_id)
        if status["status"] in until:
            return status
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} still {status.get('status')}: {status}")
