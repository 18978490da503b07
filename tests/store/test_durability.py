"""WalSync: commits made with synchronous=NORMAL become durable through one grouped WAL fsync."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral.store.durability import WalSync
from corral.store.mvcc import MVCCStore


def test_one_fsync_covers_every_commit_noted_before_it(tmp_path: Path) -> None:
    async def run() -> None:
        store = MVCCStore(tmp_path / "s.db", synchronous="NORMAL")
        sync = WalSync(store.path)
        tickets = []
        for i in range(50):
            store.put(f"k{i}", b"v")
            tickets.append(sync.note_commit())
        await asyncio.gather(*(sync.wait_durable(t) for t in tickets))
        assert sync.durable == 50
        assert sync.fsyncs <= 2  # 50 commits, grouped (the second covers commits noted meanwhile)
        await sync.wait_durable(10)  # already durable: returns at once
        assert sync.fsyncs <= 2
        store.close()

    asyncio.run(run())


def test_later_commits_wait_for_the_next_fsync(tmp_path: Path) -> None:
    async def run() -> None:
        store = MVCCStore(tmp_path / "s.db", synchronous="NORMAL")
        sync = WalSync(store.path)
        store.put("a", b"1")
        first = asyncio.create_task(sync.wait_durable(sync.note_commit()))
        await asyncio.sleep(0)  # let the first fsync start
        store.put("b", b"2")
        second = sync.note_commit()
        await first
        await sync.wait_durable(second)
        assert sync.durable == second
        store.close()

    asyncio.run(run())
