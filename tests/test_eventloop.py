"""Corral's processes run on uvloop (corral/eventloop.py): the helper, and the real node processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from corral import eventloop
from tests.integration.harness import local_cluster


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_run_and_new_event_loop_give_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.LOOP_ENV, raising=False)
    assert issubclass(eventloop.run(_loop_type()), uvloop.Loop)
    loop = eventloop.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert eventloop.loop_name() == "uvloop"


def test_the_environment_can_pick_the_stdlib_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.LOOP_ENV, "asyncio")
    assert not issubclass(eventloop.run(_loop_type()), uvloop.Loop)
    assert eventloop.loop_name() == "asyncio"


def test_an_unknown_loop_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.LOOP_ENV, "uvlop")
    with pytest.raises(ValueError, match="CORRAL_EVENT_LOOP='uvlop'"):
        eventloop.new_event_loop()


def test_every_node_process_and_the_blocking_client_run_on_uvloop(tmp_path: Path) -> None:
    """The node's loop is uvloop's: its extension module is mapped into every node process (which
    imports uvloop only to make its loop)."""
    with local_cluster(tmp_path, replicas=1) as cluster:
        cluster.start()
        for name, proc in cluster.procs.items():
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert "uvloop/loop." in maps, f"{name} does not run on uvloop"
        with cluster.client() as client:
            assert client.run(_loop_type()) is uvloop.Loop
