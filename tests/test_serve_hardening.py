"""The process as deployed: private data files, and a deadline for request headers."""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path

from testkit.harness import start_process, uploader_env


def test_a_client_trickling_its_headers_is_cut_off_and_the_data_stays_private(
    tmp_path: Path,
) -> None:
    env = {**uploader_env(tmp_path / "var"), "UPLOADER_HTTP_HEADER_TIMEOUT_SECONDS": "1"}
    server = start_process("serve", ["serve"], env=env, log_dir=tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 8:
                try:
                    slow.sendall(b"X-Slow: 1\r\n")  # never the blank line that ends headers
                    if slow.recv(1, socket.MSG_DONTWAIT) == b"":
                        closed = True
                        break
                except BlockingIOError:
                    pass
                except OSError:
                    closed = True
                    break
                time.sleep(0.2)
            assert closed, "the server waited for the headers for ever"
            assert time.monotonic() - started < 4
        # A well-behaved client is served as before.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as quick:
            quick.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert quick.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
    data = tmp_path / "var"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("documents.sqlite3", "events.sqlite3", "session-secret"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
