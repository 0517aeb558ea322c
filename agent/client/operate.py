"""What the `relctl` commands that change a node do: `upgrade` (one agent, or a rollout over
several), `downgrade`, `reload-config` and the single steps `unpack`, `install`,
`make-permanent`, `remove`. Each returns the exit code of the operation's outcome.

Click-free: the click commands (:mod:`agent.client.commands.ops`) and the click-free reader of
the common command lines (:mod:`agent.client.fastpath`: `upgrade`, `downgrade`) both call these
with the same arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from .common import OPERATION_TIMEOUT, Settings, connect, one_agent, run_operation
from .output import Progress, outcome_of, print_operation
from .status import ExitCode, exit_code_for_outcome
from .transfer import UpgradeSpec, durations, follow, upgrade_on, upload

if TYPE_CHECKING:
    from pathlib import Path  # at run time only with a tarball: the caller's


def _finished(settings: Settings, op: pb.Operation) -> ExitCode:
    print_operation(settings, op)
    return exit_code_for_outcome(outcome_of(op))


def _streamed(settings: Settings, what: str,
              call: Callable[[agent_pb2_grpc.AgentStub], Iterator[pb.ProgressEvent]]
              ) -> ExitCode:
    """Run an operation that streams its progress, on the one agent."""
    agent = one_agent(settings)
    with connect(settings, agent) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        op = follow(settings, agent, call(stub), what=what, stub=stub)
    return _finished(settings, op)


def _unary(settings: Settings, method: str, request: Any, what: str) -> ExitCode:
    """Run a single step, which answers with the finished operation."""
    reply = run_operation(settings, method, request, what)
    progress = Progress(settings)
    for step in reply.operation.steps:
        progress.step(step)
    return _finished(settings, reply.operation)


def upgrade(settings: Settings, version: str, tarball: Path | None, no_permanent: bool,
            dry_run: bool, health_soak: float | None, install_timeout: float | None,
            batch: int, max_failures: int, stage_parallel: int | None,
            no_prestage: bool, allow_config_reset: bool, replace: bool,
            allow_purge_kill: bool) -> ExitCode:
    """`relctl upgrade`: one agent's, or a rollout with several (:mod:`agent.client.fleet`)."""
    spec = UpgradeSpec(version, tarball, no_permanent, dry_run, health_soak, install_timeout,
                       allow_config_reset=allow_config_reset, replace=replace,
                       allow_purge_kill=allow_purge_kill)
    if len(settings.agents) > 1:
        from .fleet import fleet_upgrade  # here: a single-agent upgrade needs none of it

        return fleet_upgrade(settings, spec, batch=batch, max_failures=max_failures,
                             prestage=not no_prestage, stage_parallel=stage_parallel)
    agent = one_agent(settings)
    with connect(settings, agent) as channel:
        op = upgrade_on(settings, agent_pb2_grpc.AgentStub(channel), agent, spec)
    return _finished(settings, op)


def downgrade(settings: Settings, version: str, no_permanent: bool, dry_run: bool,
              allow_config_reset: bool, allow_purge_kill: bool,
              install_timeout: float | None) -> ExitCode:
    """`relctl downgrade`: through the running release's relup, followed to its end."""
    return _streamed(settings, "the downgrade", lambda stub: stub.Downgrade(pb.DowngradeRequest(
        node=settings.node, version=version, no_permanent=no_permanent, dry_run=dry_run,
        allow_config_reset=allow_config_reset, allow_purge_kill=allow_purge_kill,
        **durations(install_timeout=install_timeout)),
        timeout=OPERATION_TIMEOUT))


def reload_config(settings: Settings, dry_run: bool, show_values: bool) -> ExitCode:
    """`relctl reload-config`, followed to its end."""
    return _streamed(settings, "the config reload", lambda stub: stub.ReloadConfig(
        pb.ReloadConfigRequest(node=settings.node, dry_run=dry_run, show_values=show_values),
        timeout=OPERATION_TIMEOUT))


def unpack(settings: Settings, version: str, tarball: Path, replace: bool) -> ExitCode:
    """`relctl unpack`: upload, then the Unpack step."""
    agent = one_agent(settings)
    with connect(settings, agent) as channel:
        upload_id = upload(settings, agent_pb2_grpc.AgentStub(channel), agent, settings.node,
                           version, tarball, progress=Progress(settings))
    return _unary(settings, "Unpack", pb.UnpackRequest(node=settings.node, version=version,
                                                       upload_id=upload_id, replace=replace),
                  "the unpack")


def install(settings: Settings, version: str, install_timeout: float | None) -> ExitCode:
    return _unary(settings, "Install", pb.InstallRequest(
        node=settings.node, version=version, **durations(install_timeout=install_timeout)),
        "the install")


def make_permanent(settings: Settings, version: str) -> ExitCode:
    return _unary(settings, "MakePermanent",
                  pb.MakePermanentRequest(node=settings.node, version=version),
                  "make-permanent")


def remove(settings: Settings, version: str) -> ExitCode:
    return _unary(settings, "Remove", pb.RemoveRequest(node=settings.node, version=version),
                  "the remove")
