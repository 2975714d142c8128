"""The service runtime: consume → decode → handler → publish → commit.

Delivery is at-least-once. A processed-events ledger makes each service idempotent on the
event id, and output event ids are derived from the input id, so a handler that runs twice
after a crash emits the very same events and downstream ledgers drop the copies.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry import trace
from prometheus_client import Counter, Gauge, Histogram

from contracts.envelope import SOURCE_PREFIX, CloudEvent
from contracts.events import Event, ItemStatusChanged, decode
from contracts.topics import ITEM_STATUS, dead_letter
from kit import tracing
from kit.ports import Collection, Consumer, Delivery, DuplicateKey, EventBus, Message

__all__ = [
    "Emit",
    "Handler",
    "Route",
    "ServiceRunner",
    "emit_status",
    "publish_events",
    "replay_dead_letters",
]

log = logging.getLogger(__name__)
tracer = trace.get_tracer("imaging-uploader.runtime")

EVENTS = Counter(
    "uploader_events_total",
    "Events handled by a service, by outcome.",
    ["service", "topic", "outcome"],
)
HANDLER_SECONDS = Histogram(
    "uploader_handler_seconds", "Time spent in a handler.", ["service", "topic"]
)
IN_FLIGHT = Gauge("uploader_events_in_flight", "Events being handled now.", ["service"])


@dataclass(frozen=True)
class Emit:
    """An event a handler decided to publish; the runtime publishes it after the handler."""

    topic: str
    event: Event
    key: str = ""

    def partition_key(self) -> str:
        return self.key or self.event.job_id


Handler = Callable[[Event], Awaitable[Sequence[Emit]]]


@dataclass(frozen=True)
class Route:
    """How a service handles one topic. `starts_item` names the item an event starts work on
    (or None to skip it); the runtime then reports it `processing` before the handler runs, so
    the user sees work begin rather than only end."""

    handler: Handler
    starts_item: Callable[[Event], str | None] | None = None


def emit_status(event: Event, *, item_id: str, status: str, service: str, reason: str | None = None,
                parent_item_id: str | None = None) -> Emit:
    return Emit(
        ITEM_STATUS,
        ItemStatusChanged(
            job_id=event.job_id,
            item_id=item_id,
            status=status,  # type: ignore[arg-type]
            reason=reason,
            service=service,
            parent_item_id=parent_item_id,
        ),
    )


def _envelope(emit: Emit, *, source: str, event_id: str | None) -> CloudEvent:
    kwargs = {"id": event_id} if event_id else {}
    return CloudEvent.new(
        source=SOURCE_PREFIX + source,
        type=emit.event.event_type,
        subject=emit.event.subject(),
        data=emit.event.model_dump(mode="json"),
        **kwargs,
    )


async def publish_events(
    bus: EventBus, emits: Sequence[Emit], *, source: str, caused_by: str | None = None
) -> None:
    """Publish in order. With `caused_by`, ids are derived from it (stable on redelivery)."""
    for index, emit in enumerate(emits):
        event_id = None
        if caused_by is not None:
            seed = f"{caused_by}:{source}:{index}:{emit.event.event_type}"
            event_id = hashlib.sha256(seed.encode()).hexdigest()[:32]
        envelope = _envelope(emit, source=source, event_id=event_id)
        await bus.publish(
            emit.topic,
            Message(key=emit.partition_key(), value=envelope.to_bytes(), headers={}),
        )


@dataclass
class ServiceRunner:
    """Runs one service's handlers over its topics as one consumer-group member."""

    name: str
    bus: EventBus
    ledger: Collection
    routes: Mapping[str, Route]
    max_attempts: int = 5
    retry_base_seconds: float = 0.2
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event) -> None:
        consumer = self.bus.consumer(group=self.name, topics=sorted(self.routes))
        try:
            self.ready.set()
            while not stop.is_set():
                deliveries = await consumer.fetch(max_records=20, timeout=0.5)
                for delivery in deliveries:
                    if stop.is_set():
                        # Released: not committed, so it is delivered again after restart.
                        break
                    await self._handle(consumer, delivery)
        finally:
            self.ready.clear()
            await consumer.close()

    async def _handle(self, consumer: Consumer, delivery: Delivery) -> None:
        IN_FLIGHT.labels(self.name).inc()
        try:
            parent = tracing.extract(delivery.message.headers)
            with tracer.start_as_current_span(
                f"{self.name} process {delivery.topic}",
                context=parent,
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "messaging.system": "imaging-uploader",
                    "messaging.destination.name": delivery.topic,
                    "messaging.consumer.group.name": self.name,
                },
            ):
                outcome = await self._process(delivery)
            EVENTS.labels(self.name, delivery.topic, outcome).inc()
            await consumer.commit(delivery)
        finally:
            IN_FLIGHT.labels(self.name).dec()

    async def _process(self, delivery: Delivery) -> str:
        try:
            envelope = CloudEvent.from_bytes(delivery.message.value)
            event = decode(envelope)
        except Exception as exc:  # undecodable: retrying cannot help
            await self._dead_letter(delivery, reason=f"undecodable: {exc}", attempts=0)
            return "dead_lettered"
        ledger_id = f"{self.name}:{envelope.id}"
        if await self.ledger.get(ledger_id) is not None:
            return "duplicate"
        route = self.routes[delivery.topic]
        if route.starts_item is not None and (item_id := route.starts_item(event)):
            begun = emit_status(event, item_id=item_id, status="processing", service=self.name)
            await publish_events(self.bus, [begun], source=self.name,
                                 caused_by=envelope.id + ":start")
        for attempt in range(1, self.max_attempts + 1):
            try:
                started = time.perf_counter()
                emits = await route.handler(event)
                HANDLER_SECONDS.labels(self.name, delivery.topic).observe(
                    time.perf_counter() - started
                )
                await publish_events(self.bus, emits, source=self.name, caused_by=envelope.id)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s: attempt %d/%d on %s failed: %r",
                    self.name, attempt, self.max_attempts, envelope.type, exc,
                )
                if attempt == self.max_attempts:
                    await self._dead_letter(delivery, reason=repr(exc), attempts=attempt)
                    await self._report_failure(event, envelope.id)
                    return "dead_lettered"
                EVENTS.labels(self.name, delivery.topic, "retried").inc()
                await asyncio.sleep(self.retry_base_seconds * 2 ** (attempt - 1))
        with contextlib.suppress(DuplicateKey):  # a concurrent redelivery got there first
            await self.ledger.insert({"_id": ledger_id, "at": time.time()})
        return "processed"

    async def _dead_letter(self, delivery: Delivery, *, reason: str, attempts: int) -> None:
        headers = dict(delivery.message.headers)
        headers.update(
            {
                "x-dlq-source-topic": delivery.topic,
                "x-dlq-service": self.name,
                "x-dlq-reason": reason[:500],
                "x-dlq-attempts": str(attempts),
            }
        )
        await self.bus.publish(
            dead_letter(delivery.topic),
            Message(key=delivery.message.key, value=delivery.message.value, headers=headers),
        )
        log.error("%s: dead-lettered an event from %s: %s", self.name, delivery.topic, reason)

    async def _report_failure(self, event: Event, envelope_id: str) -> None:
        """A file must never look stuck: its item shows an error until a replay fixes it."""
        item_id = getattr(event, "item_id", None)
        if not isinstance(item_id, str) or isinstance(event, ItemStatusChanged):
            return
        status = emit_status(
            event,
            item_id=item_id,
            status="error",
            service=self.name,
            reason="Processing failed; the file is kept and can be retried by support",
        )
        await publish_events(self.bus, [status], source=self.name, caused_by=envelope_id + ":dlq")


async def replay_dead_letters(bus: EventBus, *, topic: str, group: str = "dlq-replayer",
                              idle_seconds: float = 2.0) -> int:
    """Republish dead-lettered events, unchanged, to their source topic. Services that already
    handled one skip it by its event id; the one that failed handles it again."""
    consumer = bus.consumer(group=group, topics=[dead_letter(topic)])
    replayed = 0
    try:
        while True:
            deliveries = await consumer.fetch(max_records=100, timeout=idle_seconds)
            if not deliveries:
                return replayed
            for delivery in deliveries:
                headers = {
                    k: v for k, v in delivery.message.headers.items() if not k.startswith("x-dlq-")
                }
                await bus.publish(
                    topic,
                    Message(key=delivery.message.key, value=delivery.message.value,
                            headers=headers),
                )
                await consumer.commit(delivery)
                replayed += 1
    finally:
        await consumer.close()
