"""A rollout's rows when an agent goes silent or relctl is interrupted (issue 23, items 1-2),
without agents: a silent agent is `unknown` and counts against --max-failures, an answer read
back later replaces it, and Ctrl-C ends the rollout at once with a row per agent and exit 130.
The live version, with an agent really silenced (SIGSTOP), is
tests/e2e/test_fleet_silence_live.py."""

from __future__ import annotations

import _thread
import threading
from collections.abc import Iterator
from dataclasses import replace

import grpc
import pytest

from agent.client.channel import MIN_PING_INTERVAL, keepalive_options
from agent.client.common import Settings
from agent.client.fleet import (
    IN_PROGRESS,
    SKIPPED,
    UNKNOWN,
    NodeResult,
    run_rollout,
    stopped_in_staging,
)
from agent.client.prestage import STAGED, StageResult, run_staging
from agent.client.status import CliError, ExitCode
from agent.client.transfer import follow
from agent.client.watch import Watch, lost_reason
from relctl.v1 import agent_pb2 as pb
from tests.tools.grpc_errors import FailedCall

A, B, C = "h1:7079", "h2:7079", "h3:7079"


def ok(agent: str, batch: int) -> NodeResult:
    return NodeResult(agent, "app@h", batch, "succeeded", ExitCode.OK, "0.0.1", "0.0.2", 1.0, 3)


def silent(agent: str, batch: int) -> NodeResult:
    return NodeResult(agent, "app@h", batch, UNKNOWN, ExitCode.FAILED_CHANGED,
                      to_version="0.0.2", operation_id=12,
                      reason="lost during step verify of operation 12: no answer for 30 s")


def test_keepalive_notices_silence_within_the_host_timeout() -> None:
    options = dict(keepalive_options(30.0))
    assert options["grpc.keepalive_time_ms"] + options["grpc.keepalive_timeout_ms"] == 30_000
    assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]
    assert options["grpc.http2.max_pings_without_data"] == 0  # a quiet soak keeps pinging
    assert options["grpc.keepalive_permit_without_calls"] == 0
    # Never more often than the agent accepts (agent.api.service.KEEPALIVE_SERVER_OPTIONS).
    assert dict(keepalive_options(2.0))["grpc.keepalive_time_ms"] == MIN_PING_INTERVAL * 1000


def test_a_silent_agent_counts_against_max_failures_and_stops_the_rollout() -> None:
    rollout = run_rollout([A, B, C], version="0.0.2", batch=1, max_failures=0,
                          attempt=lambda a, n: silent(a, n) if a == B else ok(a, n))
    assert [r.result for r in rollout.results] == ["succeeded", UNKNOWN, SKIPPED]
    assert rollout.stopped_after == 2
    assert rollout.exit_code == ExitCode.FAILED_CHANGED  # may go on: never 1, never 0
    assert rollout.may_go_on() == [rollout.results[1]]


def test_an_answer_read_back_before_the_batch_ends_counts_as_what_it_is() -> None:
    # The agent answered again (its upgrade had succeeded) before the stop rule was applied.
    rollout = run_rollout([A, B, C], version="0.0.2", batch=1, max_failures=0,
                          attempt=lambda a, n: silent(a, n) if a == B else ok(a, n),
                          current=lambda r: ok(r.agent, r.batch) if r.result == UNKNOWN else r)
    assert rollout.stopped_after is None
    assert [r.agent for r in rollout.results] == [A, B, C]


def test_an_unknown_row_is_never_done_and_the_summary_names_its_operation() -> None:
    rollout = run_rollout([A, B], version="0.0.2", batch=2, max_failures=1,
                          attempt=lambda a, n: silent(a, n) if a == B else ok(a, n))
    assert rollout.results[1].failed
    assert rollout.summary() == (
        "rollout of 0.0.2 completed: 1 succeeded, 1 unknown; 1 failure(s) <= --max-failures 1; "
        "1 operation(s) may go on on their agents: h2:7079 (operation 12); relctl --agent "
        "AGENT operation N shows how each ends")


