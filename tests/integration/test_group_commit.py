"""Group commit across processes: concurrent writes share PREPARE/COMMIT batches and fsyncs, on the
coordinator and on every replica (issue 4), read from the nodes' own counters in `corral status`."""

from __future__ import annotations

import asyncio
from pathlib import Path

from corral import eventloop
from corral.client.aio import NodeStatus, connect_async
from tests.integration.harness import local_cluster

WRITES = 64


def test_concurrent_writes_share_batches_and_fsyncs(tmp_path: Path) -> None:
    with local_cluster(tmp_path) as cluster:
        cluster.start()
        before = cluster.status()

        async def load() -> list[int]:
            client = await connect_async(cluster.path, timeout=20)
            try:
                return list(await asyncio.gather(*(client.put(f"/g/{i}", b"v") for i in range(WRITES))))
            finally:
                await client.close()

        revisions = eventloop.run(load())
        assert sorted(revisions) == list(range(min(revisions), min(revisions) + WRITES)), "each write commits once"
        cluster.wait_converged()
        after = cluster.status()

        def delta(name: str, field: str) -> int:
            value: int = getattr(after[name], field) - getattr(before[name], field)
            return value

        # Unshared, every write would cost one forced decision, and on each replica one forced PREPARED
        # record and one batch per PREPARE and per COMMIT.
        assert 1 <= delta("coordinator", "fsyncs") <= WRITES // 2, after["coordinator"]
        for name in cluster.replicas:
            status: NodeStatus = after[name]
            assert 1 <= delta(name, "fsyncs") <= WRITES // 2, status
            messages, batches = delta(name, "messages_received"), delta(name, "batches_received")
            assert messages >= 2 * WRITES, status  # a PREPARE and a COMMIT of every write
            assert batches <= messages // 4, f"{name}: {messages} messages came in {batches} batches"
