"""The SQLite event bus beyond the shared contract: pruning, schema migration, file privacy."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.topics import dead_letter
from kit.bus_sqlite import SqliteEventBus
from kit.ports import Delivery, EventBus, Message, RetentionPolicy

# Records a second old are past their retention: tests wait ~1 s instead of a week.
ONE_SECOND = RetentionPolicy(default_hours=1 / 3600)


async def consume(bus: EventBus, group: str, topic: str, count: int) -> list[Delivery]:
    """Read `count` records as a member of `group` (or fewer if no more come within ~3 s)."""
    consumer = bus.consumer(group=group, topics=[topic])
    received: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while len(received) < count and loop.time() < deadline:
        received.extend(await consumer.fetch(max_records=500, timeout=0.2))
    await consumer.close()
    return received


async def consume_and_commit(
    bus: EventBus, group: str, topic: str, count: int, *, upto: int | None = None
) -> list[Delivery]:
    """Read `count` records and commit up to and including the record at offset `upto`
    (all of them when None)."""
    consumer = bus.consumer(group=group, topics=[topic])
    received: list[Delivery] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while len(received) < count and loop.time() < deadline:
        received.extend(await consumer.fetch(max_records=500, timeout=0.2))
    assert len(received) == count
    last = received[-1] if upto is None else next(d for d in received if d.offset == upto)
    await consumer.commit(last)
    await consumer.close()
    return received


async def publish(bus: EventBus, topic: str, count: int, *, size: int = 8) -> None:
    for i in range(count):
        await bus.publish(topic, Message(key="k", value=str(i).encode().ljust(size, b".")))


def file_bytes(path: Path) -> int:
    """The database file and its WAL together: what the log takes on disk."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def count_records(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM records").fetchone()
    conn.close()
    return int(count)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "events.sqlite3"


async def test_prune_deletes_old_records_every_group_has_committed(path: Path) -> None:
    bus = SqliteEventBus(path=path, retention=RetentionPolicy(default_hours=2 / 3600))
    await bus.ensure_topics({"work": 1})
    await publish(bus, "work", 10)
    await consume_and_commit(bus, "anonymizer", "work", 10)
    await consume_and_commit(bus, "auditor", "work", 10)
    await asyncio.sleep(2.2)
    await publish(bus, "work", 2)  # young: kept whoever committed them

    result = await bus.prune()

    assert (result.deleted, result.held, result.held_by) == (10, 0, ())
    assert count_records(path) == 2
    newcomer = await consume(bus, "newcomer", "work", 2)
    assert [d.offset for d in newcomer] == [10, 11]
    assert [d.offset for d in await consume(bus, "anonymizer", "work", 2)] == [10, 11]
    await bus.close()


async def test_prune_keeps_the_old_records_a_group_has_not_committed(path: Path) -> None:
    bus = SqliteEventBus(path=path, retention=ONE_SECOND)
    await bus.ensure_topics({"work": 1})
    await publish(bus, "work", 10)
    await consume_and_commit(bus, "fast", "work", 10)
    await consume_and_commit(bus, "slow", "work", 10, upto=3)
    await asyncio.sleep(1.2)

    result = await bus.prune()

    assert (result.deleted, result.held, result.held_by) == (4, 6, ("slow",))
    resumed = await consume(bus, "slow", "work", 6)
    assert [d.offset for d in resumed] == [4, 5, 6, 7, 8, 9]
    await bus.close()


async def test_a_group_reading_but_not_yet_committing_holds_back_pruning(path: Path) -> None:
    bus = SqliteEventBus(path=path, retention=ONE_SECOND)
    await bus.ensure_topics({"work": 1})
    await publish(bus, "work", 5)
    await consume_and_commit(bus, "done", "work", 5)
    busy = bus.consumer(group="busy", topics=["work"])
    assert len(await busy.fetch(timeout=2.0)) == 5  # in hand, nothing committed yet
    await asyncio.sleep(1.2)

    result = await bus.prune()

    assert (result.deleted, result.held, result.held_by) == (0, 5, ("busy",))
    await busy.close()
    await bus.close()


async def test_offsets_keep_increasing_after_every_record_of_a_partition_was_pruned(
    path: Path,
) -> None:
    bus = SqliteEventBus(path=path, retention=ONE_SECOND)
    await bus.ensure_topics({"work": 1})
    await publish(bus, "work", 3)
    await consume_and_commit(bus, "worker", "work", 3)
    await asyncio.sleep(1.2)
    assert (await bus.prune()).deleted == 3
    assert count_records(path) == 0

    await bus.publish("work", Message(key="k", value=b"after-prune"))
    await bus.close()
    reopened = SqliteEventBus(path=path, retention=ONE_SECOND)
    await reopened.publish("work", Message(key="k", value=b"after-reopen"))

    resumed = await consume(reopened, "worker", "work", 2)
    assert [(d.offset, d.message.value) for d in resumed] == [
        (3, b"after-prune"),
        (4, b"after-reopen"),
    ]
    await reopened.close()


