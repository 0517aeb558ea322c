"""relctl-agent and relctl end to end: real node, real agent process, real gRPC and HTTP."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, eventually, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval, free_port

pytestmark = pytest.mark.otp

def node_releases(node: NodeProc) -> list[dict[str, str]]:
    """What the node itself says, through an independent Erlang probe."""
    printed = erl_eval(node, 'lists:flatten([io_lib:format("~s ~s ~s;", [N, V, S]) '
                             '|| {N, V, _, S} <- release_handler:which_releases()])')
    entries = [e.split() for e in printed.strip('"').split(";") if e.strip()]
    return [{"name": n, "version": v, "status": s} for n, v, s in entries]


def metrics(agent: AgentProc) -> dict[str, list[Any]]:
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(agent.metrics_text()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        extra_agent={"refresh_interval": 1, "reconnect_max_delay": 1})
    agents.append(started)
    return started


def test_versions_json_is_what_the_node_reports(agent: AgentProc, counter_node: NodeProc) -> None:
    result = relctl("versions", "-o", "json", agents=[agent.address])
    assert result.returncode == 0, result.stderr
    assert result.json() == {"nodes": [{
        "agent": agent.address, "node": "counter@localhost", "up": True,
        "releases": node_releases(counter_node)}]}
    assert node_releases(counter_node) == [
        {"name": "counter", "version": "0.0.1", "status": "permanent"}]


def test_versions_table_marks_the_running_release(agent: AgentProc) -> None:
    result = relctl("versions", agents=[agent.address])
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == ["NODE", "RELEASE", "VERSION", "STATUS"]
    assert row.split() == ["*", "counter@localhost", "counter", "0.0.1", "permanent"]


def test_options_work_before_and_after_the_command(agent: AgentProc) -> None:
    before = relctl("-o", "json", "--node", "counter@localhost", "versions", agents=[agent.address])
    after = relctl("versions", "-o", "json", "--node", "counter@localhost", agents=[agent.address])
    from_env = relctl("versions", "-o", "json", env={"RELCTL_AGENT": agent.address})
    assert before.returncode == after.returncode == from_env.returncode == 0
    assert before.json() == after.json() == from_env.json()


def test_metrics_mirror_the_node(agent: AgentProc) -> None:
    relctl("versions", agents=[agent.address])  # at least one timed which_releases
    samples = metrics(agent)
    assert [(s.labels, s.value) for s in samples["beam_node_up"]] == [
        ({"node": "counter@localhost"}, 1.0)]
    assert [(s.labels, s.value) for s in samples["beam_release_info"]] == [
        ({"node": "counter@localhost", "release": "counter", "version": "0.0.1",
          "status": "permanent"}, 1.0)]
    counts = {s.labels["function"]: s.value for s in samples["relctl_rpc_duration_seconds_count"]}
    assert counts["release_handler:which_releases"] >= 1
    assert "process_resident_memory_bytes" in samples


def test_node_down_then_back_without_restarting_the_agent(
        agent: AgentProc, counter_node: NodeProc, node_factory: NodeFactory) -> None:
    counter_node.stop()
    eventually(lambda: metrics(agent)["beam_node_up"][0].value == 0.0, what="beam_node_up 0")
    assert "beam_release_info" not in metrics(agent)

    down = relctl("versions", "-o", "json", agents=[agent.address])
    assert down.returncode == 3
    assert down.json() == {"nodes": [{"agent": agent.address, "node": "counter@localhost",
                                      "up": False, "releases": []}]}
    assert down.stderr.count("\n") == 1 and "Traceback" not in down.stderr
    assert re.match(r"relctl: node counter@localhost is down \(agent [^)]+\): .*"
                    r"not registered with epmd", down.stderr), down.stderr

    restarted = node_factory("counter@localhost", target=counter_node.root)
    assert restarted.pid != counter_node.pid
    up = eventually(lambda: (r := relctl("versions", "-o", "json", agents=[agent.address]))
                    .returncode == 0 and r, what="relctl versions back up")
    assert up.json()["nodes"][0]["up"] is True
    assert eventually(lambda: metrics(agent)["beam_node_up"][0].value == 1.0)
    assert agent.running()


def test_sigterm_is_a_clean_exit(agent: AgentProc) -> None:
    assert relctl("ping", agents=[agent.address]).returncode == 0
    agent.stop()
    assert agent.returncode == 0, agent.log_text()
    log = agent.log_text()
    assert "stopping" in log and "relctl.agent: stopped" in log
    assert "Traceback" not in log


def test_unknown_node_and_unreachable_agent_are_one_line_each(agent: AgentProc) -> None:
    unknown = relctl("--node", "nosuch@localhost", "versions", agents=[agent.address])
    assert unknown.returncode == 4
    assert unknown.stderr == (f"relctl: agent {agent.address}: this agent does not manage node "
                              "nosuch@localhost (it manages: counter@localhost); check --node, "
                              "or add the node to the agent's config\n")

    closed = f"127.0.0.1:{free_port()}"
    gone = relctl("versions", agents=[closed])
    assert gone.returncode == 3 and gone.stdout == ""
    assert gone.stderr.startswith(f"relctl: agent {closed} is not reachable (")
    assert gone.stderr.count("\n") == 1

    # One agent of two unreachable: the other's answer still shows, the exit code says so.
    mixed = relctl("versions", "-o", "json", agents=[agent.address, closed])
    assert mixed.returncode == 3
    assert [n["agent"] for n in mixed.json()["nodes"]] == [agent.address]


def test_ping_reports_why_a_node_cannot_be_reached(
        agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> None:
    wrong = start_agent(tmp_path / "wrong-cookie", [
        NodeEntry(counter_node.name, "not-the-cookie", counter_node.epmd_port)])
    agents.append(wrong)
    result = relctl("ping", "-o", "json", agents=[wrong.address])
    assert result.returncode == 3
    [node] = result.json()["agents"][0]["nodes"]
    assert node["up"] is False and node["round_trip_ms"] is None
    assert "cookie rejected by counter@localhost" in node["error"]
    assert "cookie rejected by counter@localhost" in result.stderr


def test_two_agents_answer_together(
        agents: list[AgentProc], agent: AgentProc, counter_node: NodeProc, tmp_path: Path) -> None:
    second = start_agent(tmp_path / "second", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)], metrics=False)
    agents.append(second)
    result = relctl("versions", "-o", "json", agents=[agent.address, second.address])
    assert result.returncode == 0, result.stderr
    assert [(n["agent"], n["up"]) for n in result.json()["nodes"]] == [
        (agent.address, True), (second.address, True)]


def test_the_cookie_is_never_logged_or_printed(agents: list[AgentProc], counter_node: NodeProc,
                                               tmp_path: Path) -> None:
    chatty = start_agent(tmp_path / "debug", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        log_level="debug")
    agents.append(chatty)
    outputs = [relctl(*cmd, agents=[chatty.address])
               for cmd in (("versions",), ("nodes", "-o", "json"), ("ping", "--debug"))]
    exposition = chatty.metrics_text()
    chatty.stop()
    assert all(r.returncode == 0 for r in outputs)
    assert "node counter@localhost is up" in chatty.log_text()
    for text in [chatty.log_text(), exposition] + [r.stdout + r.stderr for r in outputs]:
        assert counter_node.cookie not in text
