"""Waiting in async tests: on a condition, with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from typing import Any


async def until(check: Any, timeout_s: float = 10.0) -> None:
    """Return once `check()` is truthy; fail after `timeout_s`. (`Any`: lambdas with default
    arguments, which bind loop variables, are not inferred as zero-argument callables.)"""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.002)  # polling a condition with a deadline
