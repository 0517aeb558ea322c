"""The staging phase of a rollout: `relctl upgrade VSN --tarball F` over several agents first
uploads and unpacks VSN on every agent's node (what `relctl unpack` does: the Upload and
Unpack RPCs), ``--stage-parallel N`` agents at a time (default: all), and only then does
:mod:`agent.client.fleet` switch the nodes in batches. The decisions:

- Why: the slow, boring part (bytes over the network, extraction) happens before anything
  changes, everywhere at once; a bad tarball, a full disk or a read-only release root shows up
  before the first node switches, and the switch of a batch takes only its install time.
- Each agent is first asked for its node's releases: a node already running VSN as permanent
  is ``up_to_date`` (neither staged nor switched), one where VSN is installed and not
  permanent is ``staged`` with nothing uploaded, and so is one where the agent unpacked VSN
  from a tarball with this one's sha256 (a run that stopped: the same rule as a single-agent
  rerun). A node that has VSN unpacked from other or unrecorded bytes (or old) gets the
  tarball and a dry-run Upgrade: the agent checks that its release is this tarball's (sha256)
  and can be installed, and refuses other bytes unless ``--replace`` (then Unpack replaces
  it): never a silent mix of two builds of VSN.
- A failed stage on any agent stops the rollout before any node is switched: no new stage is
  started once one failed (the stages under way finish), and the agents not reached are
  ``skipped``. The nodes already staged have VSN unpacked, not installed; ``relctl remove VSN``
  takes it back on each.
- Progress (text output only): the agent's upload line and the Unpack steps, each line with
  ``[AGENT]`` in front, as in the switch phase.

:func:`run_staging` is a function of plain values, tested without agents; :func:`stage_on`
stages one agent.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from .common import OPERATION_TIMEOUT, Settings, operation_error, rpc_error
from .output import STATUS_NAMES, Progress, outcome_of
from .status import GOES_ON, ExitCode, exit_code_for_outcome
from .transfer import UpgradeSpec, file_digest, is_up_to_date, target_on, upgrade_on, upload
from .workers import run_on_threads

IN_PROGRESS = "in_progress"  # relctl was interrupted while this agent staged: it may go on
STAGED = "staged"          # VSN is on the node, ready to switch: unpacked now, or there before
UP_TO_DATE = "up_to_date"  # the node runs VSN as permanent: nothing to stage or switch
ERROR = "error"            # no finished Unpack: unreachable, refused, busy, upload failed
SKIPPED = "skipped"        # not started: a stage failed elsewhere first
_NOT_FAILED = frozenset({STAGED, UP_TO_DATE, SKIPPED})


@dataclass(frozen=True)
class StageResult:
    """What the staging phase did on one agent's node."""

    agent: str
    node: str
    result: str                # STAGED, UP_TO_DATE, SKIPPED, ERROR or the Unpack's outcome
    code: ExitCode = ExitCode.OK
    seconds: float | None = None
    operation_id: int | None = None
    uploaded: bool = False     # False for STAGED: VSN was on the node already
    reason: str = ""
    removable: bool = False    # STAGED and not installed: `relctl remove VSN` takes it back

    @property
    def failed(self) -> bool:
        return self.result not in _NOT_FAILED

    def as_json(self) -> dict[str, Any]:
        return {"agent": self.agent, "node": self.node or None, "result": self.result,
                "exit_code": int(self.code), "uploaded": self.uploaded,
                "duration_s": None if self.seconds is None else round(self.seconds, 3),
                "operation_id": self.operation_id, "reason": self.reason or None}


@dataclass(frozen=True)
class Staging:
    """The whole staging phase: a result per agent, in the order given."""

    version: str
    parallel: int
    results: tuple[StageResult, ...]
    seconds: float
    interrupted: bool = False  # Ctrl-C/SIGTERM came while agents staged

    @property
    def failed(self) -> tuple[StageResult, ...]:
        return tuple(r for r in self.results if r.failed)

    def line(self) -> str:
        """One line on the phase: "staged 0.0.2 on 3 agent(s) in 1.2 s, 3 at a time: ..."."""
        counts = Counter(r.result for r in self.results)
        uploaded = sum(r.uploaded for r in self.results)
        what = ", ".join(f"{n} {result}" for result, n in counts.items())
        return (f"staging of {self.version} on {len(self.results)} agent(s), {self.parallel} at "
                f"a time, took {self.seconds:.1f} s: {what} ({uploaded} uploaded)")

    def as_json(self) -> dict[str, Any]:
        return {"parallel": self.parallel, "duration_s": round(self.seconds, 3),
                "status": ("interrupted" if self.interrupted
                           else "failed" if self.failed else "completed"),
                "agents": [r.as_json() for r in self.results]}


Stage = Callable[[str], StageResult]


