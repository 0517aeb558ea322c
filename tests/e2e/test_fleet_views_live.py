"""Fleet-wide history and per-agent credentials (issue 23, item 5), on real agents and nodes:
`relctl operations` and `relctl audit` over several agents (and an --agents-file) as one
table with an AGENT column, newest first, and `-o json` with an "agent" key; each agent with
its own operator token, chosen per agent by --token-dir or by the inventory group's
relctl_token_file label, so that one leaked token is one agent's."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent

pytestmark = pytest.mark.otp


def _token(path: Path) -> Path:
    path.write_text(secrets.token_hex(24) + "\n")
    path.chmod(0o600)
    return path


def test_operations_and_audit_over_a_fleet_each_agent_with_its_own_token(
        agents: list[AgentProc], node_factory: NodeFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    pairs = []
    for i in (1, 2):
        node = node_factory(f"counter{i}@localhost")
        own = _token(tmp_path / f"op{i}.token")
        agent = start_agent(tmp_path / f"agent{i}", [NodeEntry(node.name, node.cookie,
                                                              node.epmd_port)],
                            tokens=[{"name": f"op{i}", "role": "operator", "file": str(own)}])
        agents.append(agent)
        (tokens / agent.address).write_bytes(own.read_bytes())  # DIR/HOST:PORT
        pairs.append((node, agent, own))
    (_, a1, t1), (_, a2, t2) = pairs
    wrong = _token(tmp_path / "nobody.token")
    env = {"RELCTL_TOKEN_FILE": str(wrong)}  # the fallback: accepted by no agent

    # Each agent is sent its own token from --token-dir: the journals name op1 and op2.
    for agent in (a1, a2):
        done = relctl("--token-dir", str(tokens), "reload-config", agents=[agent.address],
                      env=env)
        assert done.returncode == 0, done.stdout + done.stderr
    fleet = [a1.address, a2.address]
    listed = relctl("--token-dir", str(tokens), "operations", "-o", "json", agents=fleet, env=env)
    assert listed.returncode == 0, listed.stderr
    ops = listed.json()["operations"]
    assert sorted((o["agent"], o["kind"], o["requested_by"].split()[0]) for o in ops) == sorted([
        (a1.address, "reload_config", "op1"), (a2.address, "reload_config", "op2")])
    assert ops[0]["agent"] == a2.address  # newest first across the fleet: a2 ran last
    text = relctl("--token-dir", str(tokens), "operations", agents=fleet, env=env)
    lines = text.stdout.splitlines()
    assert lines[0].split()[:3] == ["AGENT", "ID", "NODE"]
    assert [line.split()[0] for line in lines[1:]] == [a2.address, a1.address]

    # One agent's token is not the other's: refused (and audited there).
    swapped = relctl("--token-file", str(t1), "nodes", agents=[a2.address])
    assert swapped.returncode == 8, swapped.stderr

    # The same through an inventory: each group names its own token file.
    inventory = tmp_path / "agents.json"
    inventory.write_text(json.dumps([
        {"targets": ["127.0.0.1:9101"], "labels": {"relctl_agent": a1.address,
                                                   "relctl_token_file": t1.name}},
        {"targets": ["127.0.0.1:9102"], "labels": {"relctl_agent": a2.address,
                                                   "relctl_token_file": t2.name}}]))
    audit = relctl("--agents-file", str(inventory), "audit", "-o", "json", env=env)
    assert audit.returncode == 0, audit.stderr
    records = audit.json()["records"]
    assert {r["agent"] for r in records} == {a1.address, a2.address}
    assert {(r["agent"], r["identity"]) for r in records if r["rpc"] == "ReloadConfig"} == {
        (a1.address, "op1"), (a2.address, "op2")}
    refused = [r for r in records if r["result"] != "ok"]
    assert [(r["agent"], r["rpc"]) for r in refused] == [(a2.address, "ListNodes")]
    times = [r["time"] for r in records]
    assert times == sorted(times, reverse=True)

    # An agent that cannot be asked: the others are shown, its problem decides the exit code.
    gone = relctl("--token-dir", str(tokens), "audit", agents=[a1.address, "127.0.0.1:1"],
                  env=env)
    assert gone.returncode == 3, gone.stdout + gone.stderr
    assert a1.address in gone.stdout and "agent 127.0.0.1:1 is not reachable" in gone.stderr
