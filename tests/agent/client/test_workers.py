"""The one daemon-thread runner of the client (agent/client/workers.py), which a rollout's batches
and its staging phase both use: bounded parallelism in order, the stop rule, a worker's bug
raised in the main thread, and Ctrl-C ending the wait at once."""

from __future__ import annotations

import _thread
import threading

import pytest

from agent.client.workers import run_on_threads


def test_at_most_parallel_items_run_at_once_in_the_order_given() -> None:
    lock = threading.Lock()
    running: list[int] = []
    most = 0
    order: list[int] = []
    gate = threading.Barrier(2, timeout=10)

    def work(item: int) -> int:
        nonlocal most
        with lock:
            order.append(item)
            running.append(item)
            most = max(most, len(running))
        gate.wait()  # two at once, every time: a third would hang here
        with lock:
            running.remove(item)
        return item * 10

    run = run_on_threads(list(range(6)), work, parallel=2, name="test")
    assert run.results == {i: i * 10 for i in range(6)}
    assert most == 2 and sorted(order[:2]) == [0, 1] and not run.interrupted
    assert run.started == frozenset(range(6)) and run.stopped_by is None


def test_a_result_that_stops_the_run_starts_no_further_item() -> None:
    run = run_on_threads(["a", "bad", "c", "d"], lambda item: item, parallel=1, name="test",
                         stop=lambda result: result == "bad")
    assert run.results == {0: "a", 1: "bad"}
    assert run.stopped_by == 1 and run.started == frozenset({0, 1})


def test_a_bug_in_a_worker_is_raised_in_the_main_thread() -> None:
    def work(item: int) -> int:
        if item == 1:
            raise RuntimeError("a bug")
        return item

    with pytest.raises(RuntimeError, match="a bug"):
        run_on_threads([0, 1, 2], work, parallel=3, name="test")


def test_ctrl_c_ends_the_wait_at_once_with_what_finished() -> None:
    release = threading.Event()

    def work(item: int) -> int:
        if item == 1:
            threading.Timer(0.2, _thread.interrupt_main).start()
            release.wait(30)  # an operation that goes on: relctl does not wait for it
        return item

    try:
        run = run_on_threads([0, 1, 2], work, parallel=1, name="test")
    finally:
        release.set()
    assert run.interrupted
    assert run.results == {0: 0}
    assert run.started == frozenset({0, 1})  # 2 never started: relctl was interrupted first


def test_a_parallelism_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="parallelism must be at least 1, not 0"):
        run_on_threads([1], lambda item: item, parallel=0, name="test")
