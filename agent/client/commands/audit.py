"""`relctl audit`: the agent's audit trail (operator role), newest first."""

from __future__ import annotations

import json
from typing import Any

import click

from relctl.v1 import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from relctl.v1 import agent_pb2 as pb

from ..common import Settings, ask_agents, ask_one
from ..options import shared_options
from ..output import emit, local_time, report, table, timestamp
from ..status import ExitCode


def record_json(record: pb.AuditRecord) -> dict[str, Any]:
    """One audit record as `relctl audit -o json` prints it."""
    try:
        arguments = json.loads(record.arguments) if record.arguments else {}
    except ValueError:  # not JSON: shown as the agent sent it
        arguments = record.arguments
    return {"time": timestamp(record.time), "peer": record.peer, "identity": record.identity,
            "certificate": record.certificate or None, "rpc": record.rpc,
            "node": record.node or None, "arguments": arguments, "result": record.result,
            "detail": record.detail, "operation_id": record.operation_id or None}


@click.command()
@click.option("--limit", type=click.IntRange(min=1, max=MAX_LIST_LIMIT),
              default=DEFAULT_LIST_LIMIT, show_default=True,
              help="Records per agent.")
@shared_options
@click.pass_obj
def audit(settings: Settings, limit: int) -> ExitCode:
    """The audit trail: every mutating call and every refused call, who made it, from where,
    and its result (needs the operator role). With several agents (--agent ...,
    --agents-file), every agent's in one table with an AGENT column, newest first."""
    request = pb.ListAuditRequest(node=settings.node, limit=limit)
    if len(settings.agents) == 1:
        found = [(settings.agents[0], r) for r in ask_one(settings, "ListAudit", request).records]
        problems = []
    else:
        answers = ask_agents(settings, "ListAudit", request)
        problems = [a.problem for a in answers if a.problem is not None]
        found = [(a.agent, r) for a in answers if a.response is not None
                 for r in a.response.records]
        found.sort(key=lambda pair: (pair[1].time.seconds, pair[1].time.nanos), reverse=True)
    many = len(settings.agents) > 1

    def text() -> str:
        rows = [[*(["AGENT"] if many else []), "TIME", "IDENTITY", "PEER", "RPC", "NODE",
                 "RESULT", "DETAIL"]]
        for agent, r in found:
            rows.append([*([agent] if many else []), local_time(r.time), r.identity, r.peer,
                         r.rpc, r.node or "-", r.result, r.detail])
        return table(rows) if found else "no audit records"

    emit(settings, {"records": [{**({"agent": agent} if many else {}), **record_json(r)}
                                for agent, r in found]}, text)
    return report(problems)
