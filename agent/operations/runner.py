"""Operations on nodes: one at a time per node, journaled, and independent of who asked.

An operation runs in its own task, so a client that disconnects does not cancel an install
halfway; its progress goes to the journal and to whoever is listening. At start, operations
that were running when the agent died are marked interrupted, with the node's real releases.

A journal that cannot be written (the state_dir's file system is full) never changes what
happens to a node: an operation is refused before it starts if its start cannot be journaled;
once started, it runs to its end, its writes are kept in order and retried by
:meth:`Operations.flush_journal` (and before each later write), and meanwhile the operation is
answered from memory, its error saying that the journal is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.errors import HostError, NodeDown, NodeUnavailable, NotFound, OperationInProgress
from agent.nodes import NodeLink, NodeManager
from agent.release import FAILED, ConfigChange, Placing, Release, ReleaseEngine, Result, StepRecord

from .journal import Journal, JournalError, JournalWriteError, OperationRecord, ReleaseRow

log = logging.getLogger("relctl.agent.operations.runner")

Work = Callable[[ReleaseEngine], Awaitable[Result]]


class UnknownOperation(NotFound):
    def __init__(self, op_id: int) -> None:
        super().__init__(f"no operation {op_id} in this agent's journal (relctl operations "
                         "lists them)")


class NotJournaled(HostError):
    """An operation was not started because its start could not be journaled."""

    def __init__(self, kind: str, node: str, cause: JournalWriteError) -> None:
        todo = ("free space there and try again" if cause.full
                else "fix that and try again")
        super().__init__(f"{kind} on {node} not started, nothing was changed: {cause}; {todo}")


@dataclass(frozen=True)
class Progress:
    """One event of an operation: a step changed, or (last) the operation finished."""

    op_id: int
    step: StepRecord | None = None
    finished: OperationRecord | None = None


class _JournalLedger:
    """The release engine's UnpackLedger over the journal, for one operation on one node. A
    journal that cannot be written or read only weakens the sha256 check (the release dir
    keeps its own record): logged, never raised into the operation."""

    def __init__(self, journal: Journal, node: str, op_id: int,
                 busy: Callable[[], Collection[int]] = frozenset) -> None:
        self._journal = journal
        self._node = node
        self._op_id = op_id
        self._busy = busy  # placing keys of uploads alive in this agent (ahead.py)

    def recorded(self, version: str) -> str | None:
        try:
            return self._journal.unpacked_sha256(self._node, version)
        except JournalError as exc:
            log.warning("operation %d: cannot read the recorded sha256 of %s: %s",
                        self._op_id, version, exc)
            return None

    def record(self, version: str, sha256: str, added: Sequence[Path] = ()) -> None:
        try:
            self._journal.record_unpacked(self._node, version, sha256, self._op_id,
                                          added=[str(p) for p in added])
        except JournalError as exc:
            log.warning("operation %d: the sha256 of %s is not in the journal (%s); its "
                        "release dir keeps it", self._op_id, version, exc)

    def added_by(self, version: str) -> tuple[str, ...]:
        try:
            return self._journal.unpacked_added(self._node, version)
        except JournalError as exc:
            log.warning("operation %d: cannot read what the unpack of %s added: %s",
                        self._op_id, version, exc)
            return ()

    def placing(self, version: str, paths: Sequence[Path], added: Sequence[Path] = ()) -> None:
        try:
            self._journal.record_placing(self._node, self._op_id, version,
                                         [str(p) for p in paths], added=[str(p) for p in added])
        except JournalError as exc:
            # Not a reason to stop: if this operation never finishes, what it placed stays
            # on the disk (never deleted on a guess) and a retry of VSN says what is in the way.
            log.warning("operation %d: what it places for %s is not in the journal (%s); if "
                        "it does not finish, nothing takes it back", self._op_id, version, exc)

    def settled(self) -> None:
        try:
            self._journal.settle_placing(self._node, self._op_id)
        except JournalError as exc:
            log.warning("operation %d: cannot mark its placing settled in the journal (%s); "
                        "the next operation checks it again", self._op_id, exc)

    def unfinished(self) -> tuple[Placing, ...]:
        try:
            rows = self._journal.placings(self._node)
        except JournalError as exc:
            log.warning("operation %d: cannot read what unfinished operations placed (%s)",
                        self._op_id, exc)
            return ()
        busy = self._busy()
        return tuple(Placing(op, version, paths, added) for op, version, paths, added in rows
                     if op != self._op_id and op not in busy)

    def forget(self, placing: Placing) -> None:
        try:
            self._journal.settle_placing(self._node, placing.key)
        except JournalError as exc:
            log.warning("operation %d: cannot forget operation %d's placing (%s)",
                        self._op_id, placing.key, exc)


def _rows(releases: tuple[Release, ...]) -> list[ReleaseRow]:
    return [ReleaseRow(r.name, r.version, r.status) for r in releases]


@dataclass
class _Running:
    op_id: int
    kind: str
    task: asyncio.Task[OperationRecord]
    listeners: list[asyncio.Queue[Progress | None]]


@dataclass
class _Shadow:
    """What the journal should say of one operation, kept while its writes fail."""

    record: OperationRecord                            # its start, then its end
    steps: list[StepRecord] = field(default_factory=list)
    writes: list[Callable[[], object]] = field(default_factory=list)  # not yet done, in order
    error: str = ""                                    # why the last write failed

    def step(self, step: StepRecord) -> None:
        """The journal's rule: a step updates the same-named step still running, else it is
        appended."""
        for i in range(len(self.steps) - 1, -1, -1):
            if self.steps[i].name == step.name and self.steps[i].state == "running":
                self.steps[i] = step
                return
        self.steps.append(step)

    def view(self) -> OperationRecord:
        """The record, with a note while the journal is behind."""
        record = replace(self.record, steps=tuple(self.steps))
        if not self.writes:
            return record
        note = (f"not in the agent's journal yet ({self.error}); the agent writes it there as "
                f"soon as it can (until then relctl operation {record.id} shows it from the "
                "agent's memory)")
        return replace(record, error=f"{record.error}; {note}" if record.error else note)


def _unfinished(steps: list[StepRecord], now: float, detail: str) -> list[StepRecord]:
    """The journal's rule at an operation's end: a step left running did not succeed."""
    return [replace(s, state="failed", detail=detail, duration=max(now - s.started_at, 0.0))
            if s.state == "running" else s for s in steps]


class Operations:
    def __init__(self, journal: Journal, nodes: NodeManager, *, rpc_timeout: float,
                 on_finished: Callable[[OperationRecord], None] = lambda record: None,
                 busy_placings: Callable[[], Collection[int]] = frozenset) -> None:
        self._journal = journal
        # What uploads alive in this agent are placing (their extraction as they arrive,
        # ahead.py): never taken back by an operation as if it were left unfinished.
        self._busy_placings = busy_placings
        self._on_finished = on_finished
        self._nodes = nodes
        self._rpc_timeout = rpc_timeout
        self._running: dict[str, _Running] = {}
        self._background: set[asyncio.Task[object]] = set()
        # Every operation of this agent's life, as the journal should show it (only kept
        # while the journal is behind: see _write).
        self._shadows: dict[int, _Shadow] = {}

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
        self.flush_journal()
        started_at = time.time()
        try:
            op_id = self._journal.start(node, kind, from_version, to_version or from_version,
                                        requested_by, now=started_at)
        except JournalWriteError as exc:
            log.error("%s on %s refused: %s", kind, node, exc)
            raise NotJournaled(kind, node, exc) from None
        self._shadows[op_id] = _Shadow(OperationRecord(
            id=op_id, node=node, kind=kind, from_version=from_version,
            to_version=to_version or from_version, requested_by=requested_by,
            started_at=started_at, finished_at=None, outcome="running", error="", steps=(),
            releases_after=()))
        listeners: list[asyncio.Queue[Progress | None]] = []

        def on_step(step: StepRecord) -> None:
            # Never raises for the journal: a node half-way through an install must not be
            # left there because the agent's disk is full.
            self._shadows[op_id].step(step)
            self._write(op_id, lambda: self._journal.step(op_id, step))
            for q in listeners:
                q.put_nowait(Progress(op_id, step=step))

        engine = ReleaseEngine(link, on_step, rpc_timeout=self._rpc_timeout,
                               ledger=_JournalLedger(self._journal, node, op_id,
                                                     self._busy_placings))
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
                version = result.from_version
                shadow = self._shadows[op_id]
                shadow.record = replace(shadow.record, from_version=version)
                self._write(op_id, lambda: self._journal.set_from_version(op_id, version))
        except NodeUnavailable as exc:
            outcome, error, releases = FAILED, f"{exc}; check the node's releases", ()
        except asyncio.CancelledError:
            record = self._end(op_id, "interrupted", "interrupted: the agent stopped", (), (),
                               interrupted=True)
            self._close(link.name, record)
            raise
        except Exception as exc:
            log.exception("operation %d failed inside the agent", op_id)
            outcome, error, releases = FAILED, f"internal error in relctl-agent: {exc!r}", ()
        record = self._end(op_id, outcome, error, _rows(releases), changes)
        if releases:  # the node's list: the sha256 of releases no longer on it are stale
            try:
                self._journal.forget_unpacked(link.name, [r.version for r in releases])
            except JournalError as exc:
                log.warning("operation %d: %s", op_id, exc)
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

    # --- the journal, and what stands in for it while it cannot be written -------------

    def _write(self, op_id: int, write: Callable[[], object]) -> bool:
        """Do one journal write of ``op_id``, after those still pending; False when it is
        pending too (kept, in order, for :meth:`flush_journal`)."""
        shadow = self._shadows[op_id]
        shadow.writes.append(write)
        self._flush(op_id, shadow)
        return not shadow.writes

    def _flush(self, op_id: int, shadow: _Shadow) -> None:
        while shadow.writes:
            try:
                shadow.writes[0]()
            except JournalWriteError as exc:
                if not shadow.error:
                    log.error("operation %d: %s; the operation goes on, and is written to the "
                              "journal once that works again", op_id, exc)
                shadow.error = str(exc)
                return
            except JournalError as exc:  # the journal's records forbid it: retrying cannot help
                log.error("operation %d: a journal write was refused: %s", op_id, exc)
            shadow.writes.pop(0)
        if shadow.error:
            log.info("operation %d: the journal has it again", op_id)
            shadow.error = ""

    def flush_journal(self) -> int:
        """Retry the journal writes that failed (call every few seconds); how many remain."""
        for op_id, shadow in list(self._shadows.items()):
            self._flush(op_id, shadow)
            if not shadow.writes and shadow.record.outcome != "running":
                del self._shadows[op_id]
        return sum(len(s.writes) for s in self._shadows.values())

    def _end(self, op_id: int, outcome: str, error: str, releases: Sequence[ReleaseRow],
             changes: tuple[ConfigChange, ...], *, interrupted: bool = False) -> OperationRecord:
        """Journal the operation's end; the record, from memory when the journal is behind."""
        now = time.time()
        record: OperationRecord | None = None

        def finish() -> None:
            nonlocal record
            if interrupted:
                record = self._journal.mark_interrupted(op_id, error, releases, now=now)
            else:
                record = self._journal.finish(op_id, outcome, error=error,
                                              releases_after=releases, config_changes=changes,
                                              now=now)
        written = self._write(op_id, finish)
        shadow = self._shadows[op_id]
        detail = "interrupted: agent stopped" if interrupted else "did not finish"
        shadow.steps = _unfinished(shadow.steps, now, detail)
        shadow.record = replace(shadow.record, outcome=outcome, error=error, finished_at=now,
                                releases_after=tuple(releases), config_changes=changes)
        if written and record is not None:
            del self._shadows[op_id]
            return record
        return shadow.view()

    def _record(self, op_id: int) -> OperationRecord | None:
        """The operation as the journal says, or as it should say while it is behind."""
        shadow = self._shadows.get(op_id)
        if shadow is not None and shadow.writes:
            return shadow.view()
        return self._journal.get(op_id)

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
        record = self._record(op_id)
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
        record = self._record(op_id)
        if record is None:
            raise UnknownOperation(op_id)
        return record

    def get(self, op_id: int) -> OperationRecord:
        record = self._record(op_id)
        if record is None:
            raise UnknownOperation(op_id)
        return record

    def reconcile(self) -> list[OperationRecord]:
        """Mark operations left running by a dead agent as interrupted, with the node's real
        releases (call once the nodes had their first connection attempt)."""
        fixed: list[OperationRecord] = []
        for record in self._journal.running():
            try:
                state = self._nodes.get(record.node).state
            except NotFound:
                note = "interrupted: the agent stopped while it ran; the node is no longer configured"
                self._mark_interrupted(record, note, (), fixed)
                continue
            running = next((r for r in state.releases if r.running), None)
            if state.up and running is not None:
                note = (f"interrupted: the agent stopped while it ran; {record.node} now runs "
                        f"{running.version} ({running.status})")
            else:
                note = (f"interrupted: the agent stopped while it ran; {record.node} is down "
                        f"({state.error}); check its releases when it is back")
            self._mark_interrupted(record, note, _rows(state.releases) if state.up else [],
                                   fixed)
            log.warning("operation %d (%s on %s): %s", record.id, record.kind, record.node, note)
        return fixed

    def _mark_interrupted(self, record: OperationRecord, note: str,
                          releases: Sequence[ReleaseRow], fixed: list[OperationRecord]) -> None:
        now = time.time()
        self._shadows[record.id] = _Shadow(
            replace(record, outcome="interrupted", error=note, finished_at=now,
                    releases_after=tuple(releases)),
            _unfinished(list(record.steps), now, "interrupted: agent stopped"))

        def mark() -> None:
            fixed.append(self._journal.mark_interrupted(record.id, note, releases, now=now))
        self._write(record.id, mark)
        if not self._shadows[record.id].writes:
            del self._shadows[record.id]

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

    def close(self) -> None:
        """Last try at the journal writes that failed; what is still not written is logged (the
        next start marks those operations interrupted, with the node's releases)."""
        if self.flush_journal():
            for op_id, shadow in self._shadows.items():
                if shadow.writes:
                    log.error("operation %d: its end is not in the journal (%s); the next start "
                              "records it as interrupted, with the node's releases", op_id,
                              shadow.error)

