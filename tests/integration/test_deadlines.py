"""Deadlines of the blocking client against a coordinator that is alive but silent (SIGSTOP).

A stopped process keeps its sockets open, so nothing fails fast: only the call's own deadline can end
the wait. Every call that talks to the coordinator must honour `timeout=` and raise the typed error
(Unavailable) soon after it, and work again once the coordinator runs.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from corral import InvalidArgument, Unavailable
from corral.client import Client
from tests.integration.harness import LocalCluster, local_cluster

DEADLINE_S = 1.0
# Wall-time allowance past the deadline: a thread hop, the last backoff and gRPC's own timer.
SLACK_S = 2.0
# After SIGCONT the coordinator may need a moment to re-establish its view; calls retry until this.
RECOVERY_TIMEOUT_S = 20.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path) as c:
        c.start()
        yield c


def _times_out(call: Callable[[], object]) -> Unavailable:
    """Run `call`, which must raise Unavailable after about DEADLINE_S (not before, not much after)."""
    began = time.monotonic()
    with pytest.raises(Unavailable) as raised:
        call()
    took = time.monotonic() - began
    assert DEADLINE_S * 0.9 <= took <= DEADLINE_S + SLACK_S, f"raised after {took:.2f}s; deadline {DEADLINE_S}s"
    return raised.value


def test_calls_to_a_stopped_coordinator_end_at_their_deadline(cluster: LocalCluster) -> None:
    with cluster.client(timeout=RECOVERY_TIMEOUT_S) as client:
        client.put("/deadline/warm", "x")  # open the write stream before the coordinator stops
        client.lease_revoke(client.lease_grant(30).id)
        for bad in (0, -1):  # refused before anything is sent
            with pytest.raises(InvalidArgument, match="timeout must be a positive number"):
                client.lease_grant(30, timeout=bad)
        cluster.pause("coordinator")
        try:
            put_err = _times_out(lambda: client.put("/deadline/paused", "v", timeout=DEADLINE_S))
            # The request was written to a live socket: it may still apply when the coordinator runs.
            assert put_err.outcome_unknown
            _times_out(lambda: client.lease_grant(30, timeout=DEADLINE_S))
            _times_out(lambda: client.lease_time_to_live(1, timeout=DEADLINE_S))
            _times_out(lambda: client.lease_revoke(1, timeout=DEADLINE_S))
        finally:
            cluster.resume("coordinator")
        # Another key: the paused put may still be in flight and would make this one a Conflict.
        revision = client.put("/deadline/after", "v")
        lease = client.lease_grant(30)
        assert client.lease_time_to_live(lease.id).ttl_ms == 30_000
        client.lease_revoke(lease.id)
        kv = client.get("/deadline/after")
        assert kv is not None and kv.value == b"v" and kv.mod_revision == revision


def test_every_call_that_waits_on_the_coordinator_takes_a_timeout() -> None:
    """The blocking client's lease calls take `timeout=` as its reads and writes do."""
    for name in ("put", "get", "delete", "txn", "lease_grant", "lease_revoke", "lease_time_to_live"):
        assert "timeout" in inspect.signature(getattr(Client, name)).parameters, name
