"""The Kafka event bus beyond the shared contract: topic retention and replication, an
unreachable broker, and a broker that crashes (SIGKILL) and comes back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.admin.config_resource import (  # type: ignore[import-untyped]
    ConfigResource,
    ConfigResourceType,
)

from contracts.topics import dead_letter
from kit.bus_kafka import KafkaEventBus
from kit.ports import Delivery, KitError, Message, PruneResult, RetentionPolicy, Unavailable
from testkit.engines import Engines, KafkaEngine, start_kafka


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def admin(kafka_bootstrap: str) -> AsyncIterator[Any]:
    client = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await client.start()
    yield client
    await client.close()


async def topic_configs(admin: Any, topic: str) -> dict[str, tuple[str, int]]:
    """The topic's configs as the broker reports them: name -> (value, source)."""
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    [resource] = response.to_object()["resources"]
    assert resource["error_code"] == 0, resource
    return {
        entry["config_names"]: (entry["config_value"], entry["config_source"])
        for entry in resource["config_entries"]
    }


TOPIC_OVERRIDE = 1  # DescribeConfigs config_source: set on the topic itself


async def test_topics_it_creates_get_the_retention_the_policy_gives_them(
    kafka_bootstrap: str, admin: Any
) -> None:
    work, kept, letters = unique("work"), unique("kept"), dead_letter(unique("work"))
    policy = RetentionPolicy(default_hours=2, overrides={kept: None})
    bus = KafkaEventBus(bootstrap=kafka_bootstrap, client_id=unique("retention"), retention=policy)
    await bus.ensure_topics({work: 2, kept: 1, letters: 1})
    await bus.close()

    assert (await topic_configs(admin, work))["retention.ms"] == (str(2 * 3600 * 1000), 1)
    assert (await topic_configs(admin, kept))["retention.ms"] == ("-1", TOPIC_OVERRIDE)
    assert (await topic_configs(admin, letters))["retention.ms"] == ("-1", TOPIC_OVERRIDE)


async def test_an_existing_topic_is_given_the_policys_retention_and_keeps_its_other_settings(
    kafka_bootstrap: str, admin: Any
) -> None:
    topic = unique("existing")
    operator_settings = {"retention.ms": "1000", "max.message.bytes": "2000000"}
    response = await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=operator_settings)])
    assert response.topic_errors[0][1] == 0
    policy = RetentionPolicy(default_hours=24)
    bus = KafkaEventBus(bootstrap=kafka_bootstrap, client_id=unique("retention"), retention=policy)

    await bus.ensure_topics({topic: 1})
    configs = await topic_configs(admin, topic)
    assert configs["retention.ms"] == (str(24 * 3600 * 1000), TOPIC_OVERRIDE)
    assert configs["max.message.bytes"] == ("2000000", TOPIC_OVERRIDE)

    await bus.ensure_topics({topic: 1})  # again, as at every start: nothing changes
    assert await topic_configs(admin, topic) == configs
    await bus.close()


async def test_a_replication_factor_the_cluster_cannot_give_is_refused(
    kafka_bootstrap: str,
) -> None:
    bus = KafkaEventBus(
        bootstrap=kafka_bootstrap, client_id=unique("replicas"), replication_factor=3
    )
    with pytest.raises(KitError, match="InvalidReplicationFactor"):
        await bus.ensure_topics({unique("replicated"): 1})  # one broker here, 3 asked for
    await bus.close()


async def test_prune_leaves_retention_to_the_broker(kafka_bootstrap: str) -> None:
    bus = KafkaEventBus(bootstrap=kafka_bootstrap, client_id=unique("prune"))
    assert await bus.prune() == PruneResult()
    await bus.close()


def closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_broker_is_unavailable_within_the_bound() -> None:
    bus = KafkaEventBus(bootstrap=f"127.0.0.1:{closed_port()}", unavailable_after=2.0)
    loop = asyncio.get_running_loop()
    attempts: tuple[Callable[[], Awaitable[object]], ...] = (
        lambda: bus.publish("work", Message(key="k", value=b"v")),
        lambda: bus.ensure_topics({"work": 1}),
        lambda: bus.consumer(group="g", topics=["work"]).fetch(timeout=0.5),
    )
    for attempt in attempts:
        started = loop.time()
        with pytest.raises(Unavailable, match=r"127\.0\.0\.1"):
            await attempt()
        assert loop.time() - started < 4.0
    await bus.close()


# --- a broker crash ----------------------------------------------------------------------


@pytest.fixture
def own_kafka(engines: Engines, tmp_path: Path) -> Iterator[KafkaEngine]:
    """A Kafka of this test alone (the session's one must stay up for the other tests).
    Started here, on the main thread, which outlives it (see `start_kafka`)."""
    kafka = start_kafka(tmp_path)
    try:
        yield kafka
    finally:
        kafka.stop()