async def test_dead_letters_and_topics_kept_forever_are_never_pruned(path: Path) -> None:
    policy = RetentionPolicy(default_hours=1 / 3600, overrides={"audit": None})
    bus = SqliteEventBus(path=path, retention=policy)
    letters = dead_letter("work")
    for topic in (letters, "audit", "work"):
        await publish(bus, topic, 3)
        await consume_and_commit(bus, "reader", topic, 3)
    await asyncio.sleep(1.2)

    assert (await bus.prune()).deleted == 3  # "work" only
    assert [d.offset for d in await consume(bus, "replayer", letters, 3)] == [0, 1, 2]
    assert [d.offset for d in await consume(bus, "auditor", "audit", 3)] == [0, 1, 2]
    assert await consume(bus, "late", "work", 1) == []
    await bus.close()


async def test_pruning_most_of_the_log_shrinks_the_file(path: Path) -> None:
    bus = SqliteEventBus(path=path, retention=ONE_SECOND)
    await bus.ensure_topics({"work": 2})
    await publish(bus, "work", 1500, size=4000)  # ~6 MB
    await consume_and_commit(bus, "worker", "work", 1500)
    await asyncio.sleep(1.2)
    await publish(bus, "work", 10, size=4000)  # young: kept
    full = file_bytes(path)
    assert full > 6_000_000

    result = await bus.prune()

    assert result.deleted == 1500
    assert result.reclaimed_bytes > 5_000_000
    assert file_bytes(path) < full / 10
    await bus.close()


async def test_a_little_pruning_gives_its_pages_back_incrementally(path: Path) -> None:
    bus = SqliteEventBus(path=path, retention=RetentionPolicy(default_hours=2 / 3600))
    await bus.ensure_topics({"work": 1})
    await publish(bus, "work", 100, size=4000)
    await consume_and_commit(bus, "worker", "work", 100)
    await asyncio.sleep(2.2)
    await publish(bus, "work", 400, size=4000)  # young, four fifths of the file
    await bus.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL
    conn.close()
    bus = SqliteEventBus(path=path, retention=RetentionPolicy(default_hours=2 / 3600))
    before = file_bytes(path)

    result = await bus.prune()

    assert result.deleted == 100
    assert result.reclaimed_bytes >= 100 * 4000
    assert file_bytes(path) <= before - 100 * 4000
    await bus.close()


# The schema of version 1, as the software before retention created it (auto_vacuum NONE).
_SCHEMA_V1 = """
CREATE TABLE topics (name TEXT PRIMARY KEY, partitions INTEGER NOT NULL CHECK (partitions > 0));
CREATE TABLE records (
    topic TEXT NOT NULL, partition_id INTEGER NOT NULL, record_offset INTEGER NOT NULL,
    key TEXT NOT NULL, value BLOB NOT NULL, headers TEXT NOT NULL, published_at REAL NOT NULL,
    PRIMARY KEY (topic, partition_id, record_offset)
);
CREATE TABLE committed_offsets (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, PRIMARY KEY (group_id, topic, partition_id)
) WITHOUT ROWID;
CREATE TABLE group_members (
    group_id TEXT NOT NULL, member_id TEXT NOT NULL, topics TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, joined_at REAL NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE TABLE partition_owners (
    group_id TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL,
    member_id TEXT NOT NULL, PRIMARY KEY (group_id, topic, partition_id)
) WITHOUT ROWID;
PRAGMA user_version = 1;
"""


async def test_a_file_of_the_first_schema_keeps_its_offsets_and_shrinks_at_its_first_prune(
    path: Path,
) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(_SCHEMA_V1)
    conn.execute("INSERT INTO topics VALUES ('work', 1)")
    conn.executemany(
        "INSERT INTO records VALUES ('work', 0, ?, 'k', ?, '{}', 0)",
        [(offset, os.urandom(4000)) for offset in range(1000)],
    )
    conn.execute("INSERT INTO committed_offsets VALUES ('worker', 'work', 0, 1000)")
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    conn.close()
    old_size = file_bytes(path)

    bus = SqliteEventBus(path=path, retention=ONE_SECOND)
    await bus.publish("work", Message(key="k", value=b"new"))
    result = await bus.prune()

    assert result.deleted == 1000
    assert file_bytes(path) < old_size / 10
    assert [(d.offset, d.message.value) for d in await consume(bus, "worker", "work", 1)] == [
        (1000, b"new")
    ]
    await bus.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # INCREMENTAL from now on
    conn.close()


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """A umask that lets everyone read new files, as on many servers: the bus must not rely
    on a strict one."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.usefixtures("permissive_umask")
async def test_the_event_log_its_wal_and_a_folder_made_for_it_are_private(tmp_path: Path) -> None:
    path = tmp_path / "site" / "events" / "events.sqlite3"
    bus = SqliteEventBus(path=path)
    await bus.publish("work", Message(key="k", value=b"v"))

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(path.parent) == 0o700
    assert mode(path) == 0o600
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        assert side.exists()  # open in WAL mode
        assert mode(side) == 0o600, suffix
    await bus.close()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.usefixtures("permissive_umask")
async def test_an_existing_folder_keeps_the_permissions_its_operator_gave_it(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o750)
    bus = SqliteEventBus(path=folder / "events.sqlite3")
    await bus.publish("work", Message(key="k", value=b"v"))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750
    assert stat.S_IMODE((folder / "events.sqlite3").stat().st_mode) == 0o600
    await bus.close()
