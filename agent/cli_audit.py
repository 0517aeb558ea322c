"""`relctl audit`: the agent's audit trail (operator role), newest first."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click

from relctl.v1 import agent_pb2 as pb

from .cli import Settings, _emit, _shared_options, _table, cli


def record_json(record: pb.AuditRecord) -> dict[str, Any]:
    from .cli_ops import _ts  # not at import: cli_ops and this module both load from cli

    try:
        arguments = json.loads(record.arguments) if record.arguments else {}
    except ValueError:
        arguments = record.arguments
    return {"time": _ts(record.time), "peer": record.peer, "identity": record.identity,
            "certificate": record.certificate or None, "rpc": record.rpc,
            "node": record.node or None, "arguments": arguments, "result": record.result,
            "detail": record.detail, "operation_id": record.operation_id or None}


def _local_time(record: pb.AuditRecord) -> str:
    return datetime.fromtimestamp(record.time.seconds).strftime("%Y-%m-%d %H:%M:%S")


@cli.command()
@click.option("--limit", type=click.IntRange(min=1, max=1000), default=20, show_default=True)
@_shared_options
@click.pass_obj
def audit(settings: Settings, limit: int) -> None:
    """The audit trail: every mutating call and every refused call, who made it, from where,
    and its result (needs the operator role)."""
    from .cli_ops import _ask_one

    reply = _ask_one(settings, "ListAudit", pb.ListAuditRequest(node=settings.node, limit=limit))

    def text() -> str:
        rows = [["TIME", "IDENTITY", "PEER", "RPC", "NODE", "RESULT", "DETAIL"]]
        for r in reply.records:
            rows.append([_local_time(r), r.identity, r.peer, r.rpc, r.node or "-", r.result,
                         r.detail])
        return _table(rows) if reply.records else "no audit records"

    _emit(settings, {"records": [record_json(r) for r in reply.records]}, text)
