"""Event bus on Apache Kafka (aiokafka): the distributed adapter.

Keys are UTF-8 bytes (Kafka's default partitioner keeps one key on one partition), headers go
on the wire as (str, bytes) pairs with the trace context added on publish. Consumers commit
explicitly and start at the earliest record when their group has no committed offset.

Rebalancing waits for the batch in hand: aiokafka rebalances in the background, so without
care a partition could move to another member while this one is still working on records it
fetched from it, and both would process them. The rebalance listener holds the revocation until
the caller comes back to `fetch` (having committed what it processed) or closes, the way the
Java client only rebalances inside `poll()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    ConsumerStoppedError,
    IllegalStateError,
    TopicAlreadyExistsError,
    for_code,
)

from kit.ports import Delivery, KitError, Message
from kit.tracing import inject

__all__ = ["KafkaEventBus"]

log = logging.getLogger(__name__)

# How long a member may spend on one batch before the group gives up on it and moves on
# (Kafka's max.poll.interval.ms; also how long a rebalance may wait for the batch in hand).
_MAX_BATCH_SECONDS = 300.0


class KafkaEventBus:
    """`EventBus` on a Kafka cluster. Connects lazily: nothing happens until first use."""

    def __init__(
        self,
        *,
        bootstrap: str,
        client_id: str = "imaging-uploader",
        replication_factor: int = 1,
        topic_ready_timeout: float = 30.0,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self._replication_factor = replication_factor
        self._topic_ready_timeout = topic_ready_timeout
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        self._consumers: set[KafkaConsumer] = set()
        self._closed = False

    async def publish(self, topic: str, message: Message) -> None:
        producer = await self._started_producer()
        headers = [(name, value.encode()) for name, value in inject(message.headers).items()]
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
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, client_id=self._client_id)
        try:
            await admin.start()
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=partitions,
                        replication_factor=self._replication_factor,
                    )
                    for name, partitions in topics.items()
                ]
            )
            for topic, code, *detail in response.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise for_code(code)(f"creating topic {topic!r}: {detail}")
            await self._wait_for_topics(admin, topics)
        finally:
            await admin.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for consumer in list(self._consumers):
            await consumer.close()
        async with self._producer_lock:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None

    # --- helpers -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KitError("the event bus is closed")

    async def _started_producer(self) -> Any:
        self._check_open()
        async with self._producer_lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    client_id=self._client_id,
                    acks="all",
                    # No duplicates from the producer's own retries after a lost ack.
                    enable_idempotence=True,
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
        consumer = await self._started()
        batches: dict[Any, list[Any]] = {}
        # getmany ignores its timeout while the group rebalances (it waits for the new
        # assignment, which may wait for another member's batch): bound it ourselves.
        # Cancelling it there is safe: records are taken from its buffer only on return.
        try:
            async with asyncio.timeout(max(timeout, 0.0) + 0.05):
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
        try:
            await self._consumer.commit(
                {TopicPartition(delivery.topic, delivery.partition): next_offset}
            )
        except (CommitFailedError, IllegalStateError) as exc:
            # The partition moved to another member (e.g. this one was too slow): it resumes
            # from the last commit, so these records are processed again. At-least-once.
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
                    await self._consumer.stop()  # leaves the group: a rebalance starts at once
                    self._consumer = None
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
