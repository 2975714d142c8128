"""The one composition root: settings → adapters → services. Nothing else builds adapters."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import uvicorn

from contracts.topics import ALL_TOPICS, dead_letter
from gateway.accounts import Accounts
from gateway.app import create_app
from gateway.reference import seed_reference_data
from gateway.settings import GatewaySettings
from kit.health import ops_app
from kit.ports import Documents, EventBus, ObjectStore
from kit.runtime import Route, ServiceRunner
from kit.settings import PlatformSettings
from kit.telemetry import configure_logging, configure_tracing

__all__ = ["SERVICES", "WORKERS", "Platform", "open_platform", "serve"]

log = logging.getLogger("uploader")

WORKERS = ("zip-extractor", "pdf-parser", "anonymizer", "ingest", "job-tracker")
SERVICES = ("gateway", *WORKERS)
LEDGER = "processed_events"


@dataclass
class Platform:
    settings: PlatformSettings
    bus: EventBus
    store: ObjectStore
    docs: Documents

    async def close(self) -> None:
        for closer in (self.bus.close, self.store.close, self.docs.close):
            with contextlib.suppress(Exception):
                await closer()


def open_platform(settings: PlatformSettings, *, client_id: str = "uploader") -> Platform:
    """Build the adapters the settings name (no I/O until first use)."""
    data = settings.data_dir
    bus: EventBus
    store: ObjectStore
    docs: Documents
    if settings.bus == "kafka":
        from kit.bus_kafka import KafkaEventBus

        bus = KafkaEventBus(bootstrap=settings.kafka_bootstrap, client_id=client_id)
    else:
        from kit.bus_sqlite import SqliteEventBus

        data.mkdir(parents=True, exist_ok=True)
        bus = SqliteEventBus(path=data / "events.sqlite3")
    if settings.store == "s3":
        from kit.store_s3 import S3ObjectStore

        store = S3ObjectStore(endpoint=settings.s3_endpoint, access_key=settings.s3_access_key,
                              secret_key=settings.s3_secret_key, secure=settings.s3_secure)
    else:
        from kit.store_fs import FilesystemObjectStore

        store = FilesystemObjectStore(root=data / "objects")
    if settings.db == "mongo":
        from kit.docs_mongo import MongoDocuments

        docs = MongoDocuments(url=settings.mongo_url, database=settings.mongo_database)
    else:
        from kit.docs_sqlite import SqliteDocuments

        data.mkdir(parents=True, exist_ok=True)
        docs = SqliteDocuments(path=data / "documents.sqlite3")
    return Platform(settings=settings, bus=bus, store=store, docs=docs)


def service_routes(name: str, platform: Platform) -> dict[str, Route]:
    if name == "anonymizer":
        from anonymizer.service import routes as anonymizer_routes

        return anonymizer_routes(store=platform.store)
    if name == "ingest":
        from ingest.service import routes as ingest_routes

        return ingest_routes(docs=platform.docs)
    if name == "zip-extractor":
        from zip_extractor.service import routes as zip_routes

        return zip_routes(store=platform.store)
    if name == "pdf-parser":
        from pdf_parser.service import routes as pdf_routes

        return pdf_routes(store=platform.store)
    if name == "job-tracker":
        from job_tracker.service import STATUS_COLLECTION
        from job_tracker.service import routes as tracker_routes

        return tracker_routes(statuses=platform.docs.collection(STATUS_COLLECTION))
    raise ValueError(f"unknown service {name!r}; choose from {', '.join(WORKERS)}")


def runner(name: str, platform: Platform) -> ServiceRunner:
    return ServiceRunner(
        name=name,
        bus=platform.bus,
        ledger=platform.docs.collection(LEDGER),
        routes=service_routes(name, platform),
        max_attempts=platform.settings.max_attempts,
        retry_base_seconds=platform.settings.retry_base_seconds,
    )


async def prepare(platform: Platform) -> None:
    """Idempotent start-up work: topics (and their dead-letter topics), reference data."""
    topics = {t.name: t.partitions for t in ALL_TOPICS}
    topics.update({dead_letter(t.name): 1 for t in ALL_TOPICS})
    await platform.bus.ensure_topics(topics)
    await seed_reference_data(platform.docs)


async def ensure_first_admin(docs: Documents, announce: Callable[[str], None]) -> None:
    accounts = Accounts(docs=docs)
    if await accounts.count() > 0:
        return
    password = secrets.token_urlsafe(12)
    await accounts.create_user(username="admin", role="admin", password=password)
    announce(
        "\n"
        "  First start: an administrator account was created.\n"
        "    username: admin\n"
        f"    password: {password}\n"
        "  It is shown only this once; sign in and keep it somewhere safe.\n"
    )


def session_secret(settings: GatewaySettings) -> str:
    """The configured secret, else one made on first start and kept in the data folder (so
    sign-ins survive restarts of a one-machine site)."""
    if settings.session_secret:
        return settings.session_secret
    path = settings.data_dir / "session-secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


async def serve(
    settings: GatewaySettings,
    *,
    services: Sequence[str] = SERVICES,
    announce: Callable[[str], None] = print,
) -> None:
    """Run the named services in this process until SIGINT/SIGTERM. HTTP (the gateway's app,
    or just health and metrics) listens on settings.http_host:http_port."""
    configure_logging()
    configure_tracing("+".join(services) if len(services) < 3 else "uploader", settings)
    platform = open_platform(settings, client_id="-".join(services)[:40])
    stop = asyncio.Event()
    runners = [runner(name, platform) for name in services if name != "gateway"]
    tasks: list[asyncio.Task[None]] = []
    try:
        await prepare(platform)
        if "gateway" in services:
            await ensure_first_admin(platform.docs, announce)
        tasks = [asyncio.create_task(r.run(stop), name=r.name) for r in runners]

        def is_ready() -> bool:
            return all(r.ready.is_set() for r in runners) and not any(t.done() for t in tasks)

        if "gateway" in services:
            settings = settings.model_copy(update={"session_secret": session_secret(settings)})
        app = (
            create_app(settings=settings, bus=platform.bus, store=platform.store,
                       docs=platform.docs, is_ready=is_ready)
            if "gateway" in services
            else ops_app(is_ready)
        )
        config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        announce(f"imaging-uploader ({', '.join(services)}) at "
                 f"http://{settings.http_host}:{settings.http_port}")
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
