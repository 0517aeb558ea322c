"""How `relctl` prints, and the only module that does: JSON for ``-o json`` or text (aligned
tables, step rows) otherwise, the one-line errors and problems on stderr, the progress of an
operation as it goes (:class:`Progress`, and :class:`Lines` for concurrent ones), timestamps,
and the names and renderings of the agent's values (release status, operations, their steps
and config changes). Command modules hand it values; no other module writes to stdout or
stderr, or asks which output was chosen (tests/agent/client/test_output.py checks it).

Standard output without click: `print`, flushed, as click.echo does; click's progress bar is
loaded only when one is shown. Which exit code follows is :mod:`agent.client.status`'s
business.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from relctl.v1 import agent_pb2 as pb

from .status import ExitCode, Problem, exit_code_of_problems

if TYPE_CHECKING:
    from .common import Settings

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

def echo(text: str, *, err: bool = False) -> None:
    """``text`` and a newline on stdout (stderr with ``err``), flushed: what click.echo does
    with a str, without loading click."""
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def error(message: str) -> None:
    """One line on stderr: "relctl: MESSAGE"."""
    echo(f"relctl: {message}", err=True)


def warning(message: str) -> None:
    """One line on stderr: "relctl: warning: MESSAGE"."""
    error(f"warning: {message}")


def is_json(settings: Settings) -> bool:
    """Whether ``-o json`` was chosen: then stdout holds one JSON document and nothing else."""
    return settings.output == "json"


def table(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` (the first one the header) as left-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def emit(settings: Settings, data: dict[str, Any], text: Callable[[], str]) -> None:
    """Print ``data`` as JSON with ``-o json``, else what ``text()`` makes of it (if anything)."""
    if is_json(settings):
        import json  # only for -o json: text output starts without it

        echo(json.dumps(data, indent=2))
    else:
        out = text()
        if out:
            echo(out)


def report(problems: Sequence[Problem]) -> ExitCode:
    """Print each problem as one line on stderr; the exit code they make."""
    for problem in problems:
        error(problem.message)
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


def _duration_text(ms: float | None) -> str:
    if ms is None:
        return ""
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1e3:.1f} s"


# A step's state as its row says it.
_MARKS = {"succeeded": "ok", "failed": "FAILED", "skipped": "skip"}


def step_row(name: str, mark: str, detail: str, ms: float | None = None) -> str:
    """The one format of a progress row: a step (or the client's own upload and stage
    steps), its result ("ok", "FAILED", "skip"), its duration when it has one, what it says."""
    return f"  {name:<22} {mark:<6} {_duration_text(ms):>9}  {detail}".rstrip()


def step_line(step: pb.Step) -> str:
    """The row of an agent's step."""
    state = STATE_NAMES.get(step.state, "?")
    ms = step.duration.ToNanoseconds() / 1e6 if step.HasField("duration") else None
    return step_row(step.name, _MARKS.get(state, state), step.detail, ms)


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


def print_operation(settings: Settings, op: pb.Operation, *, steps: bool = False) -> None:
    """A finished operation: its JSON with ``-o json``, else its :func:`summary`, after the
    rows of its ``steps`` when asked (`relctl operation ID`)."""
    emit(settings, {"operation": operation_json(op)}, lambda: "\n".join(
        [*(step_line(s) for s in op.steps if steps), summary(op)]))


def print_operations(settings: Settings, found: Sequence[tuple[str, pb.Operation]],
                     many: bool) -> None:
    """The journal's operations (agent, operation), with an AGENT column when ``many``."""
    def text() -> str:
        rows = [[*(["AGENT"] if many else []), "ID", "NODE", "KIND", "FROM", "TO", "OUTCOME",
                 "STARTED", "BY"]]
        for agent, op in found:
            rows.append([*([agent] if many else []), str(op.id), op.node,
                         KIND_NAMES.get(op.kind, "?"), op.from_version or "-", op.to_version,
                         outcome_of(op), local_time(op.started_at), op.requested_by])
        return table(rows) if len(rows) > 1 else ""

    emit(settings, {"operations": [{**({"agent": agent} if many else {}), **operation_json(op)}
                                   for agent, op in found]}, text)


# --- progress, while an operation runs -----------------------------------------------------------

class Progress:
    """What one agent's operation says while it runs: a row per step as it ends, the client's
    own rows (upload, stage), and notes. Text output only: with ``-o json`` rows are not
    printed (the JSON at the end has the steps), and a note, which says something to know now
    (the agent went away), goes to stderr. ``sink`` prints a line (a rollout's puts the agent
    in front, :class:`Lines`); ``bars``: an upload may show a progress bar (on a terminal)."""

    def __init__(self, settings: Settings, *, sink: Callable[[str], None] = echo,
                 bars: bool = True) -> None:
        self.text = not is_json(settings)
        self._sink = sink
        self._bars = bars and self.text

    def line(self, text: str) -> None:
        """A line of the client's own, in text output."""
        if self.text:
            self._sink(text)

    def row(self, name: str, mark: str, detail: str, ms: float | None = None) -> None:
        """A :func:`step_row` of the client's own."""
        self.line(step_row(name, mark, detail, ms))

    def step(self, step: pb.Step) -> None:
        """The row of an agent's step, once it ended (a running step has no row yet)."""
        if STATE_NAMES.get(step.state, "") != "running":
            self.line(step_line(step))

    def note(self, text: str) -> None:
        """Something to know now: in the progress in text output, on stderr with -o json."""
        if self.text:
            self._sink(text)
        else:
            echo(text, err=True)

    @contextmanager
    def bar(self, length: int, label: str) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr while the block runs, when one may be shown and stderr is
        a terminal; yields what advances it by a number of bytes."""
        if not (self._bars and sys.stderr.isatty()):
            yield lambda n: None
            return
        import click  # only for a bar on a terminal

        with click.progressbar(length=length, label=label, file=sys.stderr) as progress:
            yield progress.update


class Lines:
    """The text of concurrent operations (a rollout): whole lines only, each agent's with
    ``[AGENT]`` in front, none once :meth:`mute` was called (the final table is printing and
    operations that go on must not write under it); nothing at all with ``-o json``."""

    def __init__(self, settings: Settings, agents: Sequence[str]) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._width = max(len(a) for a in agents) + 2
        self._started = time.monotonic()
        self._muted = False
        self.text = not is_json(settings)

    def line(self, text: str) -> None:
        if not self.text:
            return
        with self._lock:
            if not self._muted:
                echo(text)

    def mute(self) -> None:
        with self._lock:
            self._muted = True

    def elapsed(self) -> str:
        """"+12.3 s": when a line came, counted from the rollout's start."""
        return f"+{time.monotonic() - self._started:.1f} s"

    def for_agent(self, agent: str) -> Progress:
        """The :class:`Progress` of ``agent``'s operation, its lines prefixed, no bars."""
        prefix = f"[{agent}]".ljust(self._width)
        return Progress(self._settings, sink=lambda text: self.line(prefix + text), bars=False)
