"""Repository-wide pytest fixtures: the real engines (Kafka, MinIO, FerretDB), without Docker.

The engines are built once into a cache outside the repository (``infra/engines/build.sh``)
and started once per session, on free loopback ports, only if some test requests them.
Every test that uses them (directly or through another fixture) gets the ``engines`` marker,
so ``pytest -m "not engines"`` runs without them.

When the engines are not built: with ``REQUIRE_ENGINES=1`` the tests fail; otherwise the build
is attempted (a cold build takes minutes) and the tests are skipped if it fails.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import testkit  # noqa: F401  (the package, before pytest names testkit/tests/ modules after the folder)

if TYPE_CHECKING:
    from testkit.engines import Engines, MinioEngine

ENGINE_FIXTURES = frozenset(
    {"engines", "engines_env", "kafka_bootstrap", "minio", "mongo_url", "clamd"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if ENGINE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engines)


def _build_or_skip(config: pytest.Config) -> None:
    from testkit import engines as eng

    if eng.is_built():
        return
    reason = f"the real engines are not built in {eng.cache_dir()}"
    if os.environ.get("REQUIRE_ENGINES") == "1":
        pytest.fail(f"{reason} and REQUIRE_ENGINES=1: run {eng.build_script()}", pytrace=False)
    capture = config.pluginmanager.getplugin("capturemanager")
    show = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    try:
        with show:  # let the (long) build's progress reach the terminal
            eng.ensure_built()
    except eng.EnginesUnavailable as exc:
        pytest.skip(f"{reason} and building them failed: {exc}")


@pytest.fixture(scope="session")
def engines(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engines]:
    """Kafka, MinIO and FerretDB, started once per session; stopped at its end."""
    from testkit import engines as eng

    _build_or_skip(request.config)
    running = eng.start_all(tmp_path_factory.mktemp("engines"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(engines: Engines) -> str:
    """``127.0.0.1:port`` of the session's Kafka broker."""
    return engines.kafka.bootstrap


@pytest.fixture(scope="session")
def minio(engines: Engines) -> MinioEngine:
    """The session's MinIO: ``.endpoint`` (``127.0.0.1:port``, plain HTTP), ``.access_key``,
    ``.secret_key``."""
    return engines.minio


@pytest.fixture(scope="session")
def mongo_url(engines: Engines) -> str:
    """``mongodb://127.0.0.1:port/`` of the session's FerretDB."""
    return engines.ferretdb.url


@pytest.fixture
def engines_env(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Sets the ``UPLOADER_*`` variables that make the app use the engines (bus=kafka, store=s3,
    db=mongo and their addresses) for one test; returns them."""
    env = engines.env(select_backends=True)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With REQUIRE_ENGINES=1 (CI), a skipped test is a failed run: nothing may quietly not run."""
    if os.environ.get("REQUIRE_ENGINES") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if skipped:
        names = ", ".join(getattr(r, "nodeid", "?") for r in skipped[:10])
        print(f"\nREQUIRE_ENGINES=1 but {len(skipped)} test(s) were skipped: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- clamd: a real ClamAV daemon detecting the EICAR test string --------------------------------

if TYPE_CHECKING:
    from testkit.clamd import ClamdEngine


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClamdEngine]:
    """clamd with a database that detects EICAR (``testkit.clamd.eicar_signatures``), started
    once per session (in well under a second: the database is one signature); ``.address`` is
    ``unix:<socket>``, ``.tcp_address`` ``tcp:127.0.0.1:<port>``. When clamd is not installed
    the test is skipped, or fails with ``REQUIRE_ENGINES=1``."""
    from testkit import clamd as clamav

    if clamav.clamd_binary() is None:
        reason = "clamd is not installed (Debian: apt-get install clamav-daemon)"
        if os.environ.get("REQUIRE_ENGINES") == "1":
            pytest.fail(f"{reason} and REQUIRE_ENGINES=1", pytrace=False)
        pytest.skip(reason)
    engine = clamav.start_clamd(tmp_path_factory.mktemp("clamd"), clamav.eicar_signatures())
    try:
        yield engine
    finally:
        engine.stop()
