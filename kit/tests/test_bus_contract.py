"""The event-bus contract: one abstract suite, run against every adapter.

`BusContract` pins what services may rely on from any `EventBus`; each adapter subclasses it
and provides the fixtures `bus` and `pruning_bus` (whose `prune` may delete records a second
old). Topic and group names are unique per test so tests sharing one Kafka never see each
other's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import MappingProxyType

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from contracts.topics import dead_letter
from kit.bus_kafka import KafkaEventBus
from kit.bus_sqlite import SqliteEventBus
from kit.ports import Consumer, Delivery, EventBus, Message, PruneResult, RetentionPolicy
from kit.settings import PlatformSettings
from kit.tracing import extract, inject

# Records older than a second may be pruned: tests wait ~1 s instead of a week.
ONE_SECOND = RetentionPolicy(default_hours=1 / 3600)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def drain(consumer: Consumer, count: int, *, within: float = 60.0) -> list[Delivery]:
    """Fetch until `count` records came (or time is up); returns all that came."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    received: list[Delivery] = []
    while len(received) < count and loop.time() < deadline:
        received.extend(await consumer.fetch(max_records=50, timeout=0.5))
    return received


def last_per_partition(batch: Sequence[Delivery]) -> list[Delivery]:
    last: dict[tuple[str, int], Delivery] = {}
    for delivery in batch:
        last[(delivery.topic, delivery.partition)] = delivery
    return list(last.values())


