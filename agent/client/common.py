"""What every `relctl` command shares: the :class:`Settings` the command line gives, the
agents to ask, what a failed RPC means, and the two ways of asking agents: every agent at once
(:func:`ask_agents`, each answer or problem kept apart) and the one agent of a command that
acts on one (:func:`ask_one`, errors raised as :class:`CliError`).

No click here (the options that fill :class:`Settings` are :mod:`agent.client.options`), and no
dataclasses: `relctl versions`, `upgrade` and `downgrade` run without loading either (issue 24).
Channels are opened by :mod:`agent.client.channel`, loaded only when a command opens one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

import grpc

from relctl.v1 import AGENT_ERROR_METADATA
from relctl.v1 import agent_pb2_grpc

from .status import GOES_ON, Call, CliError, ExitCode, Problem, exit_code_for_rpc

DEFAULT_AGENT = "unix:/run/relctl/agent.sock"
DEFAULT_TIMEOUT = 10.0
# How long an agent may say nothing at all (not even answer a keepalive ping) during a call
# before relctl counts it as silent: a cut link, a stopped host.
DEFAULT_HOST_TIMEOUT = 30.0
# Long enough for a big code_change; the agent enforces its own install timeout.
OPERATION_TIMEOUT = 3600.0
# How long relctl waits for an agent that went away during an operation (a restart: the
# unit's RestartSec, the agent's start, its first connection to the nodes) before it gives up
# following the operation; RELCTL_AGENT_RETURN_WAIT (seconds) overrides it.
AGENT_RETURN_WAIT = 180.0


class Settings:
    """The command line's choices, filled by the group's options and the shared options (which
    may come before or after the command name). Mutable: click's option callbacks store each
    value given (:mod:`agent.client.options`), and so does the click-free reader of the
    common command lines (:mod:`agent.client.fastpath`)."""

    def __init__(self, *, agents: Sequence[str] = (), output: str = "text", node: str = "",
                 timeout: float = DEFAULT_TIMEOUT, debug: bool = False, token_file: str = "",
                 ca: str = "", cert: str = "", key: str = "",
                 host_timeout: float = DEFAULT_HOST_TIMEOUT, token_dir: str = "",
                 per_agent: dict[str, dict[str, str]] | None = None) -> None:
        self.agents = list(agents)
        self.output = output          # "text" or "json" (-o)
        self.node = node
        self.timeout = timeout
        self.debug = debug
        self.token_file = token_file  # bearer token for TCP agents
        self.ca = ca                  # CA of the agents' certificates: TLS on
        self.cert = cert              # client certificate and key, for agents that require them
        self.key = key
        self.host_timeout = host_timeout  # silence after which an agent is given up
        self.token_dir = token_dir    # one token file per agent, named by its address
        # agent -> {"token_file": ..., "ca": ...} from its inventory group's labels
        self.per_agent: dict[str, dict[str, str]] = per_agent if per_agent is not None else {}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def agent_targets(given: Sequence[str]) -> list[str]:
    """The agents to ask: the --agent options, else $RELCTL_AGENT (comma or space separated),
    else the local socket; without duplicates, in the order given."""
    if given:
        return list(dict.fromkeys(given))
    env = os.environ.get("RELCTL_AGENT", "")
    from_env = [a for a in env.replace(",", " ").split() if a]
    return list(dict.fromkeys(from_env)) or [DEFAULT_AGENT]


def apply_group_options(settings: Settings, *, agents: Sequence[str], agents_file: str,
                        selectors: Sequence[str], agent_port: int | None, token_file: str,
                        token_dir: str, ca: str, cert: str, key: str) -> None:
    """What the options before the command mean (`relctl --agent A ... COMMAND`): the agents
    to ask (given, from an inventory file, from $RELCTL_AGENT, or the local socket) and the
    credentials. The click group and the fast path both call this."""
    if agents_file:
        if agents:
            raise CliError("give --agent or --agents-file, not both", ExitCode.USAGE)
        from .inventory import inventory_targets  # only when a file is given

        settings.per_agent = inventory_targets(agents_file, selectors, agent_port)
        settings.agents = list(settings.per_agent)
    elif selectors or agent_port is not None:
        raise CliError("--selector and --agent-port go with --agents-file", ExitCode.USAGE)
    else:
        settings.agents = agent_targets(agents)
    settings.token_file, settings.ca, settings.cert, settings.key = token_file, ca, cert, key
    settings.token_dir = token_dir


# --- RPC errors ---------------------------------------------------------------------------------

def _from_agent(err: grpc.RpcError) -> bool:
    metadata: Sequence[tuple[str, Any]] = (
        (err.trailing_metadata() or ()) if isinstance(err, grpc.Call) else ())
    return any(item[0] == AGENT_ERROR_METADATA for item in metadata)


def _status(err: grpc.RpcError) -> grpc.StatusCode:
    return err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN


def _details(err: grpc.RpcError) -> str:
    return (err.details() if isinstance(err, grpc.Call) else "") or ""


def _transport_reason(details: str) -> str:
    """The useful end of grpc's "failed to connect to all addresses; last error: ..." text."""
    if not details:
        return "no answer"
    parts = [p for p in details.split(": ") if p and p != "OK"]
    return parts[-1] if parts else details