def test_ctrl_c_ends_the_rollout_at_once_with_a_row_per_agent_and_exit_130() -> None:
    release = threading.Event()

    def attempt(agent: str, batch: int) -> NodeResult:
        if agent == A:
            return ok(agent, batch)
        # B's operation runs on: relctl is interrupted while it waits for it.
        threading.Timer(0.3, _thread.interrupt_main).start()
        release.wait(30)
        return ok(agent, batch)

    def in_flight(agent: str, batch: int) -> NodeResult:
        return NodeResult(agent, "app@h", batch, IN_PROGRESS, ExitCode.FAILED_CHANGED,
                          operation_id=13, reason="interrupted while it ran")

    try:
        rollout = run_rollout([A, B, C], version="0.0.2", batch=2, max_failures=0,
                              attempt=attempt, in_flight=in_flight)
    finally:
        release.set()
    assert [(r.agent, r.result) for r in rollout.results] == [
        (A, "succeeded"), (B, IN_PROGRESS), (C, SKIPPED)]
    assert rollout.results[2].reason == "not started: the rollout was interrupted during batch 1"
    assert rollout.interrupted_in == 1
    assert rollout.exit_code == ExitCode.INTERRUPTED
    assert rollout.summary() == (
        "rollout of 0.0.2 interrupted during batch 1 of 2: no further batch was started; "
        "1 operation(s) may go on on their agents: h2:7079 (operation 13); relctl --agent "
        "AGENT operation N shows how each ends; 1 agent(s) not attempted (run the same command "
        "again once they ended: nodes already on 0.0.2 are left alone)")
    data = rollout.as_json()["rollout"]
    assert (data["status"], data["exit_code"], data["may_go_on"]) == ("interrupted", 130, [B])


def test_silence_is_worded_apart_from_a_closed_connection() -> None:
    keepalive = FailedCall(grpc.StatusCode.UNAVAILABLE, "keepalive watchdog timeout")
    assert lost_reason(keepalive, 30.0).startswith("no answer for 30 s, not even to keepalive")
    closed = FailedCall(grpc.StatusCode.UNAVAILABLE, "Socket closed")
    assert lost_reason(closed, 30.0) == "the connection broke (Socket closed)"


def test_a_watch_says_where_the_operation_was() -> None:
    assert Watch(A, 12, "verify").where() == "step verify of operation 12"
    assert Watch(A).where() == "its first step (before the agent named the operation)"


def test_a_rollout_stopped_for_an_agent_that_answered_done_later_is_not_exit_0() -> None:
    rollout = run_rollout([B, C], version="0.0.2", batch=1, max_failures=0,
                          attempt=lambda a, n: silent(a, n) if a == B else ok(a, n))
    # What fleet_upgrade does once B answered: its row becomes the real outcome.
    rollout = replace(rollout, results=(ok(B, 1), *rollout.results[1:]))
    assert rollout.exit_code == ExitCode.UNAVAILABLE  # C was never reached
    assert rollout.summary().startswith(
        "rollout of 0.0.2 stopped after batch 1 of 2: 1 failure(s) > --max-failures 0 (then; "
        "0 now: silent agents answered since); 1 agent(s) not attempted")


def test_ctrl_c_while_following_one_agent_is_130_not_1() -> None:
    def events() -> Iterator[pb.ProgressEvent]:
        yield pb.ProgressEvent(operation_id=5)
        raise KeyboardInterrupt

    with pytest.raises(CliError) as info:
        follow(Settings(), "unix:/run/relctl/agent.sock", events())
    assert info.value.code == ExitCode.INTERRUPTED
    assert str(info.value) == ("stopped following; operation 5 goes on on the agent (relctl "
                               "operation 5)")


def test_ctrl_c_in_staging_prints_where_each_node_stands_and_exits_130() -> None:
    release = threading.Event()

    def stage(agent: str) -> StageResult:
        if agent == A:
            return StageResult(agent, "app@h", STAGED, seconds=1.0, operation_id=4,
                               uploaded=True, reason="uploaded and unpacked, not installed",
                               removable=True)
        threading.Timer(0.3, _thread.interrupt_main).start()
        release.wait(30)
        return StageResult(agent, "app@h", STAGED)

    try:
        staging = run_staging([A, B, C], version="0.0.2", parallel=1, stage=stage)
    finally:
        release.set()
    assert staging.interrupted
    assert [r.result for r in staging.results] == [STAGED, IN_PROGRESS, SKIPPED]
    rollout = stopped_in_staging(staging, batch=1, max_failures=0)
    assert rollout.exit_code == ExitCode.INTERRUPTED
    assert [r.result for r in rollout.results] == [STAGED, IN_PROGRESS, SKIPPED]
    assert rollout.results[0].reason.startswith("not switched (relctl was interrupted in "
                                                "staging): uploaded and unpacked")
    assert rollout.summary() == (
        "rollout of 0.0.2 interrupted in staging, before any node was switched: 1 node(s) have "
        "0.0.2 staged, not installed; 1 upload(s) or unpack(s) may go on on their agents "
        f"({B}); run the same command again to go on: what is staged from these bytes is not "
        "sent again")
    assert rollout.as_json()["rollout"]["status"] == "interrupted"
