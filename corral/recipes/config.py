"""Config (dynamic configuration) and Rendezvous: read a value, and hear when it changes or appears.

Keys:
    /corral/config/<name>/<key>        one setting; `<key>` may contain "/" (e.g. "db/host")
    /corral/rendezvous/<name>          the value a waiting process is given (e.g. a worker's address)

Config guarantees: `get`/`snapshot` are linearizable reads; `changes()` reports every change after
its start revision, in order, once each; `watch()` yields the whole configuration now and again after
each change, every time from a fresh read (so each is a state the configuration really had, and the
last one is current).

Rendezvous (ZooKeeper's rendezvous node): one side `publish()`es a value, the other `wait()`s for it
and gets it however the two are ordered in time: if the value is already there it is returned at once;
if not, the waiter watches from a revision it committed *before* looking, so a value published in
between is not missed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass

from corral.client.aio import AsyncClient
from corral.client.session import Session
from corral.client.sync import Client
from corral.errors import Compacted, InvalidArgument
from corral.model import EventKind
from corral.recipes._base import (
    ROOT,
    WAIT_TIMEOUT_S,
    Deadline,
    Rewatcher,
    as_bytes,
    check_async_client,
    check_name,
    closing,
    events_under,
    fence_revision,
    read_with_floor,
    retry_conflicts,
    wait_event,
)
from corral.recipes._blocking import iterate, run

CONFIGS = f"{ROOT}/config"
RENDEZVOUS = f"{ROOT}/rendezvous"


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """One setting changed: its key (relative to the config), its new value (None: deleted), when."""

    key: str
    value: bytes | None
    revision: int


class Config:
    """A named set of settings under one prefix (see the module docstring)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = check_async_client(client, "BlockingConfig")
        self.name = check_name(name)
        self._base = f"{CONFIGS}/{name}/"

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"config key must be a non-empty str, got {key!r}", field="key")
        return self._base + key

    async def get(self, key: str) -> bytes | None:
        """The setting's value now, or None if it is not set."""
        kv = await self._client.get(self._key(key))
        return None if kv is None else kv.value

    async def set(self, key: str, value: bytes | str) -> int:
        """Set one setting; return the revision. Retries a lost first-wins race (Conflict)."""
        full = self._key(key)
        return await retry_conflicts(self._client, lambda: self._client.put(full, value), what=f"setting {full}")

    async def delete(self, key: str) -> int:
        """Remove one setting (a no-op write if unset); return the revision."""
        full = self._key(key)
        return await retry_conflicts(self._client, lambda: self._client.delete(full), what=f"deleting {full}")

    async def snapshot(self) -> dict[str, bytes]:
        """Every setting now, by relative key."""
        return {kv.key[len(self._base) :]: kv.value for kv in await self._client.range(self._base)}

    async def changes(
        self, start_revision: int = 0, timeout: float | None = None
    ) -> AsyncGenerator[ConfigChange, None]:
        """Every change from `start_revision` (0: from now) on, in revision order.

        Raises:
            WaitTimeout: `timeout` seconds passed without a change (None: no limit; the stream ends
                when the caller stops iterating).
            Compacted: `start_revision` is older than the history kept.
        """
        what = f"a change of config {self.name!r}"
        async with closing(events_under(self._client, self._base, start_revision, timeout, what)) as events:
            async for event in events:
                value = None if event.kind is EventKind.DELETE else event.kv.value
                yield ConfigChange(event.kv.key[len(self._base) :], value, event.kv.mod_revision)

    async def watch(self, timeout: float | None = None) -> AsyncGenerator[dict[str, bytes], None]:
        """The whole configuration now, then again after each change (each from a fresh read).

        Raises:
            WaitTimeout: `timeout` seconds passed without a change (None: no limit).
        """
        last: dict[str, bytes] | None = None
        rewatch = Rewatcher(self._client)
        while True:
            kvs, floor = await read_with_floor(self._client, self._base)  # floor: before yielding
            current = {kv.key[len(self._base) :]: kv.value for kv in kvs}
            if current != last:
                yield current
                last = current
            await rewatch.wait(
                self._base,
                prefix=True,
                after=floor,
                deadline=Deadline(timeout, f"a change of config {self.name!r}"),
                stop=lambda event: True,
            )


class Rendezvous:
    """Hand one value from a publisher to waiters, whoever comes first (see the module docstring)."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self._client = check_async_client(client, "BlockingRendezvous")
        self.key = f"{RENDEZVOUS}/{check_name(name)}"
        self._name = name

    async def publish(self, value: bytes | str, *, session: Session | None = None) -> int:
        """Publish `value` (with `session`, it vanishes when the session ends); return the revision."""
        lease = session.lease_id if session is not None else 0
        data = as_bytes(value)
        return await retry_conflicts(
            self._client, lambda: self._client.put(self.key, data, lease=lease), what=f"publishing {self.key}"
        )

    async def clear(self) -> int:
        """Remove the published value; return the revision."""
        return await retry_conflicts(self._client, lambda: self._client.delete(self.key), what=f"clearing {self.key}")

    async def wait(self, timeout: float | None = WAIT_TIMEOUT_S) -> bytes:
        """The published value: at once if it is there, else as soon as it is published.

        Raises:
            WaitTimeout: nothing published by the deadline.
        """
        deadline = Deadline(timeout, f"a value at rendezvous {self._name!r}")
        while True:
            floor = await fence_revision(self._client)  # before looking: see the module docstring
            kv = await self._client.get(self.key)
            if kv is not None:
                return kv.value
            deadline.check()
            try:
                event = await wait_event(
                    self._client,
                    self.key,
                    after=floor,
                    deadline=deadline,
                    stop=lambda event: event.kind is EventKind.PUT,
                )
                return event.kv.value
            except Compacted:
                continue  # look again from a new fence


class BlockingConfig:
    """`Config` for the blocking `Client`."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._impl = Config(client.aio, name)

    def get(self, key: str) -> bytes | None:
        return run(self._client, self._impl.get(key))

    def set(self, key: str, value: bytes | str) -> int:
        return run(self._client, self._impl.set(key, value))

    def delete(self, key: str) -> int:
        return run(self._client, self._impl.delete(key))

    def snapshot(self) -> dict[str, bytes]:
        return run(self._client, self._impl.snapshot())

    def changes(self, start_revision: int = 0, timeout: float | None = None) -> Iterator[ConfigChange]:
        """See Config.changes; leave the loop to stop watching."""
        return iterate(self._client, self._impl.changes(start_revision, timeout))

    def watch(self, timeout: float | None = None) -> Iterator[dict[str, bytes]]:
        """See Config.watch; leave the loop to stop watching."""
        return iterate(self._client, self._impl.watch(timeout))


class BlockingRendezvous:
    """`Rendezvous` for the blocking `Client`."""

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self._impl = Rendezvous(client.aio, name)
        self.key = self._impl.key

    def publish(self, value: bytes | str, *, session: Session | None = None) -> int:
        return run(self._client, self._impl.publish(value, session=session))

    def clear(self) -> int:
        return run(self._client, self._impl.clear())

    def wait(self, timeout: float | None = WAIT_TIMEOUT_S) -> bytes:
        """See Rendezvous.wait."""
        return run(self._client, self._impl.wait(timeout))
