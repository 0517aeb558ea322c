"""`relctl` commands that change a node (upgrade, downgrade, the single steps) and the journal
commands (operations, operation). Registered on the group in agent/cli.py.

One agent per command here, except `upgrade` with several agents, which hands over to the
rolling upgrade of agent/cli_fleet.py (it reuses this module's per-agent upgrade).
"""

from __future__ import annotations

import json
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

from .cli import (
    _STATUS_NAMES,
    CliError,
    ExitCode,
    Settings,
    _shared_options,
    _table,
    cli,
    describe_rpc_error,
    open_channel,
)

CHUNK = 1024 * 1024
_OUTCOME_NAMES = {v: k.removeprefix("OUTCOME_").lower() for k, v in pb.Outcome.items()}
_KIND_NAMES = {v: k.removeprefix("OPERATION_KIND_").lower() for k, v in pb.OperationKind.items()}
_STATE_NAMES = {v: k.removeprefix("STEP_STATE_").lower() for k, v in pb.StepState.items()}
_CHANGE_NAMES = {v: k.removeprefix("CONFIG_CHANGE_KIND_").lower()
                 for k, v in pb.ConfigChangeKind.items()}
_OUTCOME_EXIT = {
    "succeeded": ExitCode.OK,
    "dry_run": ExitCode.OK,
    "failed_unchanged": ExitCode.FAILED,
    "rolled_back": ExitCode.ROLLED_BACK,
    "failed": ExitCode.FAILED_CHANGED,
    "interrupted": ExitCode.FAILED_CHANGED,
}
# Long enough for a big code_change; the agent enforces its own install timeout.
OPERATION_TIMEOUT = 3600.0


def _one_agent(settings: Settings) -> str:
    if len(settings.agents) != 1:
        raise CliError("this command acts on one agent; give exactly one --agent",
                       ExitCode.USAGE)
    return settings.agents[0]


def _stub(settings: Settings, agent: str) -> tuple[grpc.Channel, agent_pb2_grpc.AgentStub]:
    channel = open_channel(settings, agent)
    return channel, agent_pb2_grpc.AgentStub(channel)


def _rpc_error(agent: str, err: grpc.RpcError, timeout: float) -> CliError:
    problem = describe_rpc_error(agent, err, timeout)
    code = problem.code
    if isinstance(err, grpc.Call) and err.code() == grpc.StatusCode.ABORTED:
        code = ExitCode.BUSY
    return CliError(problem.message, code)


# --- values as JSON and text ------------------------------------------------------------

def _ts(ts: Any) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def step_json(step: pb.Step) -> dict[str, Any]:
    return {"name": step.name, "state": _STATE_NAMES.get(step.state, "?"),
            "started_at": _ts(step.started_at),
            "duration_ms": round(step.duration.ToNanoseconds() / 1e6, 3)
            if step.HasField("duration") else None,
            "detail": step.detail}


def operation_json(op: pb.Operation) -> dict[str, Any]:
    return {"id": op.id, "node": op.node, "kind": _KIND_NAMES.get(op.kind, "?"),
            "from_version": op.from_version, "to_version": op.to_version,
            "requested_by": op.requested_by, "started_at": _ts(op.started_at),
            "finished_at": _ts(op.finished_at), "outcome": _OUTCOME_NAMES.get(op.outcome, "?"),
            "error": op.error, "steps": [step_json(s) for s in op.steps],
            "releases_after": [{"name": r.name, "version": r.version,
                                "status": _STATUS_NAMES.get(r.status, "?")}
                               for r in op.releases_after],
            "config_changes": [change_json(c) for c in op.config_changes]}


def change_json(change: pb.ConfigChange) -> dict[str, Any]:
    out: dict[str, Any] = {"application": change.application, "key": change.key,
                           "change": _CHANGE_NAMES.get(change.kind, "?")}
    if change.old_value or change.new_value:
        out.update(old_value=change.old_value or None, new_value=change.new_value or None)
    return out


