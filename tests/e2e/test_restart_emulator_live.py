"""A relup whose scripts end with restart_emulator (`relctl make-relup --restart-emulator`; what
systools writes going down across an OTP change) restarts the emulator, which release_handler
does through heart (heart:set_cmd, then init:reboot). On a node without heart, set_cmd fails,
the install crashes and the node restarts on its permanent release: relctl refuses it before
the install, the node unchanged (the same emulator, its releases as they were). With heart,
the install's ok is followed by the reboot, which relctl waits for
(tests/agent/release/test_restart_emulator.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild, extract_tar

pytestmark = pytest.mark.otp


def test_a_relup_restarting_the_emulator_on_a_node_without_heart_is_refused_before_install(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    old = extract_tar(release_build.tarball("0.0.1"), tmp_path / "0.0.1")
    new = extract_tar(release_build.tarball("0.0.2"), tmp_path / "0.0.2")
    (new / "releases" / "0.0.2" / "relup").unlink()
    tarball = tmp_path / "counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(old), str(new), "--restart-emulator", "--tarball",
                  str(tarball), timeout=180)
    assert made.returncode == 0, made.stdout + made.stderr
    relup = "".join((new / "releases" / "0.0.2" / "relup").read_text().split())
    assert relup.count("restart_emulator]}]") == 2  # the last instruction, up and down

    agent = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)])
    agents.append(agent)
    assert erl_eval(counter_node, "whereis(heart)") == "undefined"
    emulator = erl_eval(counter_node, "os:getpid()")
    erl_eval(counter_node, "counter:incr()")
    before = (counter_node.root / "releases" / "start_erl.data").read_text()

    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                agents=[agent.address], timeout=240)
    assert up.returncode == 1, up.stdout + up.stderr
    op = up.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert op["error"] == (
        "going from 0.0.1 to 0.0.2 restarts the emulator (restart_emulator in the relup), "
        "which release_handler does through heart (heart:set_cmd, then init:reboot), but "
        "counter@localhost runs without heart: the install would crash and the node restart "
        "on its permanent release. Start the node with -heart (in its vm.args: relx's and "
        "mix's start scripts then set HEART_COMMAND), or build the relup without the restart")
    steps = dict((s["name"], s["state"]) for s in op["steps"])
    assert steps["install"] == "failed", steps
    # The same emulator, the same state, the same releases.
    assert erl_eval(counter_node, "os:getpid()") == emulator
    assert erl_eval(counter_node, "sys:get_state(counter)") == "1"
    assert (counter_node.root / "releases" / "start_erl.data").read_text() == before
    versions = relctl("versions", "-o", "json", agents=[agent.address])
    assert [(r["version"], r["status"]) for r in versions.json()["nodes"][0]["releases"]] == [
        ("0.0.1", "permanent")]
