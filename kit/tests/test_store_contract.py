"""The ObjectStore contract, pinned once and run against both adapters.

`TestFilesystemStore` runs everywhere; `TestS3Store` runs against a real MinIO server started by
the root conftest's `minio` fixture (marker `engines`).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from minio import Minio
from minio.error import S3Error

from kit.ports import ObjectNotFound, ObjectStore
from kit.store_fs import FilesystemObjectStore
from kit.store_s3 import S3ObjectStore

MiB = 1 << 20


async def chunks_of(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


async def failing_after(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part
    raise RuntimeError("source broke")


async def read_all(stream: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def random_bytes(size: int) -> bytes:
    return os.urandom(size)


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


class ObjectStoreContract:
    """Behaviour every ObjectStore adapter must have. Subclasses provide `store`."""

    @pytest.fixture
    def bucket(self) -> str:
        return f"t-{uuid.uuid4().hex[:20]}"

    async def test_put_reports_the_size_and_hashes_of_the_bytes_streamed_in(
        self, store: ObjectStore, bucket: str
    ) -> None:
        data = random_bytes(3 * MiB + 12345)
        stored = await store.put(
            bucket, "scan.tgz", chunks_of(*split(data, 65536 + 7)), content_type="application/gzip"
        )
        assert stored.bucket == bucket
        assert stored.key == "scan.tgz"
        assert stored.size == len(data)
        assert stored.md5 == hashlib.md5(data).hexdigest()
        assert stored.sha256 == hashlib.sha256(data).hexdigest()
        assert stored.content_type == "application/gzip"

    async def test_get_streams_a_multi_chunk_object_back_unchanged(
        self, store: ObjectStore, bucket: str
    ) -> None:
        data = random_bytes(5 * MiB + 3)
        await store.put(bucket, "a.bin", chunks_of(*split(data, MiB // 3)), content_type="x/y")
        received = [chunk async for chunk in store.get(bucket, "a.bin")]
        assert len(received) > 1, "a 5 MiB object should come back in several chunks"
        assert max(len(chunk) for chunk in received) <= 4 * MiB
        assert b"".join(received) == data
        assert await store.size(bucket, "a.bin") == len(data)

    async def test_an_empty_object_round_trips(self, store: ObjectStore, bucket: str) -> None:
        stored = await store.put(bucket, "empty", chunks_of(), content_type="text/plain")
        assert stored.size == 0
        assert stored.sha256 == hashlib.sha256(b"").hexdigest()
        assert await read_all(store.get(bucket, "empty")) == b""
        assert await store.size(bucket, "empty") == 0

    async def test_empty_chunks_in_the_stream_are_harmless(
        self, store: ObjectStore, bucket: str
    ) -> None:
        stored = await store.put(
            bucket, "k", chunks_of(b"", b"ab", b"", b"c", b""), content_type="text/plain"
        )
        assert stored.size == 3
        assert await read_all(store.get(bucket, "k")) == b"abc"

    async def test_keys_may_contain_slashes(self, store: ObjectStore, bucket: str) -> None:
        await store.put(bucket, "job/1/item/2.jpg", chunks_of(b"one"), content_type="image/jpeg")
        await store.put(bucket, "job/1/item/3.jpg", chunks_of(b"two"), content_type="image/jpeg")
        assert await read_all(store.get(bucket, "job/1/item/2.jpg")) == b"one"
        assert await read_all(store.get(bucket, "job/1/item/3.jpg")) == b"two"

    async def test_put_replaces_an_existing_object(self, store: ObjectStore, bucket: str) -> None:
        await store.put(bucket, "k", chunks_of(b"old contents"), content_type="text/plain")
        await store.put(bucket, "k", chunks_of(b"new"), content_type="text/plain")
        assert await read_all(store.get(bucket, "k")) == b"new"
        assert await store.size(bucket, "k") == 3

    async def test_a_source_that_raises_leaves_no_object(
        self, store: ObjectStore, bucket: str
    ) -> None:
        with pytest.raises(RuntimeError, match="source broke"):
            await store.put(bucket, "k", failing_after(b"x" * 1000), content_type="x/y")
        with pytest.raises(ObjectNotFound):
            await read_all(store.get(bucket, "k"))
        await self.assert_no_leftovers(store, bucket)

    async def test_a_source_that_raises_after_several_parts_leaves_no_object(
        self, store: ObjectStore, bucket: str
    ) -> None:
        # More than one S3 part (16 MiB) so a multipart upload is under way when it fails.
        block = random_bytes(MiB)
        with pytest.raises(RuntimeError, match="source broke"):
            await store.put(bucket, "big", failing_after(*[block] * 20), content_type="x/y")
        with pytest.raises(ObjectNotFound):
            await store.size(bucket, "big")
        await self.assert_no_leftovers(store, bucket)

    async def test_a_failed_put_keeps_the_previous_object(
        self, store: ObjectStore, bucket: str
    ) -> None:
        await store.put(bucket, "k", chunks_of(b"good"), content_type="text/plain")
        with pytest.raises(RuntimeError):
            await store.put(bucket, "k", failing_after(b"bad" * 100), content_type="text/plain")
        assert await read_all(store.get(bucket, "k")) == b"good"

    async def test_a_cancelled_put_leaves_no_object(self, store: ObjectStore, bucket: str) -> None:
        started = asyncio.Event()
        block = random_bytes(MiB)

        async def stalls() -> AsyncIterator[bytes]:
            # More than one S3 part, so a multipart upload is under way when cancelled.
            for _ in range(17):
                yield block
            started.set()
            await asyncio.Event().wait()
            yield b"never"

        task = asyncio.create_task(store.put(bucket, "k", stalls(), content_type="x/y"))
        await started.wait()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(ObjectNotFound):
            await store.size(bucket, "k")
        await self.assert_no_leftovers(store, bucket)

    async def test_get_of_a_missing_key_raises_object_not_found(
        self, store: ObjectStore, bucket: str
    ) -> None:
        await store.put(bucket, "present", chunks_of(b"x"), content_type="x/y")
        with pytest.raises(ObjectNotFound):
            await read_all(store.get(bucket, "absent"))
        with pytest.raises(ObjectNotFound):
            await read_all(store.get(f"{bucket}-nobucket", "absent"))

    async def test_size_of_a_missing_key_raises_object_not_found(
        self, store: ObjectStore, bucket: str
    ) -> None:
        await store.put(bucket, "dir/file", chunks_of(b"x"), content_type="x/y")
        with pytest.raises(ObjectNotFound):
            await store.size(bucket, "absent")
        with pytest.raises(ObjectNotFound):
            await store.size(bucket, "dir")  # a prefix of keys is not an object
        with pytest.raises(ObjectNotFound):
            await store.size(f"{bucket}-nobucket", "absent")

    async def test_delete_removes_and_is_idempotent(self, store: ObjectStore, bucket: str) -> None:
        await store.put(bucket, "a/b", chunks_of(b"x"), content_type="x/y")
        await store.delete(bucket, "a/b")
        with pytest.raises(ObjectNotFound):
            await store.size(bucket, "a/b")
        await store.delete(bucket, "a/b")
        await store.delete(bucket, "never-existed")
        await store.delete(f"{bucket}-nobucket", "never-existed")

    @pytest.mark.parametrize(
        "key", ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "a/./b", "trailing/", "a\\b"]
    )
    async def test_keys_that_could_escape_the_bucket_are_refused(
        self, store: ObjectStore, bucket: str, key: str
    ) -> None:
        with pytest.raises(ValueError, match="invalid object key"):
            await store.put(bucket, key, chunks_of(b"x"), content_type="x/y")
        with pytest.raises(ValueError, match="invalid object key"):
            await read_all(store.get(bucket, key))
        with pytest.raises(ValueError, match="invalid object key"):
            await store.size(bucket, key)
        with pytest.raises(ValueError, match="invalid object key"):
            await store.delete(bucket, key)

    @pytest.mark.parametrize("name", ["", "ab", "Upper", "../x", "a/b", "-x-", "x" * 64])
    async def test_invalid_bucket_names_are_refused(self, store: ObjectStore, name: str) -> None:
        with pytest.raises(ValueError, match="invalid bucket name"):
            await store.put(name, "k", chunks_of(b"x"), content_type="x/y")

    async def test_concurrent_puts_of_different_keys_do_not_interfere(
        self, store: ObjectStore, bucket: str
    ) -> None:
        payloads = {f"item/{i}": random_bytes(200_000 + i) for i in range(12)}
        results = await asyncio.gather(
            *(
                store.put(bucket, key, chunks_of(*split(data, 30_000)), content_type="x/y")
                for key, data in payloads.items()
            )
        )
        for result in results:
            assert result.sha256 == hashlib.sha256(payloads[result.key]).hexdigest()
        for key, data in payloads.items():
            assert await read_all(store.get(bucket, key)) == data

    async def test_abandoning_a_get_midway_releases_it(
        self, store: ObjectStore, bucket: str
    ) -> None:
        data = random_bytes(3 * MiB)
        await store.put(bucket, "k", chunks_of(data), content_type="x/y")
        for _ in range(3):
            stream = store.get(bucket, "k")
            assert await anext(stream)
            await stream.aclose()  # type: ignore[attr-defined]
        assert await read_all(store.get(bucket, "k")) == data

    # --- memory (slow-ish: ~200 MiB through the adapter) ------------------------------------

    async def test_memory_stays_flat_while_200_mib_stream_through(
        self, store: ObjectStore, bucket: str
    ) -> None:
        """MEMORY TEST: puts and gets ~200 MiB; peak RSS growth must stay under 64 MiB."""
        block = random_bytes(MiB)
        blocks = 200

        async def source() -> AsyncIterator[bytes]:
            for i in range(blocks):
                # 64 KiB pieces, like an HTTP body; slices are fresh objects each time.
                for offset in range(0, MiB, 65536):
                    yield block[offset : offset + 65536] if i % 2 else block[offset:][:65536]

        expected = hashlib.sha256()
        for _ in range(blocks):
            expected.update(block)

        # Warm up: imports, thread pools, connections.
        await store.put(bucket, "warm", chunks_of(b"w" * 1000), content_type="x/y")
        await read_all(store.get(bucket, "warm"))
        gc.collect()

        with PeakRss() as peak:
            stored = await store.put(
                bucket, "large.bin", source(), content_type="application/octet-stream"
            )
            received = hashlib.sha256()
            async for chunk in store.get(bucket, "large.bin"):
                received.update(chunk)
        assert stored.size == blocks * MiB
        assert stored.sha256 == expected.hexdigest()
        assert received.hexdigest() == expected.hexdigest()
        assert peak.growth < 64 * MiB, f"RSS grew by {peak.growth / MiB:.1f} MiB"

    # --- adapter-specific checks ----------------------------------------------------------------

    async def assert_no_leftovers(self, store: ObjectStore, bucket: str) -> None:
        """No temporary files / unfinished uploads remain after a failed put."""
        raise NotImplementedError


class PeakRss:
    """Samples this process's resident set size in a thread; `growth` = peak - start."""

    def __init__(self, interval: float = 0.005) -> None:
        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.start = 0
        self.peak = 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self.start = self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.start


