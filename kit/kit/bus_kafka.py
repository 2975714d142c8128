"""Event bus on Apache Kafka (aiokafka): the distributed adapter.

Keys are UTF-8 bytes (Kafka's default partitioner keeps one key on one partition), headers go
on the wire as (str, bytes) pairs with the trace context added on publish. Consumers commit
explicitly and start at the earliest record when their group has no committed offset.

Rebalancing waits for the batch in hand: aiokafka rebalances in the background, so without
care a partition could move to another member while this one is still working on records it
fetched from it, and both would process them. The rebalance listener holds the revocation until
the caller comes back to `fetch` (having committed what it processed) or closes, the way the
Java client only rebalances inside `poll()`.

Retention is the broker's job: `ensure_topics` sets each topic's `retention.ms` from the
`RetentionPolicy` (on topics it creates and, idempotently, on topics that exist), and `prune`
does nothing. An unreachable broker is `Unavailable` within `unavailable_after` seconds, from
publish, commit, a consumer's first fetch and `ensure_topics`, never an aiokafka exception;
consumers ride out a broker restart and resume from their group's committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
    ConfigResource,
    ConfigResourceType,
)
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    for_code,
)

from kit.ports import Delivery, KitError, Message, PruneResult, RetentionPolicy, Unavailable
from kit.tracing import inject

__all__ = ["KafkaEventBus"]

log = logging.getLogger(__name__)

# How long a member may spend on one batch before the group gives up on it and moves on
# (Kafka's max.poll.interval.ms; also how long a rebalance may wait for the batch in hand).
_MAX_BATCH_SECONDS = 300.0
_KEEP_A_WEEK = RetentionPolicy()
_RETENTION_MS = "retention.ms"
# DescribeConfigs v1+: where a value comes from; 1 is a per-topic override.
_DYNAMIC_TOPIC_CONFIG = 1


def _retention_ms(policy: RetentionPolicy, topic: str) -> str:
    """The topic's `retention.ms` as Kafka takes it: milliseconds, -1 for forever."""
    seconds = policy.seconds_for(topic)
    return "-1" if seconds is None else str(max(1, round(seconds * 1000)))


def _topic_overrides(resource: Mapping[str, Any]) -> dict[str, str | None]:
    """The configs set on the topic itself (not broker defaults) in a DescribeConfigs answer."""
    overrides: dict[str, str | None] = {}
    for entry in resource["config_entries"]:
        if "config_source" in entry:
            own = entry["config_source"] == _DYNAMIC_TOPIC_CONFIG
        else:  # DescribeConfigs v0
            own = not entry["is_default"] and not entry["read_only"]
        if own:
            overrides[entry["config_names"]] = entry["config_value"]
    return overrides


