"""Pre-staged rollouts over three real agents, each with its own counter node: every agent
uploads and unpacks 0.0.2 before any node switches, and a stage that fails on one agent (a
read-only release root; a tarball over the agent's upload limit) stops the rollout with no node
switched. The rollouts without pre-staging are tests/e2e/test_fleet_live.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.mounts import mount_read_only
from tests.tools.release_fixture import ReleaseBuild
from tests.tools.tarball_variants import rewrite_tarball

pytestmark = pytest.mark.otp

UPGRADED = '#{count => 2,upgraded_from => "0.0.1"}'  # 0.0.2's code_change kept the count
UNPACKED = '[{"0.0.2",unpacked},{"0.0.1",permanent}]'
ORIGINAL = '[{"0.0.1",permanent}]'

Fleet = list[tuple[NodeProc, AgentProc]]


def counter_state(node: NodeProc) -> str:
    return erl_eval(node, "sys:get_state(counter)")


def releases(node: NodeProc) -> str:
    """The node's own view (not the agent's): [{Version, Status}]."""
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


def journal(agent: AgentProc) -> list[tuple[str, str, str]]:
    """(kind, to_version, outcome) of the agent's operations, newest first."""
    result = relctl("operations", "-o", "json", agents=[agent.address])
    assert result.returncode == 0, result.stdout + result.stderr
    return [(o["kind"], o["to_version"], o["outcome"]) for o in result.json()["operations"]]


def staging_rows(data: dict[str, Any]) -> list[tuple[str, str, bool]]:
    return [(a["agent"], a["result"], a["uploaded"]) for a in data["staging"]["agents"]]


def start_fleet(agents: list[AgentProc], node_factory: NodeFactory, tmp_path: Path,
                agent_extra: dict[int, dict[str, Any]] | None = None) -> Fleet:
    pairs: Fleet = []
    for i in (1, 2, 3):
        node = node_factory(f"counter{i}@localhost")
        agent = start_agent(tmp_path / f"agent{i}",
                            [NodeEntry(node.name, node.cookie, node.epmd_port)],
                            extra_agent={"reconnect_max_delay": 1,
                                         **(agent_extra or {}).get(i, {})})
        agents.append(agent)
        pairs.append((node, agent))
        erl_eval(node, "[counter:incr() || _ <- [1, 2]], ok")
    return pairs


