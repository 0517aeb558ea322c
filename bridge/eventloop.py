"""An asyncio event loop that polls briefly before it sleeps, as BEAM schedulers do (+sbwt).

Blocking in epoll and being woken by the kernel costs tens of microseconds per round trip on a
virtual machine; an RPC answer from a local node usually arrives sooner than that. Polling for
up to ``busy_poll`` seconds before blocking answers it without the wake-up. The cost is CPU
while waiting, bounded by ``busy_poll`` per loop iteration that would otherwise sleep.

    with asyncio.Runner(loop_factory=bridge.eventloop.busy_poll_loop_factory()) as runner:
        runner.run(main())
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BusyPollSelector", "busy_poll_loop_factory", "DEFAULT_BUSY_POLL"]

DEFAULT_BUSY_POLL = 100e-6

_Base: type[selectors.BaseSelector] = getattr(selectors, "EpollSelector", selectors.DefaultSelector)


class BusyPollSelector(_Base):  # type: ignore[valid-type,misc]
    def __init__(self, busy_poll: float = DEFAULT_BUSY_POLL) -> None:
        super().__init__()
        self.busy_poll = busy_poll

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.busy_poll > 0 and (timeout is None or timeout > 0):
            until = time.perf_counter() + min(self.busy_poll, timeout if timeout is not None else self.busy_poll)
            while True:
                ready: list[Any] = super().select(0)
                if ready:
                    return ready
                if time.perf_counter() >= until:
                    break
        result: list[tuple[selectors.SelectorKey, int]] = super().select(timeout)
        return result


def busy_poll_loop_factory(busy_poll: float = DEFAULT_BUSY_POLL) -> Callable[[], asyncio.AbstractEventLoop]:
    """A ``loop_factory`` for ``asyncio.Runner`` whose loop polls ``busy_poll`` s before sleeping."""

    def factory() -> asyncio.AbstractEventLoop:
        return asyncio.SelectorEventLoop(BusyPollSelector(busy_poll))

    return factory
