"""Each real engine answers: Kafka (aiokafka), MinIO (minio SDK), FerretDB (pymongo async)."""

from __future__ import annotations

import asyncio
import io
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from minio import Minio
from pymongo import AsyncMongoClient

from testkit.engines import Engines, MinioEngine


async def test_kafka_produce_and_consume(kafka_bootstrap: str) -> None:
    topic = f"engines-test-{uuid.uuid4().hex[:12]}"  # auto-created by the broker
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"hello kafka", key=b"k1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"engines-test-{uuid.uuid4().hex[:12]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        message = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"k1", b"hello kafka")


def test_minio_put_and_get(minio: MinioEngine) -> None:
    client = Minio(
        minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=False
    )
    bucket = f"engines-test-{uuid.uuid4().hex[:12]}"
    client.make_bucket(bucket)
    body = b"hello minio" * 1000
    client.put_object(bucket, "dir/object.bin", io.BytesIO(body), len(body))
    response = client.get_object(bucket, "dir/object.bin")
    try:
        assert response.read() == body
    finally:
        response.close()
        response.release_conn()
    assert [o.object_name for o in client.list_objects(bucket, recursive=True)] == [
        "dir/object.bin"
    ]


async def test_ferretdb_insert_and_find(mongo_url: str) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        mongo_url, serverSelectionTimeoutMS=10_000
    )
    try:
        collection = client["engines_test"][f"docs_{uuid.uuid4().hex[:12]}"]
        await collection.insert_one({"upload_id": "u-1", "files": 3, "tags": ["a", "b"]})
        found = await collection.find_one({"upload_id": "u-1"}, {"_id": False})
        assert found == {"upload_id": "u-1", "files": 3, "tags": ["a", "b"]}
        assert await collection.count_documents({}) == 1
    finally:
        await client.close()


def test_env_points_at_the_engines(engines: Engines) -> None:
    env = engines.env()
    assert env["UPLOADER_KAFKA_BOOTSTRAP"] == engines.kafka.bootstrap
    assert env["UPLOADER_S3_ENDPOINT"] == engines.minio.endpoint
    assert env["UPLOADER_MONGO_URL"] == engines.ferretdb.url
    assert engines.env(select_backends=True)["UPLOADER_BUS"] == "kafka"
    assert all(e.running() for e in engines.all())
