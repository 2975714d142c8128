"""Real Kafka, MinIO and FerretDB engines for tests and local runs, without Docker.

The engines are built once into a cache outside the repository by ``infra/engines/build.sh``
(see :func:`ensure_built`) and started here as plain child processes, each on free loopback
ports chosen at start, each in its own work directory (configuration, data and log files):

- Kafka 4.x, KRaft single node (broker + controller): ``java -cp 'libs/*' kafka.Kafka``;
- MinIO: ``minio server``;
- FerretDB v1 with its SQLite backend: ``ferretdb-wrapper`` (embeds the ``ferretdb`` Go package).

Nothing happens at import time. Typical use::

    engines = start_all(tmp_dir)
    try:
        os.environ.update(engines.env())
        ...
    finally:
        engines.stop()
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

__all__ = [
    "EngineStartError",
    "Engines",
    "EnginesUnavailable",
    "FerretDBEngine",
    "KafkaEngine",
    "MinioEngine",
    "RunningEngine",
    "build_script",
    "cache_dir",
    "ensure_built",
    "is_built",
    "start_all",
    "start_ferretdb",
    "start_kafka",
    "start_minio",
]

# The checkout this package lives in (testkit/testkit/engines.py): it is never installed
# elsewhere, because it is a development dependency of this workspace only.
REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
MINIO_ACCESS_KEY = "minioadmin"
MINIO_SECRET_KEY = "minioadmin"

KAFKA_START_TIMEOUT = 120.0
MINIO_START_TIMEOUT = 60.0
FERRETDB_START_TIMEOUT = 60.0
_PORT_ATTEMPTS = 3


class EnginesUnavailable(RuntimeError):
    """The engines are not built and could not be built (no toolchain, no network, ...)."""


class EngineStartError(RuntimeError):
    """An engine did not start or did not answer in time."""


# --------------------------------------------------------------------------------------------
# Cache and build
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$UPLOADER_ENGINES_CACHE``, else ``~/.cache/imaging-uploader/engines``."""
    env = os.environ.get("UPLOADER_ENGINES_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "imaging-uploader" / "engines"


def build_script() -> Path:
    """``infra/engines/build.sh`` of the repository this package is imported from."""
    return REPO / "infra" / "engines" / "build.sh"


def _minio_bin() -> Path:
    return cache_dir() / "bin" / "minio"


def _ferretdb_bin() -> Path:
    return cache_dir() / "bin" / "ferretdb-wrapper"


def _kafka_libs() -> Path:
    return cache_dir() / "kafka" / "libs"


def is_built() -> bool:
    """Whether the three engines' artefacts exist in the cache."""
    return (
        _minio_bin().is_file()
        and _ferretdb_bin().is_file()
        and any(_kafka_libs().glob("kafka_2.13-*.jar"))
    )


def ensure_built() -> None:
    """Run ``build.sh`` (a no-op for what is already built); raise EnginesUnavailable on failure.

    A cold build of MinIO takes minutes; the build's progress goes to stderr.
    """
    script = build_script()
    if not script.is_file():
        raise EnginesUnavailable(f"engines build script not found: {script}")
    lines: list[str] = []
    try:
        with subprocess.Popen(
            ["bash", str(script)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        ) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:  # stream the progress: a cold build takes minutes
                lines.append(line.rstrip("\n"))
                sys.stderr.write(line)
                sys.stderr.flush()
            returncode = proc.wait()
    except OSError as exc:
        raise EnginesUnavailable(f"cannot run {script}: {exc}") from exc
    if returncode != 0 or not is_built():
        tail = "\n".join(lines[-15:])
        raise EnginesUnavailable(
            f"building the engines failed ({script} exited {returncode}; "
            f"cache {cache_dir()}):\n{tail}"
        )


# --------------------------------------------------------------------------------------------
# Running engines
# --------------------------------------------------------------------------------------------


@dataclass
class RunningEngine:
    """One engine process. ``stop()`` is idempotent."""

    name: str
    process: subprocess.Popen[bytes]
    host: str
    port: int
    workdir: Path
    log_path: Path
    # How it was launched, set once it answered (see _make_restartable): for restart().
    _respawn: Callable[[], subprocess.Popen[bytes]] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _is_ready: Callable[[], bool] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def address(self) -> str:
        """``host:port`` of the engine's client listener."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def terminate(self) -> None:
        """Send SIGTERM to the engine's process group (it has its own session)."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL."""
        self.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def kill(self) -> None:
        """SIGKILL the engine's process group and reap it: a crash, no clean shutdown."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def restart(self, timeout: float = 60.0) -> None:
        """Run the engine again as it was launched (same command, ports and work directory,
        so its data is kept), stopping it first if it runs; wait until it answers.

        Like ``start_*``, call it from a long-lived thread when ``bind_to_parent`` is on.
        """
        if self._respawn is None or self._is_ready is None:
            raise EngineStartError(f"{self.name}: not started by start_*(), cannot restart")
        self.stop()
        self.process = self._respawn()
        deadline = time.monotonic() + timeout
        while not self._is_ready():
            if self.process.poll() is not None:
                raise EngineStartError(
                    f"{self.name} exited with code {self.process.returncode} while restarting "
                    f"on {self.address}; log tail:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"{self.name} did not answer on {self.address} within {timeout:.0f}s of a "
                    f"restart; log tail:\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)


@dataclass
class KafkaEngine(RunningEngine):
    controller_port: int
    cluster_id: str

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:port`` for ``bootstrap_servers``."""
        return self.address

    def log_tail(self, lines: int = 40) -> str:
        out = _tail(self.workdir / "stdout.log", lines)
        main = _tail(self.log_path, lines)
        return f"{main}\n--- stdout/stderr ---\n{out}" if out.strip() else main


@dataclass
class MinioEngine(RunningEngine):
    access_key: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:port`` (no scheme, as the ``minio`` SDK wants it; plain HTTP)."""
        return self.address


@dataclass
class FerretDBEngine(RunningEngine):
    @property
    def url(self) -> str:
        """``mongodb://127.0.0.1:port/``."""
        return f"mongodb://{self.address}/"


@dataclass
class Engines:
    """The three engines together."""

    kafka: KafkaEngine
    minio: MinioEngine
    ferretdb: FerretDBEngine
    workdir: Path

    def all(self) -> tuple[RunningEngine, ...]:
        return (self.kafka, self.minio, self.ferretdb)

    def env(self, *, select_backends: bool = False) -> dict[str, str]:
        """The ``UPLOADER_*`` settings (kit/kit/settings.py) that point the app at these engines.

        With ``select_backends`` also ``UPLOADER_BUS=kafka``, ``UPLOADER_STORE=s3`` and
        ``UPLOADER_DB=mongo``, so the app actually uses them instead of its embedded defaults.
        """
        env = {
            "UPLOADER_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "UPLOADER_S3_ENDPOINT": self.minio.endpoint,
            "UPLOADER_S3_ACCESS_KEY": self.minio.access_key,
            "UPLOADER_S3_SECRET_KEY": self.minio.secret_key,
            "UPLOADER_MONGO_URL": self.ferretdb.url,
        }
        if select_backends:
            env |= {"UPLOADER_BUS": "kafka", "UPLOADER_STORE": "s3", "UPLOADER_DB": "mongo"}
        return env

    def stop(self, timeout: float = 20.0) -> None:
        """Stop all three (SIGTERM to all first, so they shut down in parallel)."""
        _stop_all(list(self.all()), timeout)

    def __enter__(self) -> Engines:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# Public start functions
# --------------------------------------------------------------------------------------------


def start_kafka(
    workdir: Path, *, timeout: float = KAFKA_START_TIMEOUT, bind_to_parent: bool = True
) -> KafkaEngine:
    """Start a single-node KRaft Kafka in ``workdir/kafka`` and wait until it serves metadata.

    ``bind_to_parent`` (Linux): the engine gets SIGTERM when the *thread* that started it ends,
    e.g. when the test process is killed; so call this from a long-lived thread (not from
    ``asyncio.to_thread``), or pass False.
    """
    return _start(_Kafka(workdir, bind_to_parent), timeout)


def start_minio(
    workdir: Path, *, timeout: float = MINIO_START_TIMEOUT, bind_to_parent: bool = True
) -> MinioEngine:
    """Start MinIO in ``workdir/minio`` and wait until ``/minio/health/ready`` answers 200."""
    return _start(_Minio(workdir, bind_to_parent), timeout)


def start_ferretdb(
    workdir: Path, *, timeout: float = FERRETDB_START_TIMEOUT, bind_to_parent: bool = True
) -> FerretDBEngine:
    """Start FerretDB (SQLite backend) in ``workdir/ferretdb`` and wait until it answers a ping."""
    return _start(_FerretDB(workdir, bind_to_parent), timeout)


def start_all(workdir: Path, *, bind_to_parent: bool = True) -> Engines:
    """Start Kafka, MinIO and FerretDB concurrently; stop them all if one fails to start."""
    if not is_built():
        raise EnginesUnavailable(
            f"engines are not built in {cache_dir()}; run {build_script()} "
            "(or uploader.engines.ensure_built())"
        )
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    specs: tuple[_Spec[MinioEngine], _Spec[FerretDBEngine], _Spec[KafkaEngine]] = (
        _Minio(workdir, bind_to_parent),
        _FerretDB(workdir, bind_to_parent),
        _Kafka(workdir, bind_to_parent),
    )
    timeouts = (MINIO_START_TIMEOUT, FERRETDB_START_TIMEOUT, KAFKA_START_TIMEOUT)
    launched: list[RunningEngine] = []
    try:
        # Launch all three first (each takes a moment to boot), then wait for each in turn.
        minio = specs[0].launch()
        launched.append(minio)
        ferret = specs[1].launch()
        launched.append(ferret)
        kafka = specs[2].launch()
        launched.append(kafka)
        minio = _await(specs[0], minio, timeouts[0], launched)
        ferret = _await(specs[1], ferret, timeouts[1], launched)
        kafka = _await(specs[2], kafka, timeouts[2], launched)
    except BaseException:
        _stop_all(launched, 10.0)
        raise
    return Engines(kafka=kafka, minio=minio, ferretdb=ferret, workdir=workdir)


# --------------------------------------------------------------------------------------------
# Engine specifications
# --------------------------------------------------------------------------------------------


E = TypeVar("E", bound=RunningEngine)


class _Spec(Generic[E]):
    """How to launch one engine and how to tell it is ready."""

    name: str

    def __init__(self, workdir: Path, bind_to_parent: bool) -> None:
        self.root = Path(workdir).resolve() / self.name
        self.bind_to_parent = bind_to_parent

    def launch(self) -> E:
        raise NotImplementedError

    def ready(self, engine: E) -> bool:
        raise NotImplementedError

    def _fresh_dir(self) -> Path:
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        return self.root

    def _popen(
        self, argv: list[str], log: Path, env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        preexec: Callable[[], None] | None = _die_with_parent if self.bind_to_parent else None
        self.last_launch = (argv, log, env, cwd)  # for RunningEngine.restart()
        with log.open("ab") as out:
            try:
                return subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec,  # only prctl(), see _die_with_parent
                )
            except OSError as exc:
                raise EngineStartError(f"{self.name}: cannot run {argv[0]}: {exc}") from exc


class _Kafka(_Spec[KafkaEngine]):
    name = "kafka"

    def launch(self) -> KafkaEngine:
        root = self._fresh_dir()
        libs = _kafka_libs()
        if not any(libs.glob("kafka_2.13-*.jar")):
            raise EnginesUnavailable(f"Kafka is not built ({libs}); run {build_script()}")
        java = _java()
        port, ctrl = _free_ports(2)
        cluster_id = _kafka_cluster_id()
        data = root / "data"
        props = root / "server.properties"
        props.write_text(_KAFKA_PROPERTIES.format(host=HOST, port=port, ctrl=ctrl, data=data))
        log4j = root / "log4j2.xml"
        log4j.write_text(_KAFKA_LOG4J2)
        jvm = [
            java,
            "-Xms128m",
            "-Xmx512m",
            "-XX:+UseSerialGC",
            # C1 only: halves the JVM's start-up on 2 cores; append -XX:TieredStopAtLevel=4
            # to UPLOADER_KAFKA_JAVA_OPTS for full JIT (e.g. for benchmarks).
            "-XX:TieredStopAtLevel=1",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={root}",
            f"-Dlog4j2.configurationFile={log4j}",
            *os.environ.get("UPLOADER_KAFKA_JAVA_OPTS", "").split(),
            "-cp",
            str(libs / "*"),
        ]
        fmt_argv = [*jvm, "kafka.tools.StorageTool", "format", "-t", cluster_id]
        fmt = subprocess.run(
            [*fmt_argv, "-c", str(props), "--ignore-formatted"],
            cwd=root,
            env=_child_env({}),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if fmt.returncode != 0:
            raise EngineStartError(
                f"kafka: formatting the KRaft storage failed (exit {fmt.returncode}):\n"
                f"{fmt.stdout[-3000:]}{fmt.stderr[-3000:]}"
            )
        stdout_log = root / "stdout.log"
        process = self._popen([*jvm, "kafka.Kafka", str(props)], stdout_log, _child_env({}), root)
        return KafkaEngine(
            name=self.name,
            process=process,
            host=HOST,
            port=port,
            workdir=root,
            log_path=root / "kafka.log",
            controller_port=ctrl,
            cluster_id=cluster_id,
        )

    def ready(self, engine: KafkaEngine) -> bool:
        return _kafka_metadata_has_broker(engine.host, engine.port)


class _Minio(_Spec[MinioEngine]):
    name = "minio"

    def launch(self) -> MinioEngine:
        root = self._fresh_dir()
        binary = _minio_bin()
        if not binary.is_file():
            raise EnginesUnavailable(f"MinIO is not built ({binary}); run {build_script()}")
        port, console = _free_ports(2)
        env = _child_env(
            {
                "MINIO_ROOT_USER": MINIO_ACCESS_KEY,
                "MINIO_ROOT_PASSWORD": MINIO_SECRET_KEY,
                "MINIO_BROWSER": "off",
                "MINIO_UPDATE": "off",
                "MINIO_CI_CD": "1",
            }
        )
        log = root / "minio.log"
        argv = [
            str(binary),
            "server",
            "--quiet",
            "--address",
            f"{HOST}:{port}",
            "--console-address",
            f"{HOST}:{console}",
            str(root / "data"),
        ]
        process = self._popen(argv, log, env, root)
        return MinioEngine(
            name=self.name,
            process=process,
            host=HOST,
            port=port,
            workdir=root,
            log_path=log,
            access_key=MINIO_ACCESS_KEY,
            secret_key=MINIO_SECRET_KEY,
        )

    def ready(self, engine: MinioEngine) -> bool:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"http://{engine.address}/minio/health/ready", timeout=2) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError):
            return False


class _FerretDB(_Spec[FerretDBEngine]):
    name = "ferretdb"

    def launch(self) -> FerretDBEngine:
        root = self._fresh_dir()
        binary = _ferretdb_bin()
        if not binary.is_file():
            raise EnginesUnavailable(f"FerretDB is not built ({binary}); run {build_script()}")
        (port,) = _free_ports(1)
        env = _child_env({"FERRETDB_TELEMETRY": "disable", "DO_NOT_TRACK": "1"})
        log = root / "ferretdb.log"
        argv = [
            str(binary),
            "--listen-addr",
            f"{HOST}:{port}",
            "--state-dir",
            str(root / "state"),
            "--log-level",
            "warn",
        ]
        process = self._popen(argv, log, env, root)
        return FerretDBEngine(
            name=self.name, process=process, host=HOST, port=port, workdir=root, log_path=log
        )

    def ready(self, engine: FerretDBEngine) -> bool:
        if not _tcp_open(engine.host, engine.port):
            return False
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        client: MongoClient[dict[str, object]] = MongoClient(
            engine.url,
            directConnection=True,
            serverSelectionTimeoutMS=2000,
            connectTimeoutMS=2000,
        )
        try:
            reply = client.admin.command("ping")
            return bool(reply.get("ok"))
        except PyMongoError:
            return False
        finally:
            client.close()


# --------------------------------------------------------------------------------------------
# Start / wait / stop machinery
# --------------------------------------------------------------------------------------------


def _start(spec: _Spec[E], timeout: float) -> E:
    engine = spec.launch()
    launched: list[RunningEngine] = [engine]
    try:
        return _await(spec, engine, timeout, launched)
    except BaseException:
        _stop_all(launched, 10.0)
        raise


def _await(spec: _Spec[E], engine: E, timeout: float, launched: list[RunningEngine]) -> E:
    """Wait until ``engine`` is ready; relaunch on a lost port race (another process took it).

    ``launched`` is kept up to date so the caller can stop whatever is running on failure.
    """
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        deadline = time.monotonic() + timeout
        while True:
            if engine.process.poll() is not None:
                tail = engine.log_tail()
                if attempt < _PORT_ATTEMPTS and "address already in use" in tail.lower():
                    break  # relaunch on fresh ports
                raise EngineStartError(
                    f"{spec.name} exited with code {engine.process.returncode} while starting "
                    f"(port {engine.port}, workdir {engine.workdir}); log tail:\n{tail}"
                )
            if spec.ready(engine):
                _make_restartable(spec, engine)
                return engine
            if time.monotonic() > deadline:
                raise EngineStartError(
                    f"{spec.name} did not answer on {engine.address} within {timeout:.0f}s "
                    f"(workdir {engine.workdir}); log tail:\n{engine.log_tail()}"
                )
            time.sleep(0.2)
        launched.remove(engine)
        engine.stop(timeout=5)
        engine = spec.launch()
        launched.append(engine)
    raise AssertionError("unreachable")


def _make_restartable(spec: _Spec[E], engine: E) -> None:
    """Let ``engine.restart()`` run the same command again and wait as ``_await`` does."""
    argv, log, env, cwd = spec.last_launch
    engine._respawn = lambda: spec._popen(argv, log, env, cwd)
    engine._is_ready = lambda: spec.ready(engine)


def _stop_all(engines: list[RunningEngine], timeout: float) -> None:
    for engine in engines:
        with contextlib.suppress(OSError):
            engine.terminate()
    errors: list[BaseException] = []
    for engine in engines:
        try:
            engine.stop(timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(exc)
    if errors:
        raise EngineStartError(f"could not stop every engine: {errors}")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the parent thread dies.

    Only an async-signal-safe prctl(); libc is loaded by ctypes in the parent beforehand.
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _load_libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


_LIBC: ctypes.CDLL | None = None  # set lazily by _child_env (no work at import time)


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    global _LIBC
    if _LIBC is None:
        _LIBC = _load_libc()
    env = dict(os.environ)
    env.update(extra)
    return env


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on the loopback interface (all held until chosen)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise EnginesUnavailable("java not found (Kafka 4.x needs a Java >= 17 runtime)")
    return found


def _kafka_cluster_id() -> str:
    """A random cluster id in Kafka's format (URL-safe base64 of 16 bytes, no padding)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _kafka_metadata_has_broker(host: str, port: int) -> bool:
    """Send a Metadata v12 request (no topics); true when the answer lists at least one broker."""
    client_id = b"uploader-engines"
    header = struct.pack(">hhih", 3, 12, 7, len(client_id)) + client_id + b"\x00"
    # topics: null compact array, allow_auto_topic_creation, include_topic_authorized_operations,
    # tagged fields.
    body = b"\x00\x00\x00\x00"
    request = header + body
    try:
        with socket.create_connection((host, port), timeout=2) as sock:
            sock.settimeout(3)
            sock.sendall(struct.pack(">i", len(request)) + request)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            response = _recv_exact(sock, size)
    except (OSError, struct.error, ConnectionError):
        return False
    # correlation id (int32), header tagged fields (uvarint), throttle_time_ms (int32),
    # brokers: compact array length + 1 (uvarint).
    if len(response) < 10 or struct.unpack(">i", response[:4])[0] != 7:
        return False
    pos = 4
    _, pos = _uvarint(response, pos)
    pos += 4
    count_plus_one, _ = _uvarint(response, pos)
    return count_plus_one >= 2


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return value, pos


_KAFKA_PROPERTIES = """\
# Single-node KRaft Kafka for tests (written by testkit/testkit/engines.py).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@{host}:{ctrl}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctrl}
advertised.listeners=PLAINTEXT://{host}:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
num.partitions=1
auto.create.topics.enable=true
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
"""

_KAFKA_LOG4J2 = """\
<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by testkit.engines: WARN to kafka.log, plus the broker's start/stop lines. -->
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="${sys:kafka.logs.dir}/kafka.log">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
    <Logger name="kafka.server.KafkaRaftServer" level="INFO"/>
  </Loggers>
</Configuration>
"""
