"""The job-tracker's faust app: in-process for the event handling, and as the real worker
process (`uploader run job-tracker --bus kafka --db mongo`) against the real Kafka and FerretDB.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from prometheus_client import REGISTRY

from contracts.envelope import CloudEvent
from contracts.events import Event, ItemStatusChanged, JobOpened
from contracts.topics import ITEM_STATUS, dead_letter
from job_tracker.faust_app import build_app, delivery_of, text_headers
from job_tracker.read_model import COLLECTION, JobStatuses
from job_tracker.service import NAME
from job_tracker.spec import SPEC
from job_tracker.status import JOB_FAILED_MESSAGE
from kit.bus_kafka import KafkaEventBus
from kit.docs_mongo import MongoDocuments
from kit.docs_sqlite import SqliteDocuments
from kit.ports import Collection, Consumer, Message
from kit.runtime import Emit, EventProcessor, publish_events
from kit.service import Platform, build_processor
from kit.settings import PlatformSettings

STOP_WITHIN_SECONDS = 30.0
READY_WITHIN_SECONDS = 120.0


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def events_total(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "uploader_events_total", {"service": NAME, "topic": ITEM_STATUS, "outcome": outcome}
    )
    return value or 0.0


def envelope_bytes(event: Event) -> bytes:
    return CloudEvent.new(
        source="/imaging-uploader/test",
        type=event.event_type,
        subject=event.job_id,
        data=event.model_dump(mode="json"),
    ).to_bytes()


def faust_event(
    value: bytes, *, key: str = "job", headers: Mapping[str, bytes] | None = None, offset: int = 0
) -> Any:
    """What the agent gets from faust: raw key and value, `{name: bytes}` headers, the message."""
    message = SimpleNamespace(topic=ITEM_STATUS, partition=0, offset=offset)
    return SimpleNamespace(
        key=key.encode(), value=value, headers=dict(headers or {}), message=message
    )


@dataclass
class RecordingBus:
    """Just enough of an `EventBus` to see what the processor publishes (dead letters)."""

    published: list[tuple[str, Message]] = field(default_factory=list)

    async def publish(self, topic: str, message: Message) -> None:
        self.published.append((topic, message))

    def consumer(self, *, group: str, topics: Sequence[str]) -> Consumer:
        raise NotImplementedError

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        return None

    async def close(self) -> None:
        return None


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[SqliteDocuments]:
    docs = SqliteDocuments(path=tmp_path / "documents.sqlite3")
    try:
        yield docs
    finally:
        await docs.close()


def processor(docs: Any, bus: Any = None, **settings: Any) -> EventProcessor:
    platform = Platform(
        settings=PlatformSettings(**settings), bus=bus or RecordingBus(), store=None, docs=docs
    )  # type: ignore[arg-type]
    return build_processor(SPEC, platform)


# --- one processing step for both runners, in-process ----------------------------------------


async def test_each_event_is_folded_into_its_jobs_status_document(docs: SqliteDocuments) -> None:
    tracker = processor(docs)
    before = events_total("processed")
    await tracker.process(
        delivery_of(
            faust_event(envelope_bytes(JobOpened(job_id="job", kind="direct", item_ids=("a",))))
        )
    )
    await tracker.process(
        delivery_of(
            faust_event(
                envelope_bytes(
                    ItemStatusChanged(job_id="job", item_id="a", status="completed", service="t")
                ),
                offset=1,
            )
        )
    )
    status = await JobStatuses(docs=docs).get("job")
    assert status is not None
    assert status.status == "done"
    assert events_total("processed") == before + 2


async def test_an_undecodable_message_goes_to_the_dead_letter_topic_not_lost(
    docs: SqliteDocuments,
) -> None:
    bus = RecordingBus()
    tracker = processor(docs, bus)
    before = events_total("dead_lettered")
    await tracker.process(delivery_of(faust_event(b"not a cloud event")))
    await tracker.process(delivery_of(faust_event(b'{"specversion": "1.0"}')))
    assert events_total("dead_lettered") == before + 2
    assert [topic for topic, _ in bus.published] == [dead_letter(ITEM_STATUS)] * 2
    assert await docs.collection(COLLECTION).count() == 0


async def test_a_redelivered_event_changes_nothing(docs: SqliteDocuments) -> None:
    tracker = processor(docs)
    opened = envelope_bytes(JobOpened(job_id="job", kind="direct", item_ids=("a",)))
    done = envelope_bytes(
        ItemStatusChanged(job_id="job", item_id="a", status="completed", service="t")
    )
    for value in (opened, done):
        await tracker.process(delivery_of(faust_event(value)))
    once = await docs.collection(COLLECTION).get("job")
    for value in (done, opened, done):  # redelivered, in any order
        await tracker.process(delivery_of(faust_event(value)))
    assert await docs.collection(COLLECTION).get("job") == once


async def test_a_failing_store_is_retried_then_the_event_goes_to_the_dead_letter_topic(
    docs: SqliteDocuments,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = 0

    async def failing_put(self: Any, status: Any) -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("store unavailable")

    monkeypatch.setattr(JobStatuses, "put", failing_put)
    bus = RecordingBus()
    tracker = processor(docs, bus, max_attempts=3, retry_base_seconds=0)
    value = envelope_bytes(JobOpened(job_id="job-9", kind="direct", item_ids=("a",)))
    before = events_total("dead_lettered")
    await tracker.process(
        delivery_of(faust_event(value, key="job-9", headers={"traceparent": b"00-x"}))
    )
    assert attempts == 3
    assert events_total("dead_lettered") == before + 1
    [(topic, message)] = bus.published
    assert topic == dead_letter(ITEM_STATUS)
    assert (message.key, message.value) == ("job-9", value)
    assert message.headers["x-dlq-source-topic"] == ITEM_STATUS
    assert message.headers["x-dlq-service"] == NAME
    assert message.headers["x-dlq-attempts"] == "3"
    assert message.headers["traceparent"] == "00-x"


async def test_processing_continues_the_publishers_trace_from_the_kafka_headers(
    docs: SqliteDocuments, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    async def spy(event: Event, *, statuses: Any) -> Sequence[Emit]:
        seen.append(trace.get_current_span().get_span_context().trace_id)
        return ()

    monkeypatch.setattr("job_tracker.service.track", spy)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01".encode()}
    await processor(docs).process(
        delivery_of(
            faust_event(
                envelope_bytes(JobOpened(job_id="job", kind="direct", item_ids=("a",))),
                headers=headers,
            )
        )
    )
    assert seen == [int(trace_id, 16)]


def test_kafka_headers_are_read_as_text_whatever_shape_faust_hands_over() -> None:
    assert text_headers({"a": b"1", "b": "2", "c": None}) == {"a": "1", "b": "2"}
    assert text_headers([("a", b"1")]) == {"a": "1"}
    assert text_headers(None) == {}


async def test_the_app_never_declares_topics_and_serves_health_on_the_settings_address(
    tmp_path: Path,
) -> None:
    from uploader.bootstrap import open_platform

    settings = PlatformSettings(
        bus="kafka",
        kafka_bootstrap="127.0.0.1:1",
        http_host="127.0.0.2",
        http_port=18123,
        data_dir=tmp_path,
    )
    platform = open_platform(settings)
    try:
        app = build_app(platform, build_processor(SPEC, platform))
        conf = app.conf
        assert conf.id == NAME
        assert conf.topic_allow_declare is False
        assert conf.topic_disable_leader is True
        assert (conf.web_enabled, conf.web_bind, conf.web_port) == (True, "127.0.0.2", 18123)
        assert str(conf.broker[0]) == "kafka://127.0.0.1:1"
        assert [agent.channel.get_topic_name() for agent in app.agents.values()] == [ITEM_STATUS]
    finally:
        await platform.close()


# --- the worker process, on the real engines -------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class WorkerProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WITHIN_SECONDS
        async with httpx.AsyncClient(timeout=2.0) as client:
            while loop.time() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(
                        f"the worker exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(self.url + "/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.25)
        pytest.fail(f"the worker was not ready within {READY_WITHIN_SECONDS}s:\n{self.log_tail()}")

    async def stop(self) -> int:
        """SIGTERM, then the exit code (killed, and the test failed, if it takes too long)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.process.wait, STOP_WITHIN_SECONDS)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
            pytest.fail(
                f"the worker did not stop within {STOP_WITHIN_SECONDS}s after SIGTERM:\n"
                f"{self.log_tail()}"
            )
        return self.process.returncode


