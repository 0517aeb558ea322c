"""`relctl`: the thin client of relctl agents.

It asks one or several agents (gRPC) and prints what they say, as a table or as JSON
(`-o json`). It never talks to a BEAM node itself: it imports the stubs, grpc and click only,
so it starts fast and runs anywhere. Errors are one line on stderr and an exit code from
:class:`ExitCode`; `--debug` adds the traceback.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NoReturn, TypeVar

import click
import grpc

from relctl.v1 import AGENT_ERROR_METADATA, agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

DEFAULT_AGENT = "unix:/run/relctl/agent.sock"
DEFAULT_TIMEOUT = 10.0


class ExitCode(IntEnum):
    """What `relctl`'s exit status means (documented in `relctl --help` and the README)."""

    OK = 0
    FAILED = 1          # the command failed; the node is unchanged
    USAGE = 2           # bad command line or request (click uses 2 as well)
    UNAVAILABLE = 3     # an agent could not be reached, or a node is down
    NOT_FOUND = 4       # unknown node, upload or operation
    ROLLED_BACK = 5     # the operation failed and the node was rolled back
    FAILED_CHANGED = 6  # failed part-way: the node is not as before (see its releases)
    BUSY = 7            # another operation is in progress on the node; retry later
    DENIED = 8          # missing or wrong credentials, or a role that does not allow it


EXIT_CODES_HELP = """\b
Exit codes:
  0  ok
  1  the command failed; the node is unchanged
  2  bad command line or request
  3  an agent could not be reached, or a node is down
  4  unknown node, upload or operation
  5  the operation failed and the node was rolled back
  6  the operation failed part-way; check the node's releases
  7  another operation is in progress on the node
  8  not allowed: missing or wrong credentials, or the role does not allow it
"""

_STATUS_NAMES = {
    pb.RELEASE_STATUS_PERMANENT: "permanent",
    pb.RELEASE_STATUS_CURRENT: "current",
    pb.RELEASE_STATUS_OLD: "old",
    pb.RELEASE_STATUS_UNPACKED: "unpacked",
}


class CliError(Exception):
    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Settings:
    agents: list[str] = field(default_factory=list)
    output: str = "text"
    node: str = ""
    timeout: float = DEFAULT_TIMEOUT
    debug: bool = False
    token_file: str = ""   # bearer token for TCP agents
    ca: str = ""           # CA of the agents' certificates: TLS on
    cert: str = ""         # client certificate and key, for agents that require them (mTLS)
    key: str = ""


@dataclass
class Problem:
    """An error about one agent or node; printed on stderr, decides the exit code."""

    message: str
    code: ExitCode


_T = TypeVar("_T")


# --- talking to agents ----------------------------------------------------------------

def _agent_targets(given: Sequence[str]) -> list[str]:
    if given:
        return list(dict.fromkeys(given))
    env = os.environ.get("RELCTL_AGENT", "")
    from_env = [a for a in env.replace(",", " ").split() if a]
    return list(dict.fromkeys(from_env)) or [DEFAULT_AGENT]


def _from_agent(err: grpc.RpcError) -> bool:
    metadata: Sequence[tuple[str, Any]] = (
        (err.trailing_metadata() or ()) if isinstance(err, grpc.Call) else ())
    return any(item[0] == AGENT_ERROR_METADATA for item in metadata)


def describe_rpc_error(agent: str, err: grpc.RpcError, timeout: float) -> Problem:
    """One line a user can act on, for an RPC that failed."""
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = (err.details() if isinstance(err, grpc.Call) else "") or ""
    if _from_agent(err):
        exit_code = {
            grpc.StatusCode.NOT_FOUND: ExitCode.NOT_FOUND,
            grpc.StatusCode.UNAVAILABLE: ExitCode.UNAVAILABLE,
            grpc.StatusCode.DEADLINE_EXCEEDED: ExitCode.UNAVAILABLE,
            grpc.StatusCode.INVALID_ARGUMENT: ExitCode.USAGE,
            grpc.StatusCode.UNAUTHENTICATED: ExitCode.DENIED,
            grpc.StatusCode.PERMISSION_DENIED: ExitCode.DENIED,
        }.get(code, ExitCode.FAILED)
        return Problem(f"agent {agent}: {details}", exit_code)
    if code == grpc.StatusCode.UNAVAILABLE:
        from .cli_auth import transport_hint

        reason = _transport_reason(details)
        return Problem(f"agent {agent} is not reachable ({reason}); "
                       + transport_hint(agent, details), ExitCode.UNAVAILABLE)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Problem(f"agent {agent} did not answer within {timeout:g} s (raise --timeout if "
                       "it is busy)", ExitCode.UNAVAILABLE)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Problem(f"agent {agent} does not know this command ({details}); it may be older "
                       "than this relctl", ExitCode.FAILED)
    return Problem(f"agent {agent}: {code.name.lower()}: {details}", ExitCode.FAILED)


