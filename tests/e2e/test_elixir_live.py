"""relctl on an Elixir `mix release` node: a relup made with `relctl make-relup`, RELEASES
created by the agent, a real hot upgrade and downgrade with the GenServer's state read back."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.release.tarballs.check import inspect_tarball
from tests.e2e.conftest import StartNode
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.elixir_fixture import COUNTER, ElixirBuild
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.settings import MAX_UPLOAD

pytestmark = pytest.mark.otp

@pytest.fixture
def agent(agents: list[AgentProc], ex_node: NodeProc, tmp_path: Path) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)],
        extra_agent={"refresh_interval": 2, "reconnect_max_delay": 1})
    agents.append(started)
    return started


def state(node: NodeProc) -> str:
    return erl_eval(node, f"sys:get_state({COUNTER})")


def counter_pid(node: NodeProc) -> str:
    return erl_eval(node, f"whereis({COUNTER})")


def incr(node: NodeProc, times: int) -> None:
    erl_eval(node, f"[{COUNTER}:incr() || _ <- lists:seq(1, {times})], ok")


def step(op: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in op["steps"] if s["name"] == name)
    return found


def boots(root: Path) -> str:
    """The release version mix's bin/ex_counter boots next (release_handler writes it)."""
    return (root / "releases" / "start_erl.data").read_text().split()[1]


def upgrade(agent: AgentProc, tarball: Path) -> dict[str, Any]:
    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    op: dict[str, Any] = up.json()["operation"]
    return op


def test_hot_upgrade_and_downgrade_of_a_mix_release_keep_the_genserver_and_its_state(
        agent: AgentProc, ex_node: NodeProc, elixir_build: ElixirBuild) -> None:
    root = ex_node.root
    assert not (root / "releases" / "RELEASES").exists()  # mix writes none
    incr(ex_node, 5)
    pid = counter_pid(ex_node)

    op = upgrade(agent, elixir_build.tarball)
    assert op["outcome"] == "succeeded" and op["from_version"] == "0.0.1"
    # First contact: the agent made RELEASES from mix's releases/0.0.1/ex_counter.rel.
    assert step(op, "preflight")["detail"] == (
        f"created {root}/releases/RELEASES from {root}/releases/0.0.1/ex_counter.rel; "
        "releases/0.0.2/sys.config parses; config providers Config.Reader run again after "
        "the install; running 0.0.1")
    for name in ("stage", "unpack", "check", "install", "runtime_config", "verify",
                 "make_permanent"):
        assert step(op, name)["state"] == "succeeded", step(op, name)
    assert op["releases_after"] == [
        {"name": "ex_counter", "version": "0.0.2", "status": "permanent"},
        {"name": "ex_counter", "version": "0.0.1", "status": "old"}]
    # A hot upgrade: the same process, its state migrated by the 0.0.2 code_change/3.
    assert state(ex_node) == '#{count => 5,upgraded_from => <<"0.0.1">>}'
    assert counter_pid(ex_node) == pid
    assert erl_eval(ex_node, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.2"}'
    # release_handler applied the new release's sys.config, which mix wrote.
    assert erl_eval(ex_node, "application:get_env(ex_counter, greeting)") == \
        '{ok,<<"hello from 0.0.2">>}'
    assert boots(root) == "0.0.2"

    incr(ex_node, 1)
    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.json()["operation"]["outcome"] == "succeeded"
    assert state(ex_node) == "6"
    assert counter_pid(ex_node) == pid
    assert erl_eval(ex_node, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.1"}'
    assert boots(root) == "0.0.1"
    versions = relctl("versions", "-o", "json", agents=[agent.address]).json()
    assert versions["nodes"][0]["releases"] == [
        {"name": "ex_counter", "version": "0.0.2", "status": "old"},
        {"name": "ex_counter", "version": "0.0.1", "status": "permanent"}]


def test_after_the_upgrade_mix_start_script_boots_the_new_permanent_release(
        agent: AgentProc, ex_node: NodeProc, elixir_build: ElixirBuild,
        start_ex_node: StartNode) -> None:
    upgrade(agent, elixir_build.tarball)
    ex_node.stop()
    again = start_ex_node(ex_node.root)
    assert erl_eval(again, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.2"}'
    assert erl_eval(again, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]") == \
        '[{"0.0.2",permanent},{"0.0.1",old}]'
    assert state(again) == "#{count => 0,upgraded_from => none}"  # a fresh start of 0.0.2


def test_make_relup_command_writes_a_tarball_the_agent_accepts(
        elixir_build: ElixirBuild, tmp_path: Path) -> None:
    old, new = (tmp_path / "old", tmp_path / "new")
    for vsn, dest in (("0.0.1", old), ("0.0.2", new)):
        shutil.copytree(elixir_build.release_dirs[vsn], dest, symlinks=True)
    (new / "releases" / "0.0.2" / "relup").unlink()
    tarball = tmp_path / "out" / "ex_counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(old), str(new), "--tarball", str(tarball), "-o", "json",
                  timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    data = made.json()
    assert data["release"] == "ex_counter"
    assert (data["from_version"], data["to_version"]) == ("0.0.1", "0.0.2")
    assert data["relup"] == str(new / "releases" / "0.0.2" / "relup")
    assert data["tarball"]["erts_included"] is False  # same ERTS: the node has it
    checked = inspect_tarball(tarball, expected_version="0.0.2", max_size=MAX_UPLOAD)
    assert checked.unpack_name == "ex_counter-0.0.2"
    assert checked.sha256 == data["tarball"]["sha256"]
    assert checked.relup == (new / "releases" / "0.0.2" / "relup").read_bytes()
    assert b"{code_change,up,[{'Elixir.ExCounter.Counter',[]}]}" in checked.relup
    assert b"{code_change,down,[{'Elixir.ExCounter.Counter',[]}]}" in checked.relup
    assert ("ex_counter", "0.0.2") in checked.applications


def test_reload_config_evaluates_the_runtime_config_again(
        agent: AgentProc, ex_node: NodeProc, elixir_build: ElixirBuild) -> None:
    upgrade(agent, elixir_build.tarball)
    # The upgrade's runtime_config step evaluated 0.0.2's runtime.exs already.
    assert erl_eval(ex_node, "application:get_env(ex_counter, source)") == '{ok,<<"runtime.exs">>}'
    runtime = ex_node.root / "releases" / "0.0.2" / "runtime.exs"
    runtime.write_text('import Config\nconfig :ex_counter, source: "edited"\n')
    result = relctl("reload-config", "--show-values", "-o", "json", agents=[agent.address])
    assert result.returncode == 0, result.stdout + result.stderr
    op = result.json()["operation"]
    read = step(op, "read_config")["detail"]
    assert read.endswith("then the release's config providers: Config.Reader"), read
    assert op["config_changes"] == [
        {"application": "ex_counter", "key": "source", "change": "changed",
         "old_value": '"runtime.exs"', "new_value": '"edited"'}]  # as Elixir's inspect prints it
    assert erl_eval(ex_node, "application:get_env(ex_counter, source)") == '{ok,<<"edited">>}'

    # A runtime.exs that does not compile is refused in Elixir's words; nothing applied.
    runtime.write_text("import Config\nconfig :ex_counter, source:\n")
    broken = relctl("reload-config", agents=[agent.address])
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert "the config provider Config.Reader failed" in broken.stdout
    assert "runtime.exs" in broken.stdout and "nothing was applied" in broken.stdout
    assert erl_eval(ex_node, "application:get_env(ex_counter, source)") == '{ok,<<"edited">>}'