def connection_lost(err: grpc.RpcError) -> bool:
    """Whether the call reached the agent and the connection broke before its answer (the
    agent stopped or restarted, or the network failed): neither an answer of the agent's nor a
    connection that never was (grpc says "failed to connect" for those)."""
    if not isinstance(err, grpc.Call) or _from_agent(err):
        return False
    return (err.code() == grpc.StatusCode.UNAVAILABLE
            and "failed to connect" not in (err.details() or "").lower())


def exit_code_of(err: grpc.RpcError, call: Call = Call.READ, *, started: bool = False
                 ) -> ExitCode:
    """:func:`~agent.client.status.exit_code_for_rpc` with the facts of ``err``."""
    return exit_code_for_rpc(_status(err), from_agent=_from_agent(err),
                             lost=connection_lost(err), call=call, started=started)


def describe_rpc_error(agent: str, err: grpc.RpcError, timeout: float) -> Problem:
    """One line a user can act on, and its exit code, for an RPC that failed; ``timeout``: the
    deadline the call had."""
    status = _status(err)
    details = _details(err)
    code = exit_code_of(err)
    if _from_agent(err):
        return Problem(f"agent {agent}: {details}", code)
    if connection_lost(err):
        # It answered the connection, so neither the address nor TLS is wrong.
        return Problem(f"agent {agent} closed the connection before answering "
                       f"({_transport_reason(details)}): it may have stopped or restarted "
                       "(systemctl status relctl-agent)", code)
    if status == grpc.StatusCode.UNAVAILABLE:
        from .channel import transport_hint  # only when something went wrong

        return Problem(f"agent {agent} is not reachable ({_transport_reason(details)}); "
                       + transport_hint(agent, details), code)
    if status == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Problem(f"agent {agent} did not answer within {timeout:g} s (raise --timeout if "
                       "it is busy)", code)
    if status == grpc.StatusCode.UNIMPLEMENTED:
        return Problem(f"agent {agent} does not know this command ({details}); it may be older "
                       "than this relctl", code)
    return Problem(f"agent {agent}: {status.name.lower()}: {details}", code)


def rpc_error(agent: str, err: grpc.RpcError, timeout: float) -> CliError:
    """:func:`describe_rpc_error` as an error to raise, for commands that ask one agent."""
    problem = describe_rpc_error(agent, err, timeout)
    return CliError(problem.message, problem.code)


def upload_error(agent: str, err: grpc.RpcError, timeout: float, file_name: str) -> CliError:
    """The error of an upload: a lost connection says that no operation started."""
    code = exit_code_of(err, Call.UPLOAD)
    if connection_lost(err):
        return CliError(f"lost the connection to agent {agent} during the upload of "
                        f"{file_name} ({_transport_reason(_details(err))}); no operation "
                        "started: once the agent answers again, run the command again", code)
    return rpc_error(agent, err, timeout)


