"""A relup whose scripts end with restart_emulator (`relctl make-relup --restart-emulator`; what
systools writes going down across an OTP change) restarts the emulator, which release_handler
does through heart (heart:set_cmd, then init:reboot). On a node without heart, set_cmd fails,
the install crashes and the node restarts on its permanent release: relctl refuses it before
the install, the node unchanged (the same emulator, its releases as they were). Under heart,
the install's ok is followed by the reboot into the release, which relctl waits for, both
ways: then it verifies the new emulator and makes the release permanent (start_erl.data names
it); it used to verify a node going down and exit 6."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools import otp_select
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.heart_node import emulators_of, install_start, stop_emulators
from tests.tools.otp_procs import EpmdProc, NodeProc, erl_eval, start_node
from tests.tools.release_fixture import ReleaseBuild, extract_tar, make_target_copy

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


def test_a_relup_restarting_the_emulator_is_waited_for_up_and_down_under_heart(
        agents: list[AgentProc], epmd: EpmdProc, node_cookie: str,
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    old = extract_tar(release_build.tarball("0.0.1"), tmp_path / "0.0.1")
    new = extract_tar(release_build.tarball("0.0.2"), tmp_path / "0.0.2")
    (new / "releases" / "0.0.2" / "relup").unlink()
    tarball = tmp_path / "counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(old), str(new), "--restart-emulator", "--tarball",
                  str(tarball), timeout=180)
    assert made.returncode == 0, made.stdout + made.stderr
    target = make_target_copy(release_build, tmp_path / "target", erl=otp_select.erl())
    install_start(target)
    node = start_node(target, "counter@localhost", cookie=node_cookie, epmd_port=epmd.port,
                      extra_args=["-heart"], workdir=tmp_path / "node")
    try:
        agent = start_agent(tmp_path / "agent", [
            NodeEntry(node.name, node.cookie, node.epmd_port)])
        agents.append(agent)
        assert erl_eval(node, "is_pid(whereis(heart))") == "true"
        first = erl_eval(node, "os:getpid()")

        up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                    agents=[agent.address], timeout=240)
        assert up.returncode == 0, up.stdout + up.stderr
        op = up.json()["operation"]
        steps = {s["name"]: s["detail"] for s in op["steps"]}
        assert steps["install"] == ("0.0.1 -> 0.0.2; the node restarted its emulator "
                                    "(restart_emulator)"), steps
        assert steps["make_permanent"].startswith("0.0.2 is permanent"), steps
        second = erl_eval(node, "os:getpid()")
        assert second != first  # a new emulator, booted on 0.0.2 (not migrated)
        assert erl_eval(node, "sys:get_state(counter)") == "#{count => 0,upgraded_from => none}"
        assert (target / "releases" / "start_erl.data").read_text().split()[1] == "0.0.2"

        down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=240)
        assert down.returncode == 0, down.stdout + down.stderr
        steps = {s["name"]: s["detail"] for s in down.json()["operation"]["steps"]}
        assert steps["install"] == ("0.0.2 -> 0.0.1; the node restarted its emulator "
                                    "(restart_emulator)"), steps
        assert erl_eval(node, "os:getpid()") not in (first, second)
        assert erl_eval(node, "sys:get_state(counter)") == "0"  # 0.0.1's state shape
        assert (target / "releases" / "start_erl.data").read_text().split()[1] == "0.0.1"
        versions = relctl("versions", "-o", "json", agents=[agent.address])
        assert {(r["version"], r["status"]) for r in versions.json()["nodes"][0]["releases"]} \
            == {("0.0.1", "permanent"), ("0.0.2", "old")}
    finally:
        node.stop()
        stop_emulators(target)
    assert not emulators_of(target)
