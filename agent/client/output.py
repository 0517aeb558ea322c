"""How `relctl` prints: JSON for ``-o json`` or text (aligned tables) otherwise, the one-line
problems on stderr, timestamps, and the names and renderings of the agent's values (release
status, operations, their steps and config changes) shared by the commands and the rollout.

Printing only: which exit code follows is :mod:`agent.client.status`'s business.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from relctl.v1 import agent_pb2 as pb

from .common import Settings
from .status import ExitCode, Problem, exit_code_of_problems

STATUS_NAMES = {
    pb.RELEASE_STATUS_PERMANENT: "permanent",
    pb.RELEASE_STATUS_CURRENT: "current",
    pb.RELEASE_STATUS_OLD: "old",
    pb.RELEASE_STATUS_UNPACKED: "unpacked",
}
OUTCOME_NAMES = {v: k.removeprefix("OUTCOME_").lower() for k, v in pb.Outcome.items()}
KIND_NAMES = {v: k.removeprefix("OPERATION_KIND_").lower() for k, v in pb.OperationKind.items()}
STATE_NAMES = {v: k.removeprefix("STEP_STATE_").lower() for k, v in pb.StepState.items()}
CHANGE_NAMES = {v: k.removeprefix("CONFIG_CHANGE_KIND_").lower()
                for k, v in pb.ConfigChangeKind.items()}


def outcome_of(op: pb.Operation) -> str:
    """The operation's outcome name ("succeeded", "rolled_back", ...; "?" when unknown)."""
    return OUTCOME_NAMES.get(op.outcome, "?")


# --- general ------------------------------------------------------------------------------------

def table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first one the header) as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def emit(settings: Settings, data: dict[str, Any], text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``-o json``, else what ``text()`` makes of it (if anything)."""
    if settings.output == "json":
        import json  # only for -o json: text output starts without it

        click.echo(json.dumps(data, indent=2))
    else:
        out = text()
        if out:
            click.echo(out)


def report(problems: Sequence[Problem]) -> ExitCode:
    """Print each problem as one line on stderr; the exit code they make."""
    for problem in problems:
        click.echo(f"relctl: {problem.message}", err=True)
    return exit_code_of_problems(problems)


def timestamp(ts: Any) -> str | None:
    """A protobuf Timestamp as RFC 3339 text, None when unset."""
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def local_time(ts: Any) -> str:
    """A protobuf Timestamp in this machine's time zone, to the second."""
    from datetime import datetime  # here, not at start-up: only the journal tables need it

    return datetime.fromtimestamp(ts.seconds).strftime("%Y-%m-%d %H:%M:%S")


def ago(ts: Any) -> str:
    """How long ago a protobuf Timestamp was, roughly ("3h ago"); "-" when unset."""
    if not ts.seconds:
        return "-"
    seconds = max(0, int(time.time() - ts.seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# --- operations ---------------------------------------------------------------------------------

def step_json(step: pb.Step) -> dict[str, Any]:
    return {"name": step.name, "state": STATE_NAMES.get(step.state, "?"),
            "started_at": timestamp(step.started_at),
            "duration_ms": round(step.duration.ToNanoseconds() / 1e6, 3)
            if step.HasField("duration") else None,
            "detail": step.detail}


def change_json(change: pb.ConfigChange) -> dict[str, Any]:
    out: dict[str, Any] = {"application": change.application, "key": change.key,
                           "change": CHANGE_NAMES.get(change.kind, "?")}
    if change.old_value or change.new_value:
        out.update(old_value=change.old_value or None, new_value=change.new_value or None)
    return out


def operation_json(op: pb.Operation) -> dict[str, Any]:
    return {"id": op.id, "node": op.node, "kind": KIND_NAMES.get(op.kind, "?"),
            "from_version": op.from_version, "to_version": op.to_version,
            "requested_by": op.requested_by, "started_at": timestamp(op.started_at),
            "finished_at": timestamp(op.finished_at), "outcome": outcome_of(op),
            "error": op.error, "steps": [step_json(s) for s in op.steps],
            "releases_after": [{"name": r.name, "version": r.version,
                                "status": STATUS_NAMES.get(r.status, "?")}
                               for r in op.releases_after],
            "config_changes": [change_json(c) for c in op.config_changes]}


def _changes_table(changes: Iterable[pb.ConfigChange]) -> str:
    changes = list(changes)
    with_values = any(c.old_value or c.new_value for c in changes)
    rows = [["APPLICATION", "KEY", "CHANGE"] + (["OLD", "NEW"] if with_values else [])]
    for c in changes:
        row = [c.application, c.key, CHANGE_NAMES.get(c.kind, "?")]
        if with_values:
            row += [c.old_value or "-", c.new_value or "-"]
        rows.append(row)
    text = table(rows)
    return text if with_values else text + "\n(values hidden: they may be secrets; " \
                                           "--show-values prints them)"


def _duration_text(step: pb.Step) -> str:
    if not step.HasField("duration"):
        return ""
    ms = step.duration.ToNanoseconds() / 1e6
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1e3:.1f} s"


def step_line(step: pb.Step) -> str:
    """One progress line: the step, its result and duration, and what it says."""
    state = STATE_NAMES.get(step.state, "?")
    mark = {"succeeded": "ok", "failed": "FAILED", "skipped": "skip"}.get(state, state)
    return f"  {step.name:<22} {mark:<6} {_duration_text(step):>9}  {step.detail}".rstrip()


def summary(op: pb.Operation) -> str:
    """A finished operation in words: what, its outcome, the config changes, the releases."""
    outcome = outcome_of(op)
    kind = KIND_NAMES.get(op.kind, "?")
    what = (f"reload-config of {op.to_version} on {op.node}"
            if op.kind == pb.OPERATION_KIND_RELOAD_CONFIG else f"{kind} {op.to_version} on {op.node}")
    words = {"succeeded": "done", "dry_run": "dry run: checks passed, nothing changed",
             "up_to_date": "up to date",
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
            [r.name, r.version, STATUS_NAMES.get(r.status, "?")] for r in op.releases_after]
        lines.append(table(rows))
    return "\n".join(lines)


def print_operation(settings: Settings, op: pb.Operation) -> None:
    """A finished operation: its JSON with ``-o json``, else its :func:`summary`."""
    if settings.output == "json":
        import json  # only for -o json

        click.echo(json.dumps({"operation": operation_json(op)}, indent=2))
    else:
        click.echo(summary(op))