class BusContract:
    """Behaviour every `EventBus` adapter has. Subclasses provide the fixture `bus`."""

    async def test_a_published_message_arrives_with_its_key_value_and_headers(
        self, bus: EventBus
    ) -> None:
        topic, group = unique("round-trip"), unique("group")
        await bus.ensure_topics({topic: 1})
        value = bytes(range(256))  # binary-safe, not just text
        await bus.publish(
            topic, Message(key="job-1", value=value, headers={"ce-type": "item.status.v1"})
        )

        consumer = bus.consumer(group=group, topics=[topic])
        [delivery] = await drain(consumer, 1)

        assert (delivery.topic, delivery.partition, delivery.offset) == (topic, 0, 0)
        assert delivery.message.key == "job-1"
        assert delivery.message.value == value
        assert delivery.message.headers["ce-type"] == "item.status.v1"
        await consumer.close()

    async def test_one_key_stays_on_one_partition_in_publish_order(self, bus: EventBus) -> None:
        topic, group = unique("ordering"), unique("group")
        await bus.ensure_topics({topic: 4})
        for i in range(12):
            await bus.publish(topic, Message(key="subject-7", value=str(i).encode()))
            await bus.publish(topic, Message(key=f"other-{i}", value=b"noise"))

        consumer = bus.consumer(group=group, topics=[topic])
        received = await drain(consumer, 24)

        assert len(received) == 24
        ours = [d for d in received if d.message.key == "subject-7"]
        assert len({d.partition for d in ours}) == 1
        assert [d.message.value for d in ours] == [str(i).encode() for i in range(12)]
        assert [d.offset for d in ours] == sorted(d.offset for d in ours)
        await consumer.close()

    async def test_a_new_consumer_of_the_group_resumes_after_the_last_commit(
        self, bus: EventBus
    ) -> None:
        topic, group = unique("resume"), unique("group")
        await bus.ensure_topics({topic: 1})
        for i in range(5):
            await bus.publish(topic, Message(key="k", value=str(i).encode()))

        first = bus.consumer(group=group, topics=[topic])
        received = await drain(first, 5)
        assert [d.message.value for d in received] == [b"0", b"1", b"2", b"3", b"4"]
        await first.commit(received[2])  # marks records 0, 1 and 2 as done
        await first.close()

        second = bus.consumer(group=group, topics=[topic])
        resumed = await drain(second, 2)
        assert [(d.offset, d.message.value) for d in resumed] == [(3, b"3"), (4, b"4")]
        assert await second.fetch(timeout=1.0) == []
        await second.close()

    async def test_uncommitted_records_go_to_the_next_consumer_but_not_twice_to_one(
        self, bus: EventBus
    ) -> None:
        topic, group = unique("redeliver"), unique("group")
        await bus.ensure_topics({topic: 1})
        for i in range(3):
            await bus.publish(topic, Message(key="k", value=str(i).encode()))

        first = bus.consumer(group=group, topics=[topic])
        received = await drain(first, 3)
        assert len(received) == 3
        assert await first.fetch(timeout=1.0) == []  # fetched is not re-fetched by its consumer
        await first.close()  # as if the process stopped before committing

        second = bus.consumer(group=group, topics=[topic])
        redelivered = await drain(second, 3)
        assert [d.offset for d in redelivered] == [d.offset for d in received]
        assert [d.message for d in redelivered] == [d.message for d in received]
        await second.close()

    async def test_every_group_sees_every_message(self, bus: EventBus) -> None:
        topic = unique("fan-out")
        await bus.ensure_topics({topic: 2})
        for i in range(6):
            await bus.publish(topic, Message(key=f"k{i}", value=str(i).encode()))

        for group in (unique("tracker"), unique("auditor")):
            consumer = bus.consumer(group=group, topics=[topic])
            received = await drain(consumer, 6)
            assert sorted(d.message.value for d in received) == [str(i).encode() for i in range(6)]
            await consumer.close()

    async def test_ensure_topics_partition_count_is_respected(self, bus: EventBus) -> None:
        topic, group = unique("partitions"), unique("group")
        await bus.ensure_topics({topic: 3})
        await bus.ensure_topics({topic: 3})  # existing topics are left alone, not an error
        for i in range(30):
            await bus.publish(topic, Message(key=f"upload-{i}", value=b"x"))

        consumer = bus.consumer(group=group, topics=[topic])
        received = await drain(consumer, 30)

        assert len(received) == 30
        partitions = {d.partition for d in received}
        assert partitions <= {0, 1, 2}
        assert len(partitions) > 1
        await consumer.close()

    async def test_one_consumer_reads_several_topics(self, bus: EventBus) -> None:
        images, reports, group = unique("images"), unique("reports"), unique("group")
        await bus.ensure_topics({images: 2, reports: 1})
        await bus.publish(images, Message(key="a", value=b"image"))
        await bus.publish(reports, Message(key="a", value=b"report"))

        consumer = bus.consumer(group=group, topics=[images, reports])
        received = await drain(consumer, 2)
        assert sorted((d.topic, d.message.value) for d in received) == [
            (images, b"image"),
            (reports, b"report"),
        ]
        await consumer.close()

    async def test_fetch_waits_for_a_record_published_while_it_waits(self, bus: EventBus) -> None:
        topic, group = unique("long-poll"), unique("group")
        await bus.ensure_topics({topic: 1})
        consumer = bus.consumer(group=group, topics=[topic])
        assert await consumer.fetch(timeout=0.5) == []

        loop = asyncio.get_running_loop()
        started = loop.time()
        waiting = asyncio.ensure_future(consumer.fetch(timeout=20.0))
        await asyncio.sleep(0.3)
        await bus.publish(topic, Message(key="k", value=b"late"))
        received = await waiting
        if not received:  # a Kafka member may still be joining the group: one more round
            received = list(await consumer.fetch(timeout=20.0))

        assert [d.message.value for d in received] == [b"late"]
        assert loop.time() - started < 20.0
        await consumer.close()

    async def test_trace_context_published_with_a_message_is_extractable_by_its_consumer(
        self, bus: EventBus
    ) -> None:
        topic, group = unique("traced"), unique("group")
        await bus.ensure_topics({topic: 1})
        publisher_span = SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(publisher_span)))
        try:
            await bus.publish(topic, Message(key="k", value=b"v", headers={"ce-id": "e-1"}))
        finally:
            otel_context.detach(token)

        consumer = bus.consumer(group=group, topics=[topic])
        [delivery] = await drain(consumer, 1)
        await consumer.close()

        headers = delivery.message.headers
        assert headers["ce-id"] == "e-1"  # the caller's headers are kept beside the trace
        assert headers["traceparent"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        parent = trace.get_current_span(extract(headers)).get_span_context()
        assert parent.trace_id == publisher_span.trace_id
        assert parent.span_id == publisher_span.span_id
        assert parent.is_remote

    async def test_members_of_one_group_split_the_work_and_never_share_a_record(
        self, bus: EventBus
    ) -> None:
        topic, group = unique("split"), unique("group")
        await bus.ensure_topics({topic: 4})
        members = {
            "a": bus.consumer(group=group, topics=[topic]),
            "b": bus.consumer(group=group, topics=[topic]),
        }
        seen: dict[str, list[tuple[int, int]]] = {"a": [], "b": []}
        stop = asyncio.Event()
        progress = asyncio.Event()

        async def work(name: str, consumer: Consumer) -> None:
            while not stop.is_set():
                batch = await consumer.fetch(timeout=0.2)
                seen[name].extend((d.partition, d.offset) for d in batch)
                if batch:
                    progress.set()
                for delivery in last_per_partition(batch):
                    await consumer.commit(delivery)

        workers = [asyncio.ensure_future(work(n, c)) for n, c in members.items()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 90.0
        published = 0
        try:
            # Keep publishing until both members got records: the group has split.
            while not (seen["a"] and seen["b"]) and loop.time() < deadline:
                for _ in range(8):
                    await bus.publish(topic, Message(key=f"k{published}", value=b"x"))
                    published += 1
                await asyncio.sleep(0.2)
            while len(seen["a"]) + len(seen["b"]) < published and loop.time() < deadline:
                progress.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await progress.wait()
        finally:
            stop.set()
            await asyncio.gather(*workers)
            for consumer in members.values():
                await consumer.close()

        assert seen["a"], "member a never got a partition"
        assert seen["b"], "member b never got a partition"
        a, b = set(seen["a"]), set(seen["b"])
        assert not a & b, "a record was handed to both members"
        assert len(seen["a"]) + len(seen["b"]) == len(a | b) == published

    async def test_a_joining_member_waits_until_the_batch_in_hand_is_done(
        self, bus: EventBus
    ) -> None:
        topic, group = unique("handover"), unique("group")
        await bus.ensure_topics({topic: 2})
        for i in range(10):
            await bus.publish(topic, Message(key=f"k{i}", value=str(i).encode()))

        first = bus.consumer(group=group, topics=[topic])
        in_hand: list[Delivery] = []
        received = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60.0
        while received < 10 and loop.time() < deadline:
            for delivery in last_per_partition(in_hand):  # done with the previous batch
                await first.commit(delivery)
            in_hand = list(await first.fetch(timeout=0.5))
            received += len(in_hand)
        assert received == 10

        # `first` is still working on `in_hand` (not committed): a new member must not get it.
        second = bus.consumer(group=group, topics=[topic])
        while_busy = await drain(second, 1, within=2.0)
        assert while_busy == []

        for delivery in last_per_partition(in_hand):
            await first.commit(delivery)
        await first.fetch(timeout=0.5)  # back for more: partitions may move now
        after = await drain(second, 1, within=3.0)
        assert after == []  # everything was committed: nothing to hand over twice

        await bus.publish(topic, Message(key="k-new", value=b"new"))
        loop_deadline = loop.time() + 30.0
        fresh: list[Delivery] = []
        while not fresh and loop.time() < loop_deadline:
            fresh = [*await first.fetch(timeout=0.2), *await second.fetch(timeout=0.2)]
        assert [d.message.value for d in fresh] == [b"new"]
        await first.close()
        await second.close()

    async def test_prune_keeps_what_a_group_has_not_committed_and_offsets_go_on(
        self, pruning_bus: EventBus
    ) -> None:
        bus = pruning_bus
        topic, done, behind = unique("retained"), unique("done"), unique("behind")
        await bus.ensure_topics({topic: 1})
        for i in range(4):
            await bus.publish(topic, Message(key="k", value=str(i).encode()))
        for group, upto in ((done, 3), (behind, 1)):
            consumer = bus.consumer(group=group, topics=[topic])
            received = await drain(consumer, 4)
            await consumer.commit(received[upto])
            await consumer.close()
        await asyncio.sleep(1.2)  # every record is now past its retention

        result = await bus.prune()
        assert isinstance(result, PruneResult)
        await bus.publish(topic, Message(key="k", value=b"4"))

        consumer = bus.consumer(group=behind, topics=[topic])
        resumed = await drain(consumer, 3)
        assert [(d.offset, d.message.value) for d in resumed] == [(2, b"2"), (3, b"3"), (4, b"4")]
        await consumer.close()
        consumer = bus.consumer(group=done, topics=[topic])
        assert [(d.offset, d.message.value) for d in await drain(consumer, 1)] == [(4, b"4")]
        await consumer.close()

    async def test_prune_leaves_records_younger_than_their_retention(self, bus: EventBus) -> None:
        topic, group = unique("young"), unique("group")
        await bus.ensure_topics({topic: 1})
        await bus.publish(topic, Message(key="k", value=b"fresh"))
        consumer = bus.consumer(group=group, topics=[topic])
        [delivery] = await drain(consumer, 1)
        await consumer.commit(delivery)
        await consumer.close()

        assert (await bus.prune()).deleted == 0
        late = bus.consumer(group=unique("late"), topics=[topic])
        assert [d.message.value for d in await drain(late, 1)] == [b"fresh"]
        await late.close()


class TestSqliteBus(BusContract):
    @pytest.fixture
    async def bus(self, tmp_path: Path) -> AsyncIterator[EventBus]:
        bus = SqliteEventBus(path=tmp_path / "bus.sqlite3")
        yield bus
        await bus.close()

    @pytest.fixture
    async def pruning_bus(self, tmp_path: Path) -> AsyncIterator[EventBus]:
        bus = SqliteEventBus(path=tmp_path / "bus.sqlite3", retention=ONE_SECOND)
        yield bus
        await bus.close()

    async def test_state_survives_closing_and_reopening_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "events" / "bus.sqlite3"
        topic, group = unique("durable"), unique("group")
        bus = SqliteEventBus(path=path)
        await bus.ensure_topics({topic: 3})
        for i in range(4):
            await bus.publish(
                topic, Message(key="job-9", value=str(i).encode(), headers={"n": "1"})
            )
        consumer = bus.consumer(group=group, topics=[topic])
        received = await drain(consumer, 4)
        await consumer.commit(received[1])
        await bus.close()  # closes the consumer too

        reopened = SqliteEventBus(path=path)
        await reopened.publish(topic, Message(key="job-9", value=b"4"))
        consumer = reopened.consumer(group=group, topics=[topic])
        resumed = await drain(consumer, 3)
        assert [d.message.value for d in resumed] == [b"2", b"3", b"4"]
        assert [d.offset for d in resumed] == [2, 3, 4]  # offsets continue, not restart
        assert {d.partition for d in resumed} == {received[0].partition}
        assert resumed[0].message.headers["n"] == "1"
        await reopened.close()

    async def test_records_of_another_process_reach_this_one_and_a_crashed_member_is_replaced(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "bus.sqlite3"
        topic, group = unique("shared-file"), unique("group")
        # A lease far longer than the test: the crashed member must be noticed by its PID.
        bus = SqliteEventBus(path=path, lease_seconds=600.0)
        await bus.ensure_topics({topic: 5})
        script = textwrap.dedent(
            """
            import asyncio, os, sys
            from pathlib import Path
            from kit.bus_sqlite import SqliteEventBus
            from kit.ports import Message

            async def main():
                bus = SqliteEventBus(path=Path(sys.argv[1]))
                topic, group = sys.argv[2], sys.argv[3]
                for i in range(3):
                    await bus.publish(topic, Message(key="same-key", value=str(i).encode()))
                consumer = bus.consumer(group=group, topics=[topic])
                print(len(await consumer.fetch(timeout=10)), flush=True)
                os._exit(0)  # a crash: no commit, no close, its group membership left behind

            asyncio.run(main())
            """
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            script,
            str(path),
            topic,
            group,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 0, err.decode()
        assert out.decode().strip() == "3"

        await bus.publish(topic, Message(key="same-key", value=b"3"))
        consumer = bus.consumer(group=group, topics=[topic])
        loop = asyncio.get_running_loop()
        started = loop.time()
        received = await drain(consumer, 4, within=20.0)
        assert loop.time() - started < 10.0
        assert [d.message.value for d in received] == [b"0", b"1", b"2", b"3"]
        assert len({d.partition for d in received}) == 1  # crc32 partitioning, any process
        await bus.close()

    async def test_a_closed_bus_refuses_work(self, tmp_path: Path) -> None:
        bus = SqliteEventBus(path=tmp_path / "bus.sqlite3")
        await bus.publish("t", Message(key="k", value=b"v"))
        await bus.close()
        with pytest.raises(Exception, match="closed"):
            await bus.publish("t", Message(key="k", value=b"v"))


@pytest.mark.engines
class TestKafkaBus(BusContract):
    @pytest.fixture
    async def bus(self, kafka_bootstrap: str) -> AsyncIterator[EventBus]:
        bus = KafkaEventBus(bootstrap=kafka_bootstrap, client_id=unique("contract"))
        yield bus
        await bus.close()

    @pytest.fixture
    async def pruning_bus(self, kafka_bootstrap: str) -> AsyncIterator[EventBus]:
        # On Kafka the broker applies retention, not prune, and it deletes by age alone,
        # whatever the groups committed (Kafka's semantics). Its check runs every 5 minutes,
        # so a one-second retention here could delete the test's records mid-test: a week.
        bus = KafkaEventBus(bootstrap=kafka_bootstrap, client_id=unique("contract"))
        yield bus
        await bus.close()


def test_inject_adds_nothing_without_a_current_span_and_keeps_the_callers_headers() -> None:
    replayed = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert inject(replayed) == replayed
    assert inject({}) == {}


def test_retention_is_a_week_and_dead_letters_are_kept_forever_by_default() -> None:
    policy = RetentionPolicy()
    assert policy.hours_for("items.status") == 168.0
    assert policy.seconds_for("items.status") == 168 * 3600
    assert policy.hours_for(dead_letter("items.status")) is None
    assert policy.seconds_for(dead_letter("items.status")) is None


def test_a_per_topic_override_wins_over_the_default_and_the_dead_letter_rule() -> None:
    policy = RetentionPolicy(
        default_hours=24,
        dead_letter_hours=24 * 90,
        overrides={"items.status": 720, "uploads.received": None, "x.dlq": 1},
    )
    assert policy.hours_for("items.status") == 720
    assert policy.hours_for("uploads.received") is None
    assert policy.hours_for("x.dlq") == 1
    assert policy.hours_for(dead_letter("items.ingested")) == 24 * 90
    assert policy.hours_for("reports.parsed") == 24


def test_a_retention_policy_cannot_be_changed_or_given_a_non_positive_time() -> None:
    overrides = {"a": 1.0}
    policy = RetentionPolicy(overrides=overrides)
    overrides["a"] = 2.0  # the caller's dict is copied, not held
    assert policy.hours_for("a") == 1.0
    assert isinstance(policy.overrides, MappingProxyType)
    for bad in ({"default_hours": 0}, {"dead_letter_hours": -1}, {"overrides": {"a": 0}}):
        with pytest.raises(ValueError, match="retention"):
            RetentionPolicy(**bad)


def test_retention_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPLOADER_EVENT_RETENTION_HOURS", "48")
    monkeypatch.setenv("UPLOADER_EVENT_RETENTION_OVERRIDES", '{"items.status": 720, "a": null}')
    monkeypatch.setenv("UPLOADER_DEAD_LETTER_RETENTION_HOURS", "2160")
    monkeypatch.setenv("UPLOADER_KAFKA_REPLICATION_FACTOR", "3")
    settings = PlatformSettings()
    policy = RetentionPolicy(
        default_hours=settings.event_retention_hours,
        dead_letter_hours=settings.dead_letter_retention_hours,
        overrides=settings.event_retention_overrides,
    )
    assert policy.hours_for("items.ingested") == 48
    assert policy.hours_for("items.status") == 720
    assert policy.hours_for("a") is None
    assert policy.hours_for(dead_letter("a.b")) == 2160
    assert settings.kafka_replication_factor == 3
    defaults = PlatformSettings.model_construct()
    assert defaults.dead_letter_retention_hours is None
    assert defaults.kafka_unavailable_after_seconds == 10.0