async def until_published(bus: KafkaEventBus, topic: str, value: str, within: float) -> None:
    """Publish, retrying while the broker is Unavailable (as the runtime does)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            await bus.publish(topic, Message(key=value, value=value.encode()))
            return
        except Unavailable:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_consumers_ride_out_a_broker_crash_and_resume_from_their_commits(
    own_kafka: KafkaEngine,
) -> None:
    topic, group = unique("crash"), unique("group")
    bound = 3.0
    bus = KafkaEventBus(
        bootstrap=own_kafka.bootstrap, client_id=unique("crash"), unavailable_after=bound
    )
    await bus.ensure_topics({topic: 2})
    before = [f"before-{i}" for i in range(20)]
    for value in before:
        await bus.publish(topic, Message(key=value, value=value.encode()))

    consumer = bus.consumer(group=group, topics=[topic])
    seen: list[tuple[str, Delivery]] = []  # (phase, delivery)
    committed: dict[int, int] = {}  # partition -> next offset, as acknowledged by the broker
    loop = asyncio.get_running_loop()

    async def process(phase: str, batch: list[Delivery], *, commit: bool = True) -> None:
        """Handle a batch, then commit the last record of each partition (the runtime's way);
        a commit the broker cannot take is retried, except during the outage."""
        seen.extend((phase, d) for d in batch)
        if commit:
            await commit_batch(phase, batch)

    async def commit_batch(phase: str, batch: list[Delivery]) -> None:
        for delivery in {d.partition: d for d in batch}.values():
            while True:
                try:
                    await consumer.commit(delivery)
                except Unavailable:
                    if phase == "outage":  # expected: tried again after the restart
                        return
                    await asyncio.sleep(0.5)
                    continue
                committed[delivery.partition] = max(
                    committed.get(delivery.partition, 0), delivery.offset + 1
                )
                break

    # Half of the records processed and committed before the crash; the last batch is
    # processed but its commit comes too late: the broker is gone by then.
    deadline = loop.time() + 60.0
    in_hand: list[Delivery] = []
    while len(seen) < 10 and loop.time() < deadline:
        await commit_batch("before", in_hand)
        in_hand = list(await consumer.fetch(max_records=5, timeout=0.5))
        await process("before", in_hand, commit=False)
    assert len(seen) >= 10
    assert in_hand
    committed_at_crash = dict(committed)

    own_kafka.kill()  # SIGKILL: no clean shutdown

    late_calls: tuple[Callable[[], Awaitable[None]], ...] = (
        lambda: bus.publish(topic, Message(key="lost", value=b"during-outage")),
        lambda: consumer.commit(in_hand[-1]),
    )
    for late in late_calls:
        started = loop.time()
        with pytest.raises(Unavailable):
            await late()
        assert loop.time() - started <= bound + 1.0
    outage_end = loop.time() + 3.0
    while loop.time() < outage_end:  # the consumer keeps polling: no error but Unavailable
        try:
            await process("outage", list(await consumer.fetch(max_records=5, timeout=0.5)))
        except Unavailable:
            await asyncio.sleep(0.2)

    # Back on the same port with the same data; the event loop keeps running meanwhile.
    await asyncio.to_thread(own_kafka.restart)
    after = [f"after-{i}" for i in range(5)]
    for value in after:
        await until_published(bus, topic, value, within=60.0)

    deadline = loop.time() + 90.0
    while loop.time() < deadline:
        if {d.message.value.decode() for _, d in seen} >= {*before, *after}:
            break
        try:
            await process("after", list(await consumer.fetch(max_records=5, timeout=0.5)))
        except Unavailable:
            await asyncio.sleep(0.5)
    await consumer.close()

    values = [d.message.value.decode() for _, d in seen]
    assert set(values) >= {*before, *after}, "an acknowledged record was lost"
    for phase, delivery in seen:
        if phase != "before":
            # At-least-once allows what was not committed to come again, never what was.
            assert delivery.offset >= committed_at_crash.get(delivery.partition, 0), delivery

    # The commits made after the restart hold: a new member of the group starts after them.
    # (Only a commit dropped by a rebalance could leave it a record, never one committed
    # before the crash; none was dropped in our runs, where it got nothing at all.)
    fresh = bus.consumer(group=group, topics=[topic])
    leftovers: list[Delivery] = []
    quiet_until = loop.time() + 8.0
    while loop.time() < quiet_until:
        leftovers.extend(await fresh.fetch(timeout=0.5))

    # A service stopping while the broker is down again closes at once, without an error.
    own_kafka.kill()
    for _ in range(3):
        with contextlib.suppress(Unavailable):
            await fresh.fetch(timeout=0.5)
    started = loop.time()
    await fresh.close()
    await bus.close()
    assert loop.time() - started <= bound + 1.0
    assert all(d.offset >= committed_at_crash.get(d.partition, 0) for d in leftovers), leftovers
    assert len(leftovers) < len(before) + len(after) - sum(committed_at_crash.values())
