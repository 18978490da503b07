"""Counter: a shared integer that many processes add to atomically.

Keys:
    /corral/counters/<name>     the value, as decimal ASCII (so `corral get` shows it)

`add(n)` reads the value and its `mod_revision`, then writes the sum in a transaction that applies
only if the key's `mod_revision` is still the one read (compare-and-set; a missing key has
mod_revision 0). If another add got in between, the compare fails, or the first-wins rule answers
Conflict at once; either way nothing was written, and the add starts again from a fresh read, after a
jittered backoff, until the client's deadline. So no increment is lost or applied twice, and `add`
returns the value its own write produced.
"""

from __future__ import annotations

import asyncio
import time

from corral.client.aio import AsyncClient
from corral.client.sync import Client
from corral.errors import Conflict, InvalidArgument, Unavailable
from corral.model import Compare, CompareOp, CompareTarget, KeyValue, Put
from corral.recipes._base import ROOT, backoff, check_async_client, check_name
from corral.recipes._blocking import run

COUNTERS = f"{ROOT}/counters"
# How much of a value that is not a number an error message shows: enough to recognise it.
SHOWN_BYTES_MAX = 40


def _decode(kv: KeyValue | None, key: str) -> int:
    if kv is None:
        return 0
    try:
        return int(kv.value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        shown = kv.value[:SHOWN_BYTES_MAX]
        raise InvalidArgument(f"{key} holds {shown!r}, not a decimal integer; it is not a counter") from None


class Counter:
    """An integer with atomic `add` (see the module docstring)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = check_async_client(client, "BlockingCounter")
        self.key = f"{COUNTERS}/{check_name(name)}"
        # Compare failures and Conflicts of the last add: how contended the counter is.
        self.retries = 0

    async def value(self) -> int:
        """The value now (0 if never added to)."""
        return _decode(await self._client.get(self.key), self.key)

    async def add(self, n: int = 1) -> int:
        """Add `n` (may be negative) and return the new value.

        Raises:
            InvalidArgument: `n` is not an int, or the key holds something else.
            Unavailable: no add got through before the client's deadline (nothing was added).
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise InvalidArgument(f"n must be an int, got {n!r}", field="n")
        deadline = time.monotonic() + self._client.timeout
        attempt = 0
        while True:
            kv = await self._client.get(self.key)
            new = _decode(kv, self.key) + n
            unchanged = [Compare(self.key, CompareTarget.MOD_REVISION, CompareOp.EQUAL, kv.mod_revision if kv else 0)]
            try:
                result = await self._client.txn(unchanged, [Put(self.key, str(new).encode("ascii"))])
                if result.succeeded:
                    self.retries = attempt
                    return new
            except Conflict:
                pass  # another add was in flight: nothing written; read again
            attempt += 1
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"counter {self.key}: {attempt} attempts lost to concurrent adds within "
                    f"{self._client.timeout} s; nothing was added",
                    outcome_unknown=False,
                )
            await asyncio.sleep(backoff(attempt))  # backoff before retrying a lost race


class BlockingCounter:
    """`Counter` for the blocking `Client`."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._impl = Counter(client.aio, name)
        self.key = self._impl.key

    def value(self) -> int:
        return run(self._client, self._impl.value())

    def add(self, n: int = 1) -> int:
        """See Counter.add."""
        return run(self._client, self._impl.add(n))
