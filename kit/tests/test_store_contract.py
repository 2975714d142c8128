"""The ObjectStore contract, pinned once and run against both adapters.

`TestFilesystemStore` runs everywhere; `TestS3Store` runs against a real MinIO server started by
the root conftest's `minio` fixture (marker `engines`). What needs a MinIO of its own (stopped
and restarted, or on a full drive) is in test_store_s3_outages.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import hashlib
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from minio import Minio
from minio.credentials.providers import StaticProvider
from minio.error import S3Error
from minio.minioadmin import MinioAdmin

from kit.ports import ObjectNotFound, ObjectStore, StorageFull, StoredObject, Unavailable
from kit.store_fs import FilesystemObjectStore
from kit.store_s3 import S3ObjectStore
from testkit.engines import MinioEngine, start_minio
from testkit.fs import small_tmpfs

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


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def put_under_way(
    store: ObjectStore, bucket: str, key: str
) -> AsyncIterator[Callable[[], Awaitable[StoredObject]]]:
    """A put that has sent 17 MiB (more than one S3 part) and waits; call the yielded function
    to send the last MiB and get its result. Cancelled on exit if not finished."""
    release = asyncio.Event()
    stalled = asyncio.Event()
    block = random_bytes(MiB)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(17):
            yield block
        stalled.set()
        await release.wait()
        yield block

    task = asyncio.create_task(store.put(bucket, key, source(), content_type="x/y"))

    async def finish() -> StoredObject:
        release.set()
        return await task

    try:
        await stalled.wait()
        yield finish
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# A child process that starts a put of 17 MiB and hangs, to be killed -9 mid-put.
_PUT_THEN_HANG = """
import asyncio, sys
from pathlib import Path
from kit.store_fs import FilesystemObjectStore
from kit.store_s3 import S3ObjectStore

async def source():
    block = bytes(1 << 20)
    for _ in range(17):
        yield block
    await asyncio.Event().wait()
    yield b""

async def main():
    store = {store}
    await store.put(sys.argv[1], sys.argv[2], source(), content_type="x/y")

