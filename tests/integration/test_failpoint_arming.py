"""Failpoints armed the two ways a node reads at start (its config section, $CORRAL_FAILPOINTS) fire."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from corral.errors import CorralError
from tests.integration.harness import local_cluster


def test_failpoints_from_config_and_environment_fire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with local_cluster(tmp_path) as cluster:
        cluster.set_failpoints("replica-1", {"replica.on_prepare": "crash"})
        # An entry naming its node arms only that node, though every node inherits the environment.
        monkeypatch.setenv("CORRAL_FAILPOINTS", "replica-2:replica.on_commit=crash")
        cluster.start()
        assert all(cluster.alive(n) for n in cluster.replicas)
        with cluster.client(timeout=3) as c:
            try:
                c.put("k", "v")  # replica-1 dies at its PREPARE (the write then aborts, or succeeds later)
            except CorralError:
                pass
        assert cluster.wait_exited("replica-1") == -signal.SIGKILL
        assert cluster.alive("replica-3")
        # replica-2 crashes at the first COMMIT it steps: the first write that commits (after the view
        # dropped replica-1) sends it one, whether that is "k" retried by the SDK or this one.
        with cluster.client(timeout=10) as c:
            try:
                c.put("k2", "v2")
            except CorralError:
                pass
        assert cluster.wait_exited("replica-2") == -signal.SIGKILL
        assert cluster.alive("replica-3")
