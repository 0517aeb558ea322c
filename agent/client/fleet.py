"""Rolling upgrades over several agents: `relctl --agent A --agent B ... upgrade VSN`.

edeliver upgrades every host at once; a rollout here goes in batches so that a bad release
stops after the first hosts that show it. The decisions, also in `relctl upgrade --help` and
the README:

- The plan is batches of ``--batch`` agents in the order given. The agents of a batch upgrade
  at once, one thread each (the gRPC stubs are synchronous); a batch ends when all of its
  agents have finished.
- A failure is any result but ``succeeded``, ``dry_run`` or ``up_to_date``: an outcome such as
  rolled_back or failed_unchanged, but also an agent that could not be reached, was busy, or
  refused the request (an agent managing several nodes without ``--node`` says so itself; its
  message is the reason). After each batch, when the failures so far are more than
  ``--max-failures``, the rollout stops; the agents of later batches are reported as
  ``skipped`` (never contacted).
- ``up_to_date``: before uploading, each agent is asked for its node's releases; a node that
  already runs VSN as permanent gets no upload, and its agent answers the Upgrade call with a
  journaled ``up_to_date`` operation (the same path as a single-agent `relctl upgrade`,
  :func:`agent.client.transfer.upgrade_on`), so that a stopped rollout can be run again as it
  was, once the cause is fixed.
- Pre-staging (:mod:`agent.client.prestage`): with a tarball, every agent first uploads and
  unpacks the release (``--stage-parallel`` at a time, default all); a failed stage on any
  agent stops the rollout before any node is switched. Then the switch phase is the batches
  above, whose upgrades find the release unpacked and upload nothing. ``--no-prestage`` (and
  ``--dry-run``, which must change nothing) keep the old order: each agent uploads in its batch.
- ``--node`` is sent to every agent (fleets whose nodes share a name, e.g. app@127.0.0.1);
  without it each agent upgrades the only node it manages.
- Progress (text output only) is the single-agent progress with ``[AGENT]`` in front of each
  line, as the lines of concurrent upgrades interleave. Then one table row per agent and a
  last line saying whether the rollout completed or stopped and why; ``-o json`` prints the
  same data instead.
- The exit code is the most serious one among the failed agents
  (:data:`agent.client.status.WORST_FIRST`), 0 when none failed.
- A silent agent (no answer, not even to keepalive pings, for ``--host-timeout``; or a
  connection that broke) is reported at once with the step and operation it was in, and its
  row is ``unknown`` (exit 6: the operation may go on), a failure for the stop rule. Its
  operation is then asked for in the background (:mod:`agent.client.watch`); once the agent
  answers, during later batches or up to ``--host-timeout`` after the last one, the row is
  the operation's real outcome. A rollout stopped for an agent that later answered
  ``succeeded`` exits 3: it did not reach every agent.
- Ctrl-C or SIGTERM ends relctl at once, never the operations: the table of what is known
  (``in_progress`` rows with their operation ids, ``skipped`` for agents not started), which
  operations may go on, exit 130 (:data:`agent.client.status.ExitCode.INTERRUPTED`).

The planner, the stop rule, the exit code and the rendering are functions of plain values,
tested without agents; :func:`fleet_upgrade` wires them to the agents.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from .common import Settings, connect
from .output import Lines, emit, outcome_of, table
from .prestage import IN_PROGRESS, STAGED, Staging, StageResult, run_staging, stage_on
from .status import (
    GOES_ON,
    OK_OUTCOMES,
    CliError,
    ExitCode,
    exit_code_for_outcome,
    exit_code_of_rollout,
)
from .transfer import UpgradeSpec, file_digest, target_node, upgrade_on
from .watch import Recovery, Watch, watched_stub
from .workers import run_on_threads

SUCCEEDED = "succeeded"
UP_TO_DATE = "up_to_date"
ERROR = "error"      # no finished operation: unreachable, refused, busy, stream lost
SKIPPED = "skipped"  # not started: the rollout stopped before the agent's batch
UNKNOWN = "unknown"  # its operation started, then the agent went silent: outcome not known
# IN_PROGRESS (prestage's word): relctl was interrupted while the agent's operation ran
# What is not a failure is status.py's one definition: the outcomes that exit 0.
OK_RESULTS = OK_OUTCOMES


@dataclass(frozen=True)
class NodeResult:
    """What happened on one agent's node during the rollout."""

    agent: str
    node: str
    batch: int
    result: str                   # an operation outcome (UP_TO_DATE too), ERROR or SKIPPED
    code: ExitCode = ExitCode.OK
    from_version: str = ""
    to_version: str = ""
    seconds: float | None = None
    operation_id: int | None = None
    reason: str = ""

    @property
    def failed(self) -> bool:
        # STAGED: a row of a rollout stopped in staging; the node was not switched.
        return self.result not in OK_RESULTS and self.result not in (SKIPPED, STAGED)

    def versions(self) -> str:
        if not self.to_version:
            return "-"
        if not self.from_version or self.from_version == self.to_version:
            return self.to_version
        return f"{self.from_version} -> {self.to_version}"

    def as_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "node": self.node or None, "batch": self.batch,
                "result": self.result, "exit_code": int(self.code),
                "from_version": self.from_version or None, "to_version": self.to_version or None,
                "duration_s": None if self.seconds is None else round(self.seconds, 3),
                "operation_id": self.operation_id, "reason": self.reason or None}


