"""The `relctl` commands that read an agent's operation journal: `operations` (the list, newest
first) and `operation ID` (one of them with its steps)."""

from __future__ import annotations

import json

import click

from relctl.v1 import agent_pb2 as pb

from ..common import Settings, ask_one, shared_options
from ..output import KIND_NAMES, local_time, operation_json, outcome_of, step_line, summary, table
from ..status import ExitCode


@click.command()
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@shared_options
@click.pass_obj
def operations(settings: Settings, limit: int) -> ExitCode:
    """The operation journal, newest first."""
    reply = ask_one(settings, "ListOperations",
                    pb.ListOperationsRequest(node=settings.node, limit=limit))
    if settings.output == "json":
        click.echo(json.dumps({"operations": [operation_json(o) for o in reply.operations]},
                              indent=2))
        return ExitCode.OK
    rows = [["ID", "NODE", "KIND", "FROM", "TO", "OUTCOME", "STARTED", "BY"]]
    for op in reply.operations:
        rows.append([str(op.id), op.node, KIND_NAMES.get(op.kind, "?"), op.from_version or "-",
                     op.to_version, outcome_of(op), local_time(op.started_at),
                     op.requested_by])
    if len(rows) > 1:
        click.echo(table(rows))
    return ExitCode.OK


@click.command()
@click.argument("op_id", metavar="ID", type=int)
@shared_options
@click.pass_obj
def operation(settings: Settings, op_id: int) -> ExitCode:
    """One operation of the journal, with its steps."""
    op = ask_one(settings, "GetOperation", pb.GetOperationRequest(id=op_id))
    if settings.output == "json":
        click.echo(json.dumps({"operation": operation_json(op)}, indent=2))
        return ExitCode.OK
    for step in op.steps:
        click.echo(step_line(step))
    click.echo(summary(op))
    return ExitCode.OK
