"""The one composition root: settings → adapters → services. Nothing else builds adapters.

The services are the `ServiceSpec`s in `SPECS`; a process runs any subset of them (all of
them for `uploader serve`, one for `uploader run NAME`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from anonymizer.spec import SPEC as ANONYMIZER
from contracts.topics import ALL_TOPICS, dead_letter
from gateway.settings import GatewaySettings
from gateway.spec import SPEC as GATEWAY
from gateway.spec import ensure_first_admin
from ingest.spec import SPEC as INGEST
from job_tracker.spec import SPEC as JOB_TRACKER
from kit.health import ops_app
from kit.http_server import Server
from kit.http_server import server as http_server
from kit.phi import load_subject_key
from kit.ports import (
    Documents,
    EventBus,
    MalwareScanner,
    NoScanner,
    ObjectStore,
    Range,
    RetentionPolicy,
)
from kit.runtime import LEDGER_COLLECTION, LEDGER_INDEXES, ServiceRunner
from kit.service import Platform, ServiceSpec, build_processor
from kit.settings import PlatformSettings
from kit.telemetry import configure_logging, configure_tracing
from pdf_parser.spec import SPEC as PDF_PARSER
from zip_extractor.spec import SPEC as ZIP_EXTRACTOR

__all__ = [
    "SERVICES",
    "SPECS",
    "WORKERS",
    "maintain",
    "open_platform",
    "prepare",
    "run_one",
    "runner",
    "serve",
    "spec",
]

log = logging.getLogger("uploader")

SPECS: tuple[ServiceSpec, ...] = (
    GATEWAY,
    ZIP_EXTRACTOR,
    PDF_PARSER,
    ANONYMIZER,
    INGEST,
    JOB_TRACKER,
)
SERVICES = tuple(s.name for s in SPECS)
WORKERS = tuple(s.name for s in SPECS if s.routes is not None)


def spec(name: str) -> ServiceSpec:
    for candidate in SPECS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown service {name!r}; choose from {', '.join(SERVICES)}")


def open_platform(settings: PlatformSettings, *, client_id: str = "uploader") -> Platform:
    """Build the adapters the settings name (no I/O until first use)."""
    data = settings.data_dir
    bus: EventBus
    store: ObjectStore
    docs: Documents
    if "sqlite" in (settings.bus, settings.db) or settings.store == "fs":
        # Private: it holds uploads as received (PHI) and every account.
        data.mkdir(mode=0o700, parents=True, exist_ok=True)
    retention = RetentionPolicy(
        default_hours=settings.event_retention_hours,
        dead_letter_hours=settings.dead_letter_retention_hours,
        overrides=settings.event_retention_overrides,
    )
    if settings.bus == "kafka":
        from kit.bus_kafka import KafkaEventBus

        bus = KafkaEventBus(
            bootstrap=settings.kafka_bootstrap,
            client_id=client_id,
            retention=retention,
            replication_factor=settings.kafka_replication_factor,
            unavailable_after=settings.kafka_unavailable_after_seconds,
        )
    else:
        from kit.bus_sqlite import SqliteEventBus

        bus = SqliteEventBus(path=data / "events.sqlite3", retention=retention)
    if settings.store == "s3":
        from kit.store_s3 import S3ObjectStore

        store = S3ObjectStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            secure=settings.s3_secure,
        )
    else:
        from kit.store_fs import FilesystemObjectStore

        store = FilesystemObjectStore(root=data / "objects")
    if settings.db == "mongo":
        from kit.docs_mongo import MongoDocuments

        docs = MongoDocuments(url=settings.mongo_url, database=settings.mongo_database)
    else:
        from kit.docs_sqlite import SqliteDocuments

        docs = SqliteDocuments(path=data / "documents.sqlite3")
    scanner: MalwareScanner = NoScanner()
    if settings.clamd_address:
        from kit.scanner_clamd import ClamdScanner

        scanner = ClamdScanner(
            address=settings.clamd_address, timeout=settings.clamd_timeout_seconds
        )
    return Platform(
        settings=settings,
        bus=bus,
        store=store,
        docs=docs,
        scanner=scanner,
        subject_key=load_subject_key(settings.subject_key, data),
    )


def runner(name: str, platform: Platform) -> ServiceRunner:
    return ServiceRunner(processor=build_processor(spec(name), platform))


async def prepare(platform: Platform, services: Sequence[ServiceSpec] = SPECS) -> None:
    """Idempotent start-up work: topics (and their dead-letter topics), the read models'
    indexes, and each service's own (reference data)."""
    topics = {t.name: t.partitions for t in ALL_TOPICS}
    topics.update({dead_letter(t.name): 1 for t in ALL_TOPICS})
    await platform.bus.ensure_topics(topics)
    await platform.docs.ensure_indexes(LEDGER_COLLECTION, LEDGER_INDEXES)
    for service in services:
        for collection, indexes in service.indexes.items():
            await platform.docs.ensure_indexes(collection, indexes)
        if service.prepare is not None:
            await service.prepare(platform)