def plan(agents: Sequence[str], batch: int) -> list[tuple[str, ...]]:
    """Batches of ``batch`` agents, in the order given (the last one may be smaller)."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, not {batch}")
    return [tuple(agents[i:i + batch]) for i in range(0, len(agents), batch)]


def over_budget(failures: int, max_failures: int) -> bool:
    """The stop rule: more than ``max_failures`` failures (so 0 means stop at the first)."""
    return failures > max_failures


def result_of(agent: str, batch: int, op: pb.Operation, seconds: float | None) -> NodeResult:
    """The row of an agent whose upgrade ran to its end."""
    outcome = outcome_of(op)
    reason = op.error
    if not reason and outcome == "dry_run":
        reason = "dry run: checks passed, nothing changed"
    elif not reason and outcome == UP_TO_DATE:
        reason = f"already runs {op.to_version} (permanent)"
    return NodeResult(agent, op.node, batch, outcome,
                      exit_code_for_outcome(outcome), op.from_version,
                      op.to_version, seconds, op.id, reason)


def result_of_error(agent: str, node: str, batch: int, version: str, error: CliError,
                    seconds: float | None) -> NodeResult:
    """The row of an agent that gave no finished operation; the reason is the error's one
    line, without the agent's name (the row has it)."""
    reason = str(error).removeprefix(f"agent {agent}: ")
    return NodeResult(agent, node, batch, ERROR, error.code, to_version=version,
                      seconds=seconds, reason=reason)


