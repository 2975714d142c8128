"""The service runtime: idempotency, retries, dead letters and replay, shutdown, tracing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from contracts.envelope import CloudEvent
from contracts.events import Event, Ingested, ItemStatusChanged, decode
from contracts.topics import ITEM_STATUS, dead_letter
from kit import tracing
from kit.bus_sqlite import SqliteEventBus
from kit.docs_sqlite import SqliteDocuments
from kit.ports import Delivery, EventBus, Message, Unavailable
from kit.runtime import (
    Emit,
    EventProcessor,
    Released,
    Route,
    ServiceRunner,
    publish_events,
    replay_dead_letters,
)

WORK, NEXT = "work.topic", "next.topic"


def ingested(item: str = "item-1") -> Ingested:
    return Ingested(job_id="job-1", item_id=item, record_id=item, kind="image")


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[SqliteEventBus]:
    bus = SqliteEventBus(path=tmp_path / "events.sqlite3")
    await bus.ensure_topics({WORK: 2, NEXT: 1, ITEM_STATUS: 1, dead_letter(WORK): 1})
    yield bus
    await bus.close()


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[SqliteDocuments]:
    docs = SqliteDocuments(path=tmp_path / "documents.sqlite3")
    yield docs
    await docs.close()


Handler = Callable[[Event], Awaitable[Sequence[Emit]]]


def make_runner(
    bus: EventBus,
    docs: SqliteDocuments,
    handler: Handler,
    *,
    name: str = "svc",
    topic: str = WORK,
    attempts: int = 3,
) -> ServiceRunner:
    return ServiceRunner(
        processor=EventProcessor(
            name=name,
            bus=bus,
            ledger=docs.collection("ledger"),
            routes={topic: Route(handler)},
            max_attempts=attempts,
            retry_base_seconds=0.001,
        )
    )


async def run_until(
    runners: Sequence[ServiceRunner], done: Callable[[], bool], timeout: float = 10
) -> None:
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        async with asyncio.timeout(timeout):
            while not done():  # noqa: ASYNC110 - a plain predicate, nothing to wait on
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def read_all(bus: EventBus, topic: str) -> list[tuple[CloudEvent, dict[str, str]]]:
    consumer = bus.consumer(group=f"reader-{topic}-{id(bus)}", topics=[topic])
    try:
        deliveries = await consumer.fetch(max_records=500, timeout=0.3)
        return [
            (CloudEvent.from_bytes(d.message.value), dict(d.message.headers)) for d in deliveries
        ]
    finally:
        await consumer.close()


async def test_an_event_delivered_twice_is_handled_once(
    bus: SqliteEventBus, docs: SqliteDocuments
) -> None:
    calls: list[Event] = []

    async def handler(event: Event) -> Sequence[Emit]:
        calls.append(event)
        return ()

    await publish_events(bus, [Emit(WORK, ingested())], source="test", caused_by="fixed")
    await publish_events(bus, [Emit(WORK, ingested())], source="test", caused_by="fixed")
    runner = make_runner(bus, docs, handler)
    await run_until([runner], lambda: len(calls) >= 1)
    await run_until([runner], lambda: True)  # a second pass sees the copy and skips it
    assert len(calls) == 1
    assert await docs.collection("ledger").count() == 1


async def test_outputs_of_a_redelivered_event_keep_their_ids(bus: SqliteEventBus) -> None:
    for _ in range(2):
        await publish_events(bus, [Emit(NEXT, ingested())], source="svc", caused_by="in-1")
    ids = [envelope.id for envelope, _ in await read_all(bus, NEXT)]
    assert len(ids) == 2 and ids[0] == ids[1]


async def test_a_failing_handler_is_retried_then_dead_lettered_and_its_item_shows_an_error(
    bus: SqliteEventBus,
    docs: SqliteDocuments,
) -> None:
    attempts = 0

    async def handler(event: Event) -> Sequence[Emit]:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("store unavailable")

    await publish_events(bus, [Emit(WORK, ingested())], source="test")
    runner = make_runner(bus, docs, handler, attempts=3)
    await run_until([runner], lambda: attempts >= 3)
    await run_until([runner], lambda: True)
    assert attempts == 3
    dead = await read_all(bus, dead_letter(WORK))
    assert len(dead) == 1
    headers = dead[0][1]
    assert headers["x-dlq-service"] == "svc"
    assert headers["x-dlq-attempts"] == "3"
    assert "store unavailable" in headers["x-dlq-reason"]
    statuses = [decode(e) for e, _ in await read_all(bus, ITEM_STATUS)]
    assert len(statuses) == 1
    failed = statuses[0]
    assert isinstance(failed, ItemStatusChanged)
    assert failed.status == "error" and failed.item_id == "item-1"


async def test_a_replayed_dead_letter_is_handled_again_by_the_service_that_failed(
    bus: SqliteEventBus,
    docs: SqliteDocuments,
) -> None:
    healthy = False
    handled: list[str] = []
    failures = 0

    async def handler(event: Event) -> Sequence[Emit]:
        nonlocal failures
        if not healthy:
            failures += 1
            raise ConnectionError("down")
        handled.append(event.job_id)
        return [Emit(NEXT, event)]

    async def other(event: Event) -> Sequence[Emit]:
        other_calls.append(event.job_id)
        return ()

    other_calls: list[str] = []
    await publish_events(bus, [Emit(WORK, ingested())], source="test")
    failing = make_runner(bus, docs, handler, attempts=2)
    bystander = make_runner(bus, docs, other, name="bystander")
    await run_until([failing, bystander], lambda: bool(other_calls) and failures == 2)
    assert handled == []
    assert len(await read_all(bus, dead_letter(WORK))) == 1
    healthy = True
    assert await replay_dead_letters(bus, topic=WORK, idle_seconds=0.3) == 1
    await run_until([failing, bystander], lambda: handled == ["job-1"])
    await asyncio.sleep(0.2)
    assert other_calls == ["job-1"]  # the service that had succeeded skipped the replay
    assert len(await read_all(bus, NEXT)) == 1


async def test_shutdown_finishes_the_event_in_hand_and_commits_it(
    bus: SqliteEventBus,
    docs: SqliteDocuments,
) -> None:
    started, finished = asyncio.Event(), []

    async def slow(event: Event) -> Sequence[Emit]:
        started.set()
        await asyncio.sleep(0.3)
        finished.append(event.job_id)
        return ()

    await publish_events(bus, [Emit(WORK, ingested())], source="test")
    runner = make_runner(bus, docs, slow)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    await started.wait()
    stop.set()  # mid-handler
    await asyncio.wait_for(task, 5)
    assert finished == ["job-1"]
    again: list[str] = []

    async def record(event: Event) -> Sequence[Emit]:
        again.append(event.job_id)
        return ()

    await run_until([make_runner(bus, docs, record)], lambda: True)
    await asyncio.sleep(0.3)
    assert again == []  # committed: a restarted service does not see it again


_spans = InMemorySpanExporter()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_spans))
        trace.set_tracer_provider(provider)
    _spans.clear()
    return _spans


async def test_one_trace_follows_an_item_across_services(
    bus: SqliteEventBus,
    docs: SqliteDocuments,
    spans: InMemorySpanExporter,
) -> None:
    async def first(event: Event) -> Sequence[Emit]:
        return [Emit(NEXT, event)]

    seen: list[str] = []

    async def second(event: Event) -> Sequence[Emit]:
        seen.append(event.job_id)
        return ()

    with tracing.span("gateway receive file", item_id="item-1"):
        await publish_events(bus, [Emit(WORK, ingested())], source="gateway")
    await run_until(
        [
            make_runner(bus, docs, first, name="a"),
            make_runner(bus, docs, second, name="b", topic=NEXT),
        ],
        lambda: bool(seen),
    )
    finished = spans.get_finished_spans()
    root = next(s for s in finished if s.name == "gateway receive file")
    consumers = [s for s in finished if s.name in ("a process work.topic", "b process next.topic")]
    assert len(consumers) == 2
    assert {s.context.trace_id for s in consumers} == {root.context.trace_id}


async def test_a_backend_outage_is_waited_out_without_using_up_the_attempts(
    bus: SqliteEventBus,
    docs: SqliteDocuments,
) -> None:
    calls = 0

    async def handler(event: Event) -> Sequence[Emit]:
        nonlocal calls
        calls += 1
        if calls <= 6:  # more outages in a row than the attempts allowed for failures
            raise Unavailable("the object store is down")
        return [Emit(NEXT, event)]

    await publish_events(bus, [Emit(WORK, ingested())], source="test")
    runner = make_runner(bus, docs, handler, attempts=2)
    await run_until([runner], lambda: calls >= 7)
    await run_until([runner], lambda: True)
    assert calls == 7
    assert await read_all(bus, dead_letter(WORK)) == []
    assert len(await read_all(bus, NEXT)) == 1


class _DownBus:
    """An event bus whose broker is gone: every publish says so."""

    def __init__(self) -> None:
        self.attempts = 0

    async def publish(self, topic: str, message: Message) -> None:
        self.attempts += 1
        raise Unavailable("broker unreachable")


async def test_stopping_during_an_outage_releases_the_event_instead_of_losing_it(
    docs: SqliteDocuments,
) -> None:
    down = _DownBus()

    async def handler(event: Event) -> Sequence[Emit]:
        raise ValueError("a poison event")  # would be dead-lettered, but the bus is down

    stopping = asyncio.Event()
    processor = EventProcessor(
        name="svc",
        bus=down,  # type: ignore[arg-type]
        ledger=docs.collection("ledger"),
        routes={WORK: Route(handler)},
        max_attempts=1,
        retry_base_seconds=0.001,
        stopping=stopping,
    )
    envelope = CloudEvent.new(
        source="/t",
        type=Ingested.event_type,
        subject="job-1",
        data=ingested().model_dump(mode="json"),
    )
    delivery = Delivery(
        topic=WORK, partition=0, offset=0, message=Message(key="job-1", value=envelope.to_bytes())
    )
    task = asyncio.create_task(processor.process(delivery))
    while down.attempts < 3:  # noqa: ASYNC110 - the dead letter is retried while the bus is down
        await asyncio.sleep(0.01)
    stopping.set()
    with pytest.raises(Released):
        await asyncio.wait_for(task, 10)
    assert await docs.collection("ledger").count() == 0  # not recorded as processed


def test_a_message_repeated_during_an_outage_is_logged_once_per_interval() -> None:
    import logging

    from kit.telemetry import OncePerInterval

    once = OncePerInterval(seconds=60, loggers=frozenset({"aiokafka"}))

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(
            name, logging.ERROR, __file__, 1, "Unable connect to node with id %s", ("1",), None
        )

    assert [once.filter(record("aiokafka.conn")) for _ in range(100)].count(True) == 1
    assert once.filter(record("gateway"))  # our own messages always pass


async def test_an_idempotent_route_keeps_no_ledger(
    bus: SqliteEventBus, docs: SqliteDocuments
) -> None:
    calls: list[Event] = []

    async def fold(event: Event) -> Sequence[Emit]:
        calls.append(event)
        return ()

    await publish_events(bus, [Emit(WORK, ingested())], source="test", caused_by="same")
    await publish_events(bus, [Emit(WORK, ingested())], source="test", caused_by="same")
    runner = ServiceRunner(
        processor=EventProcessor(
            name="tracker",
            bus=bus,
            ledger=docs.collection("ledger"),
            routes={WORK: Route(fold, idempotent=True)},
        )
    )
    await run_until([runner], lambda: len(calls) >= 2)
    assert len(calls) == 2  # handed both copies: the handler's own idempotency decides
    assert await docs.collection("ledger").count() == 0
