"""Object store on a local directory: the embedded adapter of the `ObjectStore` port.

Layout: ``<root>/<bucket>/<key>``; a key's ``/`` become sub-directories. An object appears
only when complete: bytes go to a temporary file beside the target, are fsynced, then renamed
over it with `os.replace` (atomic on POSIX), so readers see the old object or the new one,
never a half-written file. A reader that opened the old object keeps reading the old bytes.

Blocking file calls run in worker threads, one call per (about) 1 MiB so the event loop stays
free. Bucket and key rules are the ones the S3 adapter enforces too (see `check_bucket_name`,
`check_object_key`), so code that works embedded also works distributed.

The content type is reported back in `StoredObject` but not stored (the port never reads it
back); the S3 adapter stores it as the object's Content-Type.

Limitation: a key may not also be a "directory" of other keys (``a`` and ``a/b`` together);
S3 allows that, the filesystem does not, and the second put fails with an `OSError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

from kit.hashing import StreamDigest
from kit.ports import ByteStream, ObjectNotFound, StoredObject

__all__ = [
    "READ_CHUNK_SIZE",
    "FilesystemObjectStore",
    "check_bucket_name",
    "check_object_key",
    "run_blocking",
]

READ_CHUNK_SIZE = 1 << 20
# Incoming chunks are gathered up to this many bytes before one threaded write.
_WRITE_BATCH_SIZE = 1 << 20
_MAX_KEY_BYTES = 1024
_MAX_SEGMENT_BYTES = 255
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

_T = TypeVar("_T")


def check_bucket_name(bucket: str) -> None:
    """S3's rules, applied by both adapters: 3-63 of lowercase letters, digits, '.', '-'."""
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )


def check_object_key(key: str) -> list[str]:
    """Reject keys that could escape the bucket directory or that S3 would treat differently.

    Returns the key's ``/``-separated segments.
    """
    if not key or len(key.encode()) > _MAX_KEY_BYTES:
        raise ValueError(f"invalid object key {key!r}: must be 1-{_MAX_KEY_BYTES} bytes")
    if "\x00" in key or "\\" in key:
        raise ValueError(f"invalid object key {key!r}: NUL and backslash are not allowed")
    segments = key.split("/")
    for segment in segments:
        # An empty segment means a leading '/' (absolute), a trailing '/' or '//'.
        if segment in ("", ".", ".."):
            raise ValueError(
                f"invalid object key {key!r}: no absolute keys, empty, '.' or '..' segments"
            )
        if len(segment.encode()) > _MAX_SEGMENT_BYTES:
            raise ValueError(
                f"invalid object key {key!r}: a segment is longer than {_MAX_SEGMENT_BYTES} bytes"
            )
    return segments


async def run_blocking(fn: Callable[..., _T], *args: object) -> _T:
    """Run a blocking call in the default executor.

    If the awaiting task is cancelled, wait for the call to finish before letting the
    cancellation through: a thread cannot be interrupted, and clean-up (closing or unlinking
    the file) must never race a write that is still running.
    """
    future = asyncio.get_running_loop().run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise


def _open_temp(directory: Path) -> tuple[BinaryIO, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".put-", suffix=".tmp", dir=directory)
    return os.fdopen(fd, "wb"), Path(name)


def _write_batch(file: BinaryIO, digest: StreamDigest, batch: list[bytes]) -> None:
    for chunk in batch:
        digest.update(chunk)
        file.write(chunk)


def _commit(
    file: BinaryIO, digest: StreamDigest, batch: list[bytes], temp: Path, final: Path
) -> None:
    _write_batch(file, digest, batch)
    file.flush()
    os.fsync(file.fileno())
    file.close()
    os.replace(temp, final)
    # Make the rename itself durable.
    directory_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _discard(file: BinaryIO, temp: Path) -> None:
    with contextlib.suppress(OSError):
        file.close()
    with contextlib.suppress(OSError):
        temp.unlink(missing_ok=True)


def _open_for_read(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise ObjectNotFound(str(path)) from None


def _size(path: Path) -> int:
    try:
        stat = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise ObjectNotFound(str(path)) from None
    if not path.is_file():
        raise ObjectNotFound(str(path))
    return stat.st_size


def _delete(path: Path) -> None:
    # A missing object, or a key that is really a "directory" of other keys, is not an object.
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
        path.unlink()


class FilesystemObjectStore:
    """Buckets are directories under `root`; created on the first put."""

    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)

    def _path(self, bucket: str, key: str) -> Path:
        check_bucket_name(bucket)
        return self.root.joinpath(bucket, *check_object_key(key))

    async def put(
        self, bucket: str, key: str, chunks: ByteStream, *, content_type: str
    ) -> StoredObject:
        final = self._path(bucket, key)
        digest = StreamDigest()
        file, temp = await run_blocking(_open_temp, final.parent)
        committed = False
        # One batch is hashed and written in the worker thread while the next one is being
        # received: the two overlap, in order, with at most two batches in memory.
        in_flight: asyncio.Future[None] | None = None
        try:
            batch: list[bytes] = []
            batched = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                batch.append(chunk)
                batched += len(chunk)
                if batched >= _WRITE_BATCH_SIZE:
                    if in_flight is not None:
                        await in_flight
                    in_flight = asyncio.ensure_future(
                        run_blocking(_write_batch, file, digest, batch))
                    batch, batched = [], 0
            if in_flight is not None:
                await in_flight
                in_flight = None
            await run_blocking(_commit, file, digest, batch, temp, final)
            committed = True
        finally:
            if in_flight is not None:
                with contextlib.suppress(BaseException):
                    await in_flight
            if not committed:
                await run_blocking(_discard, file, temp)
        return StoredObject(
            bucket=bucket,
            key=key,
            size=digest.size,
            md5=digest.md5,
            sha256=digest.sha256,
            content_type=content_type,
        )

    async def get(self, bucket: str, key: str) -> AsyncIterator[bytes]:
        file = await run_blocking(_open_for_read, self._path(bucket, key))
        try:
            while chunk := await run_blocking(file.read, READ_CHUNK_SIZE):
                yield chunk
        finally:
            # No read is in flight here (run_blocking waits for it), and closing a file opened
            # for reading does not block.
            file.close()

    async def size(self, bucket: str, key: str) -> int:
        return await run_blocking(_size, self._path(bucket, key))

    async def delete(self, bucket: str, key: str) -> None:
        await run_blocking(_delete, self._path(bucket, key))

    async def close(self) -> None:
        """Nothing to release: files are opened and closed per call."""
