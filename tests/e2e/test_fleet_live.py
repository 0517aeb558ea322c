"""Rolling upgrades over several real agents: three counter nodes on one epmd, each with its own
relctl-agent, the middle one with a health gate that fails once 0.0.2 is installed. The first
two tests run with --no-prestage (each agent uploads in its batch, the order before pre-staging);
the pre-staged rollouts are also tests/e2e/test_fleet_prestage_live.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

UPGRADED = '#{count => 2,upgraded_from => "0.0.1"}'  # 0.0.2's code_change kept the count


def counter_state(node: NodeProc) -> str:
    return erl_eval(node, "sys:get_state(counter)")


def releases(node: NodeProc) -> str:
    """The node's own view (not the agent's): [{Version, Status}]."""
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


def journal(agent: AgentProc) -> list[tuple[str, str, str]]:
    result = relctl("operations", "-o", "json", agents=[agent.address])
    assert result.returncode == 0, result.stdout + result.stderr
    return [(o["kind"], o["to_version"], o["outcome"]) for o in result.json()["operations"]]


Fleet = list[tuple[NodeProc, AgentProc]]


@pytest.fixture
def fleet(agents: list[AgentProc], node_factory: NodeFactory, tmp_path: Path) -> Fleet:
    pairs: Fleet = []
    for i in (1, 2, 3):
        node = node_factory(f"counter{i}@localhost")
        gate = {"health_probes": ["counter:health"], "health_soak": 1} if i == 2 else {}
        agent = start_agent(tmp_path / f"agent{i}",
                            [NodeEntry(node.name, node.cookie, node.epmd_port)],
                            extra_agent={"reconnect_max_delay": 1}, node_extra=gate)
        agents.append(agent)
        pairs.append((node, agent))
        erl_eval(node, "[counter:incr() || _ <- [1, 2]], ok")
    # The flag survives the upgrade: counter:health() of 0.0.2 then fails the gate.
    erl_eval(pairs[1][0], "persistent_term:put({counter, healthy}, false)")
    return pairs


def test_a_failing_node_stops_the_rollout_and_a_run_again_goes_on_from_there(
        fleet: Fleet, release_build: ReleaseBuild) -> None:
    (n1, a1), (n2, a2), (n3, a3) = fleet
    addresses = [a.address for _, a in fleet]
    tarball = str(release_build.tarball("0.0.2"))

    stopped = relctl("upgrade", "0.0.2", "--tarball", tarball, "--batch", "1",
                     "--max-failures", "0", "--no-prestage", agents=addresses, timeout=120)
    assert stopped.returncode == 5, stopped.stdout + stopped.stderr  # the failure rolled back
    out = stopped.stdout.splitlines()
    assert [line for line in out if line.startswith("batch ")] == [
        f"batch 1/3: {a1.address}", f"batch 2/3: {a2.address}"]
    prefix = f"[{a2.address}]"
    assert f"{prefix}  verify" in stopped.stdout and f"{prefix}  rollback" in stopped.stdout
    assert not any(line.startswith(f"[{a3.address}]") for line in out)
    table = out[out.index("") + 1:]
    assert table[0].split() == ["AGENT", "NODE", "RESULT", "FROM", "->", "TO", "DURATION",
                                "OPERATION", "REASON"]
    row1 = table[1].split()  # ..., DURATION "1.2 s", OPERATION 1, no reason
    assert row1[:6] == [a1.address, "counter1@localhost", "succeeded", "0.0.1", "->", "0.0.2"]
    assert row1[7:] == ["s", "1"]
    row2 = table[2].split()
    assert row2[:6] == [a2.address, "counter2@localhost", "rolled_back", "0.0.1", "->", "0.0.2"]
    assert table[2].endswith("health probe counter:health() returned {error,unhealthy}")
    assert table[3].split() == [a3.address, "-", "skipped", "-", "-", "-", "not", "started:",
                                "the", "rollout", "stopped", "after", "batch", "2"]
    assert table[4].startswith("rollout of 0.0.2 stopped after batch 2 of 3: 1 failure(s) > "
                               "--max-failures 0; 1 agent(s) not attempted")
    assert len(table) == 5

    assert counter_state(n1) == UPGRADED
    assert releases(n1) == '[{"0.0.2",permanent},{"0.0.1",old}]'
    assert counter_state(n2) == "2"  # rolled back by the down script: same count, old code
    assert releases(n2).startswith('[{"0.0.2",') and '{"0.0.1",permanent}' in releases(n2)
    assert counter_state(n3) == "2"
    assert releases(n3) == '[{"0.0.1",permanent}]'
    assert journal(a3) == []  # never contacted

    # Run again, allowing one failure: node 1 is left alone, node 2 fails again, node 3 goes.
    again = relctl("upgrade", "0.0.2", "--tarball", tarball, "--max-failures", "1", "-o", "json",
                   "--no-prestage", agents=addresses, timeout=120)
    assert again.returncode == 5, again.stdout + again.stderr
    data = again.json()
    assert [(n["agent"], n["node"], n["batch"], n["result"]) for n in data["nodes"]] == [
        (a1.address, "counter1@localhost", 1, "up_to_date"),
        (a2.address, "counter2@localhost", 2, "rolled_back"),
        (a3.address, "counter3@localhost", 3, "succeeded")]
    assert data["rollout"]["status"] == "completed" and data["rollout"]["failures"] == 1
    assert data["rollout"]["summary"] == (
        "rollout of 0.0.2 completed: 1 up_to_date, 1 rolled_back, 1 succeeded; "
        "1 failure(s) <= --max-failures 1")
    assert data["nodes"][2]["operation_id"] == 1 and data["nodes"][2]["from_version"] == "0.0.1"
    assert counter_state(n3) == UPGRADED
    # Not upgraded again: the agent journaled the rerun as up_to_date (and got no upload).
    assert journal(a1) == [("upgrade", "0.0.2", "up_to_date"), ("upgrade", "0.0.2", "succeeded")]
    assert data["nodes"][0]["reason"] == "already runs 0.0.2 (permanent)"
    assert journal(a2) == [("upgrade", "0.0.2", "rolled_back")] * 2

    # Once node 2 is healthy, the same command finishes the rollout.
    erl_eval(n2, "persistent_term:put({counter, healthy}, true)")
    done = relctl("upgrade", "0.0.2", "--tarball", tarball, "--no-prestage", agents=addresses,
                  timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "rollout of 0.0.2 completed: 2 up_to_date, 1 succeeded"
    assert counter_state(n2) == UPGRADED
    assert releases(n2) == '[{"0.0.2",permanent},{"0.0.1",old}]'


def test_a_batch_upgrades_its_agents_together_and_reports_an_agent_of_several_nodes(
        fleet: Fleet, agents: list[AgentProc], release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    (n1, a1), (n2, a2), (n3, a3) = fleet
    # One more agent, managing two of the nodes: without --node it cannot choose.
    both = start_agent(tmp_path / "agent-both", [NodeEntry(n.name, n.cookie, n.epmd_port)
                                                 for n in (n1, n3)])
    agents.append(both)
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "--batch", "3", "--max-failures", "0", "-o", "json", "--no-prestage",
                    agents=[a1.address, a2.address, a3.address, both.address], timeout=120)
    # The batch of three went together (the failure in it stops only what comes after).
    assert result.returncode == 5, result.stdout + result.stderr
    data = result.json()
    assert [(n["agent"], n["batch"], n["result"], n["exit_code"]) for n in data["nodes"]] == [
        (a1.address, 1, "succeeded", 0), (a2.address, 1, "rolled_back", 5),
        (a3.address, 1, "succeeded", 0), (both.address, 2, "skipped", 0)]
    assert data["rollout"]["stopped_after_batch"] == 1
    assert counter_state(n1) == counter_state(n3) == UPGRADED
    assert counter_state(n2) == "2"

    # Alone, the agent of two nodes is asked and answers with its own message (exit 2: usage),
    # here in the staging phase (pre-staged by default), so no node is switched.
    alone = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                   agents=[both.address, a1.address], timeout=60)
    assert alone.returncode == 2, alone.stdout + alone.stderr
    row = next(line for line in alone.stdout.splitlines() if line.startswith(both.address))
    assert row.split()[1:4] == ["-", "error", "0.0.2"]
    assert row.endswith("this agent manages 2 nodes (counter1@localhost, counter3@localhost); "
                        "pass --node NAME")


def test_a_rollout_walks_the_agents_of_a_file_sd_file_in_its_order(
        fleet: Fleet, release_build: ReleaseBuild, tmp_path: Path) -> None:
    """The file Prometheus scrapes (targets are /metrics, relctl_agent the gRPC port), with
    the canary group left out by --selector."""
    (n1, a1), (n2, a2), (n3, a3) = fleet
    sd = tmp_path / "relctl-agents.yml"
    sd.write_text("".join(
        f"- targets: ['127.0.0.1:{a.metrics_port}']\n"
        f"  labels:\n    env: {env}\n    relctl_agent: \"{a.grpc_port}\"\n"
        for a, env in ((a3, "prod"), (a2, "canary"), (a1, "prod"))))
    done = relctl("--agents-file", str(sd), "--selector", "env=prod", "upgrade", "0.0.2",
                  "--tarball", str(release_build.tarball("0.0.2")), "--batch", "1",
                  timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("batch ")] == [
        f"batch 1/2: {a3.address}", f"batch 2/2: {a1.address}"]
    for node in (n1, n3):
        assert counter_state(node) == UPGRADED
        assert releases(node) == '[{"0.0.2",permanent},{"0.0.1",old}]'
    assert releases(n2) == '[{"0.0.1",permanent}]' and journal(a2) == []