def _changes_table(changes: Any) -> str:
    with_values = any(c.old_value or c.new_value for c in changes)
    rows = [["APPLICATION", "KEY", "CHANGE"] + (["OLD", "NEW"] if with_values else [])]
    for c in changes:
        row = [c.application, c.key, _CHANGE_NAMES.get(c.kind, "?")]
        if with_values:
            row += [c.old_value or "-", c.new_value or "-"]
        rows.append(row)
    table = _table(rows)
    return table if with_values else table + "\n(values hidden: they may be secrets; " \
                                              "--show-values prints them)"


def _duration_text(step: pb.Step) -> str:
    if not step.HasField("duration"):
        return ""
    ms = step.duration.ToNanoseconds() / 1e6
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1e3:.1f} s"


def _step_line(step: pb.Step) -> str:
    state = _STATE_NAMES.get(step.state, "?")
    mark = {"succeeded": "ok", "failed": "FAILED", "skipped": "skip"}.get(state, state)
    return f"  {step.name:<22} {mark:<6} {_duration_text(step):>9}  {step.detail}".rstrip()


def _summary(op: pb.Operation) -> str:
    outcome = _OUTCOME_NAMES.get(op.outcome, "?")
    kind = _KIND_NAMES.get(op.kind, "?")
    what = (f"reload-config of {op.to_version} on {op.node}"
            if op.kind == pb.OPERATION_KIND_RELOAD_CONFIG else f"{kind} {op.to_version} on {op.node}")
    words = {"succeeded": "done", "dry_run": "dry run: checks passed, nothing changed",
             "failed_unchanged": "FAILED, node unchanged",
             "rolled_back": "FAILED, rolled back", "failed": "FAILED",
             "interrupted": "INTERRUPTED"}.get(outcome, outcome)
    lines = [f"{what}: {words} (operation {op.id})"]
    if op.error:
        lines.append(f"  {op.error}")
    if op.config_changes:
        lines.append(_changes_table(op.config_changes))
    elif op.kind == pb.OPERATION_KIND_RELOAD_CONFIG and outcome in ("succeeded", "dry_run"):
        lines.append("no configuration changes")
    if op.releases_after and op.kind != pb.OPERATION_KIND_RELOAD_CONFIG:
        rows = [["RELEASE", "VERSION", "STATUS"]] + [
            [r.name, r.version, _STATUS_NAMES.get(r.status, "?")] for r in op.releases_after]
        lines.append(_table(rows))
    return "\n".join(lines)


def _finish_operation(settings: Settings, op: pb.Operation) -> None:
    if settings.output == "json":
        click.echo(json.dumps({"operation": operation_json(op)}, indent=2))
    else:
        click.echo(_summary(op))
    code = _OUTCOME_EXIT.get(_OUTCOME_NAMES.get(op.outcome, ""), ExitCode.FAILED_CHANGED)
    raise SystemExit(code)


# --- upload -----------------------------------------------------------------------------

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
                hidden=not show) as bar:
            while chunk := f.read(CHUNK):
                yield pb.UploadRequest(chunk=chunk)
                bar.update(len(chunk))

    started = time.perf_counter()
    try:
        reply = stub.Upload(parts(), timeout=max(settings.timeout, OPERATION_TIMEOUT))
    except grpc.RpcError as err:
        raise _rpc_error(agent, err, settings.timeout) from None
    if settings.output == "text":
        say(f"  {'upload':<22} {'ok':<6} {(time.perf_counter() - started) * 1e3:>6.0f} ms"
            f"  {reply.release_name} {reply.version}, {reply.size} bytes, "
            f"sha256 {reply.sha256[:12]}...")
    return str(reply.upload_id)


# --- commands ---------------------------------------------------------------------------

def _follow(settings: Settings, agent: str, events: Iterator[pb.ProgressEvent], *,
            say: Callable[[str], None] = click.echo) -> pb.Operation:
    op_id = 0
    try:
        for event in events:
            op_id = event.operation_id
            if event.HasField("finished"):
                return event.finished
            if event.HasField("step") and settings.output == "text":
                state = _STATE_NAMES.get(event.step.state, "")
                if state != "running":
                    say(_step_line(event.step))
    except grpc.RpcError as err:
        raise _rpc_error(agent, err, settings.timeout) from None
    except KeyboardInterrupt:
        raise CliError(f"stopped following; operation {op_id} goes on on the agent "
                       f"(relctl operation {op_id})", ExitCode.FAILED) from None
    raise CliError(f"the agent ended the stream before operation {op_id} finished; "
                   f"see relctl operation {op_id}", ExitCode.FAILED_CHANGED)