@dataclass(frozen=True)
class Rollout:
    version: str
    batch: int
    max_failures: int
    batches: int
    results: tuple[NodeResult, ...]
    stopped_after: int | None = None  # the batch after which it stopped; None: all attempted
    staging: Staging | None = None    # the staging phase; None: --no-prestage, or no tarball
    switch_seconds: float | None = None  # the switch phase; None: not reached
    interrupted_in: int | None = None  # the batch Ctrl-C/SIGTERM came in; None: not interrupted
    stopped_failures: int = 0  # the failures the stop rule counted (silent agents may answer
                               # later with an outcome that is not one)

    @property
    def stopped_in_staging(self) -> bool:
        return self.staging is not None and bool(self.staging.failed)

    @property
    def failures(self) -> int:
        return sum(r.failed for r in self.results)

    @property
    def not_attempted(self) -> int:
        return sum(r.result == SKIPPED for r in self.results)

    @property
    def interrupted(self) -> bool:
        return self.interrupted_in is not None or (self.staging is not None
                                                   and self.staging.interrupted)

    @property
    def exit_code(self) -> ExitCode:
        return exit_code_of_rollout((r.code for r in self.results if r.failed),
                                    interrupted=self.interrupted,
                                    stopped=self.stopped_after is not None)

    def may_go_on(self) -> list[NodeResult]:
        """The rows whose operation may still run on its agent (interrupted or silent)."""
        return [r for r in self.results if r.result in (IN_PROGRESS, UNKNOWN)]

    def _going_on(self) -> str:
        going = self.may_go_on()
        if not going:
            return "no operation is left running"
        names = ", ".join(f"{r.agent} (operation {r.operation_id})" if r.operation_id
                          else r.agent for r in going)
        return (f"{len(going)} operation(s) may go on on their agents: {names}; relctl --agent "
                "AGENT operation N shows how each ends")

    def summary(self) -> str:
        if self.interrupted_in is not None:
            return (f"rollout of {self.version} interrupted during batch {self.interrupted_in} "
                    f"of {self.batches}: no further batch was started; {self._going_on()}; "
                    f"{self.not_attempted} agent(s) not attempted (run the same command again "
                    f"once they ended: nodes already on {self.version} are left alone)")
        if self.staging is not None and self.staging.interrupted:
            going = [r.agent for r in self.staging.results if r.result == IN_PROGRESS]
            staged = sum(r.result == STAGED for r in self.results)
            return (f"rollout of {self.version} interrupted in staging, before any node was "
                    f"switched: {staged} node(s) have {self.version} staged, not installed; "
                    f"{len(going)} upload(s) or unpack(s) may go on on their agents"
                    + (f" ({', '.join(going)})" if going else "")
                    + "; run the same command again to go on: what is staged from these "
                    "bytes is not sent again")
        if self.staging is not None and self.stopped_in_staging:
            failed = ", ".join(r.agent for r in self.staging.failed)
            staged = sum(r.result == STAGED for r in self.results)
            return (f"rollout of {self.version} stopped in staging, before any node was "
                    f"switched: staging failed on {failed}; {staged} node(s) have "
                    f"{self.version} staged, not installed (relctl remove {self.version} on "
                    f"each takes it back); {self.not_attempted} agent(s) not staged (fix what "
                    "failed, then run the same command again: what is staged is not uploaded "
                    "again)")
        if self.stopped_after is not None:
            since = ("" if self.failures == self.stopped_failures else
                     f" (then; {self.failures} now: silent agents answered since)")
            return (f"rollout of {self.version} stopped after batch {self.stopped_after} of "
                    f"{self.batches}: {self.stopped_failures} failure(s) > --max-failures "
                    f"{self.max_failures}{since}; {self.not_attempted} agent(s) not attempted "
                    "(fix what failed, then run the same command again: nodes already on "
                    f"{self.version} are left alone)")
        counts = Counter(r.result for r in self.results)
        line = (f"rollout of {self.version} completed: "
                + ", ".join(f"{n} {result}" for result, n in counts.items()))
        if self.failures:
            sign = ">" if over_budget(self.failures, self.max_failures) else "<="
            line += f"; {self.failures} failure(s) {sign} --max-failures {self.max_failures}"
        if self.may_go_on():
            line += f"; {self._going_on()}"
        return line

    def table(self) -> str:
        rows = [["AGENT", "NODE", "RESULT", "FROM -> TO", "DURATION", "OPERATION", "REASON"]]
        for r in self.results:
            rows.append([r.agent, r.node or "-", r.result, r.versions(),
                         "-" if r.seconds is None else f"{r.seconds:.1f} s",
                         "-" if r.operation_id is None else str(r.operation_id),
                         _short(r.reason)])
        return table(rows)

    def as_json(self) -> dict[str, Any]:
        stopped_in = ("staging" if self.stopped_in_staging
                      else "switch" if self.stopped_after is not None else None)
        status = ("interrupted" if self.interrupted
                  else "completed" if stopped_in is None else "stopped")
        return {"rollout": {
            "version": self.version, "batch": self.batch, "max_failures": self.max_failures,
            "batches": self.batches, "prestage": self.staging is not None,
            "status": status, "interrupted_in_batch": self.interrupted_in,
            "may_go_on": [r.agent for r in self.may_go_on()],
            "stopped_in": stopped_in,
            "stopped_after_batch": self.stopped_after, "failures": self.failures,
            "not_attempted": self.not_attempted, "exit_code": int(self.exit_code),
            "switch_duration_s": (None if self.switch_seconds is None
                                  else round(self.switch_seconds, 3)),
            "summary": self.summary()},
            "staging": None if self.staging is None else self.staging.as_json(),
            "nodes": [r.as_json() for r in self.results]}


