"""Event bus on one SQLite file: the embedded adapter for single-machine sites.

A durable, Kafka-shaped log: topics with partitions, per-partition offsets, consumer groups
with committed offsets that survive restarts. Several processes may open the same file (WAL
mode, `BEGIN IMMEDIATE` for every write, a busy timeout).

Consumer groups: every member registers in `group_members` with a lease it renews while alive;
each (topic, partition) of a group has at most one owner in `partition_owners`. A member claims
the partitions a deterministic assignment over the live members gives it, but only once their
previous owner has released them, and it releases partitions only when it calls `fetch` again or
closes, i.e. after the batch it was handed is done. So two members of one group never hold the
same partition at once and a record is handed to one member at a time (a member whose lease
ran out, e.g. a process frozen longer than the lease, loses its partitions: at-least-once).
A member whose process is gone (same host and PID namespace, PID not running) is reaped at once,
so a restarted process does not wait out the lease of its crashed predecessor.

Retention (`prune`): records older than their topic's retention are deleted from the start of
each partition, but never past the committed offset of any consumer group of that partition,
and the space goes back to the file system (auto_vacuum=INCREMENTAL). Offsets come from a
per-partition high-water mark, so they keep increasing even when every record was pruned.

The file is private (0600, its -wal and -shm alike; a folder the bus creates is 0700): events
carry job and item ids, and a shared machine must not let other accounts read or forge them.

Every sqlite call runs on one worker thread per bus, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from kit.ports import Delivery, KitError, Message, PruneResult, RetentionPolicy
from kit.process import host_identity, process_alive
from kit.tracing import inject

__all__ = ["SqliteEventBus"]

log = logging.getLogger(__name__)

T = TypeVar("T")
TopicPartition = tuple[str, int]

# 1: topics, records, offsets, groups. 2: partition_heads (offsets survive pruning); files of
# version 1 also switch to auto_vacuum=INCREMENTAL, at their first prune (see `_reclaim`).
_SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL CHECK (partitions > 0)
);
CREATE TABLE IF NOT EXISTS records (
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    record_offset INTEGER NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    headers TEXT NOT NULL,
    published_at REAL NOT NULL,
    PRIMARY KEY (topic, partition_id, record_offset)
);
CREATE TABLE IF NOT EXISTS committed_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    topics TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    joined_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partition_owners (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (group_id, topic, partition_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partition_heads (
    topic TEXT NOT NULL,
    partition_id INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition_id)
) WITHOUT ROWID;
INSERT OR IGNORE INTO partition_heads (topic, partition_id, next_offset)
    SELECT topic, partition_id, MAX(record_offset) + 1 FROM records GROUP BY topic, partition_id;
"""

# Records deleted per write transaction while pruning, so publishers (of any process) wait at
# most one chunk for the write lock: 5,000 records of 600 bytes took 40-80 ms here.
_PRUNE_CHUNK = 5_000
# Pages given back per incremental-vacuum transaction: up to ~1 s holding the write lock.
_VACUUM_PAGES = 1024


def _create_private(path: Path) -> None:
    """Create the folder (0700) and the file (0600) before SQLite opens it: SQLite creates
    its -wal and -shm with the permissions of the database file. An existing file or folder
    keeps the permissions it has (an operator may have chosen them)."""
    if not path.parent.is_dir():
        # `mode` applies to the last folder only; the umask can only take bits away.
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)  # an empty file is an empty database to SQLite


def partition_for(key: str, partitions: int) -> int:
    """Stable across processes and Python runs (unlike `hash()`)."""
    return zlib.crc32(key.encode()) % partitions


@contextlib.contextmanager
def _write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front: a deferred transaction that reads and then
    # writes can fail with SQLITE_BUSY without the busy handler being given a chance.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@dataclass(frozen=True)
class _Member:
    member_id: str
    topics: frozenset[str]
    host: str
    pid: int
    joined_at: float
    expires_at: float