def _streamed(settings: Settings, call: Callable[[agent_pb2_grpc.AgentStub, str], Any]) -> None:
    agent = _one_agent(settings)
    channel, stub = _stub(settings, agent)
    with channel:
        op = _follow(settings, agent, call(stub, agent))
    _finish_operation(settings, op)


def _ask_one(settings: Settings, method: str, request: Any, timeout: float | None = None) -> Any:
    """One unary RPC to the one agent; errors become CliError."""
    agent = _one_agent(settings)
    channel, stub = _stub(settings, agent)
    with channel:
        try:
            return getattr(stub, method)(request, timeout=timeout or settings.timeout)
        except grpc.RpcError as err:
            raise _rpc_error(agent, err, settings.timeout) from None


def _unary(settings: Settings, method: str, request: Any) -> None:
    reply = _ask_one(settings, method, request, OPERATION_TIMEOUT)
    if settings.output == "text":
        for step in reply.operation.steps:
            click.echo(_step_line(step))
    _finish_operation(settings, reply.operation)


def _seconds(value: float | None) -> Any:
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
        health_timeout=_seconds(spec.health_timeout),
        install_timeout=_seconds(spec.install_timeout)), timeout=OPERATION_TIMEOUT)
    return _follow(settings, agent, events, say=say)


