"""`relctl reload-config` against a real node on release 0.0.2, whose counter_app has a
config_change/3 that records its arguments and whose counter reads its env at every call."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

CALLS = "persistent_term:get({counter, config_changes}, [])"


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path,
          release_build: ReleaseBuild) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)])
    agents.append(started)
    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                agents=[started.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    return started


def sys_config(node: NodeProc) -> Path:
    return node.root / "releases" / "0.0.2" / "sys.config"


def test_the_upgrade_itself_told_counter_app_what_changed(
        agent: AgentProc, counter_node: NodeProc) -> None:
    # release_handler's own config_change after install: the semantics reload-config copies.
    assert erl_eval(counter_node, CALLS) == (
        '[{[{greeting,"hello from 0.0.2"}],[{mode,normal}],[]}]')


def test_reloading_an_unchanged_config_changes_nothing(
        agent: AgentProc, counter_node: NodeProc) -> None:
    before = erl_eval(counter_node, CALLS)
    result = relctl("reload-config", "-o", "json", agents=[agent.address])
    assert result.returncode == 0, result.stdout + result.stderr
    op = result.json()["operation"]
    # Defaults from the .app files and -kernel arguments of vm.args are not mistaken for changes.
    assert (op["kind"], op["outcome"], op["config_changes"]) == ("reload_config", "succeeded", [])
    assert [(s["name"], s["state"]) for s in op["steps"]] == [
        ("preflight", "succeeded"), ("read_config", "succeeded"), ("diff", "succeeded"),
        ("apply", "skipped")]
    assert op["from_version"] == op["to_version"] == "0.0.2"
    assert erl_eval(counter_node, CALLS) == before


def test_a_changed_config_is_applied_live_and_the_callback_gets_the_diff(
        agent: AgentProc, counter_node: NodeProc) -> None:
    erl_eval(counter_node, "persistent_term:erase({counter, config_changes})")
    pid = erl_eval(counter_node, "whereis(counter)")
    erl_eval(counter_node, "counter:incr()")
    # step comes from an included file, found beside sys.config as the node would find it.
    sys_config(counter_node).write_text(
        '[{counter, [{greeting, "hi after reload"}]}, "reload_extra",\n'
        ' {kernel, [{logger_level, notice}]}].\n')
    (sys_config(counter_node).parent / "reload_extra.config").write_text(
        "[{counter, [{step, 10}]}].\n")

    dry = relctl("reload-config", "--dry-run", "-o", "json", agents=[agent.address])
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert dry.json()["operation"]["outcome"] == "dry_run"
    assert erl_eval(counter_node, "counter:greeting()") == '"hello from 0.0.2"'
    assert erl_eval(counter_node, CALLS) == "[]"

    result = relctl("reload-config", "--show-values", "-o", "json", agents=[agent.address])
    assert result.returncode == 0, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "succeeded"
    assert op["config_changes"] == [
        {"application": "counter", "key": "greeting", "change": "changed",
         "old_value": '"hello from 0.0.2"', "new_value": '"hi after reload"'},
        {"application": "counter", "key": "step", "change": "added",
         "old_value": None, "new_value": "10"},
        {"application": "counter", "key": "mode", "change": "removed",
         "old_value": "normal", "new_value": None}]
    # The node behaves differently now, without a restart.
    assert erl_eval(counter_node, "whereis(counter)") == pid
    assert erl_eval(counter_node, "counter:incr()") == "11"
    assert erl_eval(counter_node, "counter:greeting()") == '"hi after reload"'
    assert erl_eval(counter_node, CALLS) == '[{[{greeting,"hi after reload"}],[{step,10}],[mode]}]'

    # The journal keeps the keys, never the values.
    journaled = relctl("operation", str(op["id"]), "-o", "json", agents=[agent.address]).json()
    assert journaled["operation"]["config_changes"] == [
        {"application": "counter", "key": "greeting", "change": "changed"},
        {"application": "counter", "key": "step", "change": "added"},
        {"application": "counter", "key": "mode", "change": "removed"}]

    # Reloading again finds nothing to do.
    again = relctl("reload-config", agents=[agent.address])
    assert again.returncode == 0 and "no configuration changes" in again.stdout


def test_text_output_hides_values_unless_asked(agent: AgentProc, counter_node: NodeProc) -> None:
    sys_config(counter_node).write_text(
        '[{counter, [{greeting, "s3cret-greeting"}, {mode, normal}]}].\n')
    result = relctl("reload-config", "--dry-run", agents=[agent.address])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "greeting" in result.stdout and "changed" in result.stdout
    assert "s3cret" not in result.stdout and "--show-values" in result.stdout
    shown = relctl("reload-config", "--dry-run", "--show-values", agents=[agent.address])
    assert '"s3cret-greeting"' in shown.stdout


def test_a_config_that_does_not_parse_is_refused_with_file_and_line(
        agent: AgentProc, counter_node: NodeProc) -> None:
    sys_config(counter_node).write_text('[{counter, [{greeting, "x"}\n {step 3}]}].\n')
    result = relctl("reload-config", agents=[agent.address])
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{sys_config(counter_node)}: line 2:" in result.stdout
    assert "nothing was applied" in result.stdout
    assert erl_eval(counter_node, "counter:greeting()") == '"hello from 0.0.2"'


def test_a_refusing_callback_gets_the_old_environment_back(
        agent: AgentProc, counter_node: NodeProc) -> None:
    sys_config(counter_node).write_text(
        '[{counter, [{greeting, "refused"}, {mode, normal}, {refuse_config, true}]}].\n')
    result = relctl("reload-config", "-o", "json", agents=[agent.address])
    assert result.returncode == 5, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "rolled_back"
    assert "refused_by_counter" in op["error"] and "previous environment is back" in op["error"]
    assert erl_eval(counter_node, "counter:greeting()") == '"hello from 0.0.2"'
    assert erl_eval(counter_node, "application:get_env(counter, refuse_config)") == "undefined"


def test_a_freshly_booted_node_has_no_config_changes(
        agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> None:
    # OTP sets kernel's logger and connect_all at boot; no config names them: not "removed".
    fresh = start_agent(tmp_path / "fresh-agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)])
    agents.append(fresh)
    assert "connect_all" in erl_eval(counter_node, "application:get_all_env(kernel)")
    dry = relctl("reload-config", "--dry-run", "-o", "json", agents=[fresh.address])
    assert dry.returncode == 0, dry.stdout + dry.stderr
    op = dry.json()["operation"]
    assert (op["outcome"], op["config_changes"]) == ("dry_run", [])
    assert next(s for s in op["steps"] if s["name"] == "diff")["detail"] == "no changes"
