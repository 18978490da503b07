"""Config, Rendezvous and GroupMembership, in process; argument checking shared by every recipe."""

from __future__ import annotations

import asyncio
import pickle

import pytest

from corral.client import connect_async
from corral.errors import FailedPrecondition, InvalidArgument, LeaseExpired
from corral.recipes import (
    BlockingConfig,
    BlockingGroupMembership,
    BlockingLock,
    BlockingRendezvous,
    Change,
    Config,
    GroupMembership,
    Lock,
    Rendezvous,
    WaitTimeout,
)
from tests.integration.harness import LocalCluster
from tests.recipes.test_lock import run


def test_watch_sees_a_change_made_while_the_caller_held_the_empty_configuration(
    shared_cluster: LocalCluster,
) -> None:
    """The first answer came from an empty read; a set made before the caller asks for the next one
    must still be seen (the watch's start is fixed before the answer is handed out)."""

    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        config = Config(client, "held")
        watching = config.watch()
        assert await asyncio.wait_for(anext(watching), 10) == {}
        await config.set("k", b"1")  # while the generator is suspended at its yield
        assert await asyncio.wait_for(anext(watching), 10) == {"k": b"1"}
        await watching.aclose()
        await client.close()

    run(scenario())


def test_config_get_set_changes_and_snapshots(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        config = Config(client, "app")
        first = await config.set("db/host", "a")
        changes = config.changes(start_revision=first)
        await config.set("db/port", "5432")
        await config.delete("db/host")
        seen = [await anext(changes) for _ in range(3)]
        await changes.aclose()
        assert [(c.key, c.value) for c in seen] == [("db/host", b"a"), ("db/port", b"5432"), ("db/host", None)]
        assert [c.revision for c in seen] == sorted(c.revision for c in seen)
        assert await config.get("db/port") == b"5432" and await config.get("db/host") is None
        snapshots = config.watch(timeout=10)
        assert await anext(snapshots) == {"db/port": b"5432"}
        await config.set("db/host", "b")
        assert await anext(snapshots) == {"db/port": b"5432", "db/host": b"b"}
        await snapshots.aclose()
        with pytest.raises(WaitTimeout):
            async for _ in config.changes(timeout=0.2):
                pass
        await client.close()

    run(scenario())
    with shared_cluster.client(timeout=10) as client:
        config = BlockingConfig(client, "blocking-app")
        start = config.set("k", "v")
        assert config.get("k") == b"v" and config.snapshot() == {"k": b"v"}
        for change in config.changes(start_revision=start):
            assert change.key == "k"
            break


def test_rendezvous_whoever_comes_first(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        early = Rendezvous(client, "worker-address")
        waiting = asyncio.create_task(early.wait(timeout=20))
        await Rendezvous(client, "worker-address").publish("10.0.0.7:9000")
        assert await waiting == b"10.0.0.7:9000"
        assert await Rendezvous(client, "worker-address").wait(timeout=1) == b"10.0.0.7:9000"  # already there
        await early.clear()
        with pytest.raises(WaitTimeout, match="worker-address"):
            await early.wait(timeout=0.2)
        await client.close()

    run(scenario())
    with shared_cluster.client(timeout=10) as client:
        rendezvous = BlockingRendezvous(client, "blocking")
        rendezvous.publish("x")
        assert rendezvous.wait(timeout=1) == b"x"


def test_group_join_list_watch_leave(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        start = await client.put("/test/group-start", "x")
        a = GroupMembership(client, "crawlers", ttl=5)
        b = GroupMembership(client, "crawlers", ttl=5)
        await a.join("a", "host-a")
        await b.join("b", "host-b")
        with pytest.raises(FailedPrecondition, match="already has a member 'a'"):
            await GroupMembership(client, "crawlers", ttl=5).join("a", "thief")
        await a.join("a", "host-a2")  # the same session: an update
        members = await a.members()
        assert {m: v.value for m, v in members.items()} == {"a": b"host-a2", "b": b"host-b"}
        lost = asyncio.Event()
        b.on_lost(lost.set)
        assert b.session is not None
        await client.lease_revoke(b.session.lease_id)  # b's session ends behind its back
        await a.leave()
        events = a.watch(start_revision=start + 1)
        seen = [await anext(events) for _ in range(5)]
        await events.aclose()
        assert [(e.change, e.member) for e in seen] == [
            (Change.JOINED, "a"),
            (Change.JOINED, "b"),
            (Change.UPDATED, "a"),
            (Change.LEFT, "b"),
            (Change.LEFT, "a"),
        ]
        await asyncio.wait_for(lost.wait(), 10)
        with pytest.raises(LeaseExpired):
            b.check()
        assert await a.members() == {}
        await client.close()

    run(scenario())
    with shared_cluster.client(timeout=10) as client:
        member = BlockingGroupMembership(client, "blocking", ttl=5)
        member.join("me", "here")
        assert list(member.members()) == ["me"]
        member.leave()
        assert member.members() == {}


def test_arguments_are_checked(shared_cluster: LocalCluster) -> None:
    async def scenario() -> None:
        client = await connect_async(shared_cluster.path, timeout=10)
        for bad in ("", "a/b", "x\x00"):
            with pytest.raises(InvalidArgument):
                Lock(client, bad)
        with pytest.raises(InvalidArgument, match="ttl"):
            Lock(client, "ok", ttl=0)
        with pytest.raises(InvalidArgument, match="timeout"):
            await Lock(client, "ok").acquire(timeout=-1)
        await client.close()

    run(scenario())
    with shared_cluster.client(timeout=10) as client:
        with pytest.raises(InvalidArgument, match="BlockingLock"):
            Lock(client, "x")  # type: ignore[arg-type]  # deliberately the blocking Client: checks the error
        assert BlockingLock(client, "x").key is None
    err = WaitTimeout("waited", waited_s=1.0)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is WaitTimeout and back.details == {"waited_s": 1.0} and isinstance(back, TimeoutError)
