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

Errors: a server that cannot be reached (refused, reset, timed out, 5xx after the retries)
raises `Unavailable`, from every method and within a bounded time: connecting gives up after
`connect_timeout` (2 s) and is tried three times, so a stopped server is reported in 0.4 s
(connection refused, measured) and one that never answers the connect in 6.4 s; a server that
accepted the request but stopped answering is given `read_timeout` (30 s). A full drive
(MinIO's ``XMinioStorageFull``) or an exceeded bucket quota raises `StorageFull`.

A failed put aborts its multipart upload; when even the abort cannot reach the server, the
upload is remembered and aborted by the next `discard_incomplete`, which also aborts uploads
that nobody has added a part to for a while (a put that died with its process). On MinIO the
bucket-wide listing of uploads only knows those begun since the server last started (it is
answered from memory; a listing by exact key reads the drive); older ones MinIO removes itself
after ``MINIO_API_STALE_UPLOADS_EXPIRY`` (24 h by default). The SDK has no public call to list
uploads or parts since 7.0, so this uses its private `_list_multipart_uploads` and
`_list_parts` (pinned by the contract tests like the upload calls above).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import itertools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar, cast

import certifi
import urllib3
from minio import Minio
from minio.datatypes import Object, Part, Upload
from minio.error import InvalidResponseError, S3Error, ServerError

from kit.hashing import StreamDigest
from kit.ports import (
    ByteStream,
    ListedObject,
    ObjectNotFound,
    StorageFull,
    StoredObject,
    Unavailable,
)
from kit.store_fs import READ_CHUNK_SIZE, check_bucket_name, check_object_key, run_blocking

__all__ = ["DEFAULT_PART_SIZE", "S3ObjectStore"]

# 16 MiB parts allow objects up to ~156 GiB (S3 caps an upload at 10,000 parts).
DEFAULT_PART_SIZE = 16 << 20
# The pipe between the event loop and the upload thread holds at most about this much.
_PIPE_HIGH_WATER = 4 << 20
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchObject", "ResourceNotFound"})
_BUCKET_EXISTS_CODES = frozenset({"BucketAlreadyOwnedByYou"})
# MinIO's full drive (HTTP 507) and its hard bucket quota: no room for this write either way.
_FULL_CODES = frozenset({"XMinioStorageFull", "XMinioAdminBucketQuotaExceeded"})
# Answers of a server that is there but cannot serve yet (starting, overloaded).
_UNAVAILABLE_CODES = frozenset(
    {"XMinioServerNotInitialized", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
)
# Objects are listed, and uploads listed and aborted, this many per thread call.
_LIST_BATCH = 1000

_T = TypeVar("_T")


def _translated(error: BaseException) -> Exception | None:
    """The port's error for an SDK or transport error, None when it has none."""
    if isinstance(error, S3Error):
        if error.code in _FULL_CODES:
            return StorageFull(f"the object store has no room: {error.code}: {error.message}")
        if error.code in _UNAVAILABLE_CODES:
            return Unavailable(f"the object store cannot serve now: {error.code}")
        return None
    # urllib3's HTTPError covers refused, reset and timed-out connections and exhausted
    # retries (MaxRetryError), also while a response body is being streamed.
    if isinstance(error, urllib3.exceptions.HTTPError):
        return Unavailable(f"the object store cannot be reached: {error}")
    status = None
    if isinstance(error, ServerError):
        status = error.status_code
    elif isinstance(error, InvalidResponseError):
        # A non-XML answer, e.g. a proxy's 502/503 page in front of a stopped server. The SDK
        # keeps the HTTP status in `_code` only.
        status = getattr(error, "_code", None)
    if isinstance(status, int) and status >= 500:
        return Unavailable(f"the object store answered HTTP {status}")
    return None


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


def _next_batch(objects: Iterator[Object]) -> builtins.list[Object]:
    # The SDK's iterator fetches the next page of 1,000 keys when it needs it.
    return builtins.list(itertools.islice(objects, _LIST_BATCH))


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
        connect_timeout: float = 2.0,
        read_timeout: float = 30.0,
    ) -> None:
        if part_size < 5 << 20:
            raise ValueError("part_size must be at least 5 MiB (the S3 minimum)")
        # Our own pool so that close() can release its sockets deterministically, and bounded:
        # with 30 s connects, 300 s reads and 5 retries (what we had, near the SDK's default) a
        # caller waited 3 minutes for a server that does not answer the connect and half an
        # hour for one that stopped answering. A loopback or LAN connect takes milliseconds,
        # so 2 s is generous; 3 tries (the third after 0.4 s) ride out a restart's blip.
        # Status retries only ever apply to idempotent methods (GET, PUT of a part, DELETE).
        self._http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=max(10, max_concurrent_uploads),
            cert_reqs="CERT_REQUIRED",
            ca_certs=certifi.where(),
            retries=urllib3.Retry(
                total=3,
                connect=2,
                read=1,
                status=2,
                backoff_factor=0.2,
                backoff_max=1.0,
                status_forcelist=[500, 502, 503, 504],
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
        # Upload threads and sweeps share these two; the lock guards both.
        self._lock = threading.Lock()
        self._live_uploads: set[str] = set()  # upload ids of puts still running here
        # (bucket, key, upload id) of failed puts whose abort could not reach the server.
        self._unaborted: set[tuple[str, str, str]] = set()

    async def _call(self, fn: Callable[..., _T], *args: object) -> _T:
        """Run one SDK call in a thread, raising the port's error where it has one."""
        try:
            return await run_blocking(fn, *args)
        except Exception as error:
            translated = _translated(error)
            if translated is None:
                raise
            raise translated from error

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
            await self._call(self._make_bucket, bucket)
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
        with self._lock:
            self._live_uploads.add(upload_id)
        try:
            parts: builtins.list[Part] = []
            while filled:
                number = len(parts) + 1
                etag = client._upload_part(
                    bucket, key, cast(bytes, buffer[:filled]), None, upload_id, number
                )
                parts.append(Part(number, etag))
                filled = 0 if pipe.drained else pipe.fill(buffer)
            client._complete_multipart_upload(bucket, key, upload_id, parts)
        except BaseException:
            try:
                client._abort_multipart_upload(bucket, key, upload_id)
            except S3Error as error:
                if error.code != "NoSuchUpload":  # else already gone: nothing to abort
                    self._remember_unaborted(bucket, key, upload_id)
            except Exception:
                # The server is unreachable too (the likely reason the put failed): its parts
                # would use the drive until MinIO's own expiry, so abort on the next sweep.
                self._remember_unaborted(bucket, key, upload_id)
            raise
        finally:
            with self._lock:
                self._live_uploads.discard(upload_id)

    def _remember_unaborted(self, bucket: str, key: str, upload_id: str) -> None:
        with self._lock:
            self._unaborted.add((bucket, key, upload_id))

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
        except BaseException as error:
            pipe.fail()
            # Let the upload thread see the failure and abort the multipart upload first.
            await asyncio.wait([uploader])
            # Retrieving the thread's error also marks it seen.
            upload_error = None if uploader.cancelled() else uploader.exception()
            if isinstance(upload_error, S3Error):
                # The bucket may have been removed behind our back; check again next time.
                self._known_buckets.discard(bucket)
            # Only the upload's own errors are translated: the source's pass unchanged.
            if upload_error is error and (translated := _translated(error)) is not None:
                raise translated from error
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
            response = await self._call(self._client.get_object, bucket, key)
        except S3Error as error:
            if error.code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"{bucket}/{key}") from None
            raise
        try:
            body = response.stream(READ_CHUNK_SIZE)
            while (chunk := await self._call(_next_chunk, body)) is not None:
                if chunk:
                    yield chunk
        finally:
            response.close()
            response.release_conn()

    async def size(self, bucket: str, key: str) -> int:
        check_bucket_name(bucket)
        check_object_key(key)
        try:
            stat = await self._call(self._client.stat_object, bucket, key)
        except S3Error as error:
            if error.code in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"{bucket}/{key}") from None
            raise
        return stat.size or 0

    async def delete(self, bucket: str, key: str) -> None:
        check_bucket_name(bucket)
        check_object_key(key)
        try:
            await self._call(self._client.remove_object, bucket, key)
        except S3Error as error:
            if error.code != "NoSuchBucket":
                raise

    async def list(self, bucket: str, prefix: str = "") -> AsyncIterator[ListedObject]:
        """ListObjectsV2, a page of 1,000 keys at a time; ``modified`` is S3's LastModified."""
        check_bucket_name(bucket)
        objects = self._client.list_objects(bucket, prefix=prefix or None, recursive=True)
        while True:
            try:
                batch = await self._call(_next_batch, objects)
            except S3Error as error:
                if error.code == "NoSuchBucket":
                    return
                raise
            if not batch:
                return
            for found in batch:
                if found.is_dir or found.object_name is None:
                    continue  # a "folder" marker made by some other tool, not an object
                yield ListedObject(
                    key=found.object_name,
                    size=found.size or 0,
                    modified=found.last_modified or datetime.fromtimestamp(0, UTC),
                )

    async def discard_incomplete(
        self, *, older_than_seconds: float, buckets: Sequence[str] | None = None
    ) -> int:
        """Abort multipart uploads that no put of this process is running and that nobody
        has added a part to for `older_than_seconds` (the newest part's time, not the start:
        a long upload that is still moving is left alone); also those of failed puts whose
        abort could not reach the server, whatever their age. Returns how many were aborted."""
        if older_than_seconds < 0:
            raise ValueError("older_than_seconds must be >= 0")
        if buckets is None:
            found = await self._call(self._client.list_buckets)
            names = [bucket.name for bucket in found]
        else:
            for bucket in buckets:
                check_bucket_name(bucket)
            names = builtins.list(buckets)
        discarded = await self._call(self._abort_unaborted)
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        for name in names:
            discarded += await self._call(self._abort_stale_uploads, name, cutoff)
        return discarded

    def _abort(self, bucket: str, key: str, upload_id: str) -> bool:
        """False when the upload was gone already (completed or aborted meanwhile)."""
        try:
            self._client._abort_multipart_upload(bucket, key, upload_id)
        except S3Error as error:
            if error.code in ("NoSuchUpload", "NoSuchBucket"):
                return False
            raise
        return True

    def _abort_unaborted(self) -> int:
        with self._lock:
            pending = sorted(self._unaborted)
        aborted = 0
        for bucket, key, upload_id in pending:
            try:
                aborted += self._abort(bucket, key, upload_id)
            except S3Error as error:
                if _translated(error) is not None:
                    raise  # still unavailable: keep the rest for the next sweep
                # Refused for good (access denied, say): MinIO's own expiry is left to do it.
            with self._lock:
                self._unaborted.discard((bucket, key, upload_id))
        return aborted

    def _last_activity(self, bucket: str, upload: Upload) -> datetime | None:
        """When the upload began or last got a part; None when it is gone already."""
        latest = upload.initiated_time or datetime.fromtimestamp(0, UTC)
        marker: str | None = None
        while True:
            try:
                page = self._client._list_parts(
                    bucket,
                    upload.object_name,
                    cast(str, upload.upload_id),
                    part_number_marker=marker,
                )
            except S3Error as error:
                if error.code == "NoSuchUpload":
                    return None
                raise
            for part in page.parts:
                if part.last_modified is not None and part.last_modified > latest:
                    latest = part.last_modified
            if not page.is_truncated or not page.next_part_number_marker:
                return latest
            marker = page.next_part_number_marker

    def _abort_stale_uploads(self, bucket: str, cutoff: datetime) -> int:
        aborted = 0
        key_marker: str | None = None
        upload_id_marker: str | None = None
        while True:
            try:
                page = self._client._list_multipart_uploads(
                    bucket,
                    key_marker=key_marker,
                    upload_id_marker=upload_id_marker,
                    max_uploads=_LIST_BATCH,
                )
            except S3Error as error:
                if error.code == "NoSuchBucket":
                    return aborted
                raise
            for upload in page.uploads:
                upload_id = cast(str, upload.upload_id)
                with self._lock:
                    live = upload_id in self._live_uploads
                if live or (upload.initiated_time or cutoff) > cutoff:
                    continue
                last = self._last_activity(bucket, upload)
                if last is not None and last <= cutoff:
                    aborted += self._abort(bucket, upload.object_name, upload_id)
            if not page.is_truncated or not page.uploads:
                return aborted
            # The SDK never fills `next_upload_id_marker` (a typo in minio 7.2); the last
            # upload of the page is the same pair of markers.
            key_marker = page.uploads[-1].object_name
            upload_id_marker = page.uploads[-1].upload_id

    async def close(self) -> None:
        self._uploads.shutdown(wait=False, cancel_futures=True)
        self._http.clear()
