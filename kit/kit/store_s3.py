"""Object store on the S3 API (MinIO or any S3-compatible store): the distributed adapter.

The `minio` SDK is synchronous, so every call runs in a worker thread. A put streams: the
caller's task iterates the chunk source and hands chunks through a small bounded pipe to an
upload thread, which copies them into ONE reusable part buffer and sends each full buffer as a
part of a multipart upload (an object that fits in one part goes up as a single PUT). Memory is
one part (`part_size`, 16 MiB) plus the pipe (4 MiB), whatever the object's size.

Why not `Minio.put_object(length=-1)`: it builds every part by repeated `bytes` concatenation
and slicing, several part-sized copies per part, and the churn of those big allocations
fragments the heap so RSS grows with the object (measured: +90 MiB for 200 MiB). We therefore
drive the multipart upload with the SDK's own `_create_multipart_upload`, `_upload_part`,
`_complete_multipart_upload`, `_abort_multipart_upload` and `_put_object` (private, but stable
since minio 7.0; the contract tests in kit/tests/test_store_contract.py pin them).

Size, MD5 and SHA-256 are computed in the upload thread (hashlib releases the GIL); the
multipart ETag is not an MD5. If the source raises, or the put is cancelled before its last
part was sent, the upload thread aborts the multipart upload: no object and no orphaned parts
are left. A put cancelled while its last part is already in flight may still complete.

Uploads use a thread pool of their own: an upload thread waits on the event loop for data,
and if it sat in the default executor it could starve a chunk source that itself needs that
executor (a copy from the filesystem store, say) and deadlock.

Bucket and key rules are the filesystem adapter's (`check_bucket_name`, `check_object_key`)
so both adapters accept the same names. Buckets are created on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Part
from minio.error import S3Error

from kit.hashing import StreamDigest
from kit.ports import ByteStream, ObjectNotFound, StoredObject
from kit.store_fs import READ_CHUNK_SIZE, check_bucket_name, check_object_key, run_blocking

__all__ = ["DEFAULT_PART_SIZE", "S3ObjectStore"]

# 16 MiB parts allow objects up to ~156 GiB (S3 caps an upload at 10,000 parts).
DEFAULT_PART_SIZE = 16 << 20
# The pipe between the event loop and the upload thread holds at most about this much.
_PIPE_HIGH_WATER = 4 << 20
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou"})


class _SourceFailed(Exception):
    """Raised in the upload thread when the chunk source failed, so the upload is aborted."""


class _ChunkPipe:
    """A bounded hand-over of chunks from the event loop (producer) to one upload thread.

    The producer awaits `feed`, which returns once the pipe has room again (or the upload
    thread is gone); the thread calls `fill`, which blocks until bytes, the end or a failure
    arrive.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._condition = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._source_done = False
        self._failed = False
        self._room = asyncio.Event()
        self.digest = StreamDigest()
        self.drained = False

    # --- event-loop side ---

    async def feed(self, chunk: bytes, uploader: asyncio.Future[None]) -> None:
        with self._condition:
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            self._condition.notify()
        while True:
            # Clear before checking: a wake-up scheduled by the uploader after the check is kept.
            self._room.clear()
            with self._condition:
                if self._buffered < _PIPE_HIGH_WATER:
                    return
            if uploader.done():
                return
            await self._room.wait()

    def end(self) -> None:
        with self._condition:
            self._source_done = True
            self._condition.notify()

    def fail(self) -> None:
        with self._condition:
            self._failed = True
            self._chunks.clear()
            self._buffered = 0
            self._condition.notify()

    def wake_producer(self, _: object = None) -> None:
        self._room.set()

    # --- upload-thread side ---

    def fill(self, buffer: memoryview) -> int:
        """Copy the next bytes into `buffer` until it is full or the source has ended.

        Sets `drained` once the end of the source has been reached and everything consumed.
        """
        filled = 0
        while filled < len(buffer):
            with self._condition:
                while not self._chunks and not self._source_done and not self._failed:
                    self._condition.wait()
                if self._failed:
                    raise _SourceFailed("the chunk source failed or the put was cancelled")
                if not self._chunks:
                    self.drained = True
                    break
                taken: list[bytes] = []
                room = len(buffer) - filled
                while self._chunks and room:
                    chunk = self._chunks.popleft()
                    if len(chunk) > room:
                        self._chunks.appendleft(chunk[room:])
                        chunk = chunk[:room]
                    taken.append(chunk)
                    room -= len(chunk)
                    self._buffered -= len(chunk)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to wake
                self._loop.call_soon_threadsafe(self.wake_producer)
            for chunk in taken:
                buffer[filled : filled + len(chunk)] = chunk
                filled += len(chunk)
        self.digest.update(buffer[:filled])
        return filled


