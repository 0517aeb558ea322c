"""`relctl make-relup` with no appup at all (the counter example's hand-written one left out): the
generated appup makes a relup under which a live node goes up and down through relctl, its
counter's state migrated both ways by code_change under load, no increment lost."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild, extract_tar

pytestmark = pytest.mark.otp


def test_generated_appup_upgrades_and_downgrades_a_live_node_through_relctl(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    roots = {vsn: extract_tar(release_build.tarball(vsn), tmp_path / vsn)
             for vsn in ("0.0.1", "0.0.2")}
    (roots["0.0.2"] / "releases" / "0.0.2" / "relup").unlink()
    assert not list(roots["0.0.2"].rglob("*.appup"))  # make_tar leaves it out; no --path
    tarball = tmp_path / "counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(roots["0.0.1"]), str(roots["0.0.2"]), "--tarball",
                  str(tarball), "-o", "json")
    assert made.returncode == 0, made.stdout + made.stderr
    data = json.loads(made.stdout)
    assert [(a["application"], a["source"]) for a in data["appups"]] == [
        ("counter", "generated")]
    text = relctl("make-relup", str(roots["0.0.1"]), str(roots["0.0.2"]))
    assert "appup: counter 0.0.1 -> 0.0.2: generated" in text.stdout

    agent = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)])
    agents.append(agent)
    erl_eval(counter_node, "counter:incr(), counter:incr(), ok")
    pid = erl_eval(counter_node, "whereis(counter)")
    # Load: a process on the node increments without pause through the upgrade and the
    # downgrade, counting the increments that returned.
    erl_eval(counter_node, LOAD_START)
    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert up.json()["operation"]["releases_after"][0] == {
        "name": "counter", "version": "0.0.2", "status": "permanent"}
    assert erl_eval(counter_node, "maps:get(upgraded_from, sys:get_state(counter))") == \
        '"0.0.1"'
    assert erl_eval(counter_node, "whereis(counter)") == pid

    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.json()["operation"]["outcome"] == "succeeded"
    assert erl_eval(counter_node, "whereis(counter)") == pid
    done = int(erl_eval(counter_node, LOAD_STOP))
    assert done > 0
    assert erl_eval(counter_node, "sys:get_state(counter)") == str(2 + done)


LOAD_START = """register(relctl_load, spawn(fun() ->
    Loop = fun L(K) -> receive {stop, P} -> P ! {done, K}
                      after 0 -> _ = counter:incr(), L(K + 1) end end,
    Loop(0) end)), ok"""
LOAD_STOP = """relctl_load ! {stop, self()},
receive {done, K} -> K after 10000 -> load_process_gone end"""
