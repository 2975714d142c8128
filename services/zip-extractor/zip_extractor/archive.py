"""A safe reader of uploaded ZIP archives: pure, synchronous, over a file on disk.

What it guarantees, whatever the archive holds:
- Constant memory. Entries are inflated in chunks of `CHUNK` bytes and handed on; nothing
  holds a whole entry, and the listing keeps at most `Limits.max_entries` entries (the central
  directory is read record by record, not all at once as `zipfile` does: a 64 MB archive of
  empty entries holds ~800,000 records, several hundred MB as `ZipInfo` objects).
- Every refused entry has its own reason (`REASONS` below), and one bad entry never stops the
  others. Reasons are found before reading (path, links, devices, encryption, declared sizes)
  or while streaming (type by magic bytes, nested archives, inflated size and ratio, CRC).
- The ratio and size limits hold on the bytes actually inflated, not only on what the
  headers declare (a bomb can lie in its headers).
- A damaged archive (a truncated download: no central directory) is read by walking its
  local headers; every complete entry is recovered and the archive gets `damaged_reason`.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from typing import BinaryIO

import magic

__all__ = [
    "CHUNK",
    "HEAD",
    "INVALID_ARCHIVE",
    "Entry",
    "EntryRefused",
    "InvalidArchive",
    "Limits",
    "Listing",
    "TotalBudget",
    "check_entry",
    "classify",
    "damaged_reason",
    "is_ignored",
    "list_entries",
    "read_entry",
    "too_many_reason",
]

CHUNK = 1 << 20  # inflated bytes handed on at a time
_READ = 256 << 10  # compressed bytes read from the file at a time
HEAD = 8192  # bytes given to libmagic to name a type
# Below this many inflated bytes the ratio is not judged: tiny entries of repeated bytes
# legitimately compress 100:1 and cannot hurt anybody.
_RATIO_GRACE = 1 << 20
MiB = 1 << 20

INVALID_ARCHIVE = "Invalid ZIP archive"
UNSAFE_ESCAPE = "Unsafe path in archive (leaves the archive folder)"
UNSAFE_ABSOLUTE = "Unsafe path in archive (absolute path)"
LINK = "Links are not accepted in archives"
SPECIAL = "Device files and pipes are not accepted in archives"
ENCRYPTED = "Encrypted entry in archive"
METHOD = "Unsupported compression method in archive"
BOMB = "Suspicious compression ratio (possible zip bomb)"
CRC = "Archive entry is corrupt (CRC mismatch)"
TRUNCATED = "Archive entry is truncated or damaged"

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_END = b"PK\x05\x06"
_END64 = b"PK\x06\x06"
_END64_LOCATOR = b"PK\x06\x07"
_DESCRIPTOR = b"PK\x07\x08"
_LOCAL_FMT = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_CENTRAL_FMT = struct.Struct("<4sBBHHHHHIIIHHHHHII")  # 46 bytes
_END_FMT = struct.Struct("<4sHHHHIIH")  # 22 bytes
_END64_FMT = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes
_LOCATOR_FMT = struct.Struct("<4sIQI")  # 20 bytes
_STORED, _DEFLATED = 0, 8
_FLAG_ENCRYPTED, _FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x1, 0x8, 0x800
_ZIP64_EXTRA = 0x0001
_MAX32, _MAX16 = 0xFFFFFFFF, 0xFFFF

_IGNORED_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_KINDS = {"image/jpeg": "image", "image/png": "image", "application/pdf": "pdf"}
# Archives inside the archive, by their first bytes (offset, magic, name).
_NESTED: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"PK\x07\x08", "zip"),
    (0, b"\x1f\x8b", "gzip"),
    (257, b"ustar", "tar"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"BZh", "bzip2"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
)


def nested_reason(kind: str) -> str:
    return f"Nested archives are not accepted ({kind})"


def unsupported_reason(mime: str) -> str:
    return f"Unsupported file type in archive: {mime}"


def entry_too_large_reason(limits: Limits) -> str:
    return f"Archive entry too large (max {_mb(limits.max_entry_bytes)} MB)"


def total_too_large_reason(limits: Limits) -> str:
    return f"Archive too large when extracted (max {_mb(limits.max_total_bytes)} MB)"


def too_many_reason(limits: Limits) -> str:
    return (
        f"Too many entries in archive (max {limits.max_entries}); "
        f"the first {limits.max_entries} were read"
    )


def damaged_reason(recovered: int) -> str:
    return f"ZIP archive is truncated or damaged; {recovered} entries could be recovered"


def _mb(size: int) -> str:
    return f"{size / MiB:g}"


class InvalidArchive(Exception):
    """The file is not a ZIP archive at all."""

    def __init__(self) -> None:
        super().__init__(INVALID_ARCHIVE)


class EntryRefused(Exception):
    """One entry is refused; `reason` says why, in words for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one archive may hold (`kit.settings.PlatformSettings.zip_max_*`)."""

    max_entries: int = 2000
    max_entry_bytes: int = 256 * MiB
    max_total_bytes: int = 4096 * MiB
    max_ratio: float = 100.0

    @classmethod
    def from_mb(
        cls, *, max_entries: int, max_entry_mb: float, max_total_mb: float, max_ratio: float
    ) -> Limits:
        return cls(
            max_entries=max_entries,
            max_entry_bytes=int(max_entry_mb * MiB),
            max_total_bytes=int(max_total_mb * MiB),
            max_ratio=max_ratio,
        )


@dataclass
class TotalBudget:
    """Inflated bytes the rest of the archive may still produce, shared by its entries (read
    a few at a time: each checks its own bytes against what the finished ones left)."""

    remaining: int
    exceeded: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def spend(self, size: int) -> None:
        with self._lock:
            self.remaining -= size


@dataclass(frozen=True)
class Entry:
    """One entry as the archive describes it. `name` is the original path: it may hold PHI
    (a Remidio path starts with the patient's name and MRN), so it never leaves this service
    except into the PHI vault."""

    index: int
    name: str
    flags: int
    method: int
    crc: int
    compressed_size: int
    size: int
    header_offset: int
    external_attr: int = 0
    data_offset: int | None = None  # known when found by the local-header walk
    complete: bool = True  # False: the walk found it cut short


@dataclass(frozen=True)
class Listing:
    """The entries to read (at most `Limits.max_entries`, ignored ones left out), how many
    were ignored, and what is wrong with the archive as a whole, if anything."""

    entries: tuple[Entry, ...]
    ignored: int = 0
    reason: str | None = None
    recovered: bool = False
    truncated_listing: bool = field(default=False)  # more entries than max_entries


def is_ignored(name: str) -> bool:
    """Operating-system litter and directories: counted, never turned into items."""
    if name.endswith(("/", "\\")):
        return True
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    if not parts:
        return True
    base = parts[-1]
    return "__MACOSX" in parts or base.startswith("._") or base.lower() in _IGNORED_NAMES


def _unsafe_path(name: str) -> str | None:
    if "\x00" in name:
        return UNSAFE_ABSOLUTE
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) >= 2 and posix[1] == ":" and posix[0].isalpha()):
        return UNSAFE_ABSOLUTE
    if ".." in PurePosixPath(posix).parts:
        return UNSAFE_ESCAPE
    return None


def check_entry(entry: Entry, *, limits: Limits) -> str | None:
    """Why `entry` is refused before reading a byte of it, or None."""
    if reason := _unsafe_path(entry.name):
        return reason
    mode = entry.external_attr >> 16
    if mode:
        if stat.S_ISLNK(mode):
            return LINK
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return SPECIAL
    if entry.flags & _FLAG_ENCRYPTED:
        return ENCRYPTED
    if entry.method not in (_STORED, _DEFLATED):
        return METHOD
    if not entry.complete:
        return TRUNCATED
    if entry.size > limits.max_entry_bytes:
        return entry_too_large_reason(limits)
    if entry.size > _RATIO_GRACE and entry.size > limits.max_ratio * max(entry.compressed_size, 1):
        return BOMB
    return None


def classify(head: bytes) -> tuple[str, str]:
    """(entry kind, MIME) from the first bytes, never from the name. Raises `EntryRefused`
    for a nested archive or a type the flow does not take."""
    for offset, signature, archive_kind in _NESTED:
        if head[offset : offset + len(signature)] == signature:
            raise EntryRefused(nested_reason(archive_kind))
    mime = str(magic.from_buffer(head, mime=True))
    kind = _KINDS.get(mime)
    if kind is None:
        raise EntryRefused(unsupported_reason(mime))
    return kind, mime


# --- listing ---------------------------------------------------------------------------------


def _file_size(file: BinaryIO) -> int:
    file.seek(0, 2)
    return file.tell()


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    # pread on a real file: no shared file position, so several entries of one archive can
    # be read at once from different threads.
    try:
        fd = file.fileno()
    except (AttributeError, OSError):
        file.seek(offset)
        return file.read(size)
    return os.pread(fd, size, offset)


def _decode_name(raw: bytes, flags: int) -> str:
    if flags & _FLAG_UTF8:
        return raw.decode("utf-8", errors="replace")
    return raw.decode("cp437")


def _zip64_values(extra: bytes, wanted: int) -> list[int]:
    position = 0
    while position + 4 <= len(extra):
        header_id, length = struct.unpack_from("<HH", extra, position)
        if header_id == _ZIP64_EXTRA:
            body = extra[position + 4 : position + 4 + length]
            count = min(wanted, len(body) // 8)
            return list(struct.unpack_from(f"<{count}Q", body)) if count else []
        position += 4 + length
    return []


def _end_record(file: BinaryIO, size: int) -> tuple[int, int, int] | None:
    """(entry count, central directory offset, central directory size), or None."""
    tail_start = max(0, size - (_END_FMT.size + _MAX16))
    tail = _read_at(file, tail_start, size - tail_start)
    position = tail.rfind(_END)
    while position >= 0:
        if position + _END_FMT.size <= len(tail):
            fields = _END_FMT.unpack_from(tail, position)
            if position + _END_FMT.size + fields[7] == len(tail):
                break
        position = tail.rfind(_END, 0, position)
    if position < 0:
        return None
    _, _, _, _, count, cd_size, cd_offset, _ = _END_FMT.unpack_from(tail, position)
    end_at = tail_start + position
    if count == _MAX16 or cd_size == _MAX32 or cd_offset == _MAX32:
        locator_at = end_at - _LOCATOR_FMT.size
        if locator_at < 0:
            return None
        locator = _LOCATOR_FMT.unpack(_read_at(file, locator_at, _LOCATOR_FMT.size))
        if locator[0] != _END64_LOCATOR:
            return None
        record = _read_at(file, locator[2], _END64_FMT.size)
        if len(record) < _END64_FMT.size or record[:4] != _END64:
            return None
        end64 = _END64_FMT.unpack(record)
        count, cd_size, cd_offset = end64[7], end64[8], end64[9]
    if cd_offset + cd_size > end_at:
        return None
    return count, cd_offset, cd_size


def _central_entries(
    file: BinaryIO, size: int, limits: Limits
) -> tuple[list[Entry], int, bool] | None:
    """The entries of the central directory (None when it is missing or damaged)."""
    end = _end_record(file, size)
    if end is None:
        return None
    count, cd_offset, cd_size = end
    entries: list[Entry] = []
    ignored = 0
    position, stop = cd_offset, cd_offset + cd_size
    for _ in range(count):
        fixed = _read_at(file, position, _CENTRAL_FMT.size)
        if len(fixed) < _CENTRAL_FMT.size or fixed[:4] != _CENTRAL:
            return None
        f = _CENTRAL_FMT.unpack(fixed)
        flags, method, crc, csize, usize = f[4], f[5], f[8], f[9], f[10]
        name_len, extra_len, comment_len, external, offset = f[11], f[12], f[13], f[16], f[17]
        variable = _read_at(file, position + _CENTRAL_FMT.size, name_len + extra_len)
        if len(variable) < name_len + extra_len:
            return None
        position += _CENTRAL_FMT.size + name_len + extra_len + comment_len
        if position > stop:
            return None
        name = _decode_name(variable[:name_len], flags)
        if is_ignored(name):
            ignored += 1
            continue
        if len(entries) >= limits.max_entries:
            return entries, ignored, True
        if _MAX32 in (usize, csize, offset):
            values = iter(_zip64_values(variable[name_len:], 3))
            usize = next(values, usize) if usize == _MAX32 else usize
            csize = next(values, csize) if csize == _MAX32 else csize
            offset = next(values, offset) if offset == _MAX32 else offset
        if offset >= size:
            return None
        entries.append(
            Entry(
                index=len(entries),
                name=name,
                flags=flags,
                method=method,
                crc=crc,
                compressed_size=csize,
                size=usize,
                header_offset=offset,
                external_attr=external,
            )
        )
    return entries, ignored, False


def _inflated_end(file: BinaryIO, start: int, limit: int) -> tuple[int, int, int] | None:
    """Walk a deflate stream from `start` without keeping its output: (compressed length,
    inflated size, CRC-32), or None when it does not end before the file does (or inflates
    past `limit`, when its end cannot be found at a bearable cost)."""
    inflater = zlib.decompressobj(-15)
    fed, produced, crc = 0, 0, 0
    position = start
    while not inflater.eof:
        data = _read_at(file, position, _READ)
        position += len(data)
        if not data:
            return None
        fed += len(data)
        while data and not inflater.eof:
            out = inflater.decompress(data, CHUNK)
            produced += len(out)
            crc = zlib.crc32(out, crc)
            if produced > limit:
                return None
            data = inflater.unconsumed_tail
    return fed - len(inflater.unused_data), produced, crc


def _after_descriptor(file: BinaryIO, end: int, length: int) -> tuple[int | None, int]:
    """(where the next header starts, the CRC declared) from the data descriptor at `end`
    (its signature is optional; ZIP64 ones hold 8-byte sizes)."""
    descriptor = _read_at(file, end, 24)
    skip = 4 if descriptor[:4] == _DESCRIPTOR else 0
    body = descriptor[skip:]
    if len(body) >= 12:
        declared_crc, declared_length, _ = struct.unpack_from("<III", body)
        if declared_length == length:
            return end + skip + 12, declared_crc
    if len(body) >= 20:
        declared_crc, declared_length, _ = struct.unpack_from("<IQQ", body)
        if declared_length == length:
            return end + skip + 20, declared_crc
    return None, 0


def _walk_local_headers(file: BinaryIO, size: int, limits: Limits) -> tuple[list[Entry], int, bool]:
    """Every entry found by its local header, for an archive whose central directory is gone.
    The first entry that is cut short is listed as incomplete and ends the walk."""
    entries: list[Entry] = []
    ignored = 0
    position = 0
    while position + _LOCAL_FMT.size <= size:
        fixed = _read_at(file, position, _LOCAL_FMT.size)
        if fixed[:4] != _LOCAL:
            break  # the central directory, or garbage: nothing more to recover
        f = _LOCAL_FMT.unpack(fixed)
        flags, method = f[2], f[3]
        crc, csize, usize, name_len, extra_len = f[6], f[7], f[8], f[9], f[10]
        variable = _read_at(file, position + _LOCAL_FMT.size, name_len + extra_len)
        if len(variable) < name_len + extra_len:
            break
        name = _decode_name(variable[:name_len], flags)
        data_offset = position + _LOCAL_FMT.size + name_len + extra_len
        if _MAX32 in (usize, csize):
            values = iter(_zip64_values(variable[name_len:], 2))
            usize = next(values, usize) if usize == _MAX32 else usize
            csize = next(values, csize) if csize == _MAX32 else csize
        entry = Entry(
            index=len(entries),
            name=name,
            flags=flags,
            method=method,
            crc=crc,
            compressed_size=csize,
            size=usize,
            header_offset=position,
            data_offset=data_offset,
        )
        next_position: int | None
        if flags & _FLAG_DESCRIPTOR:
            if method != _DEFLATED or flags & _FLAG_ENCRYPTED:
                next_position = None  # no way to find where the data ends
            else:
                found = _inflated_end(file, data_offset, limits.max_entry_bytes)
                if found is None:
                    next_position = None
                else:
                    length, inflated, _ = found
                    next_position, declared_crc = _after_descriptor(
                        file, data_offset + length, length
                    )
                    entry = replace(entry, crc=declared_crc, compressed_size=length, size=inflated)
        else:
            end = data_offset + csize
            next_position = end if end <= size else None
        if is_ignored(name):
            ignored += 1
        elif len(entries) >= limits.max_entries:
            return entries, ignored, True
        else:
            entries.append(entry if next_position is not None else replace(entry, complete=False))
        if next_position is None:
            break
        position = next_position
    return entries, ignored, False


def list_entries(file: BinaryIO, *, limits: Limits) -> Listing:
    """The archive's entries by its central directory, or by a walk over its local headers
    when that is missing or damaged. Raises `InvalidArchive` for a file that is no ZIP."""
    size = _file_size(file)
    central = _central_entries(file, size, limits)
    if central is not None:
        entries, ignored, more = central
        return Listing(
            entries=tuple(entries),
            ignored=ignored,
            reason=too_many_reason(limits) if more else None,
            truncated_listing=more,
        )
    if _read_at(file, 0, 4) != _LOCAL:
        raise InvalidArchive()
    entries, ignored, more = _walk_local_headers(file, size, limits)
    complete = sum(1 for e in entries if e.complete)
    return Listing(
        entries=tuple(entries),
        ignored=ignored,
        reason=too_many_reason(limits) if more else damaged_reason(complete),
        recovered=True,
        truncated_listing=more,
    )


# --- reading ---------------------------------------------------------------------------------


def _data_offset(file: BinaryIO, entry: Entry) -> int:
    if entry.data_offset is not None:
        return entry.data_offset
    fixed = _read_at(file, entry.header_offset, _LOCAL_FMT.size)
    if len(fixed) < _LOCAL_FMT.size or fixed[:4] != _LOCAL:
        raise EntryRefused(TRUNCATED)
    name_len, extra_len = struct.unpack_from("<HH", fixed, 26)
    return int(entry.header_offset + _LOCAL_FMT.size + name_len + extra_len)


def _inflate(
    file: BinaryIO, entry: Entry, *, limits: Limits, budget: TotalBudget
) -> Iterator[bytes]:
    """The checked inflated chunks of `entry`; its size and CRC are checked at the end."""
    position = _data_offset(file, entry)
    remaining_in = entry.compressed_size
    inflater = zlib.decompressobj(-15) if entry.method == _DEFLATED else None
    consumed, produced, crc = 0, 0, 0
    pending = b""  # compressed bytes read but not inflated yet
    while True:
        if not pending and remaining_in > 0:
            pending = _read_at(file, position, min(_READ, remaining_in))
            if not pending:
                raise EntryRefused(TRUNCATED)
            position += len(pending)
            remaining_in -= len(pending)
        if inflater is None:
            if not pending:
                break
            out, pending = pending[:CHUNK], pending[CHUNK:]
            consumed += len(out)
        else:
            if inflater.eof:
                break
            if not pending:
                raise EntryRefused(TRUNCATED)  # the stream does not end where it should
            before = len(pending)
            try:
                out = inflater.decompress(pending, CHUNK)
            except zlib.error as error:
                raise EntryRefused(TRUNCATED) from error
            pending = inflater.unconsumed_tail
            consumed += before - len(pending)
        if not out:
            continue
        produced += len(out)
        if produced > limits.max_entry_bytes:
            raise EntryRefused(entry_too_large_reason(limits))
        if produced > budget.remaining:
            budget.exceeded = True
            raise EntryRefused(total_too_large_reason(limits))
        if produced > _RATIO_GRACE and produced > limits.max_ratio * max(consumed, 1):
            raise EntryRefused(BOMB)
        crc = zlib.crc32(out, crc)
        yield out
    if produced != entry.size:
        raise EntryRefused(TRUNCATED)
    if crc != entry.crc:
        raise EntryRefused(CRC)
    budget.spend(produced)


def read_entry(
    file: BinaryIO, entry: Entry, *, limits: Limits, budget: TotalBudget
) -> Iterator[bytes]:
    """The inflated bytes of `entry`, in chunks of about `CHUNK`; the first one holds at
    least the first `HEAD` bytes (or the whole entry), enough for `classify`. Raises
    `EntryRefused` as soon as the entry breaks a rule (what was yielded so far must then be
    thrown away). Reads are positioned (`os.pread`), so entries may be read concurrently."""
    if reason := check_entry(entry, limits=limits):
        raise EntryRefused(reason)
    chunks = _inflate(file, entry, limits=limits, budget=budget)
    head = bytearray()
    for chunk in chunks:
        head += chunk
        if len(head) >= HEAD:
            break
    if head:
        yield bytes(head)
    yield from chunks
