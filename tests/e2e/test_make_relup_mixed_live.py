"""A release whose new version adds a module, changes the supervisor and a library module the
GenServer calls (0.0.3, built here from the counter example's 0.0.2 sources): the generated
appup loads the library before the GenServer, and a live node goes up from 0.0.1 and back."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tools import otp_select
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import EXAMPLE_DIR, ReleaseBuild, erl_env, extract_tar

pytestmark = pytest.mark.otp


def build_0_0_3(base: Path, dest: Path) -> Path:
    """counter 0.0.3 from 0.0.2's sources: counter calls counter_hooks:label/1 (a changed
    library) and counter_fmt:show/1 (added), counter_sup has a new intensity."""
    src = dest / "src"
    shutil.copytree(EXAMPLE_DIR / "0.0.2" / "src", src)
    counter = (src / "counter.erl").read_text()
    counter = counter.replace('-vsn("0.0.2").', '-vsn("0.0.3").').replace(
        "{reply, N + Step, S#{count := N + Step}}.",
        "_ = counter_fmt:show(counter_hooks:label(N)),\n"
        "    {reply, N + Step, S#{count := N + Step}}.")
    (src / "counter.erl").write_text(counter)
    hooks = (src / "counter_hooks.erl").read_text()
    (src / "counter_hooks.erl").write_text(hooks.replace(
        "-export([run/1,", "-export([label/1]).\n-export([run/1,") + "label(N) -> {count, N}.\n")
    sup = (src / "counter_sup.erl").read_text()
    (src / "counter_sup.erl").write_text(sup.replace("intensity => 5", "intensity => 6"))
    (src / "counter_fmt.erl").write_text(
        "-module(counter_fmt).\n-export([show/1]).\nshow(T) -> io_lib:format(\"~p\", [T]).\n")
    root = dest / "root"
    for lib in (base / "lib").iterdir():
        if not lib.name.startswith("counter-"):
            shutil.copytree(lib, root / "lib" / lib.name)
    ebin = root / "lib" / "counter-0.0.3" / "ebin"
    ebin.mkdir(parents=True)
    subprocess.run([otp_select.erlc(), "+debug_info", "-o", str(ebin),
                    *sorted(str(p) for p in src.glob("*.erl"))], check=True, timeout=60,
                   env=erl_env())
    app = (EXAMPLE_DIR / "0.0.2" / "ebin" / "counter.app").read_text()
    (ebin / "counter.app").write_text(app.replace('"0.0.2"', '"0.0.3"').replace(
        "counter_hooks, counter_sup]", "counter_fmt, counter_hooks, counter_sup]"))
    rel_dir = root / "releases" / "0.0.3"
    rel_dir.mkdir(parents=True)
    old_rel = (base / "releases" / "counter-0.0.2.rel").read_text()
    (rel_dir / "counter-0.0.3.rel").write_text(old_rel.replace('"0.0.2"', '"0.0.3"'))
    for name in ("sys.config", "vm.args"):
        shutil.copy2(base / "releases" / "0.0.2" / name, rel_dir / name)
    subprocess.run([otp_select.erl(), "-boot", "no_dot_erlang", "-noshell", "-noinput", "-eval",
                    'R = systools:make_script("counter-0.0.3", [{path, ["../../lib/*/ebin"]}]), '
                    "halt(case R of ok -> 0; _ -> 1 end)."], cwd=rel_dir, check=True, timeout=60,
                   env=erl_env())
    assert (rel_dir / "counter-0.0.3.boot").is_file()
    shutil.copy2(rel_dir / "counter-0.0.3.boot", rel_dir / "start.boot")
    return root


def test_added_module_changed_supervisor_and_library_upgrade_a_live_node(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    old = extract_tar(release_build.tarball("0.0.1"), tmp_path / "0.0.1")
    base = extract_tar(release_build.tarball("0.0.2"), tmp_path / "0.0.2")
    new = build_0_0_3(base, tmp_path / "0.0.3")
    shown = relctl("make-appup", str(old), str(new), "-o", "json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [appup] = json.loads(shown.stdout)["appups"]
    up = appup["appup"].split('[{"0.0.1",')[1]
    assert up.split("]}],")[0].split() == [
        "[{add_module,", "counter_fmt},",
        "{load_module,", "counter_hooks},",
        "{update,", "counter,", "{advanced,", "[]},", "[counter_fmt,", "counter_hooks]},",
        "{update,", "counter_sup,", "supervisor},",
        "{load_module,", "counter_app,", "[counter_sup]}"]  # counter_app starts counter_sup
    tarball = tmp_path / "counter-0.0.3.tar.gz"
    made = relctl("make-relup", str(old), str(new), "--tarball", str(tarball), timeout=120)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "appup: counter 0.0.1 -> 0.0.3: generated" in made.stdout

    agent = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)])
    agents.append(agent)
    erl_eval(counter_node, "counter:incr(), counter:incr(), ok")
    pid = erl_eval(counter_node, "whereis(counter)")
    upgraded = relctl("upgrade", "0.0.3", "--tarball", str(tarball), "-o", "json",
                      agents=[agent.address], timeout=180)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert erl_eval(counter_node, "sys:get_state(counter)") == \
        '#{count => 2,upgraded_from => "0.0.1"}'
    assert erl_eval(counter_node, "counter:incr()") == "3"  # calls both new functions
    assert erl_eval(counter_node, "whereis(counter)") == pid
    assert erl_eval(counter_node, "code:is_loaded(counter_fmt) =/= false") == "true"
    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert erl_eval(counter_node, "sys:get_state(counter)") == "3"
    assert erl_eval(counter_node, "code:is_loaded(counter_fmt)") == "false"