asyncio.run(main())
"""


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

    async def test_a_put_cancelled_as_it_starts_leaves_nothing(
        self, store: ObjectStore, bucket: str
    ) -> None:
        # Cancelled while its first blocking step (opening the file, making the bucket) runs.
        for attempt in range(5):
            task = asyncio.create_task(
                store.put(bucket, f"job/{attempt}", chunks_of(b"x"), content_type="x/y")
            )
            for _ in range(attempt):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if not task.cancelled():  # it got through first: not what this test is about
                await store.delete(bucket, f"job/{attempt}")
        # Clears the empty key directories a completed-then-deleted put leaves, not recent
        # temporary files or uploads.
        await store.discard_incomplete(older_than_seconds=3600, buckets=[bucket])
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

    async def test_keys_named_like_temporary_files_are_refused(
        self, store: ObjectStore, bucket: str
    ) -> None:
        for key in (".put-abc123.tmp", "job/.put-x.tmp"):
            with pytest.raises(ValueError, match="reserved for incomplete writes"):
                await store.put(bucket, key, chunks_of(b"x"), content_type="x/y")
        await store.put(bucket, "job/.put-x.tmp.jpg", chunks_of(b"x"), content_type="x/y")

    async def test_an_os_error_of_the_chunk_source_is_not_taken_for_a_full_store(
        self, store: ObjectStore, bucket: str
    ) -> None:
        async def source() -> AsyncIterator[bytes]:
            yield b"x" * 1000
            raise OSError(errno.ENOSPC, "the source's own disk is full")

        with pytest.raises(OSError, match="the source's own disk") as raised:
            await store.put(bucket, "k", source(), content_type="x/y")
        assert not isinstance(raised.value, StorageFull)
        await self.assert_no_leftovers(store, bucket)

    # --- listing ----------------------------------------------------------------------------

    LISTED_KEYS = (
        "job1/b",
        "job1-old/a",
        "job10/a",
        "job1/sub/c",
        "Zed",
        "\u00e9mile",
        "e",
        "job1/a",
    )

    async def _put_listed_keys(self, store: ObjectStore, bucket: str) -> None:
        for size, key in enumerate(self.LISTED_KEYS):
            await store.put(bucket, key, chunks_of(b"x" * size), content_type="x/y")

    async def test_list_streams_every_object_in_key_order_with_its_size_and_time(
        self, store: ObjectStore, bucket: str
    ) -> None:
        before = datetime.now(UTC) - timedelta(seconds=2)
        await self._put_listed_keys(store, bucket)
        after = datetime.now(UTC) + timedelta(seconds=2)
        listed = [found async for found in store.list(bucket)]
        # UTF-8 byte order, as S3 lists: "-" < "/" < "0", and "\u00e9" after every ASCII key.
        assert [found.key for found in listed] == sorted(self.LISTED_KEYS, key=str.encode)
        assert {found.key: found.size for found in listed} == {
            key: size for size, key in enumerate(self.LISTED_KEYS)
        }
        for found in listed:
            assert found.modified.utcoffset() == timedelta(0)
            assert before <= found.modified <= after

    @pytest.mark.parametrize(
        ("prefix", "expected"),
        [
            ("job1/", ["job1/a", "job1/b", "job1/sub/c"]),
            ("job1", ["job1-old/a", "job1/a", "job1/b", "job1/sub/c", "job10/a"]),
            ("job1/s", ["job1/sub/c"]),
            ("job1/sub/c", ["job1/sub/c"]),
            ("nothing", []),
        ],
    )
    async def test_list_with_a_prefix_lists_only_the_keys_that_start_with_it(
        self, store: ObjectStore, bucket: str, prefix: str, expected: list[str]
    ) -> None:
        await self._put_listed_keys(store, bucket)
        assert [found.key async for found in store.list(bucket, prefix)] == expected

    async def test_list_of_a_missing_bucket_lists_nothing(
        self, store: ObjectStore, bucket: str
    ) -> None:
        assert [found async for found in store.list(bucket)] == []

    async def test_list_goes_on_past_a_page_of_a_thousand_keys(
        self, store: ObjectStore, bucket: str
    ) -> None:
        keys = [f"job{i % 7}/{i:05d}" for i in range(1001)]
        limit = asyncio.Semaphore(32)

        async def put(key: str) -> None:
            async with limit:
                await store.put(bucket, key, chunks_of(b"k"), content_type="x/y")

        await asyncio.gather(*(put(key) for key in keys))
        listing = store.list(bucket)
        first = await anext(listing)
        rest = [found.key async for found in listing]
        assert [first.key, *rest] == sorted(keys)

    async def test_list_does_not_show_a_put_still_under_way(
        self, store: ObjectStore, bucket: str
    ) -> None:
        await store.put(bucket, "done/a", chunks_of(b"x"), content_type="x/y")
        async with put_under_way(store, bucket, "job/running") as finish:
            await self.wait_until_writing(store, bucket, "job/running")
            assert [found.key async for found in store.list(bucket)] == ["done/a"]
            await finish()
        assert [found.key async for found in store.list(bucket)] == ["done/a", "job/running"]

    # --- discarding incomplete writes ---------------------------------------------------------

    async def test_discard_incomplete_leaves_objects_and_running_puts_alone(
        self, store: ObjectStore, bucket: str
    ) -> None:
        await store.put(bucket, "done/a", chunks_of(b"kept"), content_type="x/y")
        async with put_under_way(store, bucket, "job/running") as finish:
            await self.wait_until_writing(store, bucket, "job/running")
            assert await store.discard_incomplete(older_than_seconds=0, buckets=[bucket]) == 0
            stored = await finish()
        assert stored.size == 18 * MiB
        assert await store.size(bucket, "job/running") == 18 * MiB
        assert await read_all(store.get(bucket, "done/a")) == b"kept"

    async def test_discard_incomplete_removes_what_a_put_killed_mid_way_left_behind(
        self, store: ObjectStore, bucket: str
    ) -> None:
        key = "job7/item3"
        code = _PUT_THEN_HANG.format(store=self.child_store_expression())
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            code,
            bucket,
            key,
            *self.child_store_args(store),
            stdin=subprocess.DEVNULL,
        )
        try:
            await self.wait_until_writing(store, bucket, key)
        finally:
            child.kill()  # SIGKILL: no clean-up of any kind runs in the child
            await child.wait()
        assert await self.incomplete_writes(store, bucket, key) == 1
        # Too recent for a sweep that wants an hour of silence.
        assert await store.discard_incomplete(older_than_seconds=3600, buckets=[bucket]) == 0
        assert await self.incomplete_writes(store, bucket, key) == 1

        assert await store.discard_incomplete(older_than_seconds=0, buckets=[bucket]) == 1
        assert await self.incomplete_writes(store, bucket, key) == 0
        await self.assert_no_leftovers(store, bucket)
        assert [found async for found in store.list(bucket)] == []
        # The store works as before.
        await store.put(bucket, key, chunks_of(b"again"), content_type="x/y")
        assert await read_all(store.get(bucket, key)) == b"again"

    async def test_discard_incomplete_refuses_a_negative_age(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError, match="older_than_seconds"):
            await store.discard_incomplete(older_than_seconds=-1)

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

    async def wait_until_writing(self, store: ObjectStore, bucket: str, key: str) -> None:
        """Until a put of `key` has written some bytes (a temp file, an uploaded part)."""
        raise NotImplementedError

    async def incomplete_writes(self, store: ObjectStore, bucket: str, key: str) -> int:
        """How many unfinished writes of `key` the backend holds."""
        raise NotImplementedError

    def child_store_expression(self) -> str:
        """Python making this adapter in a child process from sys.argv[3:]."""
        raise NotImplementedError

    def child_store_args(self, store: ObjectStore) -> list[str]:
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
        """Neither files nor the directories a failed put made."""
        assert isinstance(store, FilesystemObjectStore)
        directory = store.root / bucket
        leftovers = list(directory.rglob("*")) if directory.exists() else []
        assert leftovers == []

    def temp_files(self, store: ObjectStore, bucket: str, key: str) -> list[Path]:
        assert isinstance(store, FilesystemObjectStore)
        directory = (store.root / bucket / key).parent
        return list(directory.glob(".put-*.tmp")) if directory.is_dir() else []

    async def wait_until_writing(self, store: ObjectStore, bucket: str, key: str) -> None:
        async def written() -> bool:
            return any(path.stat().st_size > 0 for path in self.temp_files(store, bucket, key))

        await eventually(written, f"a temporary file of {key} has bytes")

    async def incomplete_writes(self, store: ObjectStore, bucket: str, key: str) -> int:
        return len(self.temp_files(store, bucket, key))

    def child_store_expression(self) -> str:
        return "FilesystemObjectStore(root=Path(sys.argv[3]))"

    def child_store_args(self, store: ObjectStore) -> list[str]:
        assert isinstance(store, FilesystemObjectStore)
        return [str(store.root)]

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

    async def test_root_bucket_and_key_directories_are_private_and_objects_are_0600(
        self, store: FilesystemObjectStore, root: Path
    ) -> None:
        previous = os.umask(0o022)  # the usual umask, which would leave 0755 and 0644
        try:
            await store.put("raw", "job/7/a.jpg", chunks_of(b"jpeg"), content_type="image/jpeg")
        finally:
            os.umask(previous)
        for directory in (root, root / "raw", root / "raw" / "job", root / "raw" / "job" / "7"):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
        assert stat.S_IMODE((root / "raw" / "job" / "7" / "a.jpg").stat().st_mode) == 0o600

    async def test_discard_incomplete_spares_a_live_put_however_long_its_file_sat_idle(
        self, store: FilesystemObjectStore
    ) -> None:
        async with put_under_way(store, "raw", "job/slow") as finish:
            await self.wait_until_writing(store, "raw", "job/slow")
            (temp,) = self.temp_files(store, "raw", "job/slow")
            an_hour_ago = time.time() - 3600
            os.utime(temp, (an_hour_ago, an_hour_ago))  # a client that paused for an hour
            assert await store.discard_incomplete(older_than_seconds=60) == 0
            assert temp.exists()
            stored = await finish()
        assert await store.size("raw", "job/slow") == stored.size == 18 * MiB

    async def test_discard_incomplete_removes_empty_key_directories_and_keeps_buckets(
        self, store: FilesystemObjectStore, root: Path
    ) -> None:
        await store.put("raw", "job1/item1", chunks_of(b"x"), content_type="x/y")
        await store.put("raw", "job2/sub/item2", chunks_of(b"y"), content_type="x/y")
        await store.put("clean", "job1/item1.jpg", chunks_of(b"z"), content_type="x/y")
        await store.delete("raw", "job1/item1")
        await store.delete("raw", "job2/sub/item2")
        await store.delete("clean", "job1/item1.jpg")
        (root / "lost+found" / "empty").mkdir(parents=True)  # not a bucket: not ours to touch
        assert await store.discard_incomplete(older_than_seconds=3600) == 0
        assert names_in(root) == ["clean", "lost+found", "raw"]
        assert names_in(root / "raw") == names_in(root / "clean") == []
        assert (root / "lost+found" / "empty").is_dir()

    async def test_discard_incomplete_sweeps_every_bucket_or_only_those_named(
        self, store: FilesystemObjectStore, root: Path
    ) -> None:
        # What a put killed before it renamed leaves: an unlocked temporary file.
        for bucket in ("raw", "clean"):
            await store.put(bucket, "job/kept", chunks_of(b"x"), content_type="x/y")
            (root / bucket / "job" / ".put-dead1234.tmp").write_bytes(b"half")
        assert await store.discard_incomplete(older_than_seconds=0, buckets=["clean"]) == 1
        assert (root / "raw" / "job" / ".put-dead1234.tmp").exists()
        assert await store.discard_incomplete(older_than_seconds=0) == 1
        assert files_under(root) == ["clean/job/kept", "raw/job/kept"]

    async def test_a_put_makes_its_directory_again_when_a_sweep_removed_it_in_between(
        self, store: FilesystemObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_mkstemp = tempfile.mkstemp
        swept: list[str] = []

        def sweep_first(*args: Any, **kwargs: Any) -> tuple[int, str]:
            # What a concurrent discard_incomplete does to the new, still empty directory.
            if not swept:
                swept.append(str(kwargs["dir"]))
                os.rmdir(kwargs["dir"])
            return real_mkstemp(*args, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", sweep_first)
        await store.put("raw", "job/new/item", chunks_of(b"x"), content_type="x/y")
        assert swept == [str(root / "raw" / "job" / "new")]
        assert await read_all(store.get("raw", "job/new/item")) == b"x"

    async def test_a_full_disk_raises_storage_full_and_keeps_nothing_of_the_write(
        self, tmp_path: Path
    ) -> None:
        """On a real 2 MiB tmpfs (the test needs the right to mount one, as root has)."""
        with small_tmpfs(tmp_path / "small", "2m") as mount:
            store = FilesystemObjectStore(root=mount / "objects")
            await store.put("raw", "keep", chunks_of(b"old contents"), content_type="x/y")
            big = random_bytes(3 * MiB)
            with pytest.raises(StorageFull, match="no space left"):
                await store.put(
                    "raw", "job/9/big", chunks_of(*split(big, 65536)), content_type="x/y"
                )
            with pytest.raises(StorageFull):
                await store.put("raw", "keep", chunks_of(big), content_type="x/y")
            # Nothing of either write is left: no temporary file, no object, no new directory.
            assert names_in(mount / "objects" / "raw") == ["keep"]
            assert await read_all(store.get("raw", "keep")) == b"old contents"
            # The space came back: a write that fits succeeds.
            await store.put("raw", "job/9/small", chunks_of(big[:MiB]), content_type="x/y")
            assert await store.size("raw", "job/9/small") == MiB

    async def test_a_write_over_a_disk_quota_raises_storage_full(
        self, store: FilesystemObjectStore, root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """EDQUOT cannot be had for real here (it needs a filesystem with quotas switched on),
        so the one OS call is made to fail: fsync, where NFS and XFS report a quota that
        delayed allocation overran."""

        def over_quota(fd: int) -> None:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        await store.put("raw", "keep", chunks_of(b"old"), content_type="x/y")
        monkeypatch.setattr(os, "fsync", over_quota)
        with pytest.raises(StorageFull, match="quota"):
            await store.put("raw", "keep", chunks_of(b"new"), content_type="x/y")
        with pytest.raises(StorageFull):
            await store.put("raw", "job/1/item", chunks_of(b"new"), content_type="x/y")
        monkeypatch.undo()
        assert names_in(root / "raw") == ["keep"]
        assert await read_all(store.get("raw", "keep")) == b"old"


def names_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


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
    def _remember_admin(self, admin: Minio, minio: Any) -> None:
        self._admin = admin
        self._endpoint = _endpoint(minio.endpoint)[0]
        self._access_key, self._secret_key = minio.access_key, minio.secret_key

    async def assert_no_leftovers(self, store: ObjectStore, bucket: str) -> None:
        admin = self._admin
        if not await asyncio.to_thread(admin.bucket_exists, bucket):
            return
        objects = await asyncio.to_thread(lambda: list(admin.list_objects(bucket, recursive=True)))
        assert [o.object_name for o in objects] == []
        # No aborted-but-not-cleaned multipart upload (its parts would use disk forever).
        uploads = await asyncio.to_thread(admin._list_multipart_uploads, bucket, max_uploads=100)
        assert list(uploads.uploads) == []

    async def incomplete_writes(self, store: ObjectStore, bucket: str, key: str) -> int:
        # By exact key: MinIO answers that from the drive (bucket-wide, from memory).
        uploads = await asyncio.to_thread(self._admin._list_multipart_uploads, bucket, prefix=key)
        return len(uploads.uploads)

    async def wait_until_writing(self, store: ObjectStore, bucket: str, key: str) -> None:
        admin = self._admin

        def has_a_part() -> bool:
            with contextlib.suppress(S3Error):
                for upload in admin._list_multipart_uploads(bucket, prefix=key).uploads:
                    assert upload.upload_id is not None
                    if admin._list_parts(bucket, key, upload.upload_id).parts:
                        return True
            return False

        async def written() -> bool:
            return await asyncio.to_thread(has_a_part)

        await eventually(written, f"a multipart upload of {key} has a part")

    def child_store_expression(self) -> str:
        return "S3ObjectStore(endpoint=sys.argv[3], access_key=sys.argv[4], secret_key=sys.argv[5])"

    def child_store_args(self, store: ObjectStore) -> list[str]:
        return [self._endpoint, self._access_key, self._secret_key]

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


# --- the S3 adapter when its server goes away or fills up ------------------------------------

# How long a caller may wait to learn that the store cannot be reached.
OUTAGE_BOUND = 10.0


def store_on(engine: MinioEngine) -> S3ObjectStore:
    return S3ObjectStore(
        endpoint=engine.endpoint, access_key=engine.access_key, secret_key=engine.secret_key
    )


def admin_on(engine: MinioEngine) -> Minio:
    return Minio(
        engine.endpoint, access_key=engine.access_key, secret_key=engine.secret_key, secure=False
    )


async def uploads_of(admin: Minio, bucket: str, key: str) -> int:
    # By exact key: MinIO answers that from the drive, also after a restart.
    result = await asyncio.to_thread(admin._list_multipart_uploads, bucket, prefix=key)
    return len(result.uploads)


async def fails_unavailable_quickly(what: str, call: Callable[[], Awaitable[object]]) -> None:
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(call(), 3 * OUTAGE_BOUND)
    elapsed = time.monotonic() - started
    assert elapsed < OUTAGE_BOUND, f"{what} took {elapsed:.1f}s to report the outage"


@pytest.mark.engines
class TestS3StoreOutages:
    """Against MinIO servers of these tests' own, which they kill, restart and fill up (the
    session's shared server must stay up; it only serves the bucket-quota test)."""

    @pytest.fixture
    def own_minio(self, minio: Any, tmp_path: Path) -> Iterator[MinioEngine]:
        # `minio` only for the engines' build check and marker; this server is ours alone.
        engine = start_minio(tmp_path)
        try:
            yield engine
        finally:
            engine.stop()

    async def test_every_method_raises_unavailable_within_seconds_while_the_server_is_down(
        self, own_minio: MinioEngine
    ) -> None:
        """...and the same adapter works again once the server is back."""
        store = store_on(own_minio)
        block = random_bytes(MiB)
        try:
            await store.put("raw", "job/a", chunks_of(b"before"), content_type="x/y")
            own_minio.kill()
            calls: dict[str, Callable[[], Awaitable[object]]] = {
                "put": lambda: store.put("raw", "job/b", chunks_of(b"x"), content_type="x/y"),
                "put of several parts": lambda: store.put(
                    "raw", "job/c", chunks_of(*[block] * 17), content_type="x/y"
                ),
                "put into a new bucket": lambda: store.put(
                    "clean", "job/b", chunks_of(b"x"), content_type="x/y"
                ),
                "get": lambda: read_all(store.get("raw", "job/a")),
                "size": lambda: store.size("raw", "job/a"),
                "delete": lambda: store.delete("raw", "job/a"),
                "list": lambda: anext(store.list("raw")),
                "discard_incomplete": lambda: store.discard_incomplete(older_than_seconds=0),
            }
            for what, call in calls.items():
                await fails_unavailable_quickly(what, call)

            own_minio.restart()
            assert await read_all(store.get("raw", "job/a")) == b"before"
            await store.put("clean", "job/b", chunks_of(b"after"), content_type="x/y")
            await store.put("raw", "job/c", chunks_of(*[block] * 17), content_type="x/y")
            assert await store.size("raw", "job/c") == 17 * MiB
            assert [found.key async for found in store.list("raw")] == ["job/a", "job/c"]
            await store.delete("raw", "job/a")
            assert await store.discard_incomplete(older_than_seconds=0) == 0
        finally:
            await store.close()

    async def test_a_put_cut_off_by_the_server_going_away_is_aborted_once_it_is_back(
        self, own_minio: MinioEngine
    ) -> None:
        store, admin = store_on(own_minio), admin_on(own_minio)
        try:
            async with put_under_way(store, "raw", "job/cut") as finish:

                async def a_part_is_up() -> bool:
                    return await uploads_of(admin, "raw", "job/cut") == 1

                await eventually(a_part_is_up, "the put's multipart upload exists")
                own_minio.kill()
                await fails_unavailable_quickly("the put under way", finish)
            own_minio.restart()
            # The abort could not reach the server either; the adapter remembered it.
            assert await uploads_of(admin, "raw", "job/cut") == 1
            assert await store.discard_incomplete(older_than_seconds=3600, buckets=["raw"]) == 1
            assert await uploads_of(admin, "raw", "job/cut") == 0
            with pytest.raises(ObjectNotFound):
                await store.size("raw", "job/cut")
        finally:
            await store.close()
            admin._http.clear()

    async def test_a_get_cut_off_midway_by_the_server_going_away_raises_unavailable(
        self, own_minio: MinioEngine
    ) -> None:
        store = store_on(own_minio)
        try:
            block = random_bytes(MiB)
            await store.put("raw", "big", chunks_of(*[block] * 64), content_type="x/y")
            stream = store.get("raw", "big")
            assert await anext(stream) == block
            own_minio.kill()
            await fails_unavailable_quickly("the rest of the get", lambda: read_all(stream))
        finally:
            await store.close()

    async def test_discard_incomplete_aborts_stale_uploads_in_every_bucket(
        self, own_minio: MinioEngine
    ) -> None:
        """What puts killed in other processes leave: uploads with a part, never completed."""
        store, admin = store_on(own_minio), admin_on(own_minio)

        def abandon(bucket: str, key: str) -> None:
            admin.make_bucket(bucket)
            upload_id = admin._create_multipart_upload(bucket, key, {})
            admin._upload_part(bucket, key, bytes(5 * MiB), None, upload_id, 1)

        try:
            await asyncio.to_thread(abandon, "raw", "job/1/item")
            await asyncio.to_thread(abandon, "scans", "job/2/scan.tgz")
            assert await store.discard_incomplete(older_than_seconds=3600) == 0
            assert await store.discard_incomplete(older_than_seconds=0, buckets=["raw"]) == 1
            assert await uploads_of(admin, "scans", "job/2/scan.tgz") == 1
            assert await store.discard_incomplete(older_than_seconds=0) == 1
            assert await uploads_of(admin, "raw", "job/1/item") == 0
            assert await uploads_of(admin, "scans", "job/2/scan.tgz") == 0
        finally:
            await store.close()
            admin._http.clear()

    async def test_a_full_drive_raises_storage_full_and_leaves_nothing_behind(
        self, minio: Any, tmp_path: Path
    ) -> None:
        """On a MinIO whose drive is a real 24 MiB tmpfs (needs the right to mount one)."""
        with small_tmpfs(tmp_path / "small", "24m") as mount:
            engine = start_minio(mount)
            store, admin = store_on(engine), admin_on(engine)
            try:
                block = random_bytes(MiB)
                await store.put("raw", "keep", chunks_of(b"old"), content_type="x/y")
                for key, blocks in (("one-put", 12), ("several-parts", 20), ("keep", 20)):
                    with pytest.raises(StorageFull, match="XMinioStorageFull"):
                        await store.put("raw", key, chunks_of(*[block] * blocks), content_type="")
                    assert await uploads_of(admin, "raw", key) == 0
                assert [found.key async for found in store.list("raw")] == ["keep"]
                assert await read_all(store.get("raw", "keep")) == b"old"
                await store.put("raw", "fits", chunks_of(block), content_type="x/y")
            finally:
                await store.close()
                admin._http.clear()
                engine.stop()

    async def test_a_bucket_over_its_hard_quota_raises_storage_full(
        self, minio: Any, admin_on_session: MinioAdmin
    ) -> None:
        bucket = f"t-{uuid.uuid4().hex[:20]}"
        store = store_on(minio)
        try:
            await store.put(bucket, "small", chunks_of(b"x"), content_type="x/y")
            await asyncio.to_thread(admin_on_session.bucket_quota_set, bucket, MiB)
            with pytest.raises(StorageFull, match="XMinioAdminBucketQuotaExceeded"):
                await store.put(bucket, "big", chunks_of(random_bytes(2 * MiB)), content_type="")
            with pytest.raises(ObjectNotFound):
                await store.size(bucket, "big")
        finally:
            await store.close()

    @pytest.fixture
    def admin_on_session(self, minio: Any) -> MinioAdmin:
        return MinioAdmin(
            endpoint=minio.endpoint,
            credentials=StaticProvider(minio.access_key, minio.secret_key),
            secure=False,
        )