class TestFilesystemStore(ObjectStoreContract):
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        return tmp_path / "objects"

    @pytest.fixture
    async def store(self, root: Path) -> AsyncIterator[FilesystemObjectStore]:
        store = FilesystemObjectStore(root=root)
        yield store
        await store.close()

    async def assert_no_leftovers(self, store: ObjectStore, bucket: str) -> None:
        assert isinstance(store, FilesystemObjectStore)
        directory = store.root / bucket
        leftovers = [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []
        assert leftovers == []

    async def test_objects_are_files_under_root_bucket_key(
        self, store: FilesystemObjectStore, root: Path
    ) -> None:
        await store.put("raw", "job/7/a.jpg", chunks_of(b"jpeg"), content_type="image/jpeg")
        assert (root / "raw" / "job" / "7" / "a.jpg").read_bytes() == b"jpeg"

    async def test_a_reader_of_the_old_object_is_not_disturbed_by_a_replace(
        self, store: FilesystemObjectStore
    ) -> None:
        old = random_bytes(3 * MiB)
        await store.put("raw", "k", chunks_of(old), content_type="x/y")
        stream = store.get("raw", "k")
        first = await anext(stream)
        await store.put("raw", "k", chunks_of(b"new"), content_type="x/y")
        rest = await read_all(stream)
        assert first + rest == old


def _endpoint(raw: str) -> tuple[str, bool]:
    for scheme, secure in (("http://", False), ("https://", True)):
        if raw.startswith(scheme):
            return raw.removeprefix(scheme).rstrip("/"), secure
    return raw, False


@pytest.mark.engines
class TestS3Store(ObjectStoreContract):
    @pytest.fixture
    async def store(self, minio: Any) -> AsyncIterator[S3ObjectStore]:
        endpoint, secure = _endpoint(minio.endpoint)
        store = S3ObjectStore(
            endpoint=endpoint,
            access_key=minio.access_key,
            secret_key=minio.secret_key,
            secure=secure,
        )
        yield store
        await store.close()

    @pytest.fixture
    def admin(self, minio: Any) -> Iterator[Minio]:
        """A plain SDK client to look behind the adapter's back."""
        endpoint, secure = _endpoint(minio.endpoint)
        client = Minio(
            endpoint, access_key=minio.access_key, secret_key=minio.secret_key, secure=secure
        )
        yield client
        client._http.clear()

    @pytest.fixture(autouse=True)
    def _remember_admin(self, admin: Minio) -> None:
        self._admin = admin

    async def assert_no_leftovers(self, store: ObjectStore, bucket: str) -> None:
        admin = self._admin
        if not await asyncio.to_thread(admin.bucket_exists, bucket):
            return
        objects = await asyncio.to_thread(lambda: list(admin.list_objects(bucket, recursive=True)))
        assert [o.object_name for o in objects] == []
        # No aborted-but-not-cleaned multipart upload (its parts would use disk forever).
        uploads = await asyncio.to_thread(admin._list_multipart_uploads, bucket, max_uploads=100)
        assert list(uploads.uploads) == []

    async def test_buckets_are_created_on_first_put(
        self, store: S3ObjectStore, bucket: str, admin: Minio
    ) -> None:
        assert not await asyncio.to_thread(admin.bucket_exists, bucket)
        await store.put(bucket, "k", chunks_of(b"x"), content_type="text/plain")
        assert await asyncio.to_thread(admin.bucket_exists, bucket)
        stat = await asyncio.to_thread(admin.stat_object, bucket, "k")
        assert stat.content_type == "text/plain"

    async def test_a_large_put_goes_up_in_parts(
        self, store: S3ObjectStore, bucket: str, admin: Minio
    ) -> None:
        data = random_bytes(20 * MiB)
        stored = await store.put(bucket, "big", chunks_of(*split(data, MiB)), content_type="x/y")
        stat = await asyncio.to_thread(admin.stat_object, bucket, "big")
        # A multipart ETag is "<md5 of part md5s>-<part count>"; ours is the real MD5.
        assert stat.etag is not None and stat.etag.endswith("-2")
        assert stored.md5 == hashlib.md5(data).hexdigest()
        assert await read_all(store.get(bucket, "big")) == data

    async def test_a_server_error_during_the_upload_is_raised_not_hung(
        self, minio: Any, bucket: str
    ) -> None:
        endpoint, secure = _endpoint(minio.endpoint)
        store = S3ObjectStore(
            endpoint=endpoint, access_key=minio.access_key, secret_key="wrong-secret", secure=secure
        )
        store._known_buckets.add(bucket)  # skip the bucket check: fail inside the upload
        block = random_bytes(MiB)
        try:
            with pytest.raises(S3Error):
                # More than the pipe holds: the source must stop being read, not block forever.
                await asyncio.wait_for(
                    store.put(bucket, "k", chunks_of(*[block] * 40), content_type="x/y"), 60
                )
        finally:
            await store.close()
