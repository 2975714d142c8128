"""A real ClamAV daemon (clamd) for tests, with a signature database the test writes.

Debian's ``clamav-daemon`` package provides ``/usr/sbin/clamd``; no official signature
database and no network are needed: the test gives the signatures (an ``.ndb`` body-signature
file, one ``Name:0:*:<hex>`` line each), so clamd loads a handful of signatures instead of
millions and answers ``PING`` within a fraction of a second of starting (measured: 0.1 s).

Each engine runs in its own work directory (``clamd.conf``, the database, its socket, log,
pid file and temporary files) in the foreground, as the current user (no ``User`` line: clamd
changes user only when told to, so a root test run stays root and owns everything it writes),
listening on a Unix socket in the work directory and on a free loopback TCP port. Like the
other engines (``testkit.engines``) it runs in a session of its own, gets SIGTERM when the
thread that started it ends, and reports a failed start with the tail of its log.

Typical use::

    engine = start_clamd(tmp_path, eicar_signatures())
    try:
        scanner = ClamdScanner(address=engine.address)
        ...
    finally:
        engine.stop()
"""

from __future__ import annotations

import re
import shutil
import socket
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testkit.engines import (
    HOST,
    EnginesUnavailable,
    RunningEngine,
    _child_env,
    _free_ports,
    _Spec,
    _start,
    _tail,
)

__all__ = [
    "CLAMD_START_TIMEOUT",
    "EICAR",
    "EICAR_SIGNATURE",
    "ClamdEngine",
    "clamd_binary",
    "eicar_signatures",
    "start_clamd",
]

CLAMD_START_TIMEOUT = 30.0
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
"""The standard 68-byte anti-virus test string (harmless; every scanner detects it)."""
EICAR_SIGNATURE = "Uploader.Test.EICAR"
"""The name `eicar_signatures` gives it. clamd reports signatures from a database that is not
signed by ClamAV with ``.UNOFFICIAL`` appended: ``Uploader.Test.EICAR.UNOFFICIAL``."""

_SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL
_SIGNATURE_NAME = re.compile(r"[A-Za-z0-9._-]+")
_CANDIDATES = ("/usr/sbin/clamd", "/usr/local/sbin/clamd", "/opt/homebrew/sbin/clamd")


def clamd_binary() -> Path | None:
    """Where clamd is installed (``$PATH``, then the usual sbin directories), or None."""
    found = shutil.which("clamd")
    if found:
        return Path(found)
    for candidate in _CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def eicar_signatures() -> dict[str, bytes]:
    """A database that detects the EICAR test string as `EICAR_SIGNATURE`."""
    return {EICAR_SIGNATURE: EICAR}


@dataclass
class ClamdEngine(RunningEngine):
    """A running clamd: `address` (``unix:<socket>``) and `tcp_address` (``tcp:127.0.0.1:N``)
    are what ``kit.scanner_clamd.ClamdScanner`` takes; `stop`, `kill`, `restart` as for the
    other engines (a restart keeps the database and both addresses)."""

    socket_path: Path
    stream_max_length: int

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    @property
    def tcp_address(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        out = _tail(self.workdir / "stdout.log", lines)
        main = _tail(self.log_path, lines)
        return f"{main}\n--- stdout/stderr ---\n{out}" if out.strip() else main


def start_clamd(
    workdir: Path,
    signatures: Mapping[str, bytes],
    *,
    stream_max_length: int = 100 * 1024 * 1024,
    timeout: float = CLAMD_START_TIMEOUT,
    bind_to_parent: bool = True,
) -> ClamdEngine:
    """Start clamd in ``workdir/clamd`` with a database of `signatures` (name → the bytes to
    find anywhere in a scanned stream) and wait until it answers ``PING`` with ``PONG``.

    `stream_max_length` is clamd's ``StreamMaxLength`` (bytes): a longer INSTREAM is refused
    with ``INSTREAM size limit exceeded. ERROR``. Raises EnginesUnavailable when clamd is not
    installed, EngineStartError when it does not start. As with ``testkit.engines``, call it
    from a long-lived thread when `bind_to_parent` is on.
    """
    if not signatures:
        raise ValueError("clamd will not start without at least one signature")
    for name, body in signatures.items():
        if not _SIGNATURE_NAME.fullmatch(name):
            raise ValueError(f"signature names are letters, digits, '.', '_', '-': {name!r}")
        if not body:
            raise ValueError(f"signature {name!r} has no bytes to find")
    if stream_max_length < 1:
        raise ValueError("stream_max_length must be positive")
    return _start(_Clamd(workdir, bind_to_parent, signatures, stream_max_length), timeout)


class _Clamd(_Spec[ClamdEngine]):
    name = "clamd"

    def __init__(
        self,
        workdir: Path,
        bind_to_parent: bool,
        signatures: Mapping[str, bytes],
        stream_max_length: int,
    ) -> None:
        super().__init__(workdir, bind_to_parent)
        self.signatures = dict(signatures)
        self.stream_max_length = stream_max_length

    def launch(self) -> ClamdEngine:
        binary = clamd_binary()
        if binary is None:
            raise EnginesUnavailable(
                "clamd is not installed (Debian: apt-get install clamav-daemon)"
            )
        root = self._fresh_dir()
        database, scratch = root / "database", root / "tmp"
        database.mkdir()
        scratch.mkdir()
        (database / "uploader.ndb").write_text(
            "".join(f"{name}:0:*:{body.hex()}\n" for name, body in self.signatures.items())
        )
        sock = root / "clamd.sock"
        if len(str(sock).encode()) > _SUN_PATH_MAX:  # a deep pytest tmp dir: go shorter
            sock = Path(tempfile.mkdtemp(prefix="clamd-")) / "clamd.sock"
        (port,) = _free_ports(1)
        log = root / "clamd.log"
        config = root / "clamd.conf"
        config.write_text(
            _CLAMD_CONF.format(
                socket=sock,
                host=HOST,
                port=port,
                database=database,
                scratch=scratch,
                log=log,
                pid=root / "clamd.pid",
                stream_max_length=self.stream_max_length,
            )
        )
        process = self._popen(
            [str(binary), "--config-file", str(config)], root / "stdout.log", _child_env({}), root
        )
        return ClamdEngine(
            name=self.name,
            process=process,
            host=HOST,
            port=port,
            workdir=root,
            log_path=log,
            socket_path=sock,
            stream_max_length=self.stream_max_length,
        )

    def ready(self, engine: ClamdEngine) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(2)
                conn.connect(str(engine.socket_path))
                conn.sendall(b"zPING\0")
                return conn.recv(16) == b"PONG\0"
        except OSError:
            return False


# Only what differs from clamd's defaults, plus the paths. Archive, PDF, OLE2, ... scanning
# stay on (the defaults), as in production.
_CLAMD_CONF = """\
# clamd for tests (written by testkit/testkit/clamd.py).
Foreground yes
LogFile {log}
LogTime yes
LogSyslog no
PidFile {pid}
TemporaryDirectory {scratch}
DatabaseDirectory {database}
LocalSocket {socket}
FixStaleSocket yes
TCPSocket {port}
TCPAddr {host}
StreamMaxLength {stream_max_length}
SelfCheck 0
"""
