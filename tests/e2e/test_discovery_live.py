"""An agent without [[nodes]]: it finds the nodes on the host's EPMD (one of them started after
the agent and with its own cookie; in another test an Erlang and an Elixir release node) and
manages each on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_DISCOVERY_EXCLUDE
from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, eventually, relctl, start_agent
from tests.tools.elixir_fixture import COUNTER, ElixirBuild
from tests.tools.otp_procs import EpmdProc, NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp


def test_discovered_nodes_are_managed_each_with_its_cookie(
        agents: list[AgentProc], node_factory: NodeFactory, epmd: EpmdProc, node_cookie: str,
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    shop = node_factory("shop@localhost")
    (tmp_path / "cookie").write_text(node_cookie + "\n")
    (tmp_path / "cookie").chmod(0o600)
    cookies = tmp_path / "cookies"
    cookies.mkdir()
    (cookies / "billing").write_text("billing-only-cookie\n")
    (cookies / "billing").chmod(0o600)
    agent = start_agent(tmp_path / "agent", [], discovery={
        "host": "localhost", "epmd_port": epmd.port, "cookie_file": str(tmp_path / "cookie"),
        "cookie_dir": str(cookies), "interval": 0.5,
        # The test's own erl_eval probes register with this epmd too.
        "exclude": [*DEFAULT_DISCOVERY_EXCLUDE, "probe_*"]})
    agents.append(agent)
    assert "discovery: managing shop@localhost" in agent.log_text()

    billing = node_factory("billing@localhost", cookie="billing-only-cookie")

    def both_up() -> bool:
        result = relctl("nodes", "-o", "json", agents=[agent.address])
        return sorted((n["node"], n["up"]) for n in result.json()["nodes"]) == [
            ("billing@localhost", True), ("shop@localhost", True)]
    eventually(both_up, timeout=20, what="both nodes discovered and up")

    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                "--node", "shop@localhost", agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert erl_eval(shop, "counter:get()") == "0"
    assert erl_eval(shop, "sys:get_state(counter)").startswith("#{count => 0")
    assert erl_eval(billing, "sys:get_state(counter)") == "0"   # untouched: still 0.0.1

    versions = relctl("versions", "-o", "json", agents=[agent.address]).json()
    running = {n["node"]: [r["version"] for r in n["releases"] if r["status"] in
                           ("current", "permanent")][0] for n in versions["nodes"]}
    assert running == {"shop@localhost": "0.0.2", "billing@localhost": "0.0.1"}
    # Without --node, a command that acts on one node says which to pick.
    unspecified = relctl("reload-config", "--dry-run", agents=[agent.address])
    assert unspecified.returncode == 2, unspecified.stderr  # a usage error
    assert "manages 2 nodes" in unspecified.stderr and "--node" in unspecified.stderr


def test_one_agent_upgrades_an_erlang_and_an_elixir_node(
        agents: list[AgentProc], node_factory: NodeFactory, ex_node: NodeProc, epmd: EpmdProc,
        node_cookie: str, release_build: ReleaseBuild, elixir_build: ElixirBuild,
        tmp_path: Path) -> None:
    counter = node_factory("counter@localhost")
    (tmp_path / "cookie").write_text(node_cookie + "\n")
    (tmp_path / "cookie").chmod(0o600)
    agent = start_agent(tmp_path / "agent", [], discovery={
        "host": "localhost", "epmd_port": epmd.port, "cookie_file": str(tmp_path / "cookie"),
        "exclude": [*DEFAULT_DISCOVERY_EXCLUDE, "probe_*"]})
    agents.append(agent)
    erl_eval(counter, "[counter:incr() || _ <- lists:seq(1, 3)], ok")
    erl_eval(ex_node, f"[{COUNTER}:incr() || _ <- lists:seq(1, 4)], ok")

    for node, tarball in (("counter@localhost", release_build.tarball("0.0.2")),
                          ("ex_counter@localhost", elixir_build.tarball)):
        up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "--node", node,
                    agents=[agent.address], timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr

    assert erl_eval(counter, "sys:get_state(counter)") == '#{count => 3,upgraded_from => "0.0.1"}'
    assert erl_eval(ex_node, f"sys:get_state({COUNTER})") == (
        '#{count => 4,upgraded_from => <<"0.0.1">>}')
    versions = relctl("versions", "-o", "json", agents=[agent.address]).json()
    assert sorted((n["node"], n["releases"][0]["name"], n["releases"][0]["version"],
                   n["releases"][0]["status"]) for n in versions["nodes"]) == [
        ("counter@localhost", "counter", "0.0.2", "permanent"),
        ("ex_counter@localhost", "ex_counter", "0.0.2", "permanent")]
    ops = relctl("operations", "-o", "json", agents=[agent.address]).json()["operations"]
    assert sorted((o["node"], o["kind"], o["outcome"]) for o in ops) == [
        ("counter@localhost", "upgrade", "succeeded"),
        ("ex_counter@localhost", "upgrade", "succeeded")]
