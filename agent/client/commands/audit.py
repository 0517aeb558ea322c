"""`relctl audit`: the agent's audit trail (operator role), newest first."""

from __future__ import annotations

import json
from typing import Any

import click

from relctl.v1 import agent_pb2 as pb

from ..common import Settings, ask_one, shared_options
from ..output import emit, local_time, table, timestamp
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
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@shared_options
@click.pass_obj
def audit(settings: Settings, limit: int) -> ExitCode:
    """The audit trail: every mutating call and every refused call, who made it, from where,
    and its result (needs the operator role)."""
    reply = ask_one(settings, "ListAudit", pb.ListAuditRequest(node=settings.node, limit=limit))

    def text() -> str:
        rows = [["TIME", "IDENTITY", "PEER", "RPC", "NODE", "RESULT", "DETAIL"]]
        for r in reply.records:
            rows.append([local_time(r.time), r.identity, r.peer, r.rpc, r.node or "-", r.result,
                         r.detail])
        return table(rows) if reply.records else "no audit records"

    emit(settings, {"records": [record_json(r) for r in reply.records]}, text)
    return ExitCode.OK
