"""The test clamd: started from a database the test writes, answering, restartable."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from testkit.clamd import ClamdEngine, eicar_signatures, start_clamd


def ping(engine: ClamdEngine) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5)
        conn.connect(str(engine.socket_path))
        conn.sendall(b"zPING\0")
        return conn.recv(16)


@pytest.mark.engines
def test_clamd_starts_within_seconds_and_survives_a_kill_and_restart(
    clamd: ClamdEngine, tmp_path: Path
) -> None:
    started = time.monotonic()
    engine = start_clamd(tmp_path, eicar_signatures(), stream_max_length=1 << 20)
    try:
        assert time.monotonic() - started < 5
        assert engine.address == f"unix:{engine.socket_path}"
        assert engine.tcp_address.startswith("tcp:127.0.0.1:")
        assert ping(engine) == b"PONG\0"
        assert "StreamMaxLength 1048576" in (engine.workdir / "clamd.conf").read_text()
        engine.kill()
        assert not engine.running()
        engine.restart()
        assert ping(engine) == b"PONG\0"
    finally:
        engine.stop()
    assert not engine.running()


@pytest.mark.parametrize(
    "signatures", [{}, {"has space": b"x"}, {"Name:colon": b"x"}, {"Empty": b""}]
)
def test_a_database_clamd_could_not_load_is_refused_before_starting(
    signatures: dict[str, bytes], tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        start_clamd(tmp_path, signatures)
