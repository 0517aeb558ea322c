"""Waiting for something to become true inside a test's event loop: a poll with a deadline,
never a fixed sleep (too short on a busy machine, too long everywhere else).
``tests.tools.agent_proc.eventually`` is the same for code outside a loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

_T = TypeVar("_T")


def _late(what: str, timeout: float, value: object) -> AssertionError:
    return AssertionError(f"not within {timeout:g} s: {what} (last: {value!r})")


async def until(check: Callable[[], _T], *, what: str, timeout: float = 5.0,
                interval: float = 0.01) -> _T:
    """Call ``check`` every ``interval`` seconds, letting the loop run in between, until it
    returns a truthy value (returned); an AssertionError past ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _late(what, timeout, value)
        await asyncio.sleep(interval)


async def until_async(check: Callable[[], Awaitable[_T]], *, what: str, timeout: float = 5.0,
                      interval: float = 0.01) -> _T:
    """:func:`until` for a check that must await (an RPC to a node, a thread)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _late(what, timeout, value)
        await asyncio.sleep(interval)