@dataclass
class TrackerEnv:
    kafka_bootstrap: str
    mongo_url: str
    database: str
    workdir: Path

    @contextlib.contextmanager
    def worker(self, name: str) -> Iterator[WorkerProcess]:
        """`uploader run job-tracker --bus kafka --db mongo` as a child process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("UPLOADER_")}
        env.update(
            UPLOADER_KAFKA_BOOTSTRAP=self.kafka_bootstrap,
            UPLOADER_MONGO_URL=self.mongo_url,
            UPLOADER_MONGO_DATABASE=self.database,
            UPLOADER_DATA_DIR=str(self.workdir / "var"),
        )
        port = free_port()
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uploader",
                    "run",
                    "job-tracker",
                    "--bus",
                    "kafka",
                    "--db",
                    "mongo",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process=process, port=port, log=log)
        try:
            yield worker
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
async def tracker_env(kafka_bootstrap: str, mongo_url: str, tmp_path: Path) -> TrackerEnv:
    bus = KafkaEventBus(bootstrap=kafka_bootstrap, client_id=unique("job-tracker-test"))
    try:
        await bus.ensure_topics({ITEM_STATUS: 4})
    finally:
        await bus.close()
    return TrackerEnv(
        kafka_bootstrap=kafka_bootstrap,
        mongo_url=mongo_url,
        database=unique("tracker").replace("-", "_"),
        workdir=tmp_path,
    )


@pytest.fixture
async def bus(tracker_env: TrackerEnv) -> AsyncIterator[KafkaEventBus]:
    bus = KafkaEventBus(bootstrap=tracker_env.kafka_bootstrap, client_id=unique("job-tracker-test"))
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def job_status(tracker_env: TrackerEnv) -> AsyncIterator[Collection]:
    docs = MongoDocuments(url=tracker_env.mongo_url, database=tracker_env.database)
    try:
        yield docs.collection(COLLECTION)
    finally:
        await docs.close()


async def publish(bus: KafkaEventBus, *events: Event) -> None:
    await publish_events(bus, [Emit(ITEM_STATUS, event) for event in events], source="test")


def item(job_id: str, item_id: str, status: str, reason: str | None = None) -> ItemStatusChanged:
    return ItemStatusChanged(
        job_id=job_id,
        item_id=item_id,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        service="test",
    )


async def wait_for_status(
    statuses: Collection, job_id: str, *wanted: str, within: float = 60.0
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    doc = None
    while loop.time() < deadline:
        doc = await statuses.get(job_id)
        if doc is not None and doc.get("status") in wanted:
            return doc
        await asyncio.sleep(0.2)
    pytest.fail(f"job {job_id} did not reach {wanted} within {within}s; last: {doc}")


async def test_the_worker_tracks_jobs_from_kafka_into_mongodb_and_stops_on_sigterm(
    tracker_env: TrackerEnv, bus: KafkaEventBus, job_status: Collection
) -> None:
    done_job, failed_job = unique("job"), unique("job")
    with tracker_env.worker("tracker") as worker:
        await worker.wait_ready()
        async with httpx.AsyncClient(base_url=worker.url, timeout=5.0) as client:
            assert (await client.get("/healthz")).status_code == 200

            await bus.publish(ITEM_STATUS, Message(key=done_job, value=b"\x00 not json"))
            await publish(
                bus,
                JobOpened(job_id=done_job, kind="direct", item_ids=("a", "b")),
                item(done_job, "a", "processing"),
                item(done_job, "a", "completed"),
                item(done_job, "b", "completed"),
                JobOpened(job_id=failed_job, kind="direct", item_ids=("a", "b")),
                item(failed_job, "a", "completed"),
                item(failed_job, "b", "error", "Duplicate file"),
            )
            done = await wait_for_status(job_status, done_job, "done")
            assert (done["total"], done["completed_count"]) == (2, 2)
            failed = await wait_for_status(job_status, failed_job, "error")
            assert failed["message"] == JOB_FAILED_MESSAGE == "One or more files failed"
            assert failed["items"]["b"]["reason"] == "Duplicate file"

            metrics = (await client.get("/metrics")).text
            processed = (
                f'uploader_events_total{{outcome="processed",service="{NAME}",'
                f'topic="{ITEM_STATUS}"}}'
            )
            assert processed in metrics
            assert 'outcome="dead_lettered"' in metrics  # the undecodable one, kept
        assert await worker.stop() == 0, worker.log_tail()


async def test_a_restarted_worker_picks_up_what_was_published_while_it_was_down(
    tracker_env: TrackerEnv, bus: KafkaEventBus, job_status: Collection
) -> None:
    job = unique("job")
    with tracker_env.worker("first") as first:
        await first.wait_ready()
        await publish(bus, JobOpened(job_id=job, kind="direct", item_ids=("a",)))
        await wait_for_status(job_status, job, "queued")
        assert await first.stop() == 0, first.log_tail()

    await publish(bus, item(job, "a", "completed"))
    with tracker_env.worker("second") as second:
        await second.wait_ready()
        doc = await wait_for_status(job_status, job, "done")
        assert doc["items"]["a"]["status"] == "completed"
        assert await second.stop() == 0, second.log_tail()
