"""What `relctl`'s exit status means, and every rule that picks one.

:class:`ExitCode` holds the numbers (documented in the README's table; they never change
meaning), the `relctl --help` epilog is made from it, and the mappings live here and nowhere
else: a failed gRPC call to a code (with the rule that work which may go on is
:data:`GOES_ON`, never 1), an operation's outcome to a code, and a rollout's one code from its
rows (worst first). :class:`CliError` is the client's error: it carries its code, and
``main()`` alone turns that into the process status.

Standard library only at run time, so that any client module (the relup builder included) can
raise a :class:`CliError` without loading grpc.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import grpc


class ExitCode(IntEnum):
    """The process status of `relctl`; :data:`MEANINGS` says what each one means."""

    OK = 0
    FAILED = 1
    USAGE = 2           # click uses 2 for its usage errors as well
    UNAVAILABLE = 3
    NOT_FOUND = 4
    ROLLED_BACK = 5
    FAILED_CHANGED = 6
    BUSY = 7
    DENIED = 8
    INTERNAL = 70       # a bug in relctl or its agent: EX_SOFTWARE of sysexits.h
    INTERRUPTED = 130   # Ctrl-C or SIGTERM: 128 + SIGINT, as shells and httpie use


# The words of `relctl --help`; every code has a line (exit_codes_help() fails otherwise).
MEANINGS: Mapping[ExitCode, str] = {
    ExitCode.OK: "ok",
    ExitCode.FAILED: "the command failed; the node is unchanged",
    ExitCode.USAGE: "bad command line or request",
    ExitCode.UNAVAILABLE: "an agent could not be reached, or a node is down",
    ExitCode.NOT_FOUND: "unknown node, upload or operation",
    ExitCode.ROLLED_BACK: "the operation failed and the node was rolled back",
    ExitCode.FAILED_CHANGED: "the operation failed part-way, or relctl lost sight of it and it "
                             "may go on; check the node's releases",
    ExitCode.BUSY: "another operation is in progress on the node",
    ExitCode.DENIED: "not allowed: missing or wrong credentials, or the role does not allow it",
    ExitCode.INTERNAL: "internal error of relctl or of its agent (a bug; --debug or the "
                       "agent's log shows where); an operation asked for may have started and "
                       "go on on its agent",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C or SIGTERM); operations already started may go "
                          "on on their agents",
}


def exit_codes_help() -> str:
    """The "Exit codes:" block of `relctl --help`, one line per :class:`ExitCode`."""
    # \b keeps click from re-wrapping the block into one paragraph.
    lines = ["\b", "Exit codes:", *(f"  {int(code)}  {MEANINGS[code]}" for code in ExitCode)]
    return "\n".join(lines) + "\n"


class CliError(Exception):
    """A failure `relctl` reports as one line on stderr, exiting with :attr:`code`."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.code = code


class Problem(NamedTuple):
    """An error about one agent or node among several: printed, and the first one decides the
    exit code (the other agents' answers are still shown)."""

    message: str
    code: ExitCode


def exit_code_of_problems(problems: Sequence[Problem]) -> ExitCode:
    """The first problem's code (the order the user gave the agents in), OK when none."""
    return problems[0].code if problems else ExitCode.OK


# --- gRPC status -> exit code -------------------------------------------------------------------

# Keyed by grpc.StatusCode names: this module does not load grpc.
_AGENT_STATUS = {
    "NOT_FOUND": ExitCode.NOT_FOUND,
    "UNAVAILABLE": ExitCode.UNAVAILABLE,      # the agent's node is down
    "DEADLINE_EXCEEDED": ExitCode.UNAVAILABLE,
    "INVALID_ARGUMENT": ExitCode.USAGE,
    "UNAUTHENTICATED": ExitCode.DENIED,
    "PERMISSION_DENIED": ExitCode.DENIED,
    "ABORTED": ExitCode.BUSY,                 # the agent's "operation N in progress"
}
# No agent said anything: the network, TLS or grpc itself.
_TRANSPORT_STATUS = {
    "UNAVAILABLE": ExitCode.UNAVAILABLE,
    "DEADLINE_EXCEEDED": ExitCode.UNAVAILABLE,
    "ABORTED": ExitCode.BUSY,
}


class Call(Enum):
    """What a call that failed was doing: it decides whether work may go on after it."""

    READ = "read"            # a question: nothing runs on for it on the agent
    UPLOAD = "upload"        # a tarball on its way: no operation starts before it arrived
    OPERATION = "operation"  # an operation was asked for: it may have started, and go on


# The code of work relctl lost sight of and that may go on on its agent: an operation whose
# connection broke or that relctl stopped waiting for, a rollout row in progress or unknown.
# Never 1 (that says "node unchanged") and never 0: someone has to look at the node.
GOES_ON = ExitCode.FAILED_CHANGED

# The statuses of an error nobody classified: the agent's "internal error" (INTERNAL: a bug of
# its own, whose traceback is in its log) and grpc's UNKNOWN (a handler that raised). On an
# operation's call before the agent named the operation, relctl cannot know whether it
# started, so the code is INTERNAL: never 1, which says "node unchanged".
UNCLASSIFIED = frozenset({"INTERNAL", "UNKNOWN"})


