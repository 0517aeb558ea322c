"""The `relctl` commands that read an agent's operation journal: `operations` (the list, newest
first; over every agent given, e.g. a whole --agents-file fleet, as one table with an AGENT
column) and `operation ID` (one of them with its steps, on one agent)."""

from __future__ import annotations

import click

from relctl.v1 import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from relctl.v1 import agent_pb2 as pb

from ..common import Settings, ask_agents, ask_one
from ..options import shared_options
from ..output import print_operation, print_operations, report
from ..status import ExitCode


@click.command()
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIST_LIMIT),
              default=DEFAULT_LIST_LIMIT, show_default=True,
              help="Operations per agent.")
@shared_options
@click.pass_obj
def operations(settings: Settings, limit: int) -> ExitCode:
    """The operation journal, newest first.

    With several agents (--agent ..., --agents-file), every agent's journal in one table with
    an AGENT column, newest first across the fleet. An agent that cannot be asked adds a line
    on stderr, and its code is the exit code (the others are still shown)."""
    request = pb.ListOperationsRequest(node=settings.node, limit=limit)
    if len(settings.agents) == 1:
        found = [(settings.agents[0], op)
                 for op in ask_one(settings, "ListOperations", request).operations]
        problems = []
    else:
        answers = ask_agents(settings, "ListOperations", request)
        problems = [a.problem for a in answers if a.problem is not None]
        found = [(a.agent, op) for a in answers if a.response is not None
                 for op in a.response.operations]
        # Newest first across agents: their ids are each agent's own, their times are not.
        found.sort(key=lambda pair: (pair[1].started_at.seconds, pair[1].started_at.nanos),
                   reverse=True)
    print_operations(settings, found, many=len(settings.agents) > 1)
    return report(problems)


@click.command()
@click.argument("op_id", metavar="ID", type=int)
@shared_options
@click.pass_obj
def operation(settings: Settings, op_id: int) -> ExitCode:
    """One operation of the journal, with its steps."""
    op = ask_one(settings, "GetOperation", pb.GetOperationRequest(id=op_id))
    print_operation(settings, op, steps=True)
    return ExitCode.OK