def _transport_reason(details: str) -> str:
    """The useful end of grpc's "failed to connect to all addresses; last error: ..." text."""
    if not details:
        return "no answer"
    parts = [p for p in details.split(": ") if p and p != "OK"]
    return parts[-1] if parts else details


@dataclass
class Answer:
    agent: str
    response: Any = None
    problem: Problem | None = None
    seconds: float = 0.0


def open_channel(settings: Settings, agent: str) -> grpc.Channel:
    """The channel to one agent, with the token and TLS the settings give; every command
    opens its channels here."""
    from .cli_auth import channel  # grpc credentials: loaded when a channel is opened

    return channel(settings, agent)


def ask_agents(settings: Settings, method: str, request: Any) -> list[Answer]:
    """Send ``request`` to every agent at once; answers in the order of ``settings.agents``."""
    channels = [open_channel(settings, a) for a in settings.agents]
    try:
        started = time.perf_counter()
        futures: list[Future[Any]] = [
            getattr(agent_pb2_grpc.AgentStub(ch), method).future(request, timeout=settings.timeout)
            for ch in channels
        ]
        answers: list[Answer] = []
        for agent, fut in zip(settings.agents, futures):
            try:
                response = fut.result()
            except grpc.RpcError as err:
                answers.append(Answer(agent, problem=describe_rpc_error(agent, err,
                                                                        settings.timeout)))
            else:
                answers.append(Answer(agent, response, seconds=time.perf_counter() - started))
        return answers
    finally:
        for ch in channels:
            ch.close()


def _node_filter(settings: Settings, answers: list[Answer]) -> list[Answer]:
    """With --node, an agent that does not manage the node is not an error as long as one
    of the agents does."""
    if not settings.node:
        return answers
    found = [a for a in answers if a.problem is None or a.problem.code != ExitCode.NOT_FOUND]
    if found:
        return found
    if len(answers) == 1:
        return answers
    raise CliError(f"no agent manages node {settings.node} (asked: {', '.join(settings.agents)})",
                   ExitCode.NOT_FOUND)


# --- output ---------------------------------------------------------------------------

def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                     for row in rows)


def _emit(settings: Settings, data: dict[str, Any], text: Callable[[], str]) -> None:
    if settings.output == "json":
        click.echo(json.dumps(data, indent=2))
    else:
        out = text()
        if out:
            click.echo(out)


def _finish(problems: Sequence[Problem]) -> NoReturn:
    for problem in problems:
        click.echo(f"relctl: {problem.message}", err=True)
    raise SystemExit(problems[0].code if problems else ExitCode.OK)


def _node_problems(agent: str, nodes: Iterator[Any]) -> list[Problem]:
    problems: list[Problem] = []
    for n in nodes:
        if not n.up:
            problems.append(Problem(f"node {n.node} is down (agent {agent}): "
                                    f"{n.error or 'not connected'}", ExitCode.UNAVAILABLE))
        elif n.error:
            problems.append(Problem(f"node {n.node} (agent {agent}): {n.error}", ExitCode.FAILED))
    return problems