class KafkaEventBus:
    """`EventBus` on a Kafka cluster. Connects lazily: nothing happens until first use."""

    def __init__(
        self,
        *,
        bootstrap: str,
        client_id: str = "imaging-uploader",
        retention: RetentionPolicy = _KEEP_A_WEEK,
        replication_factor: int = 1,
        unavailable_after: float = 10.0,
        topic_ready_timeout: float = 30.0,
    ) -> None:
        if replication_factor < 1:
            raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
        if not unavailable_after > 0:
            raise ValueError(f"unavailable_after must be > 0 seconds, got {unavailable_after}")
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._retention = retention
        self._replication_factor = replication_factor
        self._unavailable_after = unavailable_after
        self._topic_ready_timeout = topic_ready_timeout
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        self._consumers: set[KafkaConsumer] = set()
        self._closed = False

    async def publish(self, topic: str, message: Message) -> None:
        self._check_open()
        headers = [(name, value.encode()) for name, value in inject(message.headers).items()]
        async with self._broker(f"publishing to {topic!r}"):
            producer = await self._started_producer()
            await producer.send_and_wait(
                topic, value=message.value, key=message.key.encode(), headers=headers
            )

    def consumer(self, *, group: str, topics: Sequence[str]) -> KafkaConsumer:
        self._check_open()
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        consumer = KafkaConsumer(bus=self, group=group, topics=tuple(dict.fromkeys(topics)))
        self._consumers.add(consumer)
        return consumer

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        self._check_open()
        for name, partitions in topics.items():
            if partitions < 1:
                raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
        if not topics:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            request_timeout_ms=int(self._unavailable_after * 1000),
        )
        try:
            async with self._broker("creating topics"):
                await admin.start()
                response = await admin.create_topics(
                    [
                        NewTopic(
                            name=name,
                            num_partitions=partitions,
                            replication_factor=self._replication_factor,
                            topic_configs={_RETENTION_MS: _retention_ms(self._retention, name)},
                        )
                        for name, partitions in topics.items()
                    ]
                )
            existing: list[str] = []
            for topic, code, *detail in response.topic_errors:
                if code == TopicAlreadyExistsError.errno:
                    existing.append(topic)
                elif code != 0:
                    raise KitError(f"creating topic {topic!r}: {for_code(code).__name__} {detail}")
            async with self._broker("waiting for topics", bounded=False):
                await self._wait_for_topics(admin, topics)
            if existing:
                async with self._broker("aligning topic retention"):
                    await self._align_retention(admin, existing)
        finally:
            await admin.close()

    async def prune(self) -> PruneResult:
        """Nothing to do: the broker deletes old log segments by each topic's `retention.ms`
        (set by `ensure_topics`), on its own schedule (`log.retention.check.interval.ms`)."""
        self._check_open()
        return PruneResult()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        async with self._producer_lock:
            if self._producer is not None:
                # stop() flushes what is pending; the batches' own expiry (request_timeout_ms,
                # see _started_producer) bounds that when the broker is gone.
                await self._producer.stop()
                self._producer = None

    # --- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KitError("the event bus is closed")

    @contextlib.asynccontextmanager
    async def _broker(self, doing: str, *, bounded: bool = True) -> AsyncIterator[None]:
        """Bound a conversation with the broker by `unavailable_after` (unless it has its own
        bound) and say what went wrong in the port's terms: Unavailable when waiting longer
        could help, KitError otherwise."""
        try:
            async with asyncio.timeout(self._unavailable_after if bounded else None):
                yield
        except TimeoutError as exc:
            raise Unavailable(
                f"{doing}: Kafka at {self._bootstrap} did not answer within "
                f"{self._unavailable_after:g}s"
            ) from exc
        except KafkaError as exc:
            if exc.retriable or isinstance(exc, KafkaTimeoutError):
                raise Unavailable(f"{doing}: Kafka at {self._bootstrap}: {exc!r}") from exc
            raise KitError(f"{doing}: {exc!r}") from exc

    async def _align_retention(self, admin: Any, topics: list[str]) -> None:
        """Give topics that already existed the policy's `retention.ms`, leaving them alone
        when they have it (so running this at every start changes nothing).

        AlterConfigs (the only config change aiokafka speaks) replaces ALL of a topic's own
        settings, e.g. an operator's `cleanup.policy` went back to the broker default when
        only `retention.ms` was sent; so the topic's current overrides are sent along.
        """
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics]
        )
        changes: list[Any] = []
        for response in described:
            for resource in response.to_object()["resources"]:
                name = resource["resource_name"]
                if resource["error_code"] != 0:
                    error = for_code(resource["error_code"]).__name__
                    raise KitError(f"describing topic {name!r}: {error}")
                configs = _topic_overrides(resource)
                wanted = _retention_ms(self._retention, name)
                if configs.get(_RETENTION_MS) == wanted:
                    continue
                if any(value is None for value in configs.values()):
                    log.warning(
                        "topic %s: a sensitive setting cannot be read back (and AlterConfigs"
                        " would drop it), so retention.ms stays %s",
                        name,
                        configs.get(_RETENTION_MS),
                    )
                    continue
                log.info(
                    "topic %s: retention.ms %s -> %s", name, configs.get(_RETENTION_MS), wanted
                )
                changes.append(
                    ConfigResource(
                        ConfigResourceType.TOPIC, name, {**configs, _RETENTION_MS: wanted}
                    )
                )
        if not changes:
            return
        for response in await admin.alter_configs(changes):
            for resource in response.to_object()["resources"]:
                if resource["error_code"] != 0:
                    error = for_code(resource["error_code"]).__name__
                    raise KitError(
                        f"setting retention of topic {resource['resource_name']!r}: {error}"
                        f" {resource['error_message']}"
                    )

    async def _started_producer(self) -> Any:
        self._check_open()
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    client_id=self._client_id,
                    acks="all",
                    # A batch the broker has not taken within this fails (and leaves the
                    # producer's buffer), so a publish that raised Unavailable is not sent
                    # after all once the broker is back, e.g. an upload the user was told to
                    # retry. An idempotent producer never expires batches (aiokafka retries
                    # them forever), hence no idempotence: a duplicate from a retry after a
                    # lost ack is what every consumer drops anyway (idempotent on event id).
                    request_timeout_ms=int(self._unavailable_after * 1000),
                    enable_idempotence=False,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _wait_for_topics(self, admin: Any, topics: Mapping[str, int]) -> None:
        """Until every topic has its partitions, each with a leader: only then can a producer
        or a consumer that starts right after rely on them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._topic_ready_timeout
        while True:
            described = await admin.describe_topics(list(topics))
            ready = {
                entry["topic"]
                for entry in described
                if entry["error_code"] == 0
                and len(entry["partitions"]) >= topics.get(entry["topic"], 1)
                and all(p["error_code"] == 0 and p["leader"] >= 0 for p in entry["partitions"])
            }
            missing = sorted(set(topics) - ready)
            if not missing:
                return
            if loop.time() > deadline:
                raise KitError(f"topics not ready after {self._topic_ready_timeout}s: {missing}")
            await asyncio.sleep(0.1)


class _FinishBatchFirst(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hold a revocation until the caller is done with the batch it was handed."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        if not revoked:
            return
        idle = self._consumer._idle
        if not idle.is_set():
            log.info("rebalance: waiting for the batch in hand before giving up %s", revoked)
        try:
            async with asyncio.timeout(_MAX_BATCH_SECONDS):
                await idle.wait()
        except TimeoutError:
            log.warning("rebalance: batch still in hand after %ss; giving up", _MAX_BATCH_SECONDS)

    async def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        self._consumer._committed.clear()


async def _stop_consumer(consumer: Any) -> None:
    """`consumer.stop()`, minus an aiokafka 0.14 wart: with the broker down, a fetch that
    stop() cancels while it backs off after a connection error lets its CancelledError out of
    stop() (seen on every close with the broker killed), which would end the caller's task as
    if it had been cancelled, and leaves the client's connections open."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # a real cancellation of ours
        log.debug("consumer stop: swallowed the CancelledError of an aiokafka fetch")
        client = getattr(consumer, "_client", None)
        if client is not None:
            await client.close()