def stopped_in_staging(staging: Staging, *, batch: int, max_failures: int) -> Rollout:
    """The rollout of a staging phase that failed: nothing switched; a row per agent that says
    where its node stands (the failure, staged and not installed, up to date, not staged)."""
    batches = plan([r.agent for r in staging.results], batch)
    number = {agent: n for n, members in enumerate(batches, 1) for agent in members}
    why = ("relctl was interrupted in staging" if staging.interrupted else
           f"staging failed on {', '.join(r.agent for r in staging.failed)}")
    rows = [_row_of_stage(r, number[r.agent], staging.version, why) for r in staging.results]
    return Rollout(staging.version, batch, max_failures, len(batches), tuple(rows),
                   staging=staging)


def _row_of_stage(r: StageResult, batch: int, version: str, why: str) -> NodeResult:
    if r.failed:
        return NodeResult(r.agent, r.node, batch, r.result, r.code, to_version=version,
                          seconds=r.seconds, operation_id=r.operation_id,
                          reason=f"staging failed: {r.reason}")
    if r.result == IN_PROGRESS:
        return NodeResult(r.agent, r.node, batch, r.result, r.code, to_version=version,
                          seconds=r.seconds, reason=r.reason)
    if r.result == STAGED:
        undo = (f"; relctl --agent {r.agent} remove {version} takes it back" if r.removable
                else "")
        return NodeResult(r.agent, r.node, batch, STAGED, to_version=version,
                          seconds=r.seconds, operation_id=r.operation_id,
                          reason=f"not switched ({why}): {r.reason}{undo}")
    return NodeResult(r.agent, r.node, batch, r.result, to_version=version, seconds=r.seconds,
                      reason=r.reason)


def _short(text: str) -> str:
    """The first line only: a table row stays one line (agents' errors are one line anyway,
    and naming what to do, so they are not cut)."""
    return text.splitlines()[0] if text else ""


Attempt = Callable[[str, int], NodeResult]


def _as_is(row: NodeResult) -> NodeResult:
    return row


def _running(agent: str, batch: int) -> NodeResult:
    return NodeResult(agent, "", batch, IN_PROGRESS, GOES_ON,
                      reason="relctl was interrupted while its upgrade ran; it may go on")


def run_rollout(agents: Sequence[str], *, version: str, batch: int, max_failures: int,
                attempt: Attempt, node: str = "",
                on_batch: Callable[[int, int, tuple[str, ...]], None] | None = None,
                current: Callable[[NodeResult], NodeResult] = _as_is,
                in_flight: Attempt = _running) -> Rollout:
    """Call ``attempt(agent, batch_number)`` for every agent, a batch at a time, and stop
    after a batch that brings the failures over ``max_failures``. ``current(row)``: the row
    as known now (a silent agent may have answered since); the stop rule counts those.
    Ctrl-C (SIGTERM) in the main thread ends it at once with the rows known: ``in_flight``
    gives the row of an agent whose attempt had not returned."""
    batches = plan(agents, batch)
    results: list[NodeResult] = []
    for number, members in enumerate(batches, 1):
        if on_batch is not None:
            on_batch(number, len(batches), members)
        run = run_on_threads(members, lambda agent: attempt(agent, number),
                             parallel=len(members), name="relctl-upgrade")
        if run.interrupted:
            results += [run.results[i] if i in run.results else in_flight(agent, number)
                        for i, agent in enumerate(members)]
            reason = f"not started: the rollout was interrupted during batch {number}"
            results += [NodeResult(agent, node, later, SKIPPED, reason=reason)
                        for later, rest in enumerate(batches[number:], number + 1)
                        for agent in rest]
            return Rollout(version, batch, max_failures, len(batches), tuple(results),
                           interrupted_in=number)
        results += [run.results[i] for i in range(len(members))]
        failures = sum(current(r).failed for r in results)
        if over_budget(failures, max_failures) and number < len(batches):
            reason = f"not started: the rollout stopped after batch {number}"
            results += [NodeResult(agent, node, later, SKIPPED, reason=reason)
                        for later, rest in enumerate(batches[number:], number + 1)
                        for agent in rest]
            return Rollout(version, batch, max_failures, len(batches), tuple(results), number,
                           stopped_failures=failures)
    return Rollout(version, batch, max_failures, len(batches), tuple(results))


