"""The event loop Corral's own processes run on: uvloop where it is installed, else asyncio's own.

Why uvloop: a put crosses five processes and about a dozen loop iterations on two cores, so the loop's
own cost is on the critical path. Paired against asyncio's loop (benchmarks/ab_latency.py, fresh
cluster pairs), uvloop in the nodes took 8% off the one-client put p50, and 12.5% with the client on
it too. It is a declared dependency on every platform it supports; elsewhere (Windows) the stdlib
loop serves, with the same behaviour, only slower. `CORRAL_EVENT_LOOP=asyncio` picks the stdlib
loop on purpose (benchmarks/put_path.py does, to hook its transports).

Used where Corral owns the process (nodes, benchmark clients), not in the blocking client, which
lives inside its caller's program: once a uvloop loop has closed, a blocking write of that program to
a pipe can come back short (libuv's io_uring leaves work that counts as a pending signal) and
`print` drops the rest. The async client runs on whatever loop its caller chose.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

LOOP_ENV = "CORRAL_EVENT_LOOP"  # "asyncio" picks the stdlib loop (for diagnostics that hook it)


def _factory() -> Callable[[], asyncio.AbstractEventLoop]:
    wanted = os.environ.get(LOOP_ENV, "uvloop")
    if wanted not in ("uvloop", "asyncio"):
        raise ValueError(f"{LOOP_ENV}={wanted!r}: expected 'uvloop' or 'asyncio'")
    if wanted == "uvloop":
        try:  # imported here, not at the top: a process loads uvloop only when it runs on it
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is installed wherever it builds
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(coro: Coroutine[Any, Any, _T]) -> _T:
    """`asyncio.run` on Corral's loop."""
    with asyncio.Runner(loop_factory=_factory()) as runner:
        return runner.run(coro)
