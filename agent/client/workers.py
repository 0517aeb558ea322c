"""Work on several agents at once: each piece on a daemon thread, Ctrl-C kept for the main thread.

The gRPC stubs are synchronous, so a rollout's batch (:mod:`agent.client.fleet`) and its
staging phase (:mod:`agent.client.prestage`) run one agent's calls per thread, through
:func:`run_on_threads`, the one runner both use. Why daemon threads with a main thread that
only waits, in timed joins: Ctrl-C (and SIGTERM, which ``main()`` turns into the same) is
handled in the main thread, which acts on it as soon as it wakes up, and relctl may then exit
while calls are still open: the operations go on on their agents anyway, and what relctl
prints says so. A worker's exception is a bug: it is raised again in the main thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# How long the main thread sleeps in a join before it looks for a Ctrl-C again.
_JOIN_SLICE = 0.2


class Finished(Generic[R]):
    """What :func:`run_on_threads` did: the results by item index (the items that finished),
    the indexes that were started, the index whose result stopped the run (None: none did),
    and whether Ctrl-C ended the wait (then the work started and not finished may go on)."""

    def __init__(self, results: dict[int, R], started: frozenset[int], stopped_by: int | None,
                 interrupted: bool) -> None:
        self.results = results
        self.started = started
        self.stopped_by = stopped_by
        self.interrupted = interrupted


def _never(result: object) -> bool:
    return False


def run_on_threads(items: Sequence[T], work: Callable[[T], R], *, parallel: int, name: str,
                   stop: Callable[[R], bool] = _never) -> Finished[R]:
    """``work(item)`` for every item, in order, at most ``parallel`` at once, each on a daemon
    thread named ``name-N``. Once a result makes ``stop(result)`` true no further item starts
    (the ones under way finish). Returns when every started item finished, or at once when
    Ctrl-C reaches the main thread (``interrupted``: no further item starts, and the results
    are a copy of those finished by then)."""
    if parallel < 1:
        raise ValueError(f"parallelism must be at least 1, not {parallel}")
    lock = threading.Lock()
    queue = list(enumerate(items))
    results: dict[int, R] = {}
    started: set[int] = set()
    crashes: list[BaseException] = []
    stopped_by: list[int] = []
    interrupted: list[bool] = []

    def worker() -> None:
        while True:
            with lock:
                if not queue or stopped_by or crashes or interrupted:
                    return
                i, item = queue.pop(0)
                started.add(i)
            try:
                result = work(item)
            except BaseException as exc:  # a bug: raised again in the main thread below
                with lock:
                    crashes.append(exc)
                return
            with lock:
                results[i] = result
                if stop(result) and not stopped_by:
                    stopped_by.append(i)

    threads = [threading.Thread(target=worker, name=f"{name}-{n}", daemon=True)
               for n in range(min(parallel, len(items)))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(_JOIN_SLICE)
    except KeyboardInterrupt:
        with lock:
            interrupted.append(True)
            return Finished(dict(results), frozenset(started),
                            stopped_by[0] if stopped_by else None, interrupted=True)
    if crashes:
        raise crashes[0]
    return Finished(results, frozenset(started), stopped_by[0] if stopped_by else None,
                    interrupted=False)