@cli.command()
@click.argument("version")
@click.option("--tarball", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Release tarball to upload first (not needed for an unpacked or old release).")
@click.option("--no-permanent", is_flag=True, help="Install but do not make permanent.")
@click.option("--dry-run", is_flag=True, help="Stop after check_install_release; change nothing.")
@click.option("--health-timeout", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Soak time of the health probes (default: the agent's config).")
@click.option("--install-timeout", type=click.FloatRange(min=1), default=None, metavar="S",
              help="Time limit of install_release (default: the agent's config).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="With several agents: how many agents upgrade at once.")
@click.option("--max-failures", type=click.IntRange(min=0), default=0, show_default=True,
              metavar="K", help="With several agents: stop before the next batch once more "
                                "than K agents failed.")
@_shared_options
@click.pass_obj
def upgrade(settings: Settings, version: str, tarball: Path | None, no_permanent: bool,
            dry_run: bool, health_timeout: float | None, install_timeout: float | None,
            batch: int, max_failures: int) -> None:
    """Upgrade the node to VERSION live: upload, unpack, check, install, verify, make permanent.

    With several --agent options it is a rolling upgrade: --batch agents at a time, in the
    order given, each upgrading its node (the --node given, else its only node); a node that
    already runs VERSION as permanent is left alone (up_to_date). After each batch, if more
    than --max-failures agents failed (any result but succeeded, dry_run or up_to_date, so
    also an agent that could not be reached or refused), the rollout stops and the agents of
    later batches are reported as skipped. It ends with one row per agent; the exit code is
    the worst row's, in this order: 6, 5, 1, 3, 8, 7, 4, 2 (0 when none failed).
    """
    spec = UpgradeSpec(version, tarball, no_permanent, dry_run, health_timeout, install_timeout)
    if len(settings.agents) > 1:
        from .cli_fleet import fleet_upgrade  # here: cli_fleet builds on this module

        fleet_upgrade(settings, spec, batch=batch, max_failures=max_failures)
    agent = _one_agent(settings)
    channel, stub = _stub(settings, agent)
    with channel:
        op = upgrade_on(settings, stub, agent, spec)
    _finish_operation(settings, op)


@cli.command()
@click.argument("version")
@click.option("--no-permanent", is_flag=True, help="Install but do not make permanent.")
@click.option("--dry-run", is_flag=True, help="Stop after check_install_release; change nothing.")
@_shared_options
@click.pass_obj
def downgrade(settings: Settings, version: str, no_permanent: bool, dry_run: bool) -> None:
    """Go back to an old VERSION through the running release's relup (its down script)."""
    _streamed(settings, lambda stub, agent: stub.Downgrade(pb.DowngradeRequest(
        node=settings.node, version=version, no_permanent=no_permanent), timeout=OPERATION_TIMEOUT))


@cli.command("reload-config")
@click.option("--dry-run", is_flag=True, help="Show what would change; apply nothing.")
@click.option("--show-values", is_flag=True,
              help="Print old and new values too (they may be secrets; keys only by default).")
@_shared_options
@click.pass_obj
def reload_config(settings: Settings, dry_run: bool, show_values: bool) -> None:
    """Re-read the running release's sys.config and apply what changed, calling each
    application's config_change/3, as a release upgrade does."""
    _streamed(settings, lambda stub, agent: stub.ReloadConfig(pb.ReloadConfigRequest(
        node=settings.node, dry_run=dry_run, show_values=show_values), timeout=OPERATION_TIMEOUT))


@cli.command()
@click.argument("version")
@click.option("--tarball", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_shared_options
@click.pass_obj
def unpack(settings: Settings, version: str, tarball: Path) -> None:
    """Upload and unpack VERSION ahead of time (the upgrade then takes milliseconds)."""
    agent = _one_agent(settings)
    channel, stub = _stub(settings, agent)
    with channel:
        upload_id = upload(settings, stub, agent, settings.node, version, tarball)
    _unary(settings, "Unpack", pb.UnpackRequest(node=settings.node, version=version,
                                                upload_id=upload_id))


@cli.command()
@click.argument("version")
@_shared_options
@click.pass_obj
def install(settings: Settings, version: str) -> None:
    """Install an unpacked VERSION (not made permanent)."""
    _unary(settings, "Install", pb.InstallRequest(node=settings.node, version=version))


@cli.command("make-permanent")
@click.argument("version")
@_shared_options
@click.pass_obj
def make_permanent(settings: Settings, version: str) -> None:
    """Make the running VERSION the one the node boots."""
    _unary(settings, "MakePermanent", pb.MakePermanentRequest(node=settings.node, version=version))


@cli.command()
@click.argument("version")
@_shared_options
@click.pass_obj
def remove(settings: Settings, version: str) -> None:
    """Remove an old or unpacked VERSION (never the running or permanent one)."""
    _unary(settings, "Remove", pb.RemoveRequest(node=settings.node, version=version))


@cli.command()
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@_shared_options
@click.pass_obj
def operations(settings: Settings, limit: int) -> None:
    """The operation journal, newest first."""
    reply = _ask_one(settings, "ListOperations",
                     pb.ListOperationsRequest(node=settings.node, limit=limit))
    if settings.output == "json":
        click.echo(json.dumps({"operations": [operation_json(o) for o in reply.operations]},
                              indent=2))
        return
    from datetime import datetime  # here, not at start-up: only this table needs it

    rows = [["ID", "NODE", "KIND", "FROM", "TO", "OUTCOME", "STARTED", "BY"]]
    for op in reply.operations:
        started = datetime.fromtimestamp(op.started_at.seconds).strftime("%Y-%m-%d %H:%M:%S")
        rows.append([str(op.id), op.node, _KIND_NAMES.get(op.kind, "?"), op.from_version or "-",
                     op.to_version, _OUTCOME_NAMES.get(op.outcome, "?"), started,
                     op.requested_by])
    if len(rows) > 1:
        click.echo(_table(rows))


@cli.command()
@click.argument("op_id", metavar="ID", type=int)
@_shared_options
@click.pass_obj
def operation(settings: Settings, op_id: int) -> None:
    """One operation of the journal, with its steps."""
    op = _ask_one(settings, "GetOperation", pb.GetOperationRequest(id=op_id))
    if settings.output == "json":
        click.echo(json.dumps({"operation": operation_json(op)}, indent=2))
        return
    for step in op.steps:
        click.echo(_step_line(step))
    click.echo(_summary(op))
