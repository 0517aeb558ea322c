"""The options of the commands that change a node reach the agent and do what they say, on real
nodes: --install-timeout of `install` and `downgrade` bounds install_release (a relup script
that sleeps 3 s outlives a limit of 1 s, which the install step's detail shows), `downgrade
--dry-run` changes nothing, and `--health-soak 0` overrides a configured soak (the request
carries the field only when the option is given), on one agent and in a rollout; without the
option, the configured soak holds."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, relctl, start_agent_for
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild
from tests.tools.tarball_variants import rewrite_tarball

pytestmark = pytest.mark.otp

RELUP = "releases/0.0.2/relup"
SOAK = 3  # the configured health_soak, in seconds
SLEEP_MS = 3000  # what the relup scripts sleep
# What the install step says when install_release outlived install_timeout (agent/release/
# switch.py): the agent waited for the node's own answer.
OUTLIVED_1S = "did not answer within 1 s, then the node finished it"


def releases(node: NodeProc) -> str:
    """The node's own view (not the agent's): [{Version, Status}]."""
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


def step(op: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in op["steps"] if s["name"] == name)
    return found


def run(*args: str, agent: AgentProc) -> dict[str, Any]:
    """`relctl ARGS -o json` on one agent, which must succeed: the operation."""
    result = relctl(*args, "-o", "json", agents=[agent.address], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    op: dict[str, Any] = result.json()["operation"]
    return op


def slow_tarball(build: ReleaseBuild, dest: Path) -> Path:
    """0.0.2 whose relup scripts, up and down, sleep SLEEP_MS after the point of no return."""
    with tarfile.open(build.tarball("0.0.2")) as tar:
        member = tar.extractfile(RELUP)
        assert member is not None
        relup = member.read().decode()
    assert relup.count("point_of_no_return") == 2, relup  # up from 0.0.1, down to it
    slow = relup.replace("point_of_no_return",
                         f"point_of_no_return,{{apply,{{timer,sleep,[{SLEEP_MS}]}}}}")
    return rewrite_tarball(build.tarball("0.0.2"), dest, {RELUP: slow.encode()})


def test_install_and_downgrade_take_install_timeout_and_a_dry_run_downgrade_changes_nothing(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    slow = slow_tarball(release_build, tmp_path / "slow.tar.gz")
    # The configured install_timeout is the default (300 s): only the option can make it 1 s.
    agent = start_agent_for(agents, counter_node, tmp_path / "agent")
    assert run("unpack", "0.0.2", "--tarball", str(slow), agent=agent)["outcome"] == "succeeded"

    installed = run("install", "0.0.2", "--install-timeout", "1", agent=agent)
    assert installed["outcome"] == "succeeded", installed
    assert OUTLIVED_1S in step(installed, "install")["detail"]
    assert run("make-permanent", "0.0.2", agent=agent)["outcome"] == "succeeded"
    upgraded = releases(counter_node)
    assert upgraded == '[{"0.0.2",permanent},{"0.0.1",old}]'

    # --dry-run reaches the agent: all checks, then nothing installed.
    dry = run("downgrade", "0.0.1", "--dry-run", agent=agent)
    assert dry["outcome"] == "dry_run", dry
    assert step(dry, "check")["state"] == "succeeded"
    assert step(dry, "install")["state"] == "skipped"
    assert releases(counter_node) == upgraded
    assert erl_eval(counter_node, "maps:get(upgraded_from, sys:get_state(counter))") == '"0.0.1"'

    down = run("downgrade", "0.0.1", "--install-timeout", "1", agent=agent)
    assert down["outcome"] == "succeeded", down
    assert OUTLIVED_1S in step(down, "install")["detail"]
    assert '{"0.0.1",permanent}' in releases(counter_node), releases(counter_node)
    assert erl_eval(counter_node, "is_integer(sys:get_state(counter))") == "true"  # 0.0.1's


def soak_of(op: dict[str, Any]) -> tuple[str, float]:
    """The verify step's soak (the end of its detail) and the step's seconds."""
    verify = step(op, "verify")
    return verify["detail"].rpartition("; ")[2], verify["duration_ms"] / 1000


def test_health_soak_0_overrides_the_configured_soak_and_no_option_keeps_it(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_agent_for(agents, counter_node, tmp_path / "agent",
                      health_probes=["counter:health"], health_soak=SOAK)
    tarball = str(release_build.tarball("0.0.2"))

    zero = run("upgrade", "0.0.2", "--tarball", tarball, "--health-soak", "0", agent=agent)
    assert zero["outcome"] == "succeeded", zero
    soak, seconds = soak_of(zero)
    assert soak == "probes ok 1x over 0 s" and seconds < SOAK, (soak, seconds)

    down = run("downgrade", "0.0.1", agent=agent)
    assert down["outcome"] == "succeeded", down
    assert soak_of(down)[0].endswith(f"over {SOAK} s")  # a downgrade soaks as configured
    # The old name of the option goes through click's reader (not the fast path): the same.
    zero_again = run("upgrade", "0.0.2", "--health-timeout", "0", agent=agent)
    assert soak_of(zero_again)[0] == "probes ok 1x over 0 s"

    run("downgrade", "0.0.1", agent=agent)
    configured = run("upgrade", "0.0.2", agent=agent)  # 0.0.2 is old: no tarball needed
    assert configured["outcome"] == "succeeded", configured
    soak, seconds = soak_of(configured)
    assert soak.startswith("probes ok ") and soak.endswith(f"x over {SOAK} s"), soak
    assert seconds >= SOAK, seconds


def test_a_rollout_sends_health_soak_0_to_every_agent(
        agents: list[AgentProc], node_factory: NodeFactory, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    fleet = []
    for i in (1, 2):
        node = node_factory(f"counter{i}@localhost")
        fleet.append(start_agent_for(agents, node, tmp_path / f"agent{i}",
                               health_probes=["counter:health"], health_soak=SOAK))
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "--health-soak", "0", "--batch", "2", "-o", "json",
                    agents=[a.address for a in fleet], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = result.json()["nodes"]
    assert [r["result"] for r in rows] == ["succeeded", "succeeded"], rows
    for agent, row in zip(fleet, rows):
        shown = relctl("operation", str(row["operation_id"]), "-o", "json",
                       agents=[agent.address])
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert soak_of(shown.json()["operation"])[0] == "probes ok 1x over 0 s"
