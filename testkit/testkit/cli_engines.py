"""`uploader engines up|down|status|env`: the real engines in the background for local runs.

``up`` builds the engines if needed (``infra/engines/build.sh``), starts Kafka, MinIO and
FerretDB detached from the shell on free loopback ports, records their pids and ports in
``<cache>/run/state.json`` and prints ``export UPLOADER_...=...`` lines on stdout, so that::

    eval "$(uploader engines up)"

points the app at them. Their files (configuration, data, logs) are under ``<cache>/run/current``
and are wiped by the next ``up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from testkit import engines as eng

__all__ = ["engines_app"]

engines_app = typer.Typer(
    help="Real Kafka, MinIO and FerretDB engines (no Docker) for local runs.",
    no_args_is_help=True,
)

# What each engine's command line contains: a recorded pid is only signalled if it still does.
_CMDLINE_MARKERS = {"kafka": "kafka.Kafka", "minio": "minio", "ferretdb": "ferretdb-wrapper"}


def _run_dir() -> Path:
    return eng.cache_dir() / "run"


def _state_file() -> Path:
    return _run_dir() / "state.json"


def _read_state() -> dict[str, Any] | None:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_state(state: dict[str, Any]) -> None:
    path = _state_file()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _alive(name: str, pid: int) -> bool:
    """Whether ``pid`` is still the engine ``name`` (not a zombie, not a reused pid)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child (in-process use)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return _CMDLINE_MARKERS[name] in cmdline


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((eng.HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in env.items())


def _stop_recorded(state: dict[str, Any], timeout: float = 20.0) -> None:
    procs: dict[str, Any] = state.get("engines", {})
    live = {n: int(p["pid"]) for n, p in procs.items() if _alive(n, int(p["pid"]))}
    for name, pid in live.items():
        typer.echo(f"stopping {name} (pid {pid})", err=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        live = {n: p for n, p in live.items() if _alive(n, p)}
        time.sleep(0.2)
    for name, pid in live.items():
        typer.echo(f"{name} (pid {pid}) ignored SIGTERM for {timeout:.0f}s: SIGKILL", err=True)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _all_alive(state: dict[str, Any]) -> bool:
    procs: dict[str, Any] = state.get("engines", {})
    return set(procs) == set(_CMDLINE_MARKERS) and all(
        _alive(n, int(p["pid"])) for n, p in procs.items()
    )


@engines_app.command()
def up(
    build: Annotated[
        bool, typer.Option("--build/--no-build", help="run infra/engines/build.sh first")
    ] = True,
    select_backends: Annotated[
        bool,
        typer.Option(
            "--select/--no-select",
            help="also export UPLOADER_BUS=kafka, UPLOADER_STORE=s3, UPLOADER_DB=mongo",
        ),
    ] = True,
) -> None:
    """Start Kafka, MinIO and FerretDB in the background; print the env exports."""
    state = _read_state()
    if state is not None and _all_alive(state):
        typer.echo("engines already running (uploader engines down to stop them)", err=True)
        typer.echo(_exports(_env_of(state, select_backends)))
        return
    if state is not None:
        _stop_recorded(state)  # leftovers of a half-dead previous run
        _state_file().unlink(missing_ok=True)
    if build:
        try:
            eng.ensure_built()
        except eng.EnginesUnavailable as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(1) from exc
    elif not eng.is_built():
        typer.echo(f"engines are not built; run {eng.build_script()}", err=True)
        raise typer.Exit(1)
    workdir = _run_dir() / "current"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    typer.echo(f"starting engines in {workdir}", err=True)
    started = time.monotonic()
    try:
        engines = eng.start_all(workdir, bind_to_parent=False)
    except (eng.EngineStartError, eng.EnginesUnavailable) as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    state = {
        "workdir": str(workdir),
        "started_at": time.time(),
        "engines": {
            e.name: {"pid": e.pid, "port": e.port, "log": str(e.log_path)} for e in engines.all()
        },
        "env": engines.env(),
        "backends": engines.env(select_backends=True),
    }
    _write_state(state)
    typer.echo(f"engines up in {time.monotonic() - started:.1f}s", err=True)
    for e in engines.all():
        typer.echo(f"  {e.name:9} pid {e.pid:<7} {e.address:22} log {e.log_path}", err=True)
    typer.echo(_exports(_env_of(state, select_backends)))


def _env_of(state: dict[str, Any], select_backends: bool) -> dict[str, str]:
    env: dict[str, str] = state["backends" if select_backends else "env"]
    return env


@engines_app.command()
def down() -> None:
    """Stop the engines started by `up`."""
    state = _read_state()
    if state is None:
        typer.echo("engines are not running (no state file)", err=True)
        return
    _stop_recorded(state)
    _state_file().unlink(missing_ok=True)
    typer.echo(f"engines stopped (their files stay in {state.get('workdir')})", err=True)


@engines_app.command()
def status() -> None:
    """Show whether the engines started by `up` are running and answering (exit 1 if not)."""
    typer.echo(f"cache: {eng.cache_dir()} (built: {'yes' if eng.is_built() else 'no'})")
    state = _read_state()
    if state is None:
        typer.echo("engines: not running")
        raise typer.Exit(1)
    ok = True
    for name in _CMDLINE_MARKERS:
        info = state.get("engines", {}).get(name)
        if info is None:
            typer.echo(f"  {name:9} missing from the state file")
            ok = False
            continue
        pid, port = int(info["pid"]), int(info["port"])
        alive = _alive(name, pid)
        answering = alive and _answers(port)
        ok = ok and answering
        word = "up" if answering else ("not answering" if alive else "DEAD")
        typer.echo(f"  {name:9} pid {pid:<7} {eng.HOST}:{port:<6} {word:14} log {info['log']}")
    if not ok:
        raise typer.Exit(1)
    typer.echo(_exports(_env_of(state, True)))


@engines_app.command()
def env(
    select_backends: Annotated[
        bool, typer.Option("--select/--no-select", help="include UPLOADER_BUS/STORE/DB")
    ] = True,
) -> None:
    """Print the env exports of the running engines (for `eval "$(uploader engines env)"`)."""
    state = _read_state()
    if state is None or not _all_alive(state):
        typer.echo("engines are not running (uploader engines up)", err=True)
        raise typer.Exit(1)
    typer.echo(_exports(_env_of(state, select_backends)))
