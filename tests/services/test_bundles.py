"""Bundling of the multiplexed call streams: what waits together leaves together, within bounds."""

from __future__ import annotations

import asyncio

from corral.rpc import corral_pb2 as pb
from corral.rpc.bundles import BUNDLE_BYTES_MAX, BUNDLE_ITEMS_MAX, drain, split


def _queue(items: list[pb.TxnReturn | None]) -> asyncio.Queue[pb.TxnReturn | None]:
    queue: asyncio.Queue[pb.TxnReturn | None] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)
    return queue


def test_takes_everything_waiting_in_order() -> None:
    queue = _queue([pb.TxnReturn(id=i) for i in range(2, 6)])
    bundle, ended = drain(pb.TxnReturn(id=1), queue)
    assert [r.id for r in bundle] == [1, 2, 3, 4, 5]
    assert not ended and queue.empty()


def test_stops_at_the_end_of_the_stream() -> None:
    queue = _queue([pb.TxnReturn(id=2), None, pb.TxnReturn(id=3)])
    bundle, ended = drain(pb.TxnReturn(id=1), queue)
    assert [r.id for r in bundle] == [1, 2]
    assert ended


def test_bounded_by_count() -> None:
    queue = _queue([pb.TxnReturn(id=i) for i in range(1, BUNDLE_ITEMS_MAX + 10)])
    bundle, _ = drain(pb.TxnReturn(id=0), queue)
    assert len(bundle) == BUNDLE_ITEMS_MAX
    assert queue.qsize() == 10


def test_bounded_by_bytes_but_a_big_item_still_goes() -> None:
    big = pb.TxnReturn(id=1, response=pb.TxnResponse(error=pb.Error(message="x" * BUNDLE_BYTES_MAX)))
    queue = _queue([pb.TxnReturn(id=2)])
    bundle, _ = drain(big, queue)
    assert [r.id for r in bundle] == [1]
    assert queue.qsize() == 1


def test_split_cuts_a_list_as_drain_cuts_a_queue() -> None:
    items = [pb.TxnReturn(id=i) for i in range(2 * BUNDLE_ITEMS_MAX + 5)]
    bundles = split(items)
    assert [len(b) for b in bundles] == [BUNDLE_ITEMS_MAX, BUNDLE_ITEMS_MAX, 5]
    assert [r.id for b in bundles for r in b] == list(range(2 * BUNDLE_ITEMS_MAX + 5))
    big = pb.TxnReturn(id=1, response=pb.TxnResponse(error=pb.Error(message="x" * BUNDLE_BYTES_MAX)))
    assert [[r.id for r in b] for b in split([big, pb.TxnReturn(id=2), pb.TxnReturn(id=3)])] == [[1], [2, 3]]
    assert split([]) == []