def run_staging(agents: Sequence[str], *, version: str, parallel: int, stage: Stage) -> Staging:
    """``stage(agent)`` for every agent, at most ``parallel`` at once, in the order given;
    once a stage failed no further one starts, and the agents not started are SKIPPED.
    Ctrl-C (SIGTERM) in the main thread ends it at once: the stages under way are
    IN_PROGRESS (their upload or unpack may go on), the rest SKIPPED."""
    started = time.monotonic()
    run = run_on_threads(agents, stage, parallel=parallel, name="relctl-stage",
                         stop=lambda result: result.failed)
    rows: list[StageResult] = []
    for i, agent in enumerate(agents):
        if i in run.results:
            rows.append(run.results[i])
        elif run.interrupted and i in run.started:
            rows.append(StageResult(agent, "", IN_PROGRESS, GOES_ON, reason=(
                "relctl was interrupted while it staged: its upload or unpack may go on "
                f"(relctl --agent {agent} operations)")))
        elif run.interrupted:
            rows.append(StageResult(agent, "", SKIPPED,
                                    reason="not staged: relctl was interrupted first"))
        else:  # never started: only a failure stops a run that was not interrupted
            failed = agents[run.stopped_by] if run.stopped_by is not None else "?"
            rows.append(StageResult(agent, "", SKIPPED, reason=(
                f"not staged: staging stopped after the failure on {failed}")))
    return Staging(version, parallel, tuple(rows), time.monotonic() - started,
                   interrupted=run.interrupted)


# --- talking to one agent -------------------------------------------------------------------

def stage_on(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str,
             spec: UpgradeSpec, *, progress: Progress) -> StageResult:
    """Put ``spec.version`` on the agent's node, unpacked: upload ``spec.tarball`` and Unpack
    it, unless the node has it already. Errors before the Unpack's end raise CliError."""
    assert spec.tarball is not None, "staging needs a tarball"
    started = time.monotonic()
    node, target = target_on(settings, stub, agent, spec.version)
    if target is not None and is_up_to_date([target], spec.version):
        return StageResult(agent, node, UP_TO_DATE, seconds=time.monotonic() - started,
                           reason=f"already runs {spec.version} (permanent)")
    status = STATUS_NAMES.get(target.status, "there") if target is not None else ""
    if target is not None and target.status == pb.RELEASE_STATUS_CURRENT:
        # It runs already: no bytes to compare with (it cannot be replaced); the switch
        # makes it permanent.
        progress.row("stage", "skip", f"{spec.version} is already current; the tarball is not "
                     "sent")
        return StageResult(agent, node, STAGED, seconds=time.monotonic() - started,
                           reason=f"{spec.version} already runs (current, not permanent)")
    sha256 = (spec.digest or file_digest(spec.tarball))[1]
    if (target is not None and not spec.replace and target.status == pb.RELEASE_STATUS_UNPACKED
            and target.sha256 == sha256):
        # Unpacked from these very bytes (the agent's record, e.g. by a run that stopped):
        # nothing to send; the switch checks the relup as it always does.
        progress.row("stage", "skip", f"{spec.version} is unpacked from these bytes already "
                     "(same sha256); the tarball is not sent")
        return StageResult(agent, node, STAGED, seconds=time.monotonic() - started,
                           reason=f"{spec.version} was already unpacked from this tarball (same "
                                  "sha256); nothing sent; not installed", removable=True)
    if target is not None and not spec.replace:
        # From an earlier run, by hand, or with no record of its bytes: the agent compares
        # its sha256 with the tarball's and checks the relup, changing nothing (dry run).
        check = upgrade_on(settings, stub, agent, UpgradeSpec(
            spec.version, spec.tarball, dry_run=True, digest=spec.digest,
            allow_config_reset=spec.allow_config_reset), progress=progress, up_to_date=False)
        return _staged_or_failed(agent, node, check, started, "dry_run",
                                 f"{spec.version} was already {status}, from this tarball "
                                 "(checked: same sha256); not installed")
    upload_id = upload(settings, stub, agent, settings.node, spec.version, spec.tarball,
                       progress=progress, digest=spec.digest)
    try:
        reply = stub.Unpack(pb.UnpackRequest(node=settings.node, version=spec.version,
                                             upload_id=upload_id, replace=spec.replace),
                            timeout=OPERATION_TIMEOUT)
    except grpc.RpcError as err:
        raise operation_error(agent, err, OPERATION_TIMEOUT, what="the unpack") from None
    for step in reply.operation.steps:
        progress.step(step)
    done = ("uploaded and unpacked, not installed" if target is None else
            f"uploaded and unpacked in place of the {spec.version} that was {status} "
            "(--replace), not installed")
    return _staged_or_failed(agent, node, reply.operation, started, "succeeded", done)


def _staged_or_failed(agent: str, node: str, op: pb.Operation, started: float, ok: str,
                      reason: str) -> StageResult:
    """STAGED when ``op`` ended ``ok``, else the row of its failure."""
    outcome = outcome_of(op)
    seconds = time.monotonic() - started
    if outcome == ok:
        return StageResult(agent, op.node or node, STAGED, seconds=seconds, operation_id=op.id,
                           uploaded=True, reason=reason, removable=True)
    return StageResult(agent, op.node or node, outcome, exit_code_for_outcome(outcome),
                       seconds, op.id, uploaded=True,
                       reason=op.error or f"staging ended {outcome}")
