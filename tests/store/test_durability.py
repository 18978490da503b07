"""WalSync: commits made with synchronous=NORMAL become durable through one grouped WAL fsync."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral import eventloop
from corral.store.durability import WalSync
from corral.store.mvcc import MVCCStore
from tests.waiting import until

Synced = tuple[MVCCStore, WalSync]


@pytest.fixture
def synced(tmp_path: Path) -> Iterator[Synced]:
    """A store committing with synchronous=NORMAL, and the WalSync of its file."""
    store = MVCCStore(tmp_path / "s.db", synchronous="NORMAL")
    sync = WalSync(store.path)
    yield store, sync
    sync.close()
    store.close()


def test_one_fsync_covers_every_commit_noted_before_it(synced: Synced) -> None:
    store, sync = synced

    async def run() -> None:
        tickets = []
        for i in range(50):
            store.put(f"k{i}", b"v")
            tickets.append(sync.note_commit())
        await asyncio.gather(*(sync.wait_durable(t) for t in tickets))
        assert sync.durable == 50
        assert sync.fsyncs <= 2  # 50 commits, grouped (the second covers commits noted meanwhile)
        await sync.wait_durable(10)  # already durable: returns at once
        assert sync.fsyncs <= 2

    eventloop.run(run())


def test_later_commits_wait_for_the_next_fsync(synced: Synced) -> None:
    store, sync = synced

    async def run() -> None:
        store.put("a", b"1")
        first = asyncio.create_task(sync.wait_durable(sync.note_commit()))
        await asyncio.sleep(0)  # let the first fsync start
        store.put("b", b"2")
        second = sync.note_commit()
        await first
        await sync.wait_durable(second)
        assert sync.durable == second

    eventloop.run(run())


def test_an_fsync_ends_by_calling_its_subscribers_with_every_commit_asked_for_durable(synced: Synced) -> None:
    store, sync = synced

    async def run() -> list[int]:
        seen: list[int] = []
        sync.subscribe(lambda: seen.append(sync.durable), lambda err: None)
        store.put("a", b"1")
        sync.request(sync.note_commit())
        store.put("b", b"2")
        sync.request(sync.note_commit())  # asked in the same loop iteration: the same fsync
        await until(lambda: bool(seen))
        return seen

    assert eventloop.run(run()) == [2]


def test_a_lazy_request_waits_for_an_urgent_one_or_else_for_its_deadline(synced: Synced) -> None:
    store, sync = synced

    async def run() -> None:
        store.put("a", b"1")
        lazy = sync.note_commit()
        sync.request(lazy, lazy=True)
        await asyncio.sleep(0)  # a loop iteration passes: a lazy request alone starts no fsync
        assert sync.fsyncs == 0
        store.put("b", b"2")
        await sync.wait_durable(sync.note_commit())
        assert sync.durable >= lazy and sync.fsyncs == 1  # one fsync for both
        store.put("c", b"3")
        alone = sync.note_commit()
        sync.request(alone, lazy=True)
        await until(lambda: sync.durable == alone)  # nobody hurries it: its deadline does
        assert sync.fsyncs == 2

    eventloop.run(run())


def test_the_wal_file_kept_open_is_the_one_sqlite_writes_after_checkpoints(synced: Synced) -> None:
    store, sync = synced

    """The WAL is opened once, not per fsync: that is only right while SQLite keeps writing the same
    file (it resets it in place at checkpoints and only removes it when the database closes)."""

    async def run() -> None:
        for i in range(5):
            store.put(f"k{i}", b"v" * 5000)
            await sync.wait_durable(sync.note_commit())
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        live = os.stat(sync.wal_path).st_ino
        opened = [fd for fd in map(int, os.listdir("/proc/self/fd")) if _names(fd, sync.wal_path)]
        assert len(opened) >= 2  # SQLite's and ours
        assert {os.fstat(fd).st_ino for fd in opened} == {live}

    eventloop.run(run())


def test_a_failed_fsync_fails_its_waiters_and_tells_the_subscribers(tmp_path: Path) -> None:
    async def run() -> None:
        sync = WalSync(tmp_path / "missing.db")  # no WAL to open: the fsync fails
        failures: list[OSError] = []
        sync.subscribe(lambda: None, failures.append)
        with pytest.raises(FileNotFoundError):
            await sync.wait_durable(sync.note_commit())
        assert len(failures) == 1 and sync.durable == 0
        with pytest.raises(FileNotFoundError):  # and nothing later is promised either
            await sync.wait_durable(sync.note_commit())

    eventloop.run(run())


def _names(fd: int, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve())
    except OSError:  # closed meanwhile (the listing's own fd)
        return False