def operation_error(agent: str, err: grpc.RpcError, timeout: float, *, op_id: int = 0,
                    what: str = "the operation") -> CliError:
    """The error of an RPC that runs an operation (``op_id`` once the agent named it). When
    the operation may go on (the connection broke, relctl stopped waiting, or it had started),
    the message says so and how to see its outcome once the agent answers again; the exit code
    is status.py's (:data:`~agent.client.status.GOES_ON`, never 1)."""
    code = exit_code_of(err, Call.OPERATION, started=bool(op_id))
    if code == ExitCode.INTERNAL:  # an error nobody classified, before the agent named it
        said = describe_rpc_error(agent, err, timeout).message
        log = "" if _from_agent(err) else (
            "; the agent's log (journalctl -u relctl-agent) may say why")
        return CliError(f"{said} (during {what}){log}; relctl cannot tell whether the "
                        "operation started: relctl operations lists it if it did, and relctl "
                        "operation N shows how it ended", code)
    if code != GOES_ON:
        return rpc_error(agent, err, timeout)  # refused before it started
    if connection_lost(err):
        lost = (f"lost the connection to agent {agent} during {what} "
                f"({_transport_reason(_details(err))})")
        again = "once the agent answers again (after its restart, if it stopped)"
    elif _status(err) == grpc.StatusCode.DEADLINE_EXCEEDED and not _from_agent(err):
        lost = (f"{what} did not end within {timeout:g} s, the time relctl waits for an "
                f"operation on agent {agent}")
        again = "later"
    else:  # it had started, then the call failed: the agent's or grpc's word, as it is
        lost = f"{describe_rpc_error(agent, err, timeout).message} (during {what})"
        again = "once the agent answers"
    if op_id:
        return CliError(f"{lost}; operation {op_id} may go on without relctl; {again}, see how "
                        f"it ended: relctl operation {op_id}", code)
    return CliError(f"{lost}; the operation may have started and go on without relctl; "
                    f"{again}, relctl operations lists it and relctl operation N shows how it "
                    "ended", code)


# --- asking agents ------------------------------------------------------------------------------

def connect(settings: Settings, agent: str) -> grpc.Channel:
    """The channel to one agent, with the token and TLS the settings give; every command opens
    its channels here."""
    from .channel import open_channel  # token files and TLS material: read only when needed

    return open_channel(settings, agent)


class Answer(NamedTuple):
    """One agent's reply to :func:`ask_agents`, or the problem instead of it."""

    agent: str
    response: Any = None
    problem: Problem | None = None
    seconds: float = 0.0


def ask_agents(settings: Settings, method: str, request: Any) -> list[Answer]:
    """Send ``request`` to every agent at once; answers in the order of ``settings.agents``."""
    channels = [connect(settings, a) for a in settings.agents]
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


def one_agent(settings: Settings) -> str:
    """The agent of a command that acts on one; a usage error when several were given."""
    if len(settings.agents) != 1:
        raise CliError("this command acts on one agent; give exactly one --agent",
                       ExitCode.USAGE)
    return settings.agents[0]


def ask_one(settings: Settings, method: str, request: Any, timeout: float | None = None) -> Any:
    """One unary RPC to the one agent; its errors become :class:`CliError`."""
    agent = one_agent(settings)
    limit = timeout or settings.timeout
    with connect(settings, agent) as channel:
        try:
            return getattr(agent_pb2_grpc.AgentStub(channel), method)(request, timeout=limit)
        except grpc.RpcError as err:
            raise rpc_error(agent, err, limit) from None


def run_operation(settings: Settings, method: str, request: Any, what: str) -> Any:
    """A unary RPC that runs an operation on the one agent (answered when it ends); a lost
    connection says the operation may go on (:func:`operation_error`)."""
    agent = one_agent(settings)
    with connect(settings, agent) as channel:
        try:
            return getattr(agent_pb2_grpc.AgentStub(channel), method)(
                request, timeout=OPERATION_TIMEOUT)
        except grpc.RpcError as err:
            raise operation_error(agent, err, OPERATION_TIMEOUT, what=what) from None
