"""Read-then-watch loops of the recipes after compaction: the watch starts again at the oldest kept revision."""

from __future__ import annotations

from corral import eventloop
from corral.client import connect_async
from corral.recipes._base import Deadline, Rewatcher
from tests.integration.harness import LocalCluster


def test_a_compacted_watch_start_moves_up_to_the_oldest_kept_revision(own_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(own_cluster.path, timeout=10)
        try:
            first = await client.put("/rewatch/k", b"0")
            last = first
            for i in range(1, 4):
                last = await client.put("/rewatch/k", str(i).encode())
            await client.compact(last)
            rewatch = Rewatcher(client)
            deadline = Deadline(10, "an event of /rewatch/k")
            # The loop read long ago: its watch start is compacted, so the wait ends without an event ...
            assert await rewatch.wait("/rewatch/k", after=first, deadline=deadline, stop=lambda e: True) is None
            # ... and the next one, with the same stale start, watches from the oldest kept revision.
            event = await rewatch.wait("/rewatch/k", after=first, deadline=deadline, stop=lambda e: True)
            assert event is not None and event.kv.mod_revision == last and event.kv.value == b"3"
        finally:
            await client.close()

    eventloop.run(scenario())
