"""Verify checks the code (issue 14, item 2), on real nodes: an upgrade whose appup forgot a
changed module or an add_module passes release_handler but not verify, so it is rolled back
with the module named; `relctl verify` says whether a node runs its release's code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.tools.agent_proc import ROOT, AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild
from tests.tools.tarball_variants import appup_variant, compile_module

pytestmark = pytest.mark.otp

EXAMPLES = ROOT / "examples" / "counter"
# counter_app is reloaded; counter (the gen_server whose state changes shape) is forgotten.
FORGETS_COUNTER = ('{"0.0.2", [{"0.0.1", [{load_module, counter_app}]}],\n'
                   ' [{"0.0.1", [{load_module, counter_app}]}]}.\n')
# The 0.0.2 appup as shipped; the release also gains counter_extra, which it does not add.
FORGETS_ADD = ('{"0.0.2", [{"0.0.1", [{load_module, counter_app}, '
               '{update, counter, {advanced, []}}]}],\n'
               ' [{"0.0.1", [{load_module, counter_app}, {update, counter, {advanced, []}}]}]}.\n')
EXTRA = "-module(counter_extra).\n-export([hello/0]).\nhello() -> extra.\n"


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        extra_agent={"reconnect_max_delay": 1})
    agents.append(started)
    return started


def running(agent: AgentProc) -> tuple[str, str]:
    nodes = relctl("versions", "-o", "json", agents=[agent.address]).json()["nodes"]
    releases = nodes[0]["releases"]
    return next((r["version"], r["status"]) for r in releases
                if r["status"] in ("current", "permanent"))


def test_an_appup_that_forgets_a_changed_module_is_rolled_back_by_verify(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    tarball = appup_variant(release_build, tmp_path / "forgets.tar.gz", tmp_path / "forgets",
                            FORGETS_COUNTER)
    erl_eval(counter_node, "counter:incr(), ok")
    result = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.returncode == 5, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "rolled_back"
    assert "counter changed but the appup has no instruction for it" in op["error"]
    assert "lib/counter-0.0.1/ebin/counter.beam" in op["error"]  # the code it still runs
    assert "counter_app" not in op["error"]  # the appup reloads it: it matched
    steps = [(s["name"], s["state"]) for s in op["steps"]]
    assert steps[-3:] == [("verify", "failed"), ("rollback", "succeeded"),
                          ("verify", "succeeded")]
    assert running(agent) == ("0.0.1", "permanent")
    assert erl_eval(counter_node, "sys:get_state(counter)") == "1"  # old code, old state


def test_an_appup_that_forgets_an_add_module_is_rolled_back_by_verify(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    app = (EXAMPLES / "0.0.2" / "ebin" / "counter.app").read_text().replace(
        "counter_hooks, counter_sup]", "counter_hooks, counter_sup, counter_extra]")
    assert "counter_extra" in app
    beam = compile_module(EXTRA, "counter_extra", tmp_path / "extra")
    tarball = appup_variant(release_build, tmp_path / "no-add.tar.gz", tmp_path / "no-add",
                            FORGETS_ADD, app_file=app, new_beams={"counter_extra": beam})
    result = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.returncode == 5, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "rolled_back"
    assert ("counter_extra is not loaded (embedded mode): the appup lacks "
            "{add_module, counter_extra}") in op["error"]
    assert running(agent) == ("0.0.1", "permanent")


def test_relctl_verify_passes_a_good_node_and_names_a_module_loaded_from_elsewhere(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    good = relctl("verify", "-o", "json", agents=[agent.address])
    assert good.returncode == 0, good.stdout + good.stderr
    data = good.json()
    assert (data["ok"], data["release"], data["version"], data["mode"]) == (
        True, "counter", "0.0.1", "embedded")
    assert data["modules"] > 100 and data["mismatches"] == []  # kernel, stdlib, sasl, counter
    text = relctl("verify", agents=[agent.address])
    assert text.returncode == 0 and "every module runs the release's code" in text.stdout

    # Someone hot-loads a patched counter_hooks by hand from another directory.
    source = (EXAMPLES / "0.0.1" / "src" / "counter_hooks.erl").read_text().replace(
        "-module(counter_hooks).", "-module(counter_hooks).\n-export([patched/0]).",
    ) + "\npatched() -> true.\n"
    assert "-export([patched/0])" in source
    compile_module(source, "counter_hooks", tmp_path / "patch")
    loaded = erl_eval(counter_node, f'code:load_abs("{tmp_path / "patch" / "counter_hooks"}")')
    assert loaded == "{module,counter_hooks}"

    bad = relctl("verify", "-o", "json", agents=[agent.address])
    assert bad.returncode == 1, bad.stdout + bad.stderr
    data = bad.json()
    assert (data["ok"], data["mismatch_count"]) == (False, 1)
    [mismatch] = data["mismatches"]
    assert (mismatch["application"], mismatch["module"], mismatch["problem"]) == (
        "counter-0.0.1", "counter_hooks", "differs")
    assert re.fullmatch(r"counter_hooks runs other code than \S+/lib/counter-0\.0\.1/ebin/"
                        r"counter_hooks\.beam \(loaded from \S+/patch/counter_hooks\.beam\)",
                        mismatch["detail"]), mismatch["detail"]
    text = relctl("verify", agents=[agent.address])
    assert text.returncode == 1
    assert "counter_hooks" in text.stdout and "does not run all of the code" in text.stderr


def test_a_good_upgrade_and_downgrade_verify_every_module(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")), "-o",
                "json", agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    # The beams' md5 known in the agent (computed as it extracted 0.0.2; from the files for
    # 0.0.1), the node asked only what it has loaded (issue 24).
    verify = next(s for s in up.json()["operation"]["steps"] if s["name"] == "verify")
    assert re.search(r"; \d+ modules match the release's beams \(embedded mode, md5s compared "
                     r"in the agent\)", verify["detail"]), verify["detail"]
    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    verify = next(s for s in down.json()["operation"]["steps"] if s["name"] == "verify")
    assert "modules match the release's beams (embedded mode, md5s compared in the agent)" in \
        verify["detail"]
    assert relctl("verify", agents=[agent.address]).returncode == 0