# --- talking to the agents ------------------------------------------------------------------

def _finished_line(r: NodeResult | StageResult) -> str:
    what = f"  => {r.result}"
    if r.operation_id is not None:
        what += f" (operation {r.operation_id})"
    return what + (f": {_short(r.reason)}" if r.reason else "")


def _stage_all(settings: Settings, spec: UpgradeSpec, printer: Lines,
               parallel: int) -> Staging:
    """The staging phase on every agent (see :mod:`agent.client.prestage`)."""
    def stage(agent: str) -> StageResult:
        progress = printer.for_agent(agent)
        started = time.monotonic()
        try:
            with connect(settings, agent) as channel:
                row = stage_on(settings, agent_pb2_grpc.AgentStub(channel), agent, spec,
                               progress=progress)
        except CliError as exc:
            row = StageResult(agent, settings.node, ERROR, exc.code,
                              time.monotonic() - started,
                              reason=str(exc).removeprefix(f"agent {agent}: "))
        progress.line(_finished_line(row))
        return row

    printer.line(f"staging {spec.version} on {len(settings.agents)} agent(s), {parallel} at a "
                 "time")
    staging = run_staging(settings.agents, version=spec.version, parallel=parallel,
                          stage=stage)
    if not staging.interrupted:
        printer.line(staging.line())
    return staging


def fleet_upgrade(settings: Settings, spec: UpgradeSpec, *, batch: int, max_failures: int,
                  prestage: bool = True, stage_parallel: int | None = None) -> ExitCode:
    """`relctl upgrade` with several agents: stage everywhere (with a tarball, unless
    ``prestage`` is off or it is a dry run), roll out, print the table; the rollout's exit
    code. ``stage_parallel``: agents staging at once (None: all)."""
    if spec.tarball is not None and spec.digest is None:  # hashed once, not once per agent
        spec = spec._replace(digest=file_digest(spec.tarball))
    printer = Lines(settings, settings.agents)
    staging: Staging | None = None
    if prestage and spec.tarball is not None and not spec.dry_run:
        staging = _stage_all(settings, spec, printer, stage_parallel or len(settings.agents))
        if staging.failed or staging.interrupted:
            return _finish(settings, stopped_in_staging(staging, batch=batch,
                                                        max_failures=max_failures), printer)
        # Every node has the release now (or runs it), the one of this tarball (staging
        # checked or replaced it): the upgrades upload nothing.
        spec = spec._replace(tarball=None, digest=None, replace=False)
    switch = _Switch(settings, spec, printer)
    started = time.monotonic()
    rollout: Rollout | None = None
    try:
        rollout = run_rollout(settings.agents, version=spec.version, batch=batch,
                              max_failures=max_failures, attempt=switch.attempt,
                              node=settings.node, on_batch=switch.on_batch,
                              current=switch.current, in_flight=switch.in_flight)
        if rollout.interrupted_in is None:
            switch.wait_for_silent()
    except KeyboardInterrupt:  # while waiting for silent agents, after the last batch
        if rollout is None:
            raise  # between batches, before any row: main() says "interrupted", exit 130
        rollout = replace(rollout, interrupted_in=rollout.batches)
    switch.recovery.stop()
    rollout = replace(rollout, results=tuple(switch.current(r) for r in rollout.results),
                      staging=staging, switch_seconds=time.monotonic() - started)
    return _finish(settings, rollout, printer)


