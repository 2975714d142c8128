"""Job-tracker on Kafka: a faust-streaming app, the distributed way to run the tracker.

On the embedded bus the generic `kit.runtime.ServiceRunner` runs `job_tracker.service`; on
Kafka this app does, with the same handler (`track`), the same metrics and the same dead-letter
topic. One agent consumes `items.status` in the consumer group ``job-tracker``; the topic is
keyed by job id, so one job's events stay on one partition and reach one member in order,
which is what makes `track`'s read-modify-write safe.

Delivery is at-least-once: faust acks an event once the agent is done with it and commits
acked offsets periodically and on shutdown (after the event in hand is finished). The fold is
idempotent, so an event seen twice after a crash changes nothing.

faust never creates or alters a topic here (``topic_allow_declare=False``): the platform
creates them with their partition counts beforehand (`ensure_topics` in `run_worker` does it
again, idempotently, so the worker may start first). Without tables or the leader topic this
app needs no faust-internal topics at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import faust
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.envelope import CloudEvent
from contracts.events import decode
from contracts.topics import ALL_TOPICS, ITEM_STATUS, dead_letter
from job_tracker.service import NAME, STATUS_COLLECTION, track
from kit import tracing
from kit.ports import Collection, EventBus, Message
from kit.runtime import EVENTS, HANDLER_SECONDS
from kit.settings import PlatformSettings
from kit.telemetry import configure_logging, configure_tracing

if TYPE_CHECKING:
    from uploader.bootstrap import Platform

__all__ = ["StatusEventHandler", "build_app", "run_worker", "text_headers"]

log = logging.getLogger(__name__)
tracer = trace.get_tracer("imaging-uploader.job-tracker")

# How long a graceful stop may take (finish the event in hand, commit, leave the group).
STOP_TIMEOUT_SECONDS = 30.0


class StatusEventHandler:
    """What the agent does with one event: decode, fold into the job's document, count.

    It deals with failures itself (skip, retry, dead-letter) because faust acks the event in
    hand even when the agent raises (the stream's ``finally`` acks it; the old
    ``stream_ack_exceptions`` setting no longer does anything) and then restarts the agent, so
    an escaping exception drops the event. Only a failed dead-letter publish (Kafka itself
    gone) still escapes; faust logs it with the agent's crash.
    """

    def __init__(self, *, statuses: Collection, bus: EventBus, settings: PlatformSettings) -> None:
        self._statuses = statuses
        self._bus = bus
        self._max_attempts = settings.max_attempts
        self._retry_base_seconds = settings.retry_base_seconds

    async def handle(self, event: Any) -> None:
        """`event` is a faust `EventT` (raw key and value, headers, the Kafka message)."""
        message = event.message
        topic: str = message.topic
        headers = text_headers(event.headers)
        with tracer.start_as_current_span(
            f"{NAME} process {topic}",
            context=tracing.extract(headers),
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": NAME,
                "messaging.destination.partition.id": str(message.partition),
                "messaging.kafka.offset": message.offset,
            },
        ):
            outcome = await self._process(topic, _key(event.key), event.value or b"", headers)
        EVENTS.labels(NAME, topic, outcome).inc()

    async def _process(self, topic: str, key: str, value: bytes, headers: dict[str, str]) -> str:
        try:
            envelope = CloudEvent.from_bytes(value)
            decoded = decode(envelope)
        except Exception as exc:  # retrying cannot help; nothing to fold
            log.warning("%s: skipped an undecodable event on %s (key %r): %s",
                        NAME, topic, key, exc)
            return "skipped"
        for attempt in range(1, self._max_attempts + 1):
            try:
                started = time.perf_counter()
                await track(decoded, statuses=self._statuses)
                HANDLER_SECONDS.labels(NAME, topic).observe(time.perf_counter() - started)
                return "processed"
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: attempt %d/%d on %s failed: %r",
                            NAME, attempt, self._max_attempts, envelope.type, exc)
                if attempt == self._max_attempts:
                    await self._dead_letter(topic, key, value, headers, reason=repr(exc),
                                            attempts=attempt)
                    return "dead_lettered"
                EVENTS.labels(NAME, topic, "retried").inc()
                await asyncio.sleep(self._retry_base_seconds * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover - the loop always returns

    async def _dead_letter(self, topic: str, key: str, value: bytes, headers: dict[str, str],
                           *, reason: str, attempts: int) -> None:
        """The same dead letter the embedded runtime writes, so `uploader dlq replay` works."""
        headers = {
            **headers,
            "x-dlq-source-topic": topic,
            "x-dlq-service": NAME,
            "x-dlq-reason": reason[:500],
            "x-dlq-attempts": str(attempts),
        }
        await self._bus.publish(dead_letter(topic), Message(key=key, value=value, headers=headers))
        log.error("%s: dead-lettered an event from %s: %s", NAME, topic, reason)


def text_headers(headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """Kafka headers as text (faust hands them over as ``{name: bytes}``)."""
    if not headers:
        return {}
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return {
        str(name): value.decode(errors="replace") if isinstance(value, bytes) else str(value)
        for name, value in pairs
        if value is not None
    }


def _key(key: Any) -> str:
    if isinstance(key, bytes):
        return key.decode(errors="replace")
    return "" if key is None else str(key)


class _Readiness:
    """Ready once a rebalance has completed (partitions assigned, streams resumed) and while
    no new one is under way and the agent runs."""

    def __init__(self, app: faust.App, agent: Any) -> None:
        self._app = app
        self._agent = agent
        self._rebalanced = False
        app.on_rebalance_complete.connect(self._on_rebalance_complete)

    async def _on_rebalance_complete(self, sender: Any, /, *args: Any, **kwargs: Any) -> None:
        self._rebalanced = True

    def __call__(self) -> bool:
        app, agent = self._app, self._agent
        return (
            self._rebalanced
            and not app.rebalancing
            and not app.should_stop
            and agent.started
            and not agent.should_stop
        )


def build_app(settings: PlatformSettings, *, platform: Platform | None = None) -> faust.App:
    """The tracker's faust app. Its adapters come from the composition root; given none, it
    opens its own and closes them when it stops. Build it inside the event loop it runs on
    (faust binds the running loop when its web server is set up)."""
    owned = platform is None
    if platform is None:
        from uploader.bootstrap import open_platform  # the composition root, imported late

        platform = open_platform(settings, client_id=NAME)
    app = faust.App(
        NAME,  # also the consumer group
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_client_id=NAME,
        key_serializer="raw",
        value_serializer="raw",
        store="memory://",
        autodiscover=False,
        # Never create or alter topics: the platform owns them and their partition counts.
        topic_allow_declare=False,
        # The leader topic only elects a leader for `@app.timer(on_leader=True)`; not needed.
        topic_disable_leader=True,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        # faust creates these folders on start even without tables; keep them with our data.
        datadir=settings.data_dir / "faust",
        web_enabled=True,
        web_bind=settings.http_host,
        web_host=settings.http_host,
        web_port=settings.http_port,
        web_router_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_tables_enabled=False,
        web_metrics_enabled=False,
    )
    if owned:
        # Run after the app's children (the agent among them) have stopped.
        app.async_exit_stack.push_async_callback(platform.close)
    tracker = StatusEventHandler(
        statuses=platform.docs.collection(STATUS_COLLECTION), bus=platform.bus, settings=settings
    )
    statuses_topic = app.topic(ITEM_STATUS, key_serializer="raw", value_serializer="raw")

    async def track_statuses(stream: Any) -> None:
        async for event in stream.events():
            await tracker.handle(event)

    agent = app.agent(statuses_topic, name=f"{NAME}.track_statuses")(track_statuses)
    ready = _Readiness(app, agent)

    async def healthz(view: Any, request: Any) -> Any:
        return view.json({"status": "ok"})

    async def readyz(view: Any, request: Any) -> Any:
        is_ready = ready()
        return view.json({"status": "ready" if is_ready else "starting"},
                         status=200 if is_ready else 503)

    async def metrics(view: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside `content_type`; the header takes it whole.
        return view.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.page("/healthz")(healthz)
    app.page("/readyz")(readyz)
    app.page("/metrics")(metrics)
    return app


def run_worker(settings: PlatformSettings) -> None:
    """Run the tracker until SIGINT/SIGTERM, then stop gracefully (the event in hand is
    finished and committed). Raises if the app crashed."""
    configure_logging()
    configure_tracing(NAME, settings)
    asyncio.run(_work(settings))


async def _work(settings: PlatformSettings) -> None:
    from uploader.bootstrap import open_platform

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    platform = open_platform(settings, client_id=NAME)
    try:
        # Idempotent, and what keeps the broker from auto-creating the topic with its default
        # partition count should this worker subscribe before anything else created it.
        partitions = {t.name: t.partitions for t in ALL_TOPICS}
        topics = {ITEM_STATUS: partitions[ITEM_STATUS], dead_letter(ITEM_STATUS): 1}
        if not await _unless_stopped(platform.bus.ensure_topics(topics), stop):
            return
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        app = build_app(settings, platform=platform)
        await _run_until(app, stop)
    finally:
        await platform.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run `work` unless a stop signal comes first (e.g. while Kafka is still unreachable);
    whether it ran to the end."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (task, stopping):
            if not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await future
    if task.cancelled():
        return False
    task.result()  # raises what the work raised
    return True


async def _run_until(app: faust.App, stop: asyncio.Event) -> None:
    # `App.start` returns only once partitions are assigned (it waits for table recovery), so it
    # runs beside the wait for a signal rather than before it.
    starting = asyncio.create_task(app.start(), name="faust-start")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    stopped = asyncio.create_task(app.wait_until_stopped(), name="faust-stopped")
    try:
        pending: set[asyncio.Task[Any]] = {starting, stopping, stopped}
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if starting in done and starting.exception() is not None:
                break
            if stopping in done or stopped in done:
                break
    finally:
        log.info("%s: stopping", NAME)
        try:
            await asyncio.wait_for(app.stop(), timeout=STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            log.warning("%s: did not stop within %ss", NAME, STOP_TIMEOUT_SECONDS)
        for task in (starting, stopping, stopped):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    if starting.done() and not starting.cancelled() and starting.exception() is not None:
        raise starting.exception()  # type: ignore[misc]
    if app.crash_reason is not None:
        raise RuntimeError(f"{NAME} crashed") from app.crash_reason
