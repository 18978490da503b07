"""Bundling for the multiplexed call streams (`Client.Txns`, `Client.Ranges`).

Each stream message carries every call (or answer) that was waiting when it was written. On the
coordinator at 64 clients the per-message work of gRPC (reading one call, writing one answer) was
most of the loop's time, while encoding one more call into a message costs little; so a writer takes
what is queued, up to a bound on count and bytes that keeps one message well under gRPC's limit.
"""

from __future__ import annotations

import asyncio
from typing import Protocol, TypeVar

from corral.limits import MIB

# Calls or answers per stream message, and their encoded bytes (one oversized call still goes alone).
BUNDLE_ITEMS_MAX = 256
BUNDLE_BYTES_MAX = 4 * MIB


class _Sized(Protocol):
    def ByteSize(self) -> int: ...


_Item = TypeVar("_Item", bound=_Sized)


def drain(first: _Item, queue: asyncio.Queue[_Item | None]) -> tuple[list[_Item], bool]:
    """`first` and whatever else already waits in `queue`, within the bounds; True when the queue's
    end (None) was taken, so the caller stops after sending this bundle."""
    items = [first]
    size = first.ByteSize()
    while len(items) < BUNDLE_ITEMS_MAX and size < BUNDLE_BYTES_MAX and not queue.empty():
        item = queue.get_nowait()
        if item is None:
            return items, True
        items.append(item)
        size += item.ByteSize()
    return items, False


def split(items: list[_Item]) -> list[list[_Item]]:
    """`items` in order, cut into bundles by the rule `drain` applies to a queue."""
    out: list[list[_Item]] = []
    size = 0
    for item in items:
        if not out or len(out[-1]) >= BUNDLE_ITEMS_MAX or size >= BUNDLE_BYTES_MAX:
            out.append([])
            size = 0
        out[-1].append(item)
        size += item.ByteSize()
    return out
