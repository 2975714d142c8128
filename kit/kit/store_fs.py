"""Object store on a local directory: the embedded adapter of the `ObjectStore` port.

Layout: ``<root>/<bucket>/<key>``; a key's ``/`` become sub-directories. An object appears
only when complete: bytes go to a temporary file beside the target, are fsynced, then renamed
over it with `os.replace` (atomic on POSIX), so readers see the old object or the new one,
never a half-written file. A reader that opened the old object keeps reading the old bytes.

The root, bucket and key directories are created 0700 and objects are 0600 (the mode
`mkstemp` gives the temporary file, kept by the rename): `raw` and `reports` hold PHI, and
nobody but the service's own user has any business reading them.

A put that dies with its process (kill -9, power loss) leaves its temporary file
(``.put-*.tmp``, a name no key may use) and possibly empty directories behind;
`discard_incomplete` removes them. A live put holds an exclusive `flock` on its temporary
file for its whole life, including the rename, so a sweep never removes one that is still
being written, however slowly; the lock dies with the process, so a crashed put's file is
free to go. Directories are removed only when empty (`rmdir`), and a put whose directory
vanishes between `mkdir` and `mkstemp` simply makes it again.

A write that fails for want of space (ENOSPC, or EDQUOT over a quota) raises `StorageFull`;
like any failed put it leaves neither its temporary file nor the directories it made.

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
import builtins
import contextlib
import errno
import fcntl
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

from kit.hashing import StreamDigest
from kit.ports import ByteStream, ListedObject, ObjectNotFound, StorageFull, StoredObject

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
_TEMP_PREFIX, _TEMP_SUFFIX = ".put-", ".tmp"
# Reserved: no key segment may look like a temporary file, so listing can skip them and
# discard_incomplete can remove them without ever touching an object.
_TEMP_NAME = re.compile(re.escape(_TEMP_PREFIX) + ".*" + re.escape(_TEMP_SUFFIX), re.DOTALL)
_PRIVATE_DIR = 0o700
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# A concurrent sweep can remove an empty directory between our mkdir and mkstemp; each
# retry makes it again. Losing that race twice in a row already takes a sweep per attempt.
_OPEN_ATTEMPTS = 10

_T = TypeVar("_T")


def check_bucket_name(bucket: str) -> None:
    """S3's rules, applied by both adapters: 3-63 of lowercase letters, digits, '.', '-'."""
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise ValueError(
            f"invalid bucket name {bucket!r}: use 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )


def check_object_key(key: str) -> builtins.list[str]:
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
        if _TEMP_NAME.fullmatch(segment):
            raise ValueError(
                f"invalid object key {key!r}: '{_TEMP_PREFIX}*{_TEMP_SUFFIX}' names are reserved "
                "for incomplete writes"
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


@contextlib.contextmanager
def _full_disk_raises_storage_full() -> Iterator[None]:
    """Only around our own file calls: an OSError from the caller's chunk source passes as is."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL_ERRNOS:
            raise StorageFull(f"no space left for this object: {error}") from error
        raise


class _Temp(NamedTuple):
    file: BinaryIO
    path: Path
    created: builtins.list[Path]  # directories this put made, top first
    bucket_directory: Path  # it and the root stay when the put fails: they are not the put's


def _make_private_dirs(directory: Path) -> builtins.list[Path]:
    """Make `directory` and its missing parents, each 0700 (`Path.mkdir(parents=True)` would
    make the parents with the default mode); return the ones made, top first."""
    missing: builtins.list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    created: builtins.list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir(mode=_PRIVATE_DIR)
        except FileExistsError:
            continue  # a concurrent put made it (or it is a file: the next mkdir says so)
        created.append(path)
    return created


def _open_temp(directory: Path, bucket_directory: Path) -> _Temp:
    created: builtins.list[Path] = []
    try:
        with _full_disk_raises_storage_full():
            for attempt in range(_OPEN_ATTEMPTS):
                try:
                    created += _make_private_dirs(directory)
                    fd, name = tempfile.mkstemp(
                        prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=directory
                    )
                except FileNotFoundError:
                    # A sweep removed an (empty) directory of ours between mkdir and here.
                    if attempt == _OPEN_ATTEMPTS - 1:
                        raise
                    continue
                break
    except BaseException:
        _remove_empty(created, bucket_directory)
        raise
    # Held until the put is over: a sweep leaves a locked temporary file alone.
    fcntl.flock(fd, fcntl.LOCK_EX)
    return _Temp(os.fdopen(fd, "wb"), Path(name), created, bucket_directory)


def _write_batch(file: BinaryIO, digest: StreamDigest, batch: builtins.list[bytes]) -> None:
    with _full_disk_raises_storage_full():
        for chunk in batch:
            digest.update(chunk)
            file.write(chunk)


def _fsync_directory(directory: Path) -> None:
    directory_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _commit(temp: _Temp, digest: StreamDigest, batch: builtins.list[bytes], final: Path) -> None:
    _write_batch(temp.file, digest, batch)
    with _full_disk_raises_storage_full():
        temp.file.flush()
        os.fsync(temp.file.fileno())
        # Renamed while still open, so still locked: a sweep cannot take it in between.
        os.replace(temp.path, final)
    with contextlib.suppress(OSError):  # flushed and synced: nothing left that could fail
        temp.file.close()
    # Make the rename itself durable, and the directories this put made.
    _fsync_directory(final.parent)
    for directory in temp.created:
        _fsync_directory(directory.parent)


def _discard(temp: _Temp) -> None:
    with contextlib.suppress(OSError):
        temp.path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        temp.file.close()
    _remove_empty(temp.created, temp.bucket_directory)


def _remove_empty(directories: builtins.list[Path], bucket_directory: Path) -> None:
    """Remove the key directories a failed put made, deepest first, those still empty only: a
    concurrent put may be writing into one."""
    for directory in reversed(directories):
        if bucket_directory in directory.parents:
            with contextlib.suppress(OSError):
                directory.rmdir()


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


class _Entry(NamedTuple):
    key: str  # a directory's ends with "/"
    is_dir: bool
    size: int
    mtime: float


def _scan(directory: Path, key_prefix: str) -> builtins.list[_Entry]:
    """One directory's objects and sub-directories, in key order.

    A directory sorts as its name plus "/", which puts it exactly where its keys go among its
    siblings ("a-c" < "a/..." < "a0"), so a depth-first walk yields keys in S3's order
    (code point order, which is UTF-8 byte order).
    """
    entries: builtins.list[_Entry] = []
    try:
        with os.scandir(directory) as scanner:
            for entry in scanner:
                name = entry.name
                if _TEMP_NAME.fullmatch(name) or _undecodable(name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        entries.append(_Entry(f"{key_prefix}{name}/", True, 0, 0.0))
                    elif entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        entries.append(
                            _Entry(f"{key_prefix}{name}", False, stat.st_size, stat.st_mtime)
                        )
                except FileNotFoundError:
                    continue  # deleted while we looked
    except (FileNotFoundError, NotADirectoryError):
        return []
    entries.sort(key=lambda entry: entry.key)
    return entries


def _undecodable(name: str) -> bool:
    """A file name that is not UTF-8 (a stranger's file): no key could have made it."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return True
    return False


def _remove_if_abandoned(path: Path, cutoff: float) -> bool:
    """Remove a temporary file no live put holds and nothing wrote to since `cutoff`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False  # gone already: its put finished or gave up
    try:
        opened = os.fstat(fd)
        if opened.st_mtime > cutoff:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live put holds it
        # The put may have renamed it to its object while we waited: remove only the same file.
        try:
            current = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if (current.st_dev, current.st_ino) != (opened.st_dev, opened.st_ino):
            return False
        path.unlink()
        return True
    finally:
        os.close(fd)


def _discard_abandoned(bucket_directory: Path, cutoff: float) -> int:
    removed = 0
    # Bottom-up, so a directory is tried after everything in it has been.
    for directory, _, files in os.walk(bucket_directory, topdown=False):
        here = Path(directory)
        for name in files:
            if _TEMP_NAME.fullmatch(name) and _remove_if_abandoned(here / name, cutoff):
                removed += 1
        if here != bucket_directory:
            # rmdir only removes an empty directory: one a put is writing into holds its
            # temporary file, one with objects holds them.
            with contextlib.suppress(OSError):
                here.rmdir()
    return removed


def _bucket_directories(root: Path) -> builtins.list[str]:
    try:
        with os.scandir(root) as scanner:
            # A bucket may be a symbolic link (to a bigger disk, say); what is inside is not
            # followed.
            names = [entry.name for entry in scanner if entry.is_dir()]
    except FileNotFoundError:
        return []
    return sorted(name for name in names if _BUCKET_NAME.fullmatch(name) and ".." not in name)


async def _open_temp_cancel_safe(directory: Path, bucket_directory: Path) -> _Temp:
    future = asyncio.get_running_loop().run_in_executor(
        None, _open_temp, directory, bucket_directory
    )
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # The thread cannot be stopped: let it finish, then take back what it made, or a
        # put cancelled at its start would leave a temporary file (and an open descriptor).
        await asyncio.wait([future])
        if not future.cancelled() and future.exception() is None:
            await asyncio.wait(
                [asyncio.get_running_loop().run_in_executor(None, _discard, future.result())]
            )
        raise


class FilesystemObjectStore:
    """Buckets are directories under `root`; created (0700, like `root`) on the first put."""

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
        temp = await _open_temp_cancel_safe(final.parent, self.root / bucket)
        committed = False
        # One batch is hashed and written in the worker thread while the next one is being
        # received: the two overlap, in order, with at most two batches in memory.
        in_flight: asyncio.Future[None] | None = None
        try:
            batch: builtins.list[bytes] = []
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
                        run_blocking(_write_batch, temp.file, digest, batch)
                    )
                    batch, batched = [], 0
            if in_flight is not None:
                await in_flight
                in_flight = None
            await run_blocking(_commit, temp, digest, batch, final)
            committed = True
        finally:
            if in_flight is not None:
                with contextlib.suppress(BaseException):
                    await in_flight
            if not committed:
                await run_blocking(_discard, temp)
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

    async def list(self, bucket: str, prefix: str = "") -> AsyncIterator[ListedObject]:
        """Depth-first, one directory read per thread call: memory is one directory listing
        per level of the key, never the whole bucket. ``modified`` is the file's mtime."""
        check_bucket_name(bucket)
        bucket_directory = self.root / bucket
        levels = [iter(await run_blocking(_scan, bucket_directory, ""))]
        while levels:
            entry = next(levels[-1], None)
            if entry is None:
                levels.pop()
            elif entry.is_dir:
                # Go in only where keys with the prefix can be.
                if entry.key.startswith(prefix) or prefix.startswith(entry.key):
                    below = await run_blocking(_scan, bucket_directory / entry.key, entry.key)
                    levels.append(iter(below))
            elif entry.key.startswith(prefix):
                yield ListedObject(
                    key=entry.key,
                    size=entry.size,
                    modified=datetime.fromtimestamp(entry.mtime, UTC),
                )

    async def discard_incomplete(
        self, *, older_than_seconds: float, buckets: Sequence[str] | None = None
    ) -> int:
        """Remove temporary files of puts that died (unlocked, not written to for
        `older_than_seconds`) and every empty directory under the buckets (the buckets
        themselves stay). Returns how many temporary files went."""
        if older_than_seconds < 0:
            raise ValueError("older_than_seconds must be >= 0")
        if buckets is None:
            names = await run_blocking(_bucket_directories, self.root)
        else:
            for bucket in buckets:
                check_bucket_name(bucket)
            names = builtins.list(buckets)
        cutoff = time.time() - older_than_seconds
        removed = 0
        for name in names:
            removed += await run_blocking(_discard_abandoned, self.root / name, cutoff)
        return removed

    async def close(self) -> None:
        """Nothing to release: files are opened and closed per call."""
