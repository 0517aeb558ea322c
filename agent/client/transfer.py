"""Moving a release to an agent and watching the agent work on it: the tarball's digest and its
chunked upload (with a progress bar on a terminal), the progress stream of an operation, and one
agent's upgrade (upload, then follow), which `relctl upgrade` and a rollout over several agents
(:mod:`agent.client.fleet`) both run.

Text goes through a ``say`` callable so that a rollout can put the agent's name in front of
each line; errors before the operation's end are :class:`CliError`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import grpc

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from .common import OPERATION_TIMEOUT, Settings, connection_lost, operation_error, rpc_error
from .output import STATE_NAMES, step_line
from .status import CliError, ExitCode

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
           version: str, tarball: Path, *, say: Callable[[str], None] = click.echo,
           bar: bool = True, digest: tuple[int, str] | None = None) -> str:
    """Stream ``tarball`` to the agent; return its upload id. Text output goes through ``say``;
    ``bar=False`` hides the progress bar (concurrent uploads would garble it); ``digest`` is
    the tarball's :func:`file_digest` when the caller has it already."""
    size, sha = digest or file_digest(tarball)
    show = bar and settings.output == "text" and sys.stderr.isatty()

    def parts() -> Iterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(node=node, version=version, size=size,
                                                      sha256=sha, file_name=tarball.name))
        with open(tarball, "rb") as f, click.progressbar(
                length=size, label=f"uploading {tarball.name}", file=sys.stderr,
                hidden=not show) as progress:
            while chunk := f.read(CHUNK):
                yield pb.UploadRequest(chunk=chunk)
                progress.update(len(chunk))

    started = time.perf_counter()
    limit = max(settings.timeout, OPERATION_TIMEOUT)
    try:
        reply = stub.Upload(parts(), timeout=limit)
    except grpc.RpcError as err:
        if connection_lost(err):
            raise CliError(f"lost the connection to agent {agent} during the upload of "
                           f"{tarball.name} ({err.details() if isinstance(err, grpc.Call) else err}"
                           "); no operation started: once the agent answers again, run the "
                           "command again", ExitCode.UNAVAILABLE) from None
        raise rpc_error(agent, err, limit) from None
    if settings.output == "text":
        say(f"  {'upload':<22} {'ok':<6} {(time.perf_counter() - started) * 1e3:>6.0f} ms"
            f"  {reply.release_name} {reply.version}, {reply.size} bytes, "
            f"sha256 {reply.sha256[:12]}...")
    return str(reply.upload_id)


def follow(settings: Settings, agent: str, events: Iterator[pb.ProgressEvent], *,
           say: Callable[[str], None] = click.echo, what: str = "the operation") -> pb.Operation:
    """Print the steps of an operation's progress stream as they end; the finished
    operation. ``what`` names it in errors ("the upgrade")."""
    op_id = 0
    try:
        for event in events:
            op_id = event.operation_id
            if event.HasField("finished"):
                return event.finished
            if event.HasField("step") and settings.output == "text":
                if STATE_NAMES.get(event.step.state, "") != "running":
                    say(step_line(event.step))
    except grpc.RpcError as err:
        raise operation_error(agent, err, OPERATION_TIMEOUT, op_id=op_id, what=what) from None
    except KeyboardInterrupt:
        raise CliError(f"stopped following; operation {op_id} goes on on the agent "
                       f"(relctl operation {op_id})", ExitCode.FAILED) from None
    raise CliError(f"the agent ended the stream before operation {op_id} finished; "
                   f"see relctl operation {op_id}", ExitCode.FAILED_CHANGED)


def _duration(value: float | None) -> Any:
    from google.protobuf.duration_pb2 import Duration

    d = Duration()
    if value:
        d.FromNanoseconds(int(value * 1e9))
    return d


@dataclass(frozen=True)
class UpgradeSpec:
    """What `relctl upgrade` asks of every agent it talks to."""

    version: str
    tarball: Path | None = None
    no_permanent: bool = False
    dry_run: bool = False
    health_timeout: float | None = None
    install_timeout: float | None = None
    digest: tuple[int, str] | None = None  # file_digest(tarball), read once for every agent


def upgrade_on(settings: Settings, stub: agent_pb2_grpc.AgentStub, agent: str,
               spec: UpgradeSpec, *, say: Callable[[str], None] = click.echo,
               bar: bool = True) -> pb.Operation:
    """One agent's upgrade: upload the tarball (if any), then follow the Upgrade stream to the
    finished operation. Errors before the operation's end raise CliError."""
    upload_id = (upload(settings, stub, agent, settings.node, spec.version, spec.tarball,
                        say=say, bar=bar, digest=spec.digest) if spec.tarball else "")
    events = stub.Upgrade(pb.UpgradeRequest(
        node=settings.node, version=spec.version, upload_id=upload_id,
        no_permanent=spec.no_permanent, dry_run=spec.dry_run,
        health_timeout=_duration(spec.health_timeout),
        install_timeout=_duration(spec.install_timeout)), timeout=OPERATION_TIMEOUT)
    return follow(settings, agent, events, say=say, what="the upgrade")
