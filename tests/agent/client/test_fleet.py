"""The rolling upgrade of `relctl upgrade` over several agents, without agents: the plan, the
stop rule, the exit code, the rendering, and the command line against agents that are not
there (the live rollout is tests/e2e/test_fleet_live.py)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from agent.client.commands.ops import upgrade
from agent.client.fleet import (
    ERROR,
    SKIPPED,
    NodeResult,
    Rollout,
    over_budget,
    plan,
    result_of,
    result_of_error,
    run_rollout,
)
from agent.client.main import main
from agent.client.status import WORST_FIRST, CliError, ExitCode
from relctl.v1 import agent_pb2 as pb
from tests.tools.otp_procs import free_port

A, B, C, D, E = "h1:7079", "h2:7079", "h3:7079", "h4:7079", "h5:7079"


def ok(agent: str, batch: int) -> NodeResult:
    return NodeResult(agent, f"app@{agent[:2]}", batch, "succeeded", ExitCode.OK, "0.0.1",
                      "0.0.2", 1.25, 1)


def rolled_back(agent: str, batch: int) -> NodeResult:
    return NodeResult(agent, f"app@{agent[:2]}", batch, "rolled_back", ExitCode.ROLLED_BACK,
                      "0.0.1", "0.0.2", 2.5, 7,
                      "health probe app:health() returned {error,unhealthy}")


class Fleet:
    """A plain stand-in for the agents: a result per agent, and who was asked."""

    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.asked: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def attempt(self, agent: str, batch: int) -> NodeResult:
        with self._lock:
            self.asked.append((agent, batch))
        return rolled_back(agent, batch) if agent in self.failing else ok(agent, batch)


# --- the plan and the stop rule ---------------------------------------------------------------

@pytest.mark.parametrize(("size", "expected"), [
    (1, [(A,), (B,), (C,), (D,), (E,)]),
    (2, [(A, B), (C, D), (E,)]),
    (5, [(A, B, C, D, E)]),
    (9, [(A, B, C, D, E)]),
])
def test_the_plan_is_batches_in_the_order_given(size: int, expected: list[tuple[str, ...]]
                                                 ) -> None:
    assert plan([A, B, C, D, E], size) == expected


def test_a_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="batch size must be at least 1, not 0"):
        plan([A], 0)


@pytest.mark.parametrize(("failures", "max_failures", "stop"), [
    (0, 0, False), (1, 0, True), (1, 1, False), (2, 1, True), (3, 5, False)])
def test_the_rollout_stops_only_above_max_failures(failures: int, max_failures: int,
                                                   stop: bool) -> None:
    assert over_budget(failures, max_failures) is stop


def test_a_failure_stops_the_rollout_before_the_next_batch() -> None:
    fleet = Fleet(failing={B})
    rollout = run_rollout([A, B, C], version="0.0.2", batch=1, max_failures=0,
                          attempt=fleet.attempt, node="app@x")
    assert fleet.asked == [(A, 1), (B, 2)]  # C is never contacted
    assert [(r.agent, r.result, r.batch) for r in rollout.results] == [
        (A, "succeeded", 1), (B, "rolled_back", 2), (C, SKIPPED, 3)]
    skipped = rollout.results[2]
    assert skipped.node == "app@x" and skipped.code == ExitCode.OK
    assert skipped.reason == "not started: the rollout stopped after batch 2"
    assert (rollout.stopped_after, rollout.failures, rollout.not_attempted) == (2, 1, 1)
    assert rollout.exit_code == ExitCode.ROLLED_BACK
    assert rollout.summary() == (
        "rollout of 0.0.2 stopped after batch 2 of 3: 1 failure(s) > --max-failures 0; "
        "1 agent(s) not attempted (fix what failed, then run the same command again: nodes "
        "already on 0.0.2 are left alone)")


def test_failures_within_max_failures_let_the_rollout_go_on() -> None:
    fleet = Fleet(failing={B})
    rollout = run_rollout([A, B, C], version="0.0.2", batch=1, max_failures=1,
                          attempt=fleet.attempt)
    assert fleet.asked == [(A, 1), (B, 2), (C, 3)]
    assert rollout.stopped_after is None and rollout.not_attempted == 0
    assert rollout.exit_code == ExitCode.ROLLED_BACK  # a node failed: not 0, even so
    assert rollout.summary() == ("rollout of 0.0.2 completed: 2 succeeded, 1 rolled_back; "
                                 "1 failure(s) <= --max-failures 1")


def test_the_failures_are_counted_over_all_batches() -> None:
    fleet = Fleet(failing={A, C})
    rollout = run_rollout([A, B, C, D, E], version="0.0.2", batch=2, max_failures=1,
                          attempt=fleet.attempt)
    assert fleet.asked == [(A, 1), (B, 1), (C, 2), (D, 2)]
    assert [r.result for r in rollout.results] == [
        "rolled_back", "succeeded", "rolled_back", "succeeded", SKIPPED]
    assert rollout.stopped_after == 2 and rollout.failures == 2


def test_a_failure_in_the_last_batch_completes_but_says_it_was_over_the_limit() -> None:
    rollout = run_rollout([A, B], version="0.0.2", batch=1, max_failures=0,
                          attempt=Fleet(failing={B}).attempt)
    assert rollout.stopped_after is None
    assert rollout.summary() == ("rollout of 0.0.2 completed: 1 succeeded, 1 rolled_back; "
                                 "1 failure(s) > --max-failures 0")


def test_the_agents_of_a_batch_upgrade_at_the_same_time() -> None:
    # Each attempt waits for the other two: run one after the other, the barrier times out.
    barrier = threading.Barrier(3, timeout=10)
    fleet = Fleet(failing=set())

    def attempt(agent: str, batch: int) -> NodeResult:
        barrier.wait()
        return fleet.attempt(agent, batch)

    rollout = run_rollout([A, B, C], version="0.0.2", batch=3, max_failures=0, attempt=attempt)
    assert sorted(fleet.asked) == [(A, 1), (B, 1), (C, 1)]
    assert [r.agent for r in rollout.results] == [A, B, C]  # the order given, not of finishing
    assert rollout.exit_code == ExitCode.OK


def test_a_bug_in_an_attempt_is_raised_not_reported_as_a_node_failure() -> None:
    def attempt(agent: str, batch: int) -> NodeResult:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError, match="bug"):
        run_rollout([A, B], version="0.0.2", batch=2, max_failures=5, attempt=attempt)


# --- exit code ----------------------------------------------------------------------------------

def test_the_upgrade_help_lists_the_worst_first_order() -> None:
    order = ", ".join(str(int(code)) for code in WORST_FIRST)
    assert f"in this order: {order} (0 when none failed)" in " ".join(
        (upgrade.help or "").split())


def test_ok_results_and_skipped_agents_are_not_failures() -> None:
    rows = (ok(A, 1), NodeResult(B, "", 1, "dry_run"), NodeResult(C, "", 1, "up_to_date"),
            NodeResult(D, "", 2, SKIPPED, reason="not started"),
            NodeResult(E, "", 1, ERROR, ExitCode.UNAVAILABLE, reason="not reachable"))
    assert [r.failed for r in rows] == [False, False, False, False, True]
    assert Rollout("0.0.2", 1, 0, 2, rows, 1).exit_code == ExitCode.UNAVAILABLE


# --- from the agents' answers -------------------------------------------------------------------

def test_a_finished_operation_becomes_a_row() -> None:
    op = pb.Operation(id=4, node="app@h2", outcome=pb.OUTCOME_ROLLED_BACK, from_version="0.0.1",
                      to_version="0.0.2", error="health probe app:health() returned nok")
    row = result_of(B, 2, op, 3.0)
    assert row == NodeResult(B, "app@h2", 2, "rolled_back", ExitCode.ROLLED_BACK, "0.0.1",
                             "0.0.2", 3.0, 4, "health probe app:health() returned nok")
    assert row.failed


@pytest.mark.parametrize(("outcome", "name", "code", "failed"), [
    (pb.OUTCOME_SUCCEEDED, "succeeded", ExitCode.OK, False),
    (pb.OUTCOME_DRY_RUN, "dry_run", ExitCode.OK, False),
    (pb.OUTCOME_UP_TO_DATE, "up_to_date", ExitCode.OK, False),
    (pb.OUTCOME_FAILED_UNCHANGED, "failed_unchanged", ExitCode.FAILED, True),
    (pb.OUTCOME_FAILED, "failed", ExitCode.FAILED_CHANGED, True),
    (pb.OUTCOME_INTERRUPTED, "interrupted", ExitCode.FAILED_CHANGED, True),
    (pb.OUTCOME_RUNNING, "running", ExitCode.FAILED_CHANGED, True),  # never final: unknown
])
def test_each_outcome_counts_as_documented(outcome: int, name: str, code: ExitCode,
                                           failed: bool) -> None:
    row = result_of(A, 1, pb.Operation(id=1, node="app@h1", outcome=outcome), None)
    assert (row.result, row.code, row.failed) == (name, code, failed)


def test_a_dry_run_row_says_nothing_changed() -> None:
    row = result_of(A, 1, pb.Operation(id=1, outcome=pb.OUTCOME_DRY_RUN), 0.5)
    assert row.reason == "dry run: checks passed, nothing changed"


def test_an_up_to_date_row_says_so_and_shows_the_version_once() -> None:
    op = pb.Operation(id=7, node="app@h1", outcome=pb.OUTCOME_UP_TO_DATE, from_version="0.0.2",
                      to_version="0.0.2")
    row = result_of(A, 1, op, 0.1)
    assert (row.result, row.code, row.failed, row.operation_id) == (
        "up_to_date", ExitCode.OK, False, 7)
    assert (row.reason, row.versions()) == ("already runs 0.0.2 (permanent)", "0.0.2")


def test_an_agent_error_keeps_its_code_and_loses_the_agent_prefix() -> None:
    err = CliError(f"agent {A}: this agent manages 2 nodes (a@h1, b@h1); pass --node NAME",
                   ExitCode.USAGE)
    row = result_of_error(A, "", 1, "0.0.2", err, 0.01)
    assert (row.result, row.code, row.reason) == (
        ERROR, ExitCode.USAGE, "this agent manages 2 nodes (a@h1, b@h1); pass --node NAME")
    assert row.failed


# --- rendering ----------------------------------------------------------------------------------

def _stopped() -> Rollout:
    return Rollout("0.0.2", 1, 0, 3, (
        ok(A, 1), rolled_back(B, 2),
        NodeResult(C, "", 3, SKIPPED, reason="not started: the rollout stopped after batch 2")),
        stopped_after=2, stopped_failures=1)


def test_the_table_has_one_row_per_agent() -> None:
    assert _stopped().table().splitlines() == [
        "AGENT    NODE    RESULT       FROM -> TO      DURATION  OPERATION  REASON",
        "h1:7079  app@h1  succeeded    0.0.1 -> 0.0.2  1.2 s     1",
        "h2:7079  app@h2  rolled_back  0.0.1 -> 0.0.2  2.5 s     7          "
        "health probe app:health() returned {error,unhealthy}",
        "h3:7079  -       skipped      -               -         -          "
        "not started: the rollout stopped after batch 2"]


def test_a_reason_of_several_lines_shows_its_first_in_the_table() -> None:
    row = NodeResult(A, "app@h1", 1, "failed", ExitCode.FAILED_CHANGED, "0.0.1", "0.0.2", 1.0,
                     3, "install_release failed\n{badmatch,...}")
    table = Rollout("0.0.2", 1, 0, 1, (row,)).table()
    assert table.splitlines()[1].endswith("  install_release failed")


def test_json_has_the_same_data() -> None:
    data = json.loads(json.dumps(_stopped().as_json()))
    assert data["rollout"] == {
        "version": "0.0.2", "batch": 1, "max_failures": 0, "batches": 3, "prestage": False,
        "status": "stopped", "stopped_in": "switch", "stopped_after_batch": 2, "failures": 1,
        "not_attempted": 1, "exit_code": 5, "switch_duration_s": None,
        "interrupted_in_batch": None, "may_go_on": [], "summary": _stopped().summary()}
    assert data["staging"] is None
    assert data["nodes"] == [
        {"agent": A, "node": "app@h1", "batch": 1, "result": "succeeded", "exit_code": 0,
         "from_version": "0.0.1", "to_version": "0.0.2", "duration_s": 1.25, "operation_id": 1,
         "reason": None},
        {"agent": B, "node": "app@h2", "batch": 2, "result": "rolled_back", "exit_code": 5,
         "from_version": "0.0.1", "to_version": "0.0.2", "duration_s": 2.5, "operation_id": 7,
         "reason": "health probe app:health() returned {error,unhealthy}"},
        {"agent": C, "node": None, "batch": 3, "result": "skipped", "exit_code": 0,
         "from_version": None, "to_version": None, "duration_s": None, "operation_id": None,
         "reason": "not started: the rollout stopped after batch 2"}]


# --- the command line, against agents that are not there -----------------------------------

@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    path = tmp_path / "app-0.0.2.tar.gz"
    path.write_bytes(b"never sent: no agent answers")
    return path


def test_an_unreachable_agent_stops_the_rollout(
        tarball: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    argv = [arg for a in closed for arg in ("--agent", a)]
    code = main([*argv, "upgrade", "0.0.2", "--tarball", str(tarball), "--timeout", "5",
                 "--no-prestage"])
    assert code == ExitCode.UNAVAILABLE
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"batch 1/3: {closed[0]}"
    assert out[1].startswith(f"[{closed[0]}]  => error: agent {closed[0]} is not reachable (")
    assert out[2] == "" and out[3].split()[:3] == ["AGENT", "NODE", "RESULT"]
    rows = [line.split()[:3] for line in out[4:7]]
    assert rows == [[closed[0], "-", "error"], [closed[1], "-", "skipped"],
                    [closed[2], "-", "skipped"]]
    assert out[7].startswith("rollout of 0.0.2 stopped after batch 1 of 3: 1 failure(s) > "
                             "--max-failures 0; 2 agent(s) not attempted")


def test_in_json_mode_only_json_is_printed(
        tarball: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    code = main(["--agent", closed[0], "--agent", closed[1], "upgrade", "0.0.2", "--tarball",
                 str(tarball), "--batch", "2", "--max-failures", "5", "-o", "json",
                 "--no-prestage"])
    assert code == ExitCode.UNAVAILABLE
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert captured.err == ""
    assert data["rollout"]["status"] == "completed"
    assert [(n["agent"], n["batch"], n["result"], n["exit_code"]) for n in data["nodes"]] == [
        (closed[0], 1, "error", 3), (closed[1], 1, "error", 3)]
    assert data["nodes"][0]["reason"].startswith(f"agent {closed[0]} is not reachable (")


def test_one_agent_keeps_the_single_upgrade_output(
        tarball: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed = f"127.0.0.1:{free_port()}"
    code = main(["--agent", closed, "upgrade", "0.0.2", "--tarball", str(tarball),
                 "--batch", "3"])
    assert code == ExitCode.UNAVAILABLE
    captured = capsys.readouterr()
    assert captured.out == ""  # no table, no rollout line: the one-agent command as before
    [line] = captured.err.splitlines()
    assert line.startswith(f"relctl: agent {closed} is not reachable (")
