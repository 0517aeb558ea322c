"""Operations whose journal cannot be written (the state_dir's file system is full, as SQLite's
SQLITE_FULL says): refused before they start, never changed once started, answered from memory
and written to the journal once there is room (issue 13). The full disk is injected into the
journal's writes; tests/e2e/test_state_dir_full_live.py fills a real tmpfs."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from agent.errors import HostError
from agent.nodes.link import NodeState
from agent.operations.journal import FILE_NAME, Journal, JournalWriteError
from agent.operations.runner import Operations
from agent.release.releases import Release
from agent.release.values import SUCCEEDED, Result
from agent.release.upgrade import ReleaseEngine

NODE = "counter@localhost"
OLD = Release("counter", "0.0.1", "permanent", running=True)
NEW = (Release("counter", "0.0.2", "permanent", running=True),
       Release("counter", "0.0.1", "old"))


class FakeLink:
    """An up node; the work below never calls it."""

    name = NODE

    def __init__(self) -> None:
        self.state = NodeState(NODE, up=True, since=time.time(), releases=(OLD,))

    async def refresh(self, timeout: float | None = None) -> NodeState:
        return self.state


class FakeNodes:
    def __init__(self) -> None:
        self.link = FakeLink()

    def get(self, name: str) -> FakeLink:
        assert name == NODE
        return self.link


class FullDisk:
    """A real journal whose writes fail with SQLite's "database or disk is full" while
    ``full`` is set, as they do on a full file system."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.full = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._journal, name)
        if name not in ("start", "step", "set_from_version", "finish", "mark_interrupted"):
            return method

        def write(*args: Any, **kwargs: Any) -> Any:
            if self.full:
                raise JournalWriteError(self._journal.path,
                                        sqlite3.OperationalError("database or disk is full"))
            return method(*args, **kwargs)
        return write


@pytest.fixture
def journal(tmp_path: Path) -> Any:
    with Journal.open(tmp_path / FILE_NAME) as real:
        yield FullDisk(real)


def installing(disk: FullDisk, fill_after: str = "") -> Any:
    """Work that runs three steps; the disk fills when the step ``fill_after`` starts."""
    async def work(engine: ReleaseEngine) -> Result:
        for name in ("preflight", "install", "verify"):
            async with engine.steps.step(name) as state:
                if name == fill_after:
                    disk.full = True
                await asyncio.sleep(0)
                state.detail = f"{name} done"
        return Result(SUCCEEDED, "0.0.1", "0.0.2", releases=NEW)
    return lambda engine: work(engine)


async def test_an_operation_whose_start_cannot_be_journaled_is_refused(journal: Any) -> None:
    ops = Operations(journal, FakeNodes(), rpc_timeout=1.0)  # type: ignore[arg-type]
    journal.full = True
    with pytest.raises(HostError) as info:
        ops.begin(NODE, "upgrade", "0.0.2", "alice", installing(journal))
    message = str(info.value)
    assert message.startswith("upgrade on counter@localhost not started, nothing was changed: "
                              "cannot write the journal ")
    assert "no space left on the file system of the agent's state_dir" in message
    assert message.endswith("free space there and try again")
    journal.full = False
    assert journal.list(limit=10) == []


async def test_a_disk_that_fills_mid_operation_changes_nothing_of_its_outcome(
        journal: Any) -> None:
    ops = Operations(journal, FakeNodes(), rpc_timeout=1.0)  # type: ignore[arg-type]
    op_id = ops.begin(NODE, "upgrade", "0.0.2", "alice", installing(journal, "install"))
    record = await ops.wait(op_id)

    # The node was upgraded: the operation says so, with a note that the journal is behind.
    assert record.outcome == "succeeded"
    assert [(s.name, s.state) for s in record.steps] == [
        ("preflight", "succeeded"), ("install", "succeeded"), ("verify", "succeeded")]
    assert record.releases_after[0].version == "0.0.2"
    assert "not in the agent's journal yet (cannot write the journal" in record.error
    assert "internal error" not in record.error
    assert ops.get(op_id) == record  # relctl operation N, from memory meanwhile
    assert journal.get(op_id).outcome == "running"  # what the file says for now

    # Room again: the retry writes exactly what happened, and the note goes.
    journal.full = False
    assert ops.flush_journal() == 0
    written = journal.get(op_id)
    assert written.outcome == "succeeded" and written.error == ""
    assert [(s.name, s.state, s.detail) for s in written.steps] == [
        ("preflight", "succeeded", "preflight done"), ("install", "succeeded", "install done"),
        ("verify", "succeeded", "verify done")]
    assert [(r.version, r.status) for r in written.releases_after] == [
        ("0.0.2", "permanent"), ("0.0.1", "old")]
    assert ops.get(op_id) == written


async def test_the_next_operation_is_refused_while_the_journal_is_full_then_works(
        journal: Any) -> None:
    ops = Operations(journal, FakeNodes(), rpc_timeout=1.0)  # type: ignore[arg-type]
    first = ops.begin(NODE, "upgrade", "0.0.2", "alice", installing(journal, "verify"))
    await ops.wait(first)
    with pytest.raises(HostError, match="not started, nothing was changed"):
        ops.begin(NODE, "upgrade", "0.0.2", "alice", installing(journal))
    journal.full = False
    # The next start writes what the journal missed first, then its own start.
    second = ops.begin(NODE, "make_permanent", "0.0.2", "alice", installing(journal))
    assert (await ops.wait(second)).outcome == "succeeded"
    assert [(r.id, r.outcome, r.error) for r in journal.list(limit=10)] == [
        (second, "succeeded", ""), (first, "succeeded", "")]


async def test_reconcile_on_a_full_disk_is_retried(journal: Any) -> None:
    op_id = journal.start(NODE, "upgrade", "0.0.1", "0.0.2", "alice")  # left by a dead agent
    ops = Operations(journal, FakeNodes(), rpc_timeout=1.0)  # type: ignore[arg-type]
    journal.full = True
    assert ops.reconcile() == []
    shown = ops.get(op_id)
    assert shown.outcome == "interrupted" and "now runs 0.0.1" in shown.error
    journal.full = False
    assert ops.flush_journal() == 0
    assert journal.get(op_id).outcome == "interrupted"