def test_a_read_only_release_root_stops_the_rollout_before_any_switch_and_a_rerun_finishes(
        agents: list[AgentProc], node_factory: NodeFactory, release_build: ReleaseBuild,
        tmp_path: Path, read_only: list[Path]) -> None:
    (n1, a1), (n2, a2), (n3, a3) = fleet = start_fleet(agents, node_factory, tmp_path)
    addresses = [a.address for _, a in fleet]
    tarball = str(release_build.tarball("0.0.2"))
    mount_read_only(read_only, n2.root)

    stopped = relctl("upgrade", "0.0.2", "--tarball", tarball, "--batch", "1",
                     "--max-failures", "2", agents=addresses, timeout=180)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr  # failed, unchanged
    out = stopped.stdout.splitlines()
    assert out[0] == "staging 0.0.2 on 3 agent(s), 3 at a time"
    for _, agent in fleet:  # the progress of each agent's stage
        assert f"[{agent.address}]  upload " in stopped.stdout
    assert any(line.startswith(f"[{a2.address}]  stage ") and "remount it read-write" in line
               for line in out)
    assert f"[{a1.address}]  => staged (operation 1): uploaded and unpacked" in stopped.stdout
    assert not any(line.startswith("batch ") for line in out)  # no switch phase at all
    table = out[out.index("") + 1:]
    assert table[1].split()[:3] == [a1.address, "counter1@localhost", "staged"]
    assert table[1].endswith(f"not switched (staging failed on {a2.address}): uploaded and "
                             f"unpacked, not installed; relctl --agent {a1.address} remove "
                             "0.0.2 takes it back")
    assert table[2].split()[:3] == [a2.address, "counter2@localhost", "failed_unchanged"]
    assert "staging failed: " in table[2] and "remount it read-write" in table[2]
    assert table[3].split()[:3] == [a3.address, "counter3@localhost", "staged"]
    assert table[4].startswith(
        f"rollout of 0.0.2 stopped in staging, before any node was switched: staging failed "
        f"on {a2.address}; 2 node(s) have 0.0.2 staged, not installed")

    # No node switched: all run 0.0.1 with their state; 1 and 3 have 0.0.2 unpacked.
    for node in (n1, n2, n3):
        assert counter_state(node) == "2"
    assert releases(n1) == releases(n3) == UNPACKED
    assert releases(n2) == ORIGINAL
    assert journal(a1) == journal(a3) == [("unpack", "0.0.2", "succeeded")]
    assert journal(a2) == [("unpack", "0.0.2", "failed_unchanged")]

    # Another build of 0.0.2 (other bytes): the nodes that have the first one refuse it in
    # staging, rather than a fleet running two builds of one version.
    other = rewrite_tarball(Path(tarball), tmp_path / "counter-0.0.2-rebuilt.tar.gz", {})
    mixed = relctl("upgrade", "0.0.2", "--tarball", str(other), "-o", "json",
                   agents=addresses, timeout=180)
    assert mixed.returncode == 1, mixed.stdout + mixed.stderr
    data = mixed.json()
    assert [r[1] for r in staging_rows(data)] == ["failed_unchanged"] * 3
    assert "unpacked from other bytes" in data["staging"]["agents"][0]["reason"]
    assert "pass --replace" in data["staging"]["agents"][0]["reason"]

    # Run again as it was: the agents that unpacked this very tarball (same sha256) are sent
    # nothing (issue 23: 3 needless 8 MB uploads before); still stopped by node 2, in JSON.
    again = relctl("upgrade", "0.0.2", "--tarball", tarball, "-o", "json", agents=addresses,
                   timeout=180)
    assert again.returncode == 1, again.stdout + again.stderr
    data = again.json()
    assert (data["rollout"]["status"], data["rollout"]["stopped_in"]) == ("stopped", "staging")
    assert staging_rows(data) == [(a1.address, "staged", False),
                                  (a2.address, "failed_unchanged", True),
                                  (a3.address, "staged", False)]
    assert data["nodes"][0]["reason"] == (
        f"not switched (staging failed on {a2.address}): 0.0.2 was already unpacked from this "
        f"tarball (same sha256); nothing sent; not installed; relctl --agent {a1.address} "
        "remove 0.0.2 takes it back")
    # Nothing asked of agent 1 but its releases: no upload, no operation.
    assert journal(a1) == [("upgrade", "0.0.2", "failed_unchanged"),
                           ("unpack", "0.0.2", "succeeded")]
    assert releases(n1) == releases(n3) == UNPACKED

    # The way back the report names.
    removed = relctl("remove", "0.0.2", agents=[a1.address], timeout=60)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert releases(n1) == ORIGINAL

    # The root writable again, the same command rolls out: staged everywhere, then switched.
    subprocess.run(["umount", str(n2.root)], check=True, capture_output=True, timeout=30)
    read_only.remove(n2.root)
    done = relctl("upgrade", "0.0.2", "--tarball", tarball, "--batch", "2", "-o", "json",
                  agents=addresses, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    data = done.json()
    assert data["rollout"]["status"] == "completed" and data["rollout"]["prestage"] is True
    assert data["rollout"]["switch_duration_s"] > 0
    assert data["staging"]["status"] == "completed"
    # Agent 1's 0.0.2 was removed: uploaded again; agent 3 has it from this tarball: not sent.
    assert staging_rows(data) == [(a1.address, "staged", True), (a2.address, "staged", True),
                                  (a3.address, "staged", False)]
    assert [(n["agent"], n["batch"], n["result"], n["from_version"]) for n in data["nodes"]] == [
        (a1.address, 1, "succeeded", "0.0.1"), (a2.address, 1, "succeeded", "0.0.1"),
        (a3.address, 2, "succeeded", "0.0.1")]
    for node in (n1, n2, n3):
        assert counter_state(node) == UPGRADED  # the state migrated by code_change
        assert releases(node) == '[{"0.0.2",permanent},{"0.0.1",old}]'
    # The switch found the release unpacked: its upgrade staged and unpacked nothing.
    op_id = data["nodes"][2]["operation_id"]
    op = relctl("operation", str(op_id), "-o", "json", agents=[a3.address]).json()["operation"]
    assert {s["name"]: s["state"] for s in op["steps"]}["stage"] == "skipped"
    assert journal(a3) == [("upgrade", "0.0.2", "succeeded"),
                           ("upgrade", "0.0.2", "failed_unchanged"),
                           ("unpack", "0.0.2", "succeeded")]


def test_a_tarball_an_agent_refuses_stops_the_staging_and_the_agents_after_it(
        agents: list[AgentProc], node_factory: NodeFactory, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    """No root needed: agent 2 takes uploads of at most 1 kB. One stage at a time, so agent 3
    is never contacted."""
    (n1, a1), (n2, a2), (n3, a3) = fleet = start_fleet(
        agents, node_factory, tmp_path, agent_extra={2: {"max_upload_bytes": 1024}})
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "--stage-parallel", "1", "--batch", "3", "-o", "json",
                    agents=[a.address for _, a in fleet], timeout=180)
    assert result.returncode == 2, result.stdout + result.stderr  # the agent refused the request
    data = result.json()
    assert staging_rows(data) == [(a1.address, "staged", True), (a2.address, "error", False),
                                  (a3.address, "skipped", False)]
    reason = data["staging"]["agents"][1]["reason"]
    assert "over the agent's limit of 1024 bytes (agent.max_upload_bytes)" in reason
    assert data["nodes"][1]["reason"] == f"staging failed: {reason}"
    assert data["rollout"]["summary"].endswith(
        "1 agent(s) not staged (fix what failed, then run the same command again: what is "
        "staged is not uploaded again)")
    for node in (n1, n2, n3):
        assert counter_state(node) == "2"
    assert releases(n1) == UNPACKED
    assert releases(n2) == releases(n3) == ORIGINAL
    assert journal(a3) == []
