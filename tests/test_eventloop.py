"""Corral's nodes run on uvloop (corral/eventloop.py): the helper, and the real node processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import uvloop

from corral import eventloop
from tests.integration.harness import local_cluster


async def _loop_type() -> type:
    return type(asyncio.get_running_loop())


def test_run_gives_uvloop_by_default_and_the_environment_can_pick_the_stdlib_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(eventloop.LOOP_ENV, raising=False)
    assert eventloop.run(_loop_type()) is uvloop.Loop
    monkeypatch.setenv(eventloop.LOOP_ENV, "asyncio")
    assert not issubclass(eventloop.run(_loop_type()), uvloop.Loop)


def test_an_unknown_loop_name_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.LOOP_ENV, "uvlop")
    coro = _loop_type()
    with pytest.raises(ValueError, match="CORRAL_EVENT_LOOP='uvlop'"):
        eventloop.run(coro)
    coro.close()


def test_node_processes_run_on_uvloop_and_the_blocking_client_on_asyncio(tmp_path: Path) -> None:
    """A node's loop is uvloop's: its extension module is mapped into every node process (which
    imports uvloop only to make its loop). The blocking client, inside its caller's program, keeps
    asyncio's loop (why: corral/eventloop.py; the CLI test reads a large value through a slow pipe)."""
    with local_cluster(tmp_path, replicas=1) as cluster:
        cluster.start()
        for name, proc in cluster.procs.items():
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert "uvloop/loop." in maps, f"{name} does not run on uvloop"
        with cluster.client() as client:
            assert not issubclass(client.run(_loop_type()), uvloop.Loop)