class _Switch:
    """The switch phase's talk with the agents: each agent's upgrade, watched, so that an
    agent that goes silent is reported at once and marked ``unknown``, then asked again for
    its operation's real outcome (:mod:`agent.client.watch`)."""

    def __init__(self, settings: Settings, spec: UpgradeSpec, printer: Lines) -> None:
        self.settings = settings
        self.spec = spec
        self.printer = printer
        self.watches: dict[str, Watch] = {}
        self.recovery = Recovery(settings, self._answered)
        self._silent_since: dict[str, float] = {}

    def on_batch(self, number: int, total: int, members: tuple[str, ...]) -> None:
        self.printer.line(f"batch {number}/{total}: {', '.join(members)}")

    def attempt(self, agent: str, number: int) -> NodeResult:
        settings, spec = self.settings, self.spec
        progress = self.printer.for_agent(agent)
        node = settings.node
        watch = self.watches[agent] = Watch(agent)
        started = time.monotonic()
        try:
            with connect(settings, agent) as channel:
                stub = watched_stub(channel, watch, settings.host_timeout, self._lost)
                # Asked here rather than in upgrade_on: an error row still names the node.
                node, done, _ = target_node(settings, stub, agent, spec.version)
                op = upgrade_on(settings, stub, agent, spec, progress=progress, up_to_date=done)
                row = result_of(agent, number, op, time.monotonic() - started)
        except CliError as exc:
            row = result_of_error(agent, node, number, spec.version, exc,
                                  time.monotonic() - started)
            if watch.lost:
                row = self._unknown(watch, row)
        progress.line(_finished_line(row))
        return row

    def _lost(self, watch: Watch) -> None:
        """The moment an agent's stream broke: say so, and start asking it again."""
        self._silent_since[watch.agent] = time.monotonic()
        self.printer.for_agent(watch.agent).line(
            f"  !! {self.printer.elapsed()}: lost during {watch.where()} "
            f"({self.spec.version}): {watch.lost}; marked {UNKNOWN} (never done or "
            "unchanged) until the agent answers again")
        self.recovery.follow(watch.agent, watch.operation_id)

    def _unknown(self, watch: Watch, row: NodeResult) -> NodeResult:
        where = watch.where()
        again = (f"relctl --agent {watch.agent} operation {watch.operation_id} shows how it "
                 "ended" if watch.operation_id
                 else f"relctl --agent {watch.agent} operations lists it")
        return replace(row, result=UNKNOWN, code=GOES_ON,
                       operation_id=watch.operation_id or None,
                       reason=f"lost during {where}: {watch.lost}; the operation may go on; "
                              f"{again}")

    def _answered(self, agent: str, op: pb.Operation) -> None:
        silent = time.monotonic() - self._silent_since.get(agent, time.monotonic())
        self.printer.for_agent(agent).line(
            f"  .. {self.printer.elapsed()}: answers again after {silent:.1f} s: operation "
            f"{op.id} ended {outcome_of(op)}")

    def current(self, row: NodeResult) -> NodeResult:
        """``row`` with the real outcome of its operation when its silent agent answered."""
        if row.result not in (UNKNOWN, IN_PROGRESS):
            return row
        op = self.recovery.outcome(row.agent)
        if op is None:
            return row
        found = result_of(row.agent, row.batch, op, row.seconds)
        return replace(found, reason=f"read back after the agent went silent: "
                                     f"{found.reason or found.result}")

    def in_flight(self, agent: str, number: int) -> NodeResult:
        """The row of an agent whose upgrade ran when Ctrl-C (SIGTERM) came."""
        watch = self.watches.get(agent, Watch(agent))
        if watch.lost:
            return self._unknown(watch, NodeResult(agent, self.settings.node, number, UNKNOWN,
                                                   to_version=self.spec.version))
        what = (f"operation {watch.operation_id} goes on on the agent (it was at step "
                f"{watch.step or 'one'}); relctl --agent {agent} operation "
                f"{watch.operation_id} shows how it ends" if watch.operation_id
                else "its upgrade may have started and go on; relctl --agent "
                     f"{agent} operations lists it")
        return NodeResult(agent, self.settings.node, number, IN_PROGRESS,
                          GOES_ON, to_version=self.spec.version,
                          operation_id=watch.operation_id or None,
                          reason=f"interrupted while it ran: {what}")

    def wait_for_silent(self) -> None:
        """After the last batch: agents that went silent get up to --host-timeout more to
        answer, so that a short cut ends with the real outcome rather than ``unknown``."""
        pending = self.recovery.pending()
        if not pending:
            return
        self.printer.line(f"waiting up to {self.settings.host_timeout:g} s for silent agent(s) "
                          f"to answer: {', '.join(pending)}")
        self.recovery.wait(self.settings.host_timeout)


def _finish(settings: Settings, rollout: Rollout, printer: Lines) -> ExitCode:
    """Print the table and the last line (or the JSON); the rollout's exit code."""
    printer.mute()
    emit(settings, rollout.as_json(),
         lambda: "\n".join(["", rollout.table(), rollout.summary()]))
    return rollout.exit_code