def _ago(ts: Any) -> str:
    if not ts.seconds:
        return "-"
    seconds = max(0, int(time.time() - ts.seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# --- commands -------------------------------------------------------------------------

def _store(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None:
            setattr(ctx.ensure_object(Settings), name, value)
    return callback


def _shared_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options accepted before and after the command (`relctl versions -o json`)."""
    f = click.option("-o", "--output", type=click.Choice(["text", "json"]), default=None,
                     expose_value=False, callback=_store("output"),
                     help="Output format (default: text).")(f)
    f = click.option("--node", metavar="NAME", default=None, expose_value=False,
                     callback=_store("node"), help="Only this node (name@host).")(f)
    f = click.option("--timeout", type=click.FloatRange(min=0.1), default=None,
                     expose_value=False, callback=_store("timeout"),
                     help=f"Seconds to wait for each agent (default: {DEFAULT_TIMEOUT:g}).")(f)
    f = click.option("--debug", is_flag=True, default=None, expose_value=False,
                     callback=_store("debug"), help="Show tracebacks of errors.")(f)
    return f


@click.group(epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--agent", "agents", multiple=True, metavar="HOST:PORT|unix:PATH",
              help=f"Agent to ask; repeat for several. Default: $RELCTL_AGENT, then {DEFAULT_AGENT}.")
@click.option("--token-file", envvar="RELCTL_TOKEN_FILE", default="", metavar="FILE",
              help="Bearer token for agents on TCP (default: $RELCTL_TOKEN_FILE).")
@click.option("--ca", envvar="RELCTL_CA", default="", metavar="FILE",
              help="CA certificate of the agents: talk TLS (default: $RELCTL_CA).")
@click.option("--cert", envvar="RELCTL_CERT", default="", metavar="FILE",
              help="Client certificate, for agents that verify clients (mTLS).")
@click.option("--key", envvar="RELCTL_KEY", default="", metavar="FILE",
              help="Private key of --cert.")
@_shared_options
@click.version_option(package_name="relctl", prog_name="relctl")
@click.pass_context
def cli(ctx: click.Context, agents: tuple[str, ...], token_file: str, ca: str, cert: str,
        key: str) -> None:
    """relctl: see and upgrade the releases of BEAM nodes through their relctl agents.

    On the agent's host, relctl talks to its Unix socket (access: the socket's group). Across
    the network it needs a token (--token-file) and, off loopback, the agent's CA (--ca).
    """
    settings = ctx.ensure_object(Settings)
    settings.agents = _agent_targets(agents)
    settings.token_file, settings.ca, settings.cert, settings.key = token_file, ca, cert, key


@cli.command()
@_shared_options
@click.pass_obj
def versions(settings: Settings) -> None:
    """Releases of each node and their status; * marks the release running now."""
    answers = _node_filter(settings, ask_agents(settings, "GetReleases",
                                                pb.GetReleasesRequest(node=settings.node)))
    problems = [a.problem for a in answers if a.problem]
    rows: list[dict[str, Any]] = []
    for a in answers:
        if a.response is None:
            continue
        problems += _node_problems(a.agent, iter(a.response.nodes))
        for n in a.response.nodes:
            rows.append({"agent": a.agent, "node": n.node, "up": n.up, "releases": [
                {"name": r.name, "version": r.version, "status": _STATUS_NAMES.get(r.status, "?"),
                 "_running": r.running} for r in n.releases]})

    def text() -> str:
        many = len(settings.agents) > 1
        head = ["", *(["AGENT"] if many else []), "NODE", "RELEASE", "VERSION", "STATUS"]
        table: list[list[str]] = [head]
        for row in rows:
            agent = [row["agent"]] if many else []
            if not row["up"]:
                table.append(["", *agent, row["node"], "-", "-", "down"])
            for r in row["releases"]:
                table.append(["*" if r["_running"] else "", *agent, row["node"], r["name"],
                              r["version"], r["status"]])
        return _table(table) if len(table) > 1 else ""

    json_nodes = [{**row, "releases": [{k: r[k] for k in ("name", "version", "status")}
                                       for r in row["releases"]]} for row in rows]
    _emit(settings, {"nodes": json_nodes}, text)
    _finish(problems)


@cli.command()
@_shared_options
@click.pass_obj
def nodes(settings: Settings) -> None:
    """The nodes each agent manages, up or down, and the release they run."""
    answers = ask_agents(settings, "ListNodes", pb.ListNodesRequest())
    problems = [a.problem for a in answers if a.problem]
    rows: list[dict[str, Any]] = []
    seen = False
    for a in answers:
        if a.response is None:
            continue
        listed = [n for n in a.response.nodes if not settings.node or n.node == settings.node]
        seen = seen or bool(listed)
        problems += _node_problems(a.agent, iter(listed))
        for n in listed:
            running = next((r for r in n.releases if r.running), None)
            rows.append({
                "agent": a.agent, "node": n.node, "up": n.up,
                "since": n.since.ToJsonString() if n.since.seconds else None,
                "running": {"name": running.name, "version": running.version} if running else None,
                "error": n.error, "_since": _ago(n.since)})
    if settings.node and not seen and not problems:
        raise CliError(f"no agent manages node {settings.node} (asked: "
                       f"{', '.join(settings.agents)})", ExitCode.NOT_FOUND)

    def text() -> str:
        table = [["AGENT", "NODE", "STATE", "RUNNING", "SINCE"]]
        for r in rows:
            run = r["running"]
            table.append([r["agent"], r["node"], "up" if r["up"] else "down",
                          f"{run['name']} {run['version']}" if run else "-", r["_since"]])
        return _table(table) if rows else ""

    _emit(settings, {"nodes": [{k: v for k, v in r.items() if not k.startswith("_")}
                               for r in rows]}, text)
    _finish(problems)


@cli.command()
@_shared_options
@click.pass_obj
def ping(settings: Settings) -> None:
    """Check that each agent answers and that it reaches its nodes (one RPC each)."""
    answers = _node_filter(settings, ask_agents(settings, "Ping",
                                                pb.PingRequest(node=settings.node)))
    problems = [a.problem for a in answers if a.problem]
    agents: list[dict[str, Any]] = []
    for a in answers:
        if a.response is None:
            continue
        nodes_out = []
        for n in a.response.nodes:
            rtt = n.round_trip.ToNanoseconds() / 1e6 if n.HasField("round_trip") else None
            nodes_out.append({"node": n.node, "up": n.up, "round_trip_ms": rtt, "error": n.error})
            if rtt is None:
                problems.append(Problem(f"node {n.node} (agent {a.agent}) did not answer: "
                                        f"{n.error}", ExitCode.UNAVAILABLE))
        agents.append({"agent": a.agent, "version": a.response.agent.version,
                       "hostname": a.response.agent.hostname,
                       "round_trip_ms": round(a.seconds * 1e3, 3), "nodes": nodes_out})

    def text() -> str:
        table = [["AGENT", "NODE", "RESULT", "TIME"]]
        for ag in agents:
            table.append([ag["agent"], "-", f"agent {ag['version']} on {ag['hostname']}",
                          f"{ag['round_trip_ms']:.1f} ms"])
            for n in ag["nodes"]:
                ok = n["round_trip_ms"] is not None
                table.append([ag["agent"], n["node"], "pong" if ok else "pang",
                              f"{n['round_trip_ms']:.1f} ms" if ok else "-"])
        return _table(table) if agents else ""

    _emit(settings, {"agents": agents}, text)
    _finish(problems)


from . import cli_ops as _cli_ops  # noqa: E402,F401  (registers its commands on `cli`)
from . import cli_build as _cli_build  # noqa: E402,F401  (registers make-relup)
from . import cli_audit as _cli_audit  # noqa: E402,F401  (registers audit)


def _print_traceback() -> None:
    import traceback  # only with --debug: keeps start-up lean

    traceback.print_exc()


def main(argv: Sequence[str] | None = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="relctl",
                 standalone_mode=False)
    except CliError as exc:
        if debug:
            _print_traceback()
        click.echo(f"relctl: {exc}", err=True)
        return exc.code
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE if isinstance(exc, click.UsageError) else ExitCode.FAILED
    except click.exceptions.Abort:
        click.echo("relctl: aborted", err=True)
        return ExitCode.FAILED
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else ExitCode.FAILED
    except Exception as exc:  # a bug: still one line, unless --debug
        if debug:
            _print_traceback()
        click.echo(f"relctl: internal error: {exc!r} (run with --debug for the traceback)",
                   err=True)
        return ExitCode.FAILED
    return ExitCode.OK


if __name__ == "__main__":
    # Run as `python -m agent.cli`: use the importable module, on whose group cli_ops
    # registered its commands (this file's __main__ copy has none of them).
    from .cli import main as _main

    sys.exit(_main())