@dataclass(frozen=True)
class _Plan:
    reap: list[str]
    release: set[TopicPartition]
    claim: set[TopicPartition]
    is_idle: bool
    owned: dict[TopicPartition, int]


_KEEP_A_WEEK = RetentionPolicy()


class SqliteEventBus:
    """`EventBus` on one SQLite file. The file and its folder are created on first use."""

    def __init__(
        self,
        *,
        path: Path,
        retention: RetentionPolicy = _KEEP_A_WEEK,
        poll_interval: float = 0.1,
        lease_seconds: float = 30.0,
        busy_timeout: float = 30.0,
    ) -> None:
        self._path = path
        self._retention = retention
        self._poll_interval = poll_interval
        self._lease_seconds = lease_seconds
        self._busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._wakeups: set[asyncio.Event] = set()
        self._consumers: set[SqliteConsumer] = set()
        self._closed = False
        self._host = ""

    @property
    def path(self) -> Path:
        return self._path

    # --- EventBus ----------------------------------------------------------------------------

    async def publish(self, topic: str, message: Message) -> None:
        headers = json.dumps(inject(message.headers), separators=(",", ":"), sort_keys=True)
        await self._run(self._insert_record, topic, message.key, message.value, headers)
        for wakeup in self._wakeups:
            wakeup.set()

    def consumer(self, *, group: str, topics: Sequence[str]) -> SqliteConsumer:
        self._check_open()
        if not topics:
            raise ValueError("a consumer needs at least one topic")
        consumer = SqliteConsumer(bus=self, group=group, topics=tuple(dict.fromkeys(topics)))
        self._consumers.add(consumer)
        return consumer

    async def ensure_topics(self, topics: Mapping[str, int]) -> None:
        for name, partitions in topics.items():
            if partitions < 1:
                raise ValueError(f"topic {name!r}: partitions must be >= 1, got {partitions}")
        await self._run(self._create_topics, dict(topics))

    async def prune(self) -> PruneResult:
        """Delete what the retention policy lets go, then give the space back to the disk.

        Chunked (`_PRUNE_CHUNK` records per transaction, each its own turn on the worker
        thread) so publishes and commits of this and other processes go on meanwhile.
        """
        now = time.time()
        partitions = await self._run(self._partitions)
        deleted = held = 0
        held_by: set[str] = set()
        for topic, partition in partitions:
            keep_seconds = self._retention.seconds_for(topic)
            if keep_seconds is None:
                continue
            while True:
                count = await self._run(
                    self._delete_expired, topic, partition, now - keep_seconds, _PRUNE_CHUNK
                )
                deleted += count
                if count < _PRUNE_CHUNK:
                    break
            kept, groups = await self._run(self._held_back, topic, partition, now - keep_seconds)
            held += kept
            held_by.update(groups)
        if held:
            log.warning(
                "event log: %d records past their retention are kept for consumer groups that"
                " have not committed them: %s",
                held,
                ", ".join(sorted(held_by)),
            )
        reclaimed = await self._run(self._reclaim)
        return PruneResult(
            deleted=deleted, held=held, held_by=tuple(sorted(held_by)), reclaimed_bytes=reclaimed
        )

    async def close(self) -> None:
        if self._closed:
            return
        for consumer in list(self._consumers):
            await consumer.close()
        self._closed = True
        executor = self._executor
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_connection)
            executor.shutdown(wait=False)
            self._executor = None

    # --- plumbing ----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KitError("the event bus is closed")

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(connection, *args)` on the bus's single sqlite thread."""
        self._check_open()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-bus")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn, args)

    def _call(self, fn: Callable[..., T], args: tuple[object, ...]) -> T:
        return fn(self._connection(), *args)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            _create_private(self._path)
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only ever used on the one worker thread
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
                # Before WAL: only a file without pages takes it at once (setting WAL writes
                # page 1); an older file keeps its mode until `_reclaim` vacuums it.
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                conn.execute("PRAGMA journal_mode = WAL")
                # FULL: an acknowledged publish or commit survives a power cut too.
                conn.execute("PRAGMA synchronous = FULL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > _SCHEMA_VERSION:
                    raise KitError(
                        f"{self._path} has event-log schema {version}; this version of the "
                        f"software understands up to {_SCHEMA_VERSION}"
                    )
                if version < _SCHEMA_VERSION:
                    with _write_transaction(conn):
                        # Every statement is idempotent, so a process that migrates a file
                        # another one migrated a moment ago changes nothing.
                        for statement in _SCHEMA.split(";"):
                            if statement.strip():
                                conn.execute(statement)
                        conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._host = host_identity()
        return self._conn

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # --- sqlite work (runs on the worker thread) ---------------------------------------------

    @staticmethod
    def _insert_record(
        conn: sqlite3.Connection, topic: str, key: str, value: bytes, headers: str
    ) -> None:
        with _write_transaction(conn):
            # Like Kafka with auto-creation on: an unknown topic gets one partition.
            conn.execute("INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, 1)", (topic,))
            (partitions,) = conn.execute(
                "SELECT partitions FROM topics WHERE name = ?", (topic,)
            ).fetchone()
            partition = partition_for(key, partitions)
            # The high-water mark, not MAX(record_offset) + 1: that would hand out offsets
            # again once a prune emptied the partition, and groups would skip the new records.
            # Keeping it costs one more row write: 0.40 -> 0.47 ms a publish (WAL, FULL sync).
            (offset,) = conn.execute(
                "SELECT COALESCE(MAX(next_offset), 0) FROM partition_heads"
                " WHERE topic = ? AND partition_id = ?",
                (topic, partition),
            ).fetchone()
            conn.execute(
                "INSERT INTO records"
                " (topic, partition_id, record_offset, key, value, headers, published_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (topic, partition, offset, key, value, headers, time.time()),
            )
            conn.execute(
                "INSERT INTO partition_heads (topic, partition_id, next_offset) VALUES (?, ?, ?)"
                " ON CONFLICT (topic, partition_id)"
                " DO UPDATE SET next_offset = excluded.next_offset",
                (topic, partition, offset + 1),
            )

    @staticmethod
    def _create_topics(conn: sqlite3.Connection, topics: dict[str, int]) -> None:
        with _write_transaction(conn):
            conn.executemany(
                "INSERT OR IGNORE INTO topics (name, partitions) VALUES (?, ?)", topics.items()
            )

    @staticmethod
    def _partitions(conn: sqlite3.Connection) -> list[TopicPartition]:
        return [
            (topic, partition)
            for topic, partition in conn.execute(
                "SELECT topic, partition_id FROM partition_heads ORDER BY topic, partition_id"
            )
        ]

    @staticmethod
    def _expired_below(
        conn: sqlite3.Connection, topic: str, partition: int, cutoff: float, limit: int | None
    ) -> int | None:
        """An offset below which every record is older than `cutoff`, at most `limit` past the
        partition's first record (None: the partition is empty).

        From the start of the partition up to its first younger record, like Kafka deleting
        whole old segments: a record stamped earlier after a clock step back waits for its
        neighbours. Reads at most `limit` records (the primary key is in offset order).
        """
        (first,) = conn.execute(
            "SELECT MIN(record_offset) FROM records WHERE topic = ? AND partition_id = ?",
            (topic, partition),
        ).fetchone()
        if first is None:
            return None
        end = first + limit if limit is not None else 2**63 - 1
        young = conn.execute(
            "SELECT record_offset FROM records WHERE topic = ? AND partition_id = ?"
            " AND record_offset < ? AND published_at >= ? ORDER BY record_offset LIMIT 1",
            (topic, partition, end, cutoff),
        ).fetchone()
        if young is not None:
            return int(young[0])
        (head,) = conn.execute(
            "SELECT next_offset FROM partition_heads WHERE topic = ? AND partition_id = ?",
            (topic, partition),
        ).fetchone()
        return min(int(head), end)

    @staticmethod
    def _group_positions(conn: sqlite3.Connection, topic: str, partition: int) -> dict[str, int]:
        """Where each consumer group of the partition is: its committed offset, or 0 for a
        group with a member on the topic (lease unexpired) that has committed nothing there
        yet: it reads from the start, so it has processed nothing."""
        positions: dict[str, int] = {
            group: next_offset
            for group, next_offset in conn.execute(
                "SELECT group_id, next_offset FROM committed_offsets"
                " WHERE topic = ? AND partition_id = ?",
                (topic, partition),
            )
        }
        for group, topics in conn.execute(
            "SELECT group_id, topics FROM group_members WHERE expires_at >= ?", (time.time(),)
        ):
            if topic in json.loads(topics):
                positions.setdefault(group, 0)
        return positions

    def _delete_expired(
        self, conn: sqlite3.Connection, topic: str, partition: int, cutoff: float, limit: int
    ) -> int:
        """Delete up to `limit` records from the start of the partition that are older than
        `cutoff` and committed by every group. Bounds are read under the write lock, so a
        group that commits or joins meanwhile is taken into account."""
        with _write_transaction(conn):
            below = self._expired_below(conn, topic, partition, cutoff, limit)
            if below is None:
                return 0
            below = min([below, *self._group_positions(conn, topic, partition).values()])
            return conn.execute(
                "DELETE FROM records WHERE topic = ? AND partition_id = ? AND record_offset < ?",
                (topic, partition, below),
            ).rowcount

    def _held_back(
        self, conn: sqlite3.Connection, topic: str, partition: int, cutoff: float
    ) -> tuple[int, list[str]]:
        """Records past their retention still kept, and the groups they are kept for."""
        conn.execute("BEGIN")
        try:
            # Walks every held record: as many as the slowest group is behind, once a prune.
            below = self._expired_below(conn, topic, partition, cutoff, None)
            if below is None:
                return 0, []
            (count, last) = conn.execute(
                "SELECT COUNT(*), MAX(record_offset) FROM records"
                " WHERE topic = ? AND partition_id = ? AND record_offset < ?",
                (topic, partition, below),
            ).fetchone()
            if not count:
                return 0, []
            positions = self._group_positions(conn, topic, partition)
            return int(count), [group for group, at in positions.items() if at <= last]
        finally:
            conn.execute("COMMIT")

    @staticmethod
    def _reclaim(conn: sqlite3.Connection) -> int:
        """Give the pages freed by deleting back to the file system; returns the bytes.

        Incremental vacuum moves live pages from the end of the file into the holes, 0.4-1 ms
        a page here (852 pages, 3.5 MB, ~1.4 h of log at 10,000 images a day: 0.4-0.9 s), in
        steps of `_VACUUM_PAGES` so other processes write in between. When most of the file is free
        (a first prune, or one after a group held everything back) a VACUUM, which copies
        only the live pages, is far quicker: 32,696 free pages of 34,300 took 9.9 s
        incrementally and 0.24 s by VACUUM.

        A file made before schema 2 has auto_vacuum=NONE and needs one VACUUM to switch: done
        here, once a prune has freed pages, not when the file is opened, because a site
        upgrading with a year of log (~22 GB) would otherwise copy all of it before starting
        and need as much free disk again. The WAL is checkpointed last: in WAL mode freed
        pages leave the main file only then.
        """
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
        (before,) = conn.execute("PRAGMA page_count").fetchone()
        (mode,) = conn.execute("PRAGMA auto_vacuum").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        if free and (mode != 2 or free * 2 > before):  # 2 = INCREMENTAL
            log.info("event log: VACUUM (auto_vacuum %s, %d of %d pages free)", mode, free, before)
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("VACUUM")
            (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        while free:
            conn.execute(f"PRAGMA incremental_vacuum({_VACUUM_PAGES})").fetchall()
            (left,) = conn.execute("PRAGMA freelist_count").fetchone()
            if left >= free:  # nothing moved: not incremental after all
                break
            free = left
        # TRUNCATE also empties the -wal file; it gives up (no error) while another process
        # is reading, and that process's next checkpoint finishes the job.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        (after,) = conn.execute("PRAGMA page_count").fetchone()
        return max(0, int(before) - int(after)) * int(page_size)

    def _sync_membership(
        self, conn: sqlite3.Connection, group: str, member_id: str, topics: tuple[str, ...]
    ) -> dict[TopicPartition, int]:
        """Renew our lease, reap dead members, hand back partitions that are no longer ours
        and claim free ones that are. Returns what we own with its committed offsets.

        Planned in a read transaction first: when nothing changes (the usual case for an idle
        member polling) no write, and so no fsync, happens at all.
        """
        conn.execute("BEGIN")
        try:
            plan = self._plan(conn, group, member_id, time.time())
        finally:
            conn.execute("COMMIT")
        if plan.is_idle:
            return plan.owned
        with _write_transaction(conn):
            now = time.time()
            conn.execute(
                "INSERT INTO group_members"
                " (group_id, member_id, topics, host, pid, joined_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (group_id, member_id) DO UPDATE SET expires_at = excluded.expires_at",
                (
                    group,
                    member_id,
                    json.dumps(topics),
                    self._host,
                    os.getpid(),
                    now,
                    now + self._lease_seconds,
                ),
            )
            plan = self._plan(conn, group, member_id, now)  # again, now under the write lock
            for gone in plan.reap:
                log.info("consumer group %s: reaping member %s", group, gone)
                conn.execute(
                    "DELETE FROM group_members WHERE group_id = ? AND member_id = ?",
                    (group, gone),
                )
                conn.execute(
                    "DELETE FROM partition_owners WHERE group_id = ? AND member_id = ?",
                    (group, gone),
                )
            conn.executemany(
                "DELETE FROM partition_owners"
                " WHERE group_id = ? AND topic = ? AND partition_id = ? AND member_id = ?",
                [(group, topic, partition, member_id) for topic, partition in plan.release],
            )
            conn.executemany(
                "INSERT INTO partition_owners (group_id, topic, partition_id, member_id)"
                " VALUES (?, ?, ?, ?)",
                [(group, topic, partition, member_id) for topic, partition in plan.claim],
            )
            return self._owned(conn, group, member_id)

    def _plan(self, conn: sqlite3.Connection, group: str, member_id: str, now: float) -> _Plan:
        members = [
            _Member(row[0], frozenset(json.loads(row[1])), row[2], row[3], row[4], row[5])
            for row in conn.execute(
                "SELECT member_id, topics, host, pid, joined_at, expires_at"
                " FROM group_members WHERE group_id = ?",
                (group,),
            )
        ]
        me = next((member for member in members if member.member_id == member_id), None)
        reap: list[str] = []
        live: list[_Member] = []
        for member in members:
            if member.member_id == member_id:
                live.append(member)
            elif member.expires_at < now or (
                member.host == self._host and not process_alive(member.pid)
            ):
                reap.append(member.member_id)
            else:
                live.append(member)
        owners: dict[TopicPartition, str] = {
            (topic, partition): owner
            for topic, partition, owner in conn.execute(
                "SELECT topic, partition_id, member_id FROM partition_owners WHERE group_id = ?",
                (group,),
            )
            if owner not in reap
        }
        wanted = _assignment(conn, live).get(member_id, set()) if me is not None else set()
        release = {tp for tp, owner in owners.items() if owner == member_id and tp not in wanted}
        claim = {tp for tp in wanted if tp not in owners}
        renew_due = me is None or me.expires_at - now < self._lease_seconds * 2 / 3
        return _Plan(
            reap=reap,
            release=release,
            claim=claim,
            is_idle=not (reap or release or claim or renew_due),
            owned=self._owned(conn, group, member_id),
        )

    @staticmethod
    def _owned(conn: sqlite3.Connection, group: str, member_id: str) -> dict[TopicPartition, int]:
        return {
            (topic, partition): committed
            for topic, partition, committed in conn.execute(
                "SELECT o.topic, o.partition_id, COALESCE(c.next_offset, 0)"
                " FROM partition_owners AS o LEFT JOIN committed_offsets AS c"
                " ON c.group_id = o.group_id AND c.topic = o.topic"
                " AND c.partition_id = o.partition_id"
                " WHERE o.group_id = ? AND o.member_id = ?",
                (group, member_id),
            )
        }

    def _renew_lease(self, conn: sqlite3.Connection, group: str, member_id: str) -> None:
        with _write_transaction(conn):
            conn.execute(
                "UPDATE group_members SET expires_at = ? WHERE group_id = ? AND member_id = ?",
                (time.time() + self._lease_seconds, group, member_id),
            )

    @staticmethod
    def _leave_group(conn: sqlite3.Connection, group: str, member_id: str) -> None:
        with _write_transaction(conn):
            conn.execute(
                "DELETE FROM partition_owners WHERE group_id = ? AND member_id = ?",
                (group, member_id),
            )
            conn.execute(
                "DELETE FROM group_members WHERE group_id = ? AND member_id = ?",
                (group, member_id),
            )

    @staticmethod
    def _read_records(
        conn: sqlite3.Connection,
        group: str,
        member_id: str,
        positions: list[tuple[str, int, int]],
        max_records: int,
    ) -> list[Delivery]:
        deliveries: list[Delivery] = []
        # One read transaction: a consistent snapshot across partitions.
        conn.execute("BEGIN")
        try:
            for topic, partition, position in positions:
                remaining = max_records - len(deliveries)
                if remaining <= 0:
                    break
                # Only the partition's current owner is handed its records: a member whose
                # lease was taken over stops receiving at once, not at its next sync.
                rows = conn.execute(
                    "SELECT record_offset, key, value, headers FROM records"
                    " WHERE topic = ? AND partition_id = ? AND record_offset >= ?"
                    " AND EXISTS (SELECT 1 FROM partition_owners WHERE group_id = ?"
                    " AND topic = ? AND partition_id = ? AND member_id = ?)"
                    " ORDER BY record_offset LIMIT ?",
                    (topic, partition, position, group, topic, partition, member_id, remaining),
                ).fetchall()
                deliveries.extend(
                    Delivery(
                        topic=topic,
                        partition=partition,
                        offset=offset,
                        message=Message(key=key, value=bytes(value), headers=json.loads(headers)),
                    )
                    for offset, key, value, headers in rows
                )
        finally:
            conn.execute("COMMIT")
        return deliveries

    @staticmethod
    def _commit_offset(
        conn: sqlite3.Connection, group: str, topic: str, partition: int, next_offset: int
    ) -> None:
        with _write_transaction(conn):
            # Never backwards: a late commit of an older delivery must not undo a newer one.
            conn.execute(
                "INSERT INTO committed_offsets (group_id, topic, partition_id, next_offset)"
                " VALUES (?, ?, ?, ?)"
                " ON CONFLICT (group_id, topic, partition_id)"
                " DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                (group, topic, partition, next_offset),
            )


def _assignment(conn: sqlite3.Connection, live: list[_Member]) -> dict[str, set[TopicPartition]]:
    """Which member should own which partition: the same answer in every process.

    Partitions in (topic, partition) order each go to the least-loaded live member subscribed to
    their topic; ties go to the member that joined first, so partitions stay put when a member
    joins or leaves as far as balance allows.
    """
    order = sorted(live, key=lambda m: (m.joined_at, m.member_id))
    topics = sorted({topic for member in order for topic in member.topics})
    counts = dict(
        conn.execute(
            f"SELECT name, partitions FROM topics WHERE name IN ({','.join('?' * len(topics))})",
            topics,
        ).fetchall()
    )
    load = {member.member_id: 0 for member in order}
    assignment: dict[str, set[TopicPartition]] = {member.member_id: set() for member in order}
    for topic in topics:
        eligible = [member for member in order if topic in member.topics]
        for partition in range(counts.get(topic, 0)):
            chosen = min(eligible, key=lambda m: load[m.member_id])  # min is stable: first wins
            assignment[chosen.member_id].add((topic, partition))
            load[chosen.member_id] += 1
    return assignment


class SqliteConsumer:
    """One member of a consumer group on a `SqliteEventBus`. Made by `SqliteEventBus.consumer`."""

    _SYNC_SECONDS = 0.5

    def __init__(self, *, bus: SqliteEventBus, group: str, topics: tuple[str, ...]) -> None:
        self._bus = bus
        self._group = group
        self._topics = topics
        self._member_id = uuid.uuid4().hex
        self._positions: dict[TopicPartition, int] = {}
        self._last_sync = -1e9
        self._joined = False
        self._closed = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._rotation = 0

    # The port's signature: `timeout` bounds the long poll (ASYNC109 wants asyncio.timeout).
    async def fetch(
        self,
        *,
        max_records: int = 50,
        timeout: float = 1.0,
    ) -> Sequence[Delivery]:
        if self._closed:
            raise KitError("the consumer is closed")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        self._start_heartbeat()
        while True:
            if self._closed:  # closed by another task while we waited: don't rejoin the group
                return []
            if loop.time() - self._last_sync >= self._SYNC_SECONDS:
                await self._sync()
            wakeup = asyncio.Event()
            # Registered before reading so a publish between the read and the wait still wakes us.
            self._bus._wakeups.add(wakeup)
            try:
                deliveries = await self._bus._run(
                    self._bus._read_records,
                    self._group,
                    self._member_id,
                    self._ordered_positions(),
                    max_records,
                )
                if deliveries:
                    for delivery in deliveries:
                        self._positions[(delivery.topic, delivery.partition)] = delivery.offset + 1
                    return deliveries
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return []
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(remaining, self._bus._poll_interval)):
                        await wakeup.wait()
            finally:
                self._bus._wakeups.discard(wakeup)

    async def commit(self, delivery: Delivery) -> None:
        if self._closed:
            raise KitError("the consumer is closed")
        await self._bus._run(
            self._bus._commit_offset,
            self._group,
            delivery.topic,
            delivery.partition,
            delivery.offset + 1,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        try:
            if self._joined and not self._bus._closed:
                await self._bus._run(self._bus._leave_group, self._group, self._member_id)
        finally:
            self._bus._consumers.discard(self)

    # --- helpers -----------------------------------------------------------------------------

    async def _sync(self) -> None:
        self._joined = True
        owned = await self._bus._run(
            self._bus._sync_membership, self._group, self._member_id, self._topics
        )
        self._last_sync = asyncio.get_running_loop().time()
        # Partitions we keep continue where we are; new ones start at the committed offset.
        self._positions = {
            tp: self._positions.get(tp, committed) for tp, committed in owned.items()
        }

    def _ordered_positions(self) -> list[tuple[str, int, int]]:
        # Start at a different partition each time so one busy partition cannot starve others.
        items = sorted(self._positions.items())
        if items:
            self._rotation = (self._rotation + 1) % len(items)
            items = items[self._rotation :] + items[: self._rotation]
        return [(topic, partition, position) for (topic, partition), position in items]

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._keep_lease(), name=f"sqlite-bus heartbeat {self._group}"
            )

    async def _keep_lease(self) -> None:
        # Keeps the lease while the caller is busy with a batch between fetches.
        interval = self._bus._lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._bus._run(self._bus._renew_lease, self._group, self._member_id)
            except Exception:
                log.warning("consumer group %s: lease renewal failed", self._group, exc_info=True)
