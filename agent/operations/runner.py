"""Operations on nodes: one at a time per node, journaled, and independent of who asked.

An operation runs in its own task, so a client that disconnects does not cancel an install
halfway; its progress goes to the journal and to whoever is listening. At start, operations
that were running when the agent died are marked interrupted, with the node's real releases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

from agent.errors import NodeDown, NodeUnavailable, NotFound, OperationInProgress
from agent.nodes.link import NodeLink
from agent.nodes.manager import NodeManager
from agent.release.records import ConfigChange, StepRecord
from agent.release.releases import Release
from agent.release.steps import FAILED, Result
from agent.release.upgrade import ReleaseEngine

from .journal import Journal, OperationRecord, ReleaseRow

log = logging.getLogger("relctl.agent.operations.runner")

Work = Callable[[ReleaseEngine], Awaitable[Result]]


class UnknownOperation(NotFound):
    def __init__(self, op_id: int) -> None:
        super().__init__(f"no operation {op_id} in this agent's journal (relctl operations "
                         "lists them)")


@dataclass(frozen=True)
class Progress:
    """One event of an operation: a step changed, or (last) the operation finished."""

    op_id: int
    step: StepRecord | None = None
    finished: OperationRecord | None = None


def _rows(releases: tuple[Release, ...]) -> list[ReleaseRow]:
    return [ReleaseRow(r.name, r.version, r.status) for r in releases]


@dataclass
class _Running:
    op_id: int
    kind: str
    task: asyncio.Task[OperationRecord]
    listeners: list[asyncio.Queue[Progress | None]]


class Operations:
    def __init__(self, journal: Journal, nodes: NodeManager, *, rpc_timeout: float = 30.0,
                 on_finished: Callable[[OperationRecord], None] = lambda record: None) -> None:
        self._journal = journal
        self._on_finished = on_finished
        self._nodes = nodes
        self._rpc_timeout = rpc_timeout
        self._running: dict[str, _Running] = {}
        self._background: set[asyncio.Task[object]] = set()

    @property
    def journal(self) -> Journal:
        return self._journal

    def begin(self, node: str, kind: str, to_version: str, requested_by: str,
              work: Work) -> int:
        """Start an operation; raises UnknownNode, or OperationInProgress when the node is busy."""
        link = self._nodes.get(node)
        busy = self._running.get(node)
        if busy is not None:
            raise OperationInProgress(busy.op_id, busy.kind, node)
        if not link.state.up:
            raise NodeDown(node, link.state.error or "not connected")
        running = next((r for r in link.state.releases if r.running), None)
        from_version = running.version if running else ""
        # An operation without a target version (a config reload) acts on the running one.
        op_id = self._journal.start(node, kind, from_version, to_version or from_version,
                                    requested_by)
        listeners: list[asyncio.Queue[Progress | None]] = []

        def on_step(step: StepRecord) -> None:
            self._journal.step(op_id, step)
            for q in listeners:
                q.put_nowait(Progress(op_id, step=step))

        engine = ReleaseEngine(link, on_step, rpc_timeout=self._rpc_timeout)
        task = asyncio.create_task(self._run(op_id, link, kind, work(engine)),
                                   name=f"relctl operation {op_id}")
        self._running[node] = _Running(op_id, kind, task, listeners)
        log.info("operation %d: %s %s on %s (requested by %s)", op_id, kind,
                 to_version or "(running release)", node, requested_by)
        return op_id

    async def _run(self, op_id: int, link: NodeLink, kind: str,
                   work: Awaitable[Result]) -> OperationRecord:
        changes: tuple[ConfigChange, ...] = ()
        try:
            result = await work
            outcome, error, releases = result.outcome, result.error, result.releases
            changes = result.config_changes
            if result.from_version:
                self._journal.set_from_version(op_id, result.from_version)
        except NodeUnavailable as exc:
            outcome, error, releases = FAILED, f"{exc}; check the node's releases", ()
        except asyncio.CancelledError:
            record = self._journal.mark_interrupted(op_id, "interrupted: the agent stopped")
            self._close(link.name, record)
            raise
        except Exception as exc:
            log.exception("operation %d failed inside the agent", op_id)
            outcome, error, releases = FAILED, f"internal error in relctl-agent: {exc!r}", ()
        record = self._journal.finish(op_id, outcome, error=error, releases_after=_rows(releases),
                                      config_changes=changes)
        if any(c.old_value or c.new_value for c in changes):
            # Values (asked for with --show-values) go to this operation's listeners only.
            record = replace(record, config_changes=changes)
        self._on_finished(record)
        log.info("operation %d: %s on %s: %s%s", op_id, kind, link.name, outcome,
                 f" ({error})" if error else "")
        self._close(link.name, record)
        # The snapshot (metrics, versions) should show the new releases now, not at the next tick.
        refresh = asyncio.get_running_loop().create_task(link.refresh())
        self._background.add(refresh)  # a task nobody references may be collected mid-run
        refresh.add_done_callback(self._background.discard)
        return record

    def _close(self, node: str, record: OperationRecord) -> None:
        running = self._running.pop(node, None)
        if running is None:
            return
        for q in running.listeners:
            q.put_nowait(Progress(record.id, finished=record))
            q.put_nowait(None)

    async def follow(self, op_id: int) -> AsyncIterator[Progress]:
        """The steps recorded so far, then live progress until the operation finishes."""
        running = next((r for r in self._running.values() if r.op_id == op_id), None)
        queue: asyncio.Queue[Progress | None] = asyncio.Queue()
        if running is not None:
            running.listeners.append(queue)
        record = self._journal.get(op_id)
        if record is None:
            raise UnknownOperation(op_id)
        for step in record.steps:
            yield Progress(op_id, step=step)
        if running is None:
            yield Progress(op_id, finished=record)
            return
        try:
            # Steps that were journaled before we listened arrive again: skip exact repeats.
            seen = set(record.steps)
            while (event := await queue.get()) is not None:
                if event.step is not None and event.step in seen:
                    continue
                yield event
        finally:
            with contextlib.suppress(ValueError):
                running.listeners.remove(queue)

    async def wait(self, op_id: int) -> OperationRecord:
        running = next((r for r in self._running.values() if r.op_id == op_id), None)
        if running is not None:
            return await asyncio.shield(running.task)
        record = self._journal.get(op_id)
        if record is None:
            raise UnknownOperation(op_id)
        return record

    def get(self, op_id: int) -> OperationRecord:
        record = self._journal.get(op_id)
        if record is None:
            raise UnknownOperation(op_id)
        return record

    def reconcile(self) -> list[OperationRecord]:
        """Mark operations left running by a dead agent as interrupted, with the node's real
        releases (call once the nodes had their first connection attempt)."""
        fixed = []
        for record in self._journal.running():
            try:
                state = self._nodes.get(record.node).state
            except NotFound:
                note = "interrupted: the agent stopped while it ran; the node is no longer configured"
                fixed.append(self._journal.mark_interrupted(record.id, note))
                continue
            running = next((r for r in state.releases if r.running), None)
            if state.up and running is not None:
                note = (f"interrupted: the agent stopped while it ran; {record.node} now runs "
                        f"{running.version} ({running.status})")
            else:
                note = (f"interrupted: the agent stopped while it ran; {record.node} is down "
                        f"({state.error}); check its releases when it is back")
            fixed.append(self._journal.mark_interrupted(record.id, note,
                                                        _rows(state.releases) if state.up else ()))
            log.warning("operation %d (%s on %s): %s", record.id, record.kind, record.node, note)
        return fixed

    async def stop(self, grace: float) -> None:
        """Let running operations finish within ``grace`` s; interrupt the rest."""
        tasks = [r.task for r in self._running.values()]
        if not tasks:
            return
        log.info("waiting up to %g s for %d running operation(s)", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
