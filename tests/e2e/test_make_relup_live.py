"""`relctl make-relup` for a plain systools release, then a live upgrade with what it made."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild, extract_tar

pytestmark = pytest.mark.otp


def test_relup_and_tarball_made_from_two_systools_tarballs_upgrade_a_live_node(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    # What a systools user has: the two make_tar tarballs (the new one's relup thrown away
    # here) and the build's ebin, which holds the appup make_tar leaves out.
    roots = {}
    for vsn in ("0.0.1", "0.0.2"):
        roots[vsn] = extract_tar(release_build.tarball(vsn), tmp_path / vsn)
    (roots["0.0.2"] / "releases" / "0.0.2" / "relup").unlink()
    tarball = tmp_path / "counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(roots["0.0.1"]), str(roots["0.0.2"]), "--tarball",
                  str(tarball), "--path", str(release_build.out_dir / "lib" / "counter-0.0.2"
                                              / "ebin"))
    assert made.returncode == 0, made.stdout + made.stderr
    assert f"next: relctl upgrade 0.0.2 --tarball {tarball}" in made.stdout

    agent = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)])
    agents.append(agent)
    erl_eval(counter_node, "counter:incr(), counter:incr(), ok")
    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.json()["operation"]["releases_after"][0] == {
        "name": "counter", "version": "0.0.2", "status": "permanent"}
    assert erl_eval(counter_node, "sys:get_state(counter)") == \
        '#{count => 2,upgraded_from => "0.0.1"}'