def exit_code_for_rpc(status: grpc.StatusCode, *, from_agent: bool, lost: bool = False,
                      call: Call = Call.READ, started: bool = False) -> ExitCode:
    """The code of an RPC that failed with ``status``. ``from_agent``: the agent itself refused
    (its error metadata is on the call) rather than the transport failing; ``lost``: the call
    had reached the agent when its connection broke; ``call``: what it was doing; ``started``:
    the operation had started (the agent had named it).

    An operation's call that lost its connection, that relctl stopped waiting for (the
    transport's deadline) or that failed in any way once the operation had started is
    :data:`GOES_ON`. An operation's call that failed with an :data:`UNCLASSIFIED` status
    before that is INTERNAL (it may have started or not). Any other call that lost its
    connection is UNAVAILABLE (an upload: no operation started, run it again). The rest map by
    their status: the agent's refusals by one table, the transport's by another, anything else
    is FAILED (a read or an upload: no operation ran for it)."""
    name = status.name
    if call is Call.OPERATION and (
            started or lost or (name == "DEADLINE_EXCEEDED" and not from_agent)):
        return GOES_ON
    if call is Call.OPERATION and name in UNCLASSIFIED:
        return ExitCode.INTERNAL
    if lost:
        return ExitCode.UNAVAILABLE
    table = _AGENT_STATUS if from_agent else _TRANSPORT_STATUS
    return table.get(name, ExitCode.FAILED)


# --- operation outcome -> exit code -------------------------------------------------------------

_OUTCOME_EXIT = {
    "succeeded": ExitCode.OK,
    "dry_run": ExitCode.OK,
    "up_to_date": ExitCode.OK,   # nothing to do: a deploy script run again goes on (as relx)
    "failed_unchanged": ExitCode.FAILED,
    "rolled_back": ExitCode.ROLLED_BACK,
    "failed": ExitCode.FAILED_CHANGED,
    "interrupted": ExitCode.FAILED_CHANGED,
}


# The outcomes that leave nothing to fix; a rollout counts every other result as a failure.
OK_OUTCOMES = frozenset(name for name, code in _OUTCOME_EXIT.items() if code == ExitCode.OK)


def exit_code_for_outcome(outcome: str) -> ExitCode:
    """The code of a finished operation, by its outcome name (``pb.Outcome`` without the
    ``OUTCOME_`` prefix, lower case). An outcome this client does not know may have left the
    node anywhere, so it counts as :attr:`ExitCode.FAILED_CHANGED`."""
    return _OUTCOME_EXIT.get(outcome, ExitCode.FAILED_CHANGED)


# --- one code for a rollout over several agents -------------------------------------------------

# Most serious first: a node left part-way needs a person now, and so does one whose agent
# failed on an internal error before naming the operation (started or not: unknown); a rolled
# back node ran the new release and it failed, so the release is suspect; the rest changed
# nothing.
WORST_FIRST: tuple[ExitCode, ...] = (
    ExitCode.FAILED_CHANGED, ExitCode.INTERNAL, ExitCode.ROLLED_BACK, ExitCode.FAILED,
    ExitCode.UNAVAILABLE, ExitCode.DENIED, ExitCode.BUSY, ExitCode.NOT_FOUND, ExitCode.USAGE)
# Not a row's code: the rollout as a whole was interrupted (whatever its rows say). (relctl's
# own bug is INTERNAL too, but stops the whole command before any table is printed.)
NOT_A_ROW = frozenset({ExitCode.INTERRUPTED})


def worst_code(codes: Iterable[ExitCode]) -> ExitCode:
    """The most serious of ``codes`` by :data:`WORST_FIRST`; OK when all are OK."""
    failed = set(codes) - {ExitCode.OK}
    # A code missing from WORST_FIRST (a new one) still beats OK.
    return min(failed, default=ExitCode.OK,
               key=lambda c: WORST_FIRST.index(c) if c in WORST_FIRST else len(WORST_FIRST))


def worst_first_text() -> str:
    """:data:`WORST_FIRST` as help text: "6, 5, 1, ..."."""
    return ", ".join(str(int(code)) for code in WORST_FIRST)


def exit_code_of_rollout(failed: Iterable[ExitCode], *, interrupted: bool,
                         stopped: bool) -> ExitCode:
    """A rollout's one code from its failed rows' codes: INTERRUPTED when Ctrl-C or SIGTERM
    ended it, whatever its rows say; else the :func:`worst_code`. A rollout that ``stopped``
    before its last batch is never 0: when the agents it stopped for were silent then and
    answered "done" later, it is UNAVAILABLE, as it did not reach every agent and a script
    must not take it as done."""
    if interrupted:
        return ExitCode.INTERRUPTED
    code = worst_code(failed)
    if code == ExitCode.OK and stopped:
        return ExitCode.UNAVAILABLE
    return code