class KafkaConsumer:
    """One member of a consumer group on Kafka. Made by `KafkaEventBus.consumer`."""

    def __init__(self, *, bus: KafkaEventBus, group: str, topics: tuple[str, ...]) -> None:
        self._bus = bus
        self._group = group
        self._topics = topics
        self._consumer: Any = None
        self._start_lock = asyncio.Lock()
        self._idle = asyncio.Event()  # set while no fetched batch is being worked on
        self._idle.set()
        # Highest offset committed per partition by this member, so commits never go backwards.
        self._committed: dict[tuple[str, int], int] = {}
        self._closed = False

    async def fetch(self, *, max_records: int = 50, timeout: float = 1.0) -> Sequence[Delivery]:
        if self._closed:
            raise KitError("the consumer is closed")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        # Coming back to fetch means the previous batch is done: a pending rebalance may go on.
        self._idle.set()
        async with self._bus._broker(f"group {self._group} joining"):
            consumer = await self._started()
        batches: dict[Any, list[Any]] = {}
        # getmany ignores its timeout while the group rebalances (it waits for the new
        # assignment, which may wait for another member's batch): bound it ourselves.
        # Cancelling it there is safe: records are taken from its buffer only on return.
        try:
            async with (
                asyncio.timeout(max(timeout, 0.0) + 0.05),
                self._bus._broker(f"group {self._group} fetching", bounded=False),
            ):
                batches = await consumer.getmany(
                    timeout_ms=max(0, int(timeout * 1000)), max_records=max_records
                )
        except TimeoutError:
            pass
        except ConsumerStoppedError:
            if not self._closed:
                raise
            return []  # closed by another task while we waited
        deliveries = [
            Delivery(
                topic=record.topic,
                partition=record.partition,
                offset=record.offset,
                message=Message(
                    key=(record.key or b"").decode(errors="replace"),
                    value=record.value or b"",
                    headers={
                        name: value.decode(errors="replace") for name, value in record.headers
                    },
                ),
            )
            for records in batches.values()
            for record in records
        ]
        if deliveries:
            self._idle.clear()
        return deliveries

    async def commit(self, delivery: Delivery) -> None:
        if self._closed:
            raise KitError("the consumer is closed")
        if self._consumer is None:
            raise KitError("commit before any fetch: this consumer has delivered nothing")
        partition = (delivery.topic, delivery.partition)
        next_offset = delivery.offset + 1
        if self._committed.get(partition, -1) >= next_offset:
            return
        # aiokafka retries a commit until the group coordinator answers, for ever while the
        # broker is down: bounded here, so the caller sees Unavailable and tries again.
        async with self._bus._broker(f"group {self._group} committing {partition}"):
            try:
                await self._consumer.commit(
                    {TopicPartition(delivery.topic, delivery.partition): next_offset}
                )
            except (CommitFailedError, IllegalStateError) as exc:
                # The partition moved to another member (e.g. this one was too slow, or the
                # broker restarted): it resumes from the last commit, so these records are
                # processed again. At-least-once.
                log.warning(
                    "group %s: commit of %s@%d dropped, partition reassigned (%s)",
                    self._group,
                    partition,
                    delivery.offset,
                    exc,
                )
                return
        self._committed[partition] = next_offset

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._idle.set()
        try:
            async with self._start_lock:
                if self._consumer is not None:
                    consumer, self._consumer = self._consumer, None
                    await _stop_consumer(consumer)  # leaves the group: a rebalance starts
        finally:
            self._bus._consumers.discard(self)

    async def _started(self) -> Any:
        async with self._start_lock:
            if self._consumer is None:
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self._bus._bootstrap,
                    client_id=self._bus._client_id,
                    group_id=self._group,
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_poll_interval_ms=int(_MAX_BATCH_SECONDS * 1000),
                    # Members may take as long to rejoin as they may take over a batch.
                    rebalance_timeout_ms=int(_MAX_BATCH_SECONDS * 1000),
                )
                try:
                    await consumer.start()
                    # Subscribing after start, not before: start() would otherwise wait for
                    # the group to assign partitions, which can take as long as another
                    # member's batch; fetch must honour its timeout instead.
                    consumer.subscribe(topics=list(self._topics), listener=_FinishBatchFirst(self))
                except BaseException:
                    await consumer.stop()
                    raise
                self._consumer = consumer
            return self._consumer
