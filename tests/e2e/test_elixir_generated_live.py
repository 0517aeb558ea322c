"""`relctl make-relup` over `mix release` outputs with the hand-written appup taken out: the
appup generated from the beams equals examples/elixir_counter's, and a live node goes up and
down with it through relctl, its GenServer's state migrated both ways."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.elixir_fixture import COUNTER, ElixirBuild
from tests.tools.otp_procs import NodeProc, erl_eval

pytestmark = pytest.mark.otp


def test_generated_appup_of_a_mix_release_upgrades_and_downgrades_a_live_node(
        agents: list[AgentProc], ex_node: NodeProc, elixir_build: ElixirBuild,
        tmp_path: Path) -> None:
    new = tmp_path / "new"
    shutil.copytree(elixir_build.release_dirs["0.0.2"], new, symlinks=True)
    (new / "releases" / "0.0.2" / "relup").unlink()
    for appup in new.rglob("*.appup"):
        if appup.parent.parent.name.startswith("ex_counter-"):
            appup.unlink()
    old = elixir_build.release_dirs["0.0.1"]
    shown = relctl("make-appup", str(old), str(new), "-o", "json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [appup] = json.loads(shown.stdout)["appups"]
    # examples/elixir_counter/0.0.2/rel/ex_counter.appup says the same.
    assert appup["appup"].splitlines()[1:] == [
        '{"0.0.2",',
        ' [{"0.0.1",',
        "   [{update, 'Elixir.ExCounter.Counter', {advanced, []}}]}],",
        ' [{"0.0.1",',
        "   [{update, 'Elixir.ExCounter.Counter', {advanced, []}}]}]}."]
    tarball = tmp_path / "ex_counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(old), str(new), "--tarball", str(tarball), timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "appup: ex_counter 0.0.1 -> 0.0.2: generated" in made.stdout

    agent = start_agent(tmp_path / "agent", [
        NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)])
    agents.append(agent)
    erl_eval(ex_node, f"[{COUNTER}:incr() || _ <- lists:seq(1, 4)], ok")
    pid = erl_eval(ex_node, f"whereis({COUNTER})")
    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    assert erl_eval(ex_node, f"sys:get_state({COUNTER})") == \
        '#{count => 4,upgraded_from => <<"0.0.1">>}'
    assert erl_eval(ex_node, f"whereis({COUNTER})") == pid
    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert erl_eval(ex_node, f"sys:get_state({COUNTER})") == "4"
    assert erl_eval(ex_node, f"whereis({COUNTER})") == pid
