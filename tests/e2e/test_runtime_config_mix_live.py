"""A mix release's config/runtime.exs survives hot upgrades, downgrades and rollbacks: the
agent runs the release's config providers again after each install_release (the
runtime_config step), with the node's own environment (EX_COUNTER_SOURCE is set for the node
only). Both versions of examples/elixir_counter set ``source`` in runtime.exs only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import current_test_failed
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.elixir_fixture import ElixirBuild, make_target_copy, start_elixir_node
from tests.tools.otp_procs import EpmdProc, NodeProc, erl_eval, pid_exists

pytestmark = pytest.mark.otp

SOURCE = "set in the node's environment"
HAS_SOURCE = f'{{ok,<<"{SOURCE}">>}}'


@pytest.fixture
def node(request: pytest.FixtureRequest, elixir_build: ElixirBuild, epmd: EpmdProc,
         node_cookie: str, tmp_path: Path) -> Iterator[NodeProc]:
    root = make_target_copy(elixir_build, tmp_path / "target")
    started = start_elixir_node(root, "ex_counter@localhost", cookie=node_cookie,
                                epmd_port=epmd.port, workdir=tmp_path / "node",
                                node_env={"EX_COUNTER_SOURCE": SOURCE})
    yield started
    started.stop()
    if current_test_failed(request):
        print(f"===== log of {started.name} (pid {started.pid}) =====\n{started.log_text()}")
    assert not pid_exists(started.pid), "the node survived stop()"


def agent_for(agents: list[AgentProc], node: NodeProc, workdir: Path,
              **node_extra: Any) -> AgentProc:
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        metrics=False, node_extra=node_extra or None)
    agents.append(agent)
    return agent


def run(agent: AgentProc, *args: str) -> tuple[int, dict[str, Any]]:
    result = relctl(*args, "-o", "json", agents=[agent.address], timeout=180)
    assert result.stdout, result.stderr
    op: dict[str, Any] = result.json()["operation"]
    return result.returncode, op


def steps(op: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["state"]) for s in op["steps"]]


def detail(op: dict[str, Any], name: str) -> str:
    return str([s["detail"] for s in op["steps"] if s["name"] == name][-1])


def source(node: NodeProc) -> str:
    return erl_eval(node, "application:get_env(ex_counter, source)")


ADDED = [{"application": "ex_counter", "key": "source", "change": "added"}]


def test_runtime_keys_survive_upgrade_and_downgrade(
        agents: list[AgentProc], node: NodeProc, elixir_build: ElixirBuild,
        tmp_path: Path) -> None:
    assert source(node) == HAS_SOURCE  # what the boot's Config.Reader set
    agent = agent_for(agents, node, tmp_path / "agent")

    code, op = run(agent, "upgrade", "0.0.2", "--tarball", str(elixir_build.tarball))
    assert code == 0 and op["outcome"] == "succeeded", (op["error"], steps(op))
    assert detail(op, "preflight").endswith(
        "releases/0.0.2/sys.config parses; config providers Config.Reader run again after the "
        "install; running 0.0.1")
    names = [name for name, _ in steps(op)]
    assert names.index("install") + 1 == names.index("runtime_config") < names.index("verify")
    assert detail(op, "runtime_config").startswith(
        "config providers Config.Reader ran: 1 added: ex_counter.source; config_change/3 "
        "called for ex_counter")
    assert source(node) == HAS_SOURCE
    assert erl_eval(node, "application:get_env(ex_counter, greeting)") == \
        '{ok,<<"hello from 0.0.2">>}'
    assert [{k: c.get(k) for k in ("application", "key", "change")}
            for c in op["config_changes"]] == ADDED
    # The journal keeps the keys the step changed.
    journaled = relctl("operation", str(op["id"]), "-o", "json", agents=[agent.address]).json()
    assert journaled["operation"]["config_changes"] == ADDED
    # Nothing left for reload-config to do: the upgrade did it.
    again = relctl("reload-config", agents=[agent.address])
    assert again.returncode == 0 and "no configuration changes" in again.stdout, again.stdout

    code, down = run(agent, "downgrade", "0.0.1")
    assert code == 0 and down["outcome"] == "succeeded", down
    assert ("runtime_config", "succeeded") in steps(down)
    assert source(node) == HAS_SOURCE
    assert erl_eval(node, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.1"}'


def test_runtime_keys_survive_a_rollback_by_a_failing_post_install_hook(
        agents: list[AgentProc], node: NodeProc, elixir_build: ElixirBuild,
        tmp_path: Path) -> None:
    # The probe fails while this flag is false; a post_install hook calling it fails the upgrade.
    erl_eval(node, "persistent_term:put({ex_counter, healthy}, false)")
    agent = agent_for(agents, node, tmp_path / "agent", hooks=[
        {"name": "gate", "when": "post_install", "call": "Elixir.ExCounter.Counter:health"}])

    code, op = run(agent, "upgrade", "0.0.2", "--tarball", str(elixir_build.tarball))
    assert code == 5, op
    assert op["outcome"] == "rolled_back"
    assert op["error"].startswith("hook gate: ")
    assert steps(op)[4:] == [
        ("install", "succeeded"), ("runtime_config", "succeeded"),
        ("post_install:gate", "failed"), ("rollback", "succeeded"),
        ("runtime_config", "succeeded"), ("post_install:gate", "failed"),
        ("verify", "succeeded")]
    assert erl_eval(node, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.1"}'
    assert source(node) == HAS_SOURCE  # 0.0.1's runtime.exs ran again after the rollback
