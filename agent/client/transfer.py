"""Moving a release to an agent and watching the agent work on it: the tarball's digest and its
chunked upload (with a progress bar on a terminal), the progress stream of an operation, and one
agent's upgrade (ask, upload if needed, then follow), which `relctl upgrade` and a rollout over
several agents (:mod:`agent.client.fleet`) both run.

What they print goes through a :class:`~agent.client.output.Progress`, so that a rollout can
put the agent's name in front of each line; errors before the operation's end are
:class:`CliError`. No click and no dataclasses: `relctl upgrade` runs without either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from .common import (
    AGENT_RETURN_WAIT,
    OPERATION_TIMEOUT,
    Settings,
    connection_lost,
    operation_error,
    rpc_error,
    upload_error,
)
from .output import STATE_NAMES, Progress
from .status import GOES_ON, CliError, ExitCode

if TYPE_CHECKING:
    from pathlib import Path  # at run time only with a tarball: the caller's

CHUNK = 1024 * 1024


def file_digest(path: Path) -> tuple[int, str]:
    """(size, sha256 hex) of ``path``; CliError when it cannot be read."""
    import hashlib  # here, not at start-up: only uploads need it

    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", ExitCode.USAGE) from None
    return size, digest.hexdigest()


def upload(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str, node: str,
           version: str, tarball: Path, *, progress: Progress,
           digest: tuple[int, str] | None = None) -> str:
    """Stream ``tarball`` to the agent; return its upload id. ``progress`` shows the bar (if
    it may) and the upload's row; ``digest`` is the tarball's :func:`file_digest` when the
    caller has it already."""
    size, sha = digest or file_digest(tarball)

    def parts() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(node=node, version=version, size=size,
                                                      sha256=sha, file_name=tarball.name))
        with open(tarball, "rb") as f, progress.bar(size, f"uploading {tarball.name}") as sent:
            while chunk := f.read(CHUNK):
                yield pb.UploadRequest(chunk=chunk)
                sent(len(chunk))

    started = time.perf_counter()
    limit = max(settings.timeout, OPERATION_TIMEOUT)
    try:
        reply = stub.Upload(parts(), timeout=limit)
    except grpc.RpcError as err:
        raise upload_error(agent, err, limit, tarball.name) from None
    progress.row("upload", "ok", f"{reply.release_name} {reply.version}, {reply.size} bytes, "
                 f"sha256 {reply.sha256[:12]}...", (time.perf_counter() - started) * 1e3)
    return str(reply.upload_id)


# How often relctl asks a returning agent about the operation it follows.
POLL_INTERVAL = 1.0


def _step_key(step: pb.Step) -> tuple[str, int, int]:
    return step.name, step.started_at.seconds, step.started_at.nanos


def follow(settings: Settings, agent: str, events: Iterator[pb.ProgressEvent], *,
           progress: Progress | None = None, what: str = "the operation",
           stub: agent_pb2_grpc.AgentStub | None = None) -> pb.Operation:
    """Show the steps of an operation's progress stream as they end (``progress``, default:
    this process's); the finished operation. ``what`` names it in errors ("the upgrade").
    With ``stub``, a stream the agent cut (it stopped or restarted) is not the end: relctl
    waits for the agent to answer again and follows the operation through GetOperation
    (:func:`follow_returning_agent`)."""
    progress = progress or Progress(settings)
    op_id = 0
    shown: set[tuple[str, int, int]] = set()
    try:
        for event in events:
            op_id = event.operation_id or op_id
            if event.HasField("finished"):
                return event.finished
            if event.HasField("step") and STATE_NAMES.get(event.step.state, "") != "running":
                shown.add(_step_key(event.step))
                progress.step(event.step)
    except grpc.RpcError as err:
        if stub is not None and op_id and connection_lost(err):
            return follow_returning_agent(settings, stub, agent, op_id, err, shown,
                                          progress=progress, what=what)
        raise operation_error(agent, err, OPERATION_TIMEOUT, op_id=op_id, what=what) from None
    except KeyboardInterrupt:
        if not op_id:
            raise CliError(f"stopped before the agent named {what}; it may have started and go "
                           "on on the agent (relctl operations lists it)",
                           ExitCode.INTERRUPTED) from None
        raise CliError(f"stopped following; operation {op_id} goes on on the agent "
                       f"(relctl operation {op_id})", ExitCode.INTERRUPTED) from None
    raise CliError(f"the agent ended the stream before operation {op_id} finished; "
                   f"see relctl operation {op_id}", GOES_ON)


def agent_return_wait() -> float:
    """:data:`AGENT_RETURN_WAIT`, or RELCTL_AGENT_RETURN_WAIT when it is a number of seconds."""
    given = os.environ.get("RELCTL_AGENT_RETURN_WAIT", "")
    try:
        return max(float(given), 0.0) if given else AGENT_RETURN_WAIT
    except ValueError:
        raise CliError(f"RELCTL_AGENT_RETURN_WAIT={given!r} is not a number of seconds",
                       ExitCode.USAGE) from None


def follow_returning_agent(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str,
                           op_id: int, lost: grpc.RpcError, shown: set[tuple[str, int, int]],
                           *, progress: Progress, what: str = "the operation") -> pb.Operation:
    """After the stream of operation ``op_id`` broke: wait (bounded) for the agent to answer
    again, then poll the operation until it ends, printing the steps not ``shown`` yet. The
    finished operation; CliError (exit 6, with how to see the outcome later) when the agent
    does not come back in time."""
    wait = agent_return_wait()
    reason = (lost.details() if isinstance(lost, grpc.Call) else "") or "connection lost"
    progress.note(f"lost the connection to agent {agent} during {what} ({reason}); operation {op_id} "
         f"goes on there: waiting up to {wait:g} s for the agent to answer again")
    started = time.monotonic()
    answered = False
    while True:
        try:
            op: pb.Operation = stub.GetOperation(pb.GetOperationRequest(id=op_id),
                                   timeout=min(settings.timeout, 5.0))
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # The agent answers, but not with the operation (its token or role changed,
                # or it lost the journal): the operation may still go on.
                raise operation_error(agent, err, settings.timeout, op_id=op_id,
                                      what=what) from None
            if not answered and time.monotonic() - started >= wait:
                raise CliError(
                    f"agent {agent} did not answer within {wait:g} s after it went away during "
                    f"{what}; operation {op_id} may go on without relctl; once the agent "
                    f"answers again, see how it ended: relctl operation {op_id}",
                    GOES_ON) from None
            if answered and time.monotonic() - started >= OPERATION_TIMEOUT:
                raise operation_error(agent, err, OPERATION_TIMEOUT, op_id=op_id,
                                      what=what) from None
            time.sleep(POLL_INTERVAL)
            continue
        if not answered:
            answered = True
            progress.note(f"agent {agent} answers again after {time.monotonic() - started:.0f} s; "
                 f"following operation {op_id}")
        for step in op.steps:
            if STATE_NAMES.get(step.state, "") != "running" and _step_key(step) not in shown:
                shown.add(_step_key(step))
                progress.step(step)
        if op.outcome != pb.OUTCOME_RUNNING:
            return op
        time.sleep(POLL_INTERVAL)


def durations(**given: float | None) -> dict[str, Any]:
    """The Duration fields of a request, only those given: an absent field is "the agent's
    config", a present one its value, 0 included (`--health-soak 0`: no soak), so None must
    not become an empty Duration (that is present, and 0)."""
    from google.protobuf.duration_pb2 import Duration

    fields: dict[str, Any] = {}
    for name, value in given.items():
        if value is not None:
            fields[name] = d = Duration()
            d.FromNanoseconds(round(value * 1e9))
    return fields


class UpgradeSpec(NamedTuple):
    """What `relctl upgrade` asks of every agent it talks to."""

    version: str
    tarball: Path | None = None
    no_permanent: bool = False
    dry_run: bool = False
    health_soak: float | None = None
    install_timeout: float | None = None
    digest: tuple[int, str] | None = None  # file_digest(tarball), read once for every agent
    allow_config_reset: bool = False
    replace: bool = False  # replace VERSION already on the node from other bytes (--replace)
    allow_purge_kill: bool = False  # processes on old code are killed and reported


def is_up_to_date(releases: Iterable[pb.Release], version: str) -> bool:
    """Whether a node with ``releases`` runs ``version`` as permanent: then an upgrade to it
    has nothing to do (the agent's engine applies the same rule and answers ``up_to_date``)."""
    return any(r.version == version and r.running and r.status == pb.RELEASE_STATUS_PERMANENT
               for r in releases)


# The statuses of a release the node has on disk and can install again without a tarball.
_ON_DISK = (pb.RELEASE_STATUS_UNPACKED, pb.RELEASE_STATUS_OLD)


def present_sha256(releases: Iterable[pb.Release], version: str) -> str:
    """The sha256 of the tarball the agent unpacked ``version`` from, when the node has that
    release unpacked or old (installed before, no longer running); "" otherwise."""
    return next((r.sha256 for r in releases
                 if r.version == version and r.status in _ON_DISK), "")


def target_on(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str, version: str
              ) -> tuple[str, pb.Release | None]:
    """The node the agent would act on ("" when it manages several and no --node was given:
    the agent refuses the next call with its own message) and ``version`` as that node lists
    it (None: not there)."""
    try:
        reply = stub.GetReleases(pb.GetReleasesRequest(node=settings.node),
                                 timeout=settings.timeout)
    except grpc.RpcError as err:
        raise rpc_error(agent, err, settings.timeout) from None
    if len(reply.nodes) != 1:
        return settings.node, None
    node = reply.nodes[0]
    return node.node, next((r for r in node.releases if r.version == version), None)


def target_node(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str,
                version: str) -> tuple[str, bool, str]:
    """The node the agent would upgrade (see :func:`target_on`), whether it is
    :func:`is_up_to_date` already, and :func:`present_sha256`; one GetReleases call."""
    node, release = target_on(settings, stub, agent, version)
    if release is None:
        return node, False, ""  # not there, or several nodes: the Upgrade call names it
    return node, is_up_to_date([release], version), present_sha256([release], version)


def upgrade_on(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str,
               spec: UpgradeSpec, *, progress: Progress | None = None,
               up_to_date: bool | None = None) -> pb.Operation:
    """One agent's upgrade: upload the tarball (if any, and unless the node is up to date),
    then follow the Upgrade stream to the finished operation. ``up_to_date``: the caller's
    :func:`target_node` answer; None asks the agent here, before any byte is sent. Errors
    before the operation's end raise CliError."""
    progress = progress or Progress(settings)
    upload_id = ""
    recorded = ""
    if spec.tarball is not None and up_to_date is None:
        _, up_to_date, recorded = target_node(settings, stub, agent, spec.version)
    if spec.tarball is None:
        pass
    elif up_to_date:
        # Asked before sending: a rerun sends nothing, and the Upgrade call without an
        # upload lets the agent journal it as up_to_date.
        progress.row("upload", "skip", f"{spec.version} already runs and is permanent; the "
                     "tarball was not sent")
    elif (recorded and not spec.replace
          and recorded == (spec.digest or file_digest(spec.tarball))[1]):
        # On the node from these very bytes (the agent's record), unpacked or old: the
        # Upgrade call without an upload goes on from the release the node has.
        progress.row("upload", "skip", f"{spec.version} is on the node from these bytes "
                     "already (same sha256); the tarball was not sent")
    else:
        upload_id = upload(settings, stub, agent, settings.node, spec.version, spec.tarball,
                           progress=progress, digest=spec.digest)
    events = stub.Upgrade(pb.UpgradeRequest(
        node=settings.node, version=spec.version, upload_id=upload_id,
        no_permanent=spec.no_permanent, dry_run=spec.dry_run,
        **durations(health_soak=spec.health_soak, install_timeout=spec.install_timeout),
        allow_config_reset=spec.allow_config_reset, replace=spec.replace,
        allow_purge_kill=spec.allow_purge_kill),
        timeout=OPERATION_TIMEOUT)
    return follow(settings, agent, events, progress=progress, what="the upgrade", stub=stub)
