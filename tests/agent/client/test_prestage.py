"""The staging phase of a rollout, without agents: bounded parallelism, the stop after a failed
stage, the rows and the summary of a rollout stopped in staging, the JSON of both phases, and
the command line against agents that are not there (the live rollout is
tests/e2e/test_fleet_prestage_live.py)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from agent.client.fleet import Rollout, stopped_in_staging
from agent.client.main import main
from agent.client.prestage import (
    ERROR,
    SKIPPED,
    STAGED,
    UP_TO_DATE,
    Staging,
    StageResult,
    run_staging,
)
from agent.client.status import ExitCode
from tests.tools.otp_procs import free_port

A, B, C, D, E = "h1:7079", "h2:7079", "h3:7079", "h4:7079", "h5:7079"


def staged(agent: str) -> StageResult:
    return StageResult(agent, f"app@{agent[:2]}", STAGED, seconds=0.5, operation_id=1,
                       uploaded=True, reason="uploaded and unpacked, not installed",
                       removable=True)


def read_only(agent: str) -> StageResult:
    return StageResult(agent, f"app@{agent[:2]}", "failed_unchanged", ExitCode.FAILED, 0.2, 3,
                       uploaded=True, reason="cannot write /srv/app/releases: read-only")


class Stages:
    """A plain stand-in for the agents' stages: records who was asked and the most stages
    running at once. Each stage waits (up to 0.5 s) until ``expect`` run at once, so a loaded
    machine cannot hide concurrency, and more than ``expect`` would still be counted."""

    def __init__(self, failing: set[str], expect: int = 1) -> None:
        self.failing, self.expect = failing, expect
        self.asked: list[str] = []
        self.running = self.most = 0
        self._cond = threading.Condition()

    def stage(self, agent: str) -> StageResult:
        with self._cond:
            self.asked.append(agent)
            self.running += 1
            self.most = max(self.most, self.running)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self.running >= self.expect, timeout=0.5)
        time.sleep(0.02)  # room for one more to start, if the bound let it
        with self._cond:
            self.running -= 1
        return read_only(agent) if agent in self.failing else staged(agent)


@pytest.mark.parametrize(("parallel", "most"), [(1, 1), (2, 2), (5, 5), (9, 5)])
def test_at_most_stage_parallel_agents_stage_at_once(parallel: int, most: int) -> None:
    stages = Stages(failing=set(), expect=most)
    staging = run_staging([A, B, C, D, E], version="0.0.2", parallel=parallel,
                          stage=stages.stage)
    assert stages.most == most
    assert sorted(stages.asked) == [A, B, C, D, E]
    assert [r.agent for r in staging.results] == [A, B, C, D, E]  # the order given
    assert not staging.failed


def test_a_failed_stage_starts_no_further_stage() -> None:
    stages = Stages(failing={B})
    staging = run_staging([A, B, C, D], version="0.0.2", parallel=1, stage=stages.stage)
    assert stages.asked == [A, B]
    assert [(r.agent, r.result) for r in staging.results] == [
        (A, STAGED), (B, "failed_unchanged"), (C, SKIPPED), (D, SKIPPED)]
    assert staging.results[2].reason == f"not staged: staging stopped after the failure on {B}"
    assert staging.failed == (staging.results[1],)


def test_stages_under_way_finish_when_one_fails() -> None:
    # Two at a time: A ends at once, C starts; B fails only once C is under way; C finishes,
    # D is never started.
    c_started = threading.Event()

    def stage(agent: str) -> StageResult:
        if agent == B:
            assert c_started.wait(10)
            return read_only(agent)
        if agent == C:
            c_started.set()
            time.sleep(0.2)
        return staged(agent)

    staging = run_staging([A, B, C, D], version="0.0.2", parallel=2, stage=stage)
    assert [r.result for r in staging.results] == [STAGED, "failed_unchanged", STAGED, SKIPPED]


def test_a_bug_in_a_stage_is_raised() -> None:
    def stage(agent: str) -> StageResult:
        raise ZeroDivisionError("bug")

    with pytest.raises(ZeroDivisionError, match="bug"):
        run_staging([A, B], version="0.0.2", parallel=2, stage=stage)


def test_a_parallelism_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="parallelism must be at least 1, not 0"):
        run_staging([A], version="0.0.2", parallel=0, stage=staged)


def _failed_staging() -> Staging:
    return Staging("0.0.2", 4, (
        staged(A), read_only(B),
        StageResult(C, "app@h3", STAGED, seconds=0.01,
                    reason="0.0.2 already runs (current, not permanent)"),
        StageResult(D, "app@h4", UP_TO_DATE, seconds=0.01,
                    reason="already runs 0.0.2 (permanent)")), 1.5)


def test_a_rollout_stopped_in_staging_says_where_each_node_stands() -> None:
    rollout = stopped_in_staging(_failed_staging(), batch=2, max_failures=3)
    assert rollout.stopped_in_staging and rollout.stopped_after is None
    assert [(r.agent, r.batch, r.result, r.failed) for r in rollout.results] == [
        (A, 1, STAGED, False), (B, 1, "failed_unchanged", True), (C, 2, STAGED, False),
        (D, 2, UP_TO_DATE, False)]
    assert rollout.exit_code == ExitCode.FAILED  # the failed stage's: nothing was switched
    assert rollout.results[0].reason == (
        f"not switched (staging failed on {B}): uploaded and unpacked, not installed; "
        f"relctl --agent {A} remove 0.0.2 takes it back")
    assert rollout.results[1].reason == "staging failed: cannot write /srv/app/releases: read-only"
    # It runs already: remove cannot take it back, so the row does not say it does.
    assert rollout.results[2].reason == (
        f"not switched (staging failed on {B}): 0.0.2 already runs (current, not permanent)")
    # Even a --max-failures the failure is within stops it: no node is switched on a bad stage.
    assert rollout.summary() == (
        f"rollout of 0.0.2 stopped in staging, before any node was switched: staging failed "
        f"on {B}; 2 node(s) have 0.0.2 staged, not installed (relctl remove 0.0.2 on each "
        "takes it back); 0 agent(s) not staged (fix what failed, then run the same command "
        "again: what is staged is not uploaded again)")
    assert rollout.table().splitlines()[2].split()[:3] == [B, "app@h2", "failed_unchanged"]


def test_json_of_a_rollout_stopped_in_staging_has_both_phases() -> None:
    data = json.loads(json.dumps(stopped_in_staging(_failed_staging(), batch=2,
                                                    max_failures=0).as_json()))
    assert data["rollout"]["prestage"] is True
    assert (data["rollout"]["status"], data["rollout"]["stopped_in"]) == ("stopped", "staging")
    assert data["rollout"]["stopped_after_batch"] is None
    assert data["rollout"]["exit_code"] == 1 and data["rollout"]["switch_duration_s"] is None
    assert data["staging"]["status"] == "failed" and data["staging"]["parallel"] == 4
    assert data["staging"]["duration_s"] == 1.5
    assert data["staging"]["agents"][1] == {
        "agent": B, "node": "app@h2", "result": "failed_unchanged", "exit_code": 1,
        "uploaded": True, "duration_s": 0.2, "operation_id": 3,
        "reason": "cannot write /srv/app/releases: read-only"}
    assert [(n["agent"], n["result"]) for n in data["nodes"]] == [
        (A, STAGED), (B, "failed_unchanged"), (C, STAGED), (D, UP_TO_DATE)]


def test_json_of_a_completed_prestaged_rollout_has_both_phases() -> None:
    staging = Staging("0.0.2", 2, (staged(A), staged(B)), 0.75)
    rollout = Rollout("0.0.2", 2, 0, 1, (), staging=staging, switch_seconds=1.25)
    data = rollout.as_json()
    assert data["rollout"]["prestage"] is True and data["rollout"]["stopped_in"] is None
    assert data["rollout"]["switch_duration_s"] == 1.25
    assert data["staging"]["status"] == "completed"
    assert staging.line() == ("staging of 0.0.2 on 2 agent(s), 2 at a time, took 0.8 s: "
                              "2 staged (2 uploaded)")


# --- the command line, against agents that are not there -----------------------------------

@pytest.fixture
def tarball(tmp_path: Path) -> Path:
    path = tmp_path / "app-0.0.2.tar.gz"
    path.write_bytes(b"never sent: no agent answers")
    return path


def test_an_unreachable_agent_fails_the_staging_before_any_switch(
        tarball: Path, capsys: pytest.CaptureFixture[str]) -> None:
    closed = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    argv = [arg for a in closed for arg in ("--agent", a)]
    code = main([*argv, "upgrade", "0.0.2", "--tarball", str(tarball), "--timeout", "5",
                 "--stage-parallel", "1", "--batch", "3"])
    assert code == ExitCode.UNAVAILABLE
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "staging 0.0.2 on 3 agent(s), 1 at a time"
    assert out[1].startswith(f"[{closed[0]}]  => error: agent {closed[0]} is not reachable (")
    assert out[2].startswith("staging of 0.0.2 on 3 agent(s), 1 at a time, took ")
    assert out[2].endswith(": 1 error, 2 skipped (0 uploaded)")
    assert not any(line.startswith("batch ") for line in out)  # no switch phase
    rows = [line.split()[:3] for line in out[5:8]]
    assert rows == [[closed[0], "-", "error"], [closed[1], "-", "skipped"],
                    [closed[2], "-", "skipped"]]
    assert out[8].startswith(f"rollout of 0.0.2 stopped in staging, before any node was "
                             f"switched: staging failed on {closed[0]}; 0 node(s) have")


def test_no_tarball_means_no_staging(capsys: pytest.CaptureFixture[str]) -> None:
    closed = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    code = main(["--agent", closed[0], "--agent", closed[1], "upgrade", "0.0.2", "-o", "json",
                 "--timeout", "5"])
    assert code == ExitCode.UNAVAILABLE
    data = json.loads(capsys.readouterr().out)
    assert data["staging"] is None and data["rollout"]["stopped_in"] == "switch"
