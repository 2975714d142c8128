"""Job-tracker on Kafka: a faust-streaming app, the distributed way to run the tracker.

On the embedded bus the generic `kit.runtime.ServiceRunner` runs `job_tracker.service`; on
Kafka this app does, and both hand every event to the same `kit.runtime.EventProcessor`
(decode, idempotency ledger, retries, dead letters, metrics, tracing): the agent only
iterates. One agent consumes `items.status` in the consumer group ``job-tracker``; the topic is
keyed by job id, so one job's events stay on one partition and reach one member in order,
which is what makes `track`'s read-modify-write safe.

Delivery is at-least-once: the agent's stream does not acknowledge by itself (`noack`); an event
is acknowledged only once the processor is done with it (its dead letter written, if it failed),
and faust commits acknowledged offsets periodically and on shutdown. An event whose processing
was released by a stop during an outage stays unacknowledged, so it is delivered again.

faust never creates or alters a topic here (``topic_allow_declare=False``): the platform
creates them with their partition counts beforehand (`ensure_topics` in `work` does it
again, idempotently, so the worker may start first). Without tables or the leader topic this
app needs no faust-internal topics at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from contracts.topics import ALL_TOPICS, ITEM_STATUS, dead_letter
from job_tracker.service import NAME
from job_tracker.spec import SPEC
from kit.ports import Delivery, Message
from kit.runtime import EventProcessor, Released
from kit.service import Platform, build_processor

__all__ = ["build_app", "delivery_of", "text_headers", "work"]

log = logging.getLogger(__name__)

# How long a graceful stop may take (finish the event in hand, commit, leave the group).
STOP_TIMEOUT_SECONDS = 30.0


def delivery_of(event: Any) -> Delivery:
    """A faust `EventT` (raw key and value, headers, the Kafka message) as the port's
    `Delivery`, which is what the runtime processes."""
    message = event.message
    return Delivery(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        message=Message(
            key=_key(event.key), value=event.value or b"", headers=text_headers(event.headers)
        ),
    )


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


def build_app(platform: Platform, processor: EventProcessor) -> faust.App:
    """The tracker's faust app over the composition root's adapters. Build it inside the event
    loop it runs on (faust binds the running loop when its web server is set up)."""
    settings = platform.settings
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
        # faust's 60 s default kept a restarted tracker waiting a minute for the session of its
        # killed predecessor to end (measured: 59 s from kill to processing; 25 s with 10 s).
        broker_session_timeout=10.0,
        broker_rebalance_timeout=10.0,
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
    statuses_topic = app.topic(ITEM_STATUS, key_serializer="raw", value_serializer="raw")

    async def track_statuses(stream: Any) -> None:
        # faust acks an event in hand even when the agent raises; with `noack` nothing is
        # acknowledged until the processor has finished with it.
        manual = stream.noack()
        async for event in manual.events():
            try:
                await processor.process(delivery_of(event))
            except Released:
                continue  # stopping mid-outage: left unacknowledged, delivered again later
            await manual.ack(event)

    agent = app.agent(statuses_topic, name=f"{NAME}.track_statuses")(track_statuses)
    ready = _Readiness(app, agent)

    async def healthz(view: Any, request: Any) -> Any:
        return view.json({"status": "ok"})

    async def readyz(view: Any, request: Any) -> Any:
        is_ready = ready()
        return view.json(
            {"status": "ready" if is_ready else "starting"}, status=200 if is_ready else 503
        )

    async def metrics(view: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside `content_type`; the header takes it whole.
        return view.bytes(generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.page("/healthz")(healthz)
    app.page("/readyz")(readyz)
    app.page("/metrics")(metrics)
    return app


async def work(platform: Platform) -> None:
    """Run the tracker on Kafka until SIGINT/SIGTERM, then stop gracefully (the event in hand
    is finished and acknowledged). Raises if the app crashed. The platform is the composition
    root's; its owner closes it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        # Idempotent, and what keeps the broker from auto-creating the topic with its default
        # partition count should this worker subscribe before anything else created it.
        partitions = {t.name: t.partitions for t in ALL_TOPICS}
        topics = {ITEM_STATUS: partitions[ITEM_STATUS], dead_letter(ITEM_STATUS): 1}
        if not await _unless_stopped(platform.bus.ensure_topics(topics), stop):
            return
        platform.settings.data_dir.mkdir(parents=True, exist_ok=True)
        processor = build_processor(SPEC, platform, stopping=stop)
        await _run_until(build_app(platform, processor), stop)
    finally:
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