def _next_chunk(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


class S3ObjectStore:
    """`ObjectStore` on an S3 endpoint such as ``127.0.0.1:9000``."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        secure: bool = False,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_concurrent_uploads: int = 8,
    ) -> None:
        if part_size < 5 << 20:
            raise ValueError("part_size must be at least 5 MiB (the S3 minimum)")
        # Our own pool so that close() can release its sockets deterministically.
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=30, read=300),
            maxsize=max(10, max_concurrent_uploads),
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            retries=urllib3.Retry(
                total=5, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=self._http,
        )
        self._part_size = part_size
        self._uploads = ThreadPoolExecutor(
            max_workers=max_concurrent_uploads, thread_name_prefix="s3-upload"
        )
        self._known_buckets: set[str] = set()

    # --- buckets ---

    def _make_bucket(self, bucket: str) -> None:
        if self._client.bucket_exists(bucket):
            return
        try:
            self._client.make_bucket(bucket)
        except S3Error as error:
            if error.code not in _BUCKET_EXISTS_CODES:
                raise

    async def _ensure_bucket(self, bucket: str) -> None:
        if bucket not in self._known_buckets:
            await run_blocking(self._make_bucket, bucket)
            self._known_buckets.add(bucket)

    # --- the port ---

    def _upload(self, bucket: str, key: str, pipe: _ChunkPipe, content_type: str) -> None:
        client = self._client
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": content_type}
        # One buffer per upload, reused for every part: no big allocation per part.
        buffer = memoryview(bytearray(self._part_size))
        filled = pipe.fill(buffer)
        if pipe.drained:
            client._put_object(bucket, key, cast(bytes, buffer[:filled]), headers=headers)
            return
        upload_id = client._create_multipart_upload(bucket, key, dict(headers))
        try:
            parts: list[Part] = []
            while filled:
                number = len(parts) + 1
                etag = client._upload_part(
                    bucket, key, cast(bytes, buffer[:filled]), None, upload_id, number
                )
                parts.append(Part(number, etag))
                filled = 0 if pipe.drained else pipe.fill(buffer)
            client._complete_multipart_upload(bucket, key, upload_id, parts)
        except BaseException:
            with contextlib.suppress(Exception):
                client._abort_multipart_upload(bucket, key, upload_id)
            raise

    async def put(
        self, bucket: str, key: str, chunks: ByteStream, *, content_type: str
    ) -> StoredObject:
        check_bucket_name(bucket)
        check_object_key(key)
        await self._ensure_bucket(bucket)
        loop = asyncio.get_running_loop()
        pipe = _ChunkPipe(loop)
        uploader = loop.run_in_executor(
            self._uploads, self._upload, bucket, key, pipe, content_type
        )
        uploader.add_done_callback(pipe.wake_producer)
        try:
            async for chunk in chunks:
                if chunk:
                    await pipe.feed(chunk, uploader)
                    if uploader.done():  # it failed: its error is raised below
                        break
            pipe.end()
            await asyncio.shield(uploader)
        except BaseException:
            pipe.fail()
            # Let the upload thread see the failure and abort the multipart upload first.
            await asyncio.wait([uploader])
            # Retrieving the thread's error also marks it seen; the caller gets the original.
            if not uploader.cancelled() and isinstance(uploader.exception(), S3Error):
                # The bucket may have been removed behind our back; check again next time.
                self._known_buckets.discard(bucket)
            raise
        return StoredObject(
            bucket=bucket,
            key=key,
            size=pipe.digest.size,
            md5=pipe.digest.md5,
            sha256=pipe.digest.sha256,
            content_type=content_type,
        )

    async def get(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        check_bucket_name(bucket)
        check_object_key(key)
        try:
            response = await run_blocking(self._client.get_object, bucket, key)
        except S3Error as error:
            if error.code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"{bucket}/{key}") from None
            raise
        try:
            body = response.stream(READ_CHUNK_SIZE)
            while (chunk := await run_blocking(_next_chunk, body)) is not None:
                if chunk:
                    yield chunk
        finally:
            response.close()
            response.release_conn()

    async def size(self, bucket: str, key: str) -> int:
        check_bucket_name(bucket)
        check_object_key(key)
        try:
            stat = await run_blocking(self._client.stat_object, bucket, key)
        except S3Error as error:
            if error.code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"{bucket}/{key}") from None
            raise
        return stat.size or 0

    async def delete(self, bucket: str, key: str) -> None:
        check_bucket_name(bucket)
        check_object_key(key)
        try:
            await run_blocking(self._client.remove_object, bucket, key)
        except S3Error as error:
            if error.code != "NoSuchBucket":
                raise

    async def close(self) -> None:
        self._uploads.shutdown(wait=False, cancel_futures=True)
        self._http.clear()
