"""The exit-code policy of `relctl` (agent/client/status.py): the codes, the help and the README
table that say them, and each mapping: gRPC status (and work that may go on), operation
outcome, problems, and a rollout's one code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from agent.client.common import describe_rpc_error
from agent.client.status import (
    GOES_ON,
    MEANINGS,
    NOT_A_ROW,
    WORST_FIRST,
    Call,
    CliError,
    ExitCode,
    Problem,
    exit_code_for_outcome,
    exit_code_for_rpc,
    exit_code_of_problems,
    exit_code_of_rollout,
    exit_codes_help,
    worst_code,
    worst_first_text,
)
from relctl.v1 import agent_pb2 as pb
from tests.tools.grpc_errors import FailedCall

ROOT = Path(__file__).resolve().parents[3]


def test_the_codes_keep_the_numbers_the_readme_documents() -> None:
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0, "FAILED": 1, "USAGE": 2, "UNAVAILABLE": 3, "NOT_FOUND": 4, "ROLLED_BACK": 5,
        "FAILED_CHANGED": 6, "BUSY": 7, "DENIED": 8, "INTERNAL": 70, "INTERRUPTED": 130}


def test_the_readme_table_says_each_code() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", readme, flags=re.MULTILINE))
    assert {int(code) for code in rows} == {int(code) for code in ExitCode}
    # The table's words and the help's agree on what each code is about.
    assert rows["1"].startswith("the command failed and the node is unchanged")
    assert "may go on" in rows["6"] and "may go on" in MEANINGS[ExitCode.FAILED_CHANGED]
    assert "internal error" in rows["70"] and "internal error" in MEANINGS[ExitCode.INTERNAL]
    assert "Ctrl-C or SIGTERM" in rows["130"]


def test_the_help_lists_every_code_in_order_with_its_meaning() -> None:
    lines = exit_codes_help().splitlines()
    assert lines[:2] == ["\b", "Exit codes:"]  # \b: click keeps the lines as they are
    assert lines[2:] == [f"  {int(code)}  {MEANINGS[code]}" for code in ExitCode]
    assert set(MEANINGS) == set(ExitCode)


def test_the_help_keeps_its_words() -> None:
    assert ("  6  the operation failed part-way, or relctl lost sight of it and it may go on; "
            "check the node's releases") in exit_codes_help()
    assert ("  70  internal error of relctl or of its agent (a bug; --debug or the agent's "
            "log shows where); an operation asked for may have started and go on on its "
            "agent") in exit_codes_help()
    assert "  7  another operation is in progress on the node" in exit_codes_help()


# --- gRPC status -------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "code"), [
    (grpc.StatusCode.NOT_FOUND, ExitCode.NOT_FOUND),
    (grpc.StatusCode.UNAVAILABLE, ExitCode.UNAVAILABLE),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ExitCode.UNAVAILABLE),
    (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.USAGE),
    (grpc.StatusCode.UNAUTHENTICATED, ExitCode.DENIED),
    (grpc.StatusCode.PERMISSION_DENIED, ExitCode.DENIED),
    (grpc.StatusCode.ABORTED, ExitCode.BUSY),
    (grpc.StatusCode.FAILED_PRECONDITION, ExitCode.FAILED),
    (grpc.StatusCode.INTERNAL, ExitCode.FAILED),
    (grpc.StatusCode.UNKNOWN, ExitCode.FAILED),
])
def test_an_agent_error_maps_by_its_status(status: grpc.StatusCode, code: ExitCode) -> None:
    assert exit_code_for_rpc(status, from_agent=True) == code


@pytest.mark.parametrize(("status", "code"), [
    (grpc.StatusCode.UNAVAILABLE, ExitCode.UNAVAILABLE),
    (grpc.StatusCode.DEADLINE_EXCEEDED, ExitCode.UNAVAILABLE),
    (grpc.StatusCode.ABORTED, ExitCode.BUSY),
    # Without the agent's word, these are grpc's or a proxy's: nothing the user got wrong.
    (grpc.StatusCode.NOT_FOUND, ExitCode.FAILED),
    (grpc.StatusCode.INVALID_ARGUMENT, ExitCode.FAILED),
    (grpc.StatusCode.UNAUTHENTICATED, ExitCode.FAILED),
    (grpc.StatusCode.UNIMPLEMENTED, ExitCode.FAILED),
])
def test_a_transport_error_maps_by_its_status(status: grpc.StatusCode, code: ExitCode) -> None:
    assert exit_code_for_rpc(status, from_agent=False) == code


@pytest.mark.parametrize(("status", "from_agent", "lost", "started", "code"), [
    # The connection broke, or relctl stopped waiting: the operation may go on.
    (grpc.StatusCode.UNAVAILABLE, False, True, False, GOES_ON),
    (grpc.StatusCode.UNAVAILABLE, False, True, True, GOES_ON),
    (grpc.StatusCode.DEADLINE_EXCEEDED, False, False, False, GOES_ON),
    # Started, then any failure: it may go on as well (never 1).
    (grpc.StatusCode.INTERNAL, True, False, True, GOES_ON),
    (grpc.StatusCode.UNKNOWN, False, False, True, GOES_ON),
    # An error nobody classified before the agent named the operation: started or not,
    # relctl cannot know, so not 1 ("node unchanged") but INTERNAL.
    (grpc.StatusCode.INTERNAL, True, False, False, ExitCode.INTERNAL),
    (grpc.StatusCode.UNKNOWN, False, False, False, ExitCode.INTERNAL),
    # Refused before it started: the agent's or the transport's word.
    (grpc.StatusCode.ABORTED, True, False, False, ExitCode.BUSY),
    (grpc.StatusCode.FAILED_PRECONDITION, True, False, False, ExitCode.FAILED),
    (grpc.StatusCode.DEADLINE_EXCEEDED, True, False, False, ExitCode.UNAVAILABLE),
    (grpc.StatusCode.UNAVAILABLE, False, False, False, ExitCode.UNAVAILABLE),  # never connected
])
def test_an_operation_that_may_go_on_is_never_1(status: grpc.StatusCode, from_agent: bool,
                                                lost: bool, started: bool, code: ExitCode
                                                ) -> None:
    assert exit_code_for_rpc(status, from_agent=from_agent, lost=lost, call=Call.OPERATION,
                             started=started) == code


def test_a_lost_upload_or_read_is_unavailable_as_nothing_goes_on() -> None:
    for call in (Call.UPLOAD, Call.READ):
        assert exit_code_for_rpc(grpc.StatusCode.UNAVAILABLE, from_agent=False, lost=True,
                                 call=call) == ExitCode.UNAVAILABLE
    assert GOES_ON == ExitCode.FAILED_CHANGED != ExitCode.FAILED


def test_describing_an_rpc_error_uses_the_mapping() -> None:
    busy = FailedCall(grpc.StatusCode.ABORTED, "operation 3 in progress on app@h1", True)
    assert describe_rpc_error("h1:7079", busy, 10) == Problem(
        "agent h1:7079: operation 3 in progress on app@h1", ExitCode.BUSY)
    late = FailedCall(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", False)
    assert describe_rpc_error("h1:7079", late, 2.5) == Problem(
        "agent h1:7079 did not answer within 2.5 s (raise --timeout if it is busy)",
        ExitCode.UNAVAILABLE)
    old = FailedCall(grpc.StatusCode.UNIMPLEMENTED, "Method not found!", False)
    assert describe_rpc_error("h1:7079", old, 10).code == ExitCode.FAILED


# --- operation outcome -------------------------------------------------------------------------

@pytest.mark.parametrize(("outcome", "code"), [
    ("succeeded", ExitCode.OK),
    ("dry_run", ExitCode.OK),
    ("up_to_date", ExitCode.OK),               # a rerun of a finished upgrade: nothing to do
    ("failed_unchanged", ExitCode.FAILED),
    ("rolled_back", ExitCode.ROLLED_BACK),
    ("failed", ExitCode.FAILED_CHANGED),
    ("interrupted", ExitCode.FAILED_CHANGED),
    ("running", ExitCode.FAILED_CHANGED),      # never final: the node may be anywhere
    ("unspecified", ExitCode.FAILED_CHANGED),
    ("from_a_newer_agent", ExitCode.FAILED_CHANGED),
])
def test_an_outcome_maps_to_its_code(outcome: str, code: ExitCode) -> None:
    assert exit_code_for_outcome(outcome) == code


def test_every_final_outcome_of_the_contract_has_a_deliberate_code() -> None:
    names = {k.removeprefix("OUTCOME_").lower() for k in pb.Outcome.keys()}
    final = names - {"unspecified", "running"}
    assert final == {"succeeded", "dry_run", "up_to_date", "failed_unchanged", "rolled_back",
                     "failed", "interrupted"}
    assert {exit_code_for_outcome(n) for n in final} == {
        ExitCode.OK, ExitCode.FAILED, ExitCode.ROLLED_BACK, ExitCode.FAILED_CHANGED}


# --- problems and errors -----------------------------------------------------------------------

def test_the_first_problem_decides_and_none_is_ok() -> None:
    assert exit_code_of_problems([]) == ExitCode.OK
    assert exit_code_of_problems([Problem("down", ExitCode.UNAVAILABLE),
                                  Problem("failed", ExitCode.FAILED)]) == ExitCode.UNAVAILABLE


def test_a_cli_error_carries_its_code() -> None:
    err = CliError("no agent manages node x@h", ExitCode.NOT_FOUND)
    assert (str(err), err.code) == ("no agent manages node x@h", ExitCode.NOT_FOUND)


# --- a rollout's one code ----------------------------------------------------------------------

def test_worst_first_is_the_documented_order_and_ranks_every_failure() -> None:
    assert [int(c) for c in WORST_FIRST] == [6, 70, 5, 1, 3, 8, 7, 4, 2]
    assert set(WORST_FIRST) == set(ExitCode) - {ExitCode.OK} - NOT_A_ROW
    assert NOT_A_ROW == {ExitCode.INTERRUPTED}
    assert worst_first_text() == "6, 70, 5, 1, 3, 8, 7, 4, 2"


@pytest.mark.parametrize(("codes", "expected"), [
    ([], ExitCode.OK),
    ([ExitCode.OK, ExitCode.OK], ExitCode.OK),
    ([ExitCode.FAILED, ExitCode.ROLLED_BACK], ExitCode.ROLLED_BACK),
    ([ExitCode.ROLLED_BACK, ExitCode.FAILED_CHANGED], ExitCode.FAILED_CHANGED),
    # An agent's internal error before it named the operation: started or not, unknown.
    ([ExitCode.ROLLED_BACK, ExitCode.INTERNAL, ExitCode.FAILED], ExitCode.INTERNAL),
    ([ExitCode.INTERNAL, ExitCode.FAILED_CHANGED], ExitCode.FAILED_CHANGED),
    ([ExitCode.UNAVAILABLE, ExitCode.FAILED], ExitCode.FAILED),
    ([ExitCode.BUSY, ExitCode.UNAVAILABLE], ExitCode.UNAVAILABLE),
    ([ExitCode.BUSY, ExitCode.DENIED], ExitCode.DENIED),
    ([ExitCode.USAGE, ExitCode.NOT_FOUND, ExitCode.BUSY], ExitCode.BUSY),
    ([ExitCode.USAGE, ExitCode.NOT_FOUND], ExitCode.NOT_FOUND),
    ([ExitCode.OK, ExitCode.USAGE], ExitCode.USAGE),
])
def test_the_exit_code_is_the_most_serious_one(codes: list[ExitCode], expected: ExitCode
                                               ) -> None:
    assert worst_code(codes) == expected


def test_the_policy_loads_without_grpc() -> None:
    code = "import sys, agent.client.status; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.strip() == "False"


def test_an_interrupt_is_130_as_shells_say_and_not_a_failure_code() -> None:
    # 128 + SIGINT: a deploy script tells "stopped by a person" from "failed, node unchanged".
    assert int(ExitCode.INTERRUPTED) == 130
    assert "  130  interrupted (Ctrl-C or SIGTERM)" in exit_codes_help()
    assert ExitCode.INTERRUPTED not in WORST_FIRST


def test_a_rollout_has_one_code_interrupted_first_and_never_0_when_it_stopped() -> None:
    rows = [ExitCode.FAILED, GOES_ON]
    assert exit_code_of_rollout(rows, interrupted=True, stopped=True) == ExitCode.INTERRUPTED
    assert exit_code_of_rollout(rows, interrupted=False, stopped=True) == GOES_ON
    assert exit_code_of_rollout([], interrupted=False, stopped=False) == ExitCode.OK
    # Stopped for agents that answered "done" later: it did not reach every agent.
    assert exit_code_of_rollout([], interrupted=False, stopped=True) == ExitCode.UNAVAILABLE