@dataclass
class _Housekeeping:
    """The platform's own periodic work: event-log retention and the ledger's."""

    last_prune: float = -math.inf

    async def __call__(self, platform: Platform) -> None:
        settings = platform.settings
        if time.monotonic() - self.last_prune >= settings.event_prune_interval_seconds:
            self.last_prune = time.monotonic()
            pruned = await platform.bus.prune()
            if pruned.deleted or pruned.held:
                log.info(
                    "event log: %d expired record(s) deleted, %d kept for group(s) %s "
                    "that have not processed them, %d bytes reclaimed",
                    pruned.deleted,
                    pruned.held,
                    ", ".join(pruned.held_by) or "-",
                    pruned.reclaimed_bytes,
                )
            cutoff = time.time() - settings.ledger_retention_hours * 3600
            forgotten = await platform.docs.collection(LEDGER_COLLECTION).delete_many(
                {"at": Range(lt=cutoff)}
            )
            if forgotten:
                log.info("ledger: forgot %d event(s) handled before the retention", forgotten)


async def maintain(
    platform: Platform, services: Sequence[ServiceSpec], housekeeping: _Housekeeping | None = None
) -> None:
    """One round of the platform's and every service's periodic work; a failure is logged,
    never fatal."""
    try:
        await (housekeeping or _Housekeeping())(platform)
    except Exception:
        log.warning("event-log and ledger retention failed; trying again next time", exc_info=True)
    for service in services:
        if service.maintain is None:
            continue
        try:
            await service.maintain(platform)
        except Exception:
            log.warning(
                "%s: maintenance failed; trying again next time", service.name, exc_info=True
            )


async def _maintain_until(
    stop: asyncio.Event,
    platform: Platform,
    services: Sequence[ServiceSpec],
    housekeeping: _Housekeeping,
) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(platform.settings.maintenance_seconds):
                await stop.wait()
        if stop.is_set():
            return
        await maintain(platform, services, housekeeping)


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def serve(
    settings: GatewaySettings,
    *,
    services: Sequence[str] = SERVICES,
    announce: Callable[[str], None] = print,
) -> None:
    """Run the named services in this process until SIGINT/SIGTERM, then stop gracefully:
    HTTP stops taking requests, each service finishes and commits the event in hand, the
    adapters close. HTTP (the gateway's app, or just health and metrics) listens on
    settings.http_host:http_port."""
    specs = [spec(name) for name in services]
    configure_logging()
    configure_tracing("+".join(services) if len(services) < 3 else "uploader", settings)
    platform = open_platform(settings, client_id="-".join(services)[:40])
    stop = asyncio.Event()
    runners = [
        ServiceRunner(processor=build_processor(s, platform)) for s in specs if s.routes is not None
    ]
    tasks: list[asyncio.Task[None]] = []
    server: Server | None = None

    def request_stop() -> None:
        stop.set()
        if server is not None:
            server.should_exit = True

    try:
        with _stop_on_signals(request_stop):
            await prepare(platform, specs)
            web = next((s for s in specs if s.http_app is not None), None)
            if web is not None:
                await ensure_first_admin(platform.docs, announce)
            tasks = [asyncio.create_task(r.run(stop), name=r.name) for r in runners]
            # Start-up maintenance first (what a crash left is given back before the first
            # request), then on a timer beside the services.
            housekeeping = _Housekeeping()
            await maintain(platform, specs, housekeeping)
            tasks.append(
                asyncio.create_task(
                    _maintain_until(stop, platform, specs, housekeeping), name="maintenance"
                )
            )

            def is_ready() -> bool:
                return all(r.ready.is_set() for r in runners) and not any(t.done() for t in tasks)

            app = web.http_app(platform, is_ready) if web and web.http_app else ops_app(is_ready)
            server = http_server(
                app,
                host=settings.http_host,
                port=settings.http_port,
                header_seconds=settings.http_header_timeout_seconds,
            )
            if stop.is_set():
                return
            announce(
                f"imaging-uploader ({', '.join(services)}) at "
                f"http://{settings.http_host}:{settings.http_port}"
            )
            await server.serve()
    finally:
        # Graceful: runners finish the event in hand, commit it, and stop.
        stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:  # released: uncommitted, so it is delivered again later
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await platform.close()


async def run_one(settings: GatewaySettings, name: str) -> None:
    """`uploader run NAME`: one service as its own process. On Kafka a service may bring
    its own runner (the job-tracker's faust app); the processing step is the same."""
    service = spec(name)
    if settings.bus == "kafka" and service.kafka_worker is not None:
        configure_logging()
        configure_tracing(name, settings)
        platform = open_platform(settings, client_id=name)
        try:
            await service.kafka_worker(platform)
        finally:
            await platform.close()
        return
    await serve(settings, services=[name])
