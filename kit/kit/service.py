"""What a service is, declared once: its name, the topics it handles, what it needs.

Every service package exports one `ServiceSpec` (``SPEC`` in its ``spec`` module); the
composition root (``uploader.bootstrap``) builds processes from the list of specs, so adding a
service means writing its package and adding its spec to that list, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kit.ports import Documents, EventBus, Index, MalwareScanner, NoScanner, ObjectStore
from kit.runtime import LEDGER_COLLECTION, EventProcessor, Route
from kit.settings import PlatformSettings

__all__ = ["Need", "Platform", "ServiceSpec", "build_processor"]

Need = Literal["bus", "store", "docs"]


@dataclass(kw_only=True)
class Platform:
    """The process's adapters, built by the composition root and handed to every service."""

    settings: PlatformSettings
    bus: EventBus
    store: ObjectStore
    docs: Documents
    scanner: MalwareScanner = field(default_factory=NoScanner)
    # The key of subject ids (kit.phi.subject_id); the composition root loads it.
    subject_key: bytes = b""

    async def close(self) -> None:
        for closer in (self.bus.close, self.store.close, self.docs.close, self.scanner.close):
            with contextlib.suppress(Exception):
                await closer()


@dataclass(frozen=True, kw_only=True)
class ServiceSpec:
    """One service.

    - `routes`: its event handlers by topic, built from the platform (None: no consumer).
    - `needs`: the ports it uses, so readiness checks and docs say what it depends on.
    - `indexes`: secondary indexes of the read models it owns, created at start-up.
    - `prepare`: idempotent start-up work of its own (e.g. seeding reference data).
    - `maintain`: periodic work (clean-up, retries of what an outage left), run at start-up
      and then every `PlatformSettings.maintenance_seconds` by the process running it.
    - `http_app`: for the gateway, its web application (platform, is_ready).
    - `kafka_worker`: a different runner for the service on Kafka (the job-tracker's faust
      app); it still processes every event through `kit.runtime.EventProcessor`.
    """

    name: str
    routes: Callable[[Platform], Mapping[str, Route]] | None = None
    needs: frozenset[Need] = frozenset({"bus", "docs"})
    indexes: Mapping[str, Sequence[Index]] = field(default_factory=dict)
    prepare: Callable[[Platform], Awaitable[None]] | None = None
    maintain: Callable[[Platform], Awaitable[None]] | None = None
    http_app: Callable[[Platform, Callable[[], bool]], Any] | None = None
    kafka_worker: Callable[[Platform], Awaitable[None]] | None = None


def build_processor(
    spec: ServiceSpec, platform: Platform, *, stopping: asyncio.Event | None = None
) -> EventProcessor:
    """The `EventProcessor` of a service that consumes events, over the platform's adapters."""
    if spec.routes is None:
        raise ValueError(f"service {spec.name!r} consumes no events")
    settings = platform.settings
    return EventProcessor(
        name=spec.name,
        bus=platform.bus,
        ledger=platform.docs.collection(LEDGER_COLLECTION),
        routes=spec.routes(platform),
        max_attempts=settings.max_attempts,
        retry_base_seconds=settings.retry_base_seconds,
        stopping=stopping or asyncio.Event(),
    )
