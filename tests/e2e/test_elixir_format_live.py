"""On an Elixir node relctl speaks Elixir: a hook that raises reads as ``** (ArgumentError)``
with its file:line (Exception.format/3 on the node), and reload-config shows values the way
``inspect`` prints them ("GBP", not <<"GBP">>). Erlang nodes keep the Erlang form (the
existing hook and reload tests pin it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.elixir_fixture import ElixirBuild
from tests.tools.otp_procs import NodeProc, erl_eval

pytestmark = pytest.mark.otp


def agent_for(agents: list[AgentProc], node: NodeProc, workdir: Path,
              **node_extra: Any) -> AgentProc:
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        metrics=False, node_extra=node_extra)
    agents.append(agent)
    return agent


def test_a_hook_that_raises_on_an_elixir_node_reads_as_elixir_prints_it(
        agents: list[AgentProc], ex_node: NodeProc, elixir_build: ElixirBuild,
        tmp_path: Path) -> None:
    # Date.new!/3 raises ArgumentError for month 13: a real raise, from a real beam.
    agent = agent_for(agents, ex_node, tmp_path / "agent", hooks=[
        {"name": "check", "when": "pre_install", "call": "Elixir.Date:new!",
         "args": [2024, 13, 1]}])
    result = relctl("upgrade", "0.0.2", "--tarball", str(elixir_build.tarball), "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    error: str = op["error"]
    assert error.startswith("hook check: Date.new!(2024, 13, 1) failed on the node: "
                            "** (ArgumentError) cannot build date, reason: :invalid_date\n"), error
    # Exception.format/3's stack lines: "(app vsn) file:line: Module.fun/arity".
    assert re.search(r"\n    \(elixir [0-9.]+\) lib/calendar/date\.ex:\d+: Date\.new!/4\n", error), \
        error
    assert error.endswith("; the release was not installed")
    assert "'EXIT'" not in error and "__struct__" not in error
    assert erl_eval(ex_node, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.1"}'


def test_reload_config_shows_an_elixir_nodes_values_as_inspect_prints_them(
        agents: list[AgentProc], ex_node: NodeProc, tmp_path: Path) -> None:
    agent = agent_for(agents, ex_node, tmp_path / "agent")
    # Set at run time, as code or an operator would; the sys.config says "hello from 0.0.1".
    erl_eval(ex_node, 'application:set_env(ex_counter, greeting, [{currency, <<"GBP">>}, '
                      '{rates, #{eur => 1.17}}, {tag, {ok, "abc"}}, {mod, \'Elixir.Date\'}])')
    shown = relctl("reload-config", "--dry-run", "--show-values", "-o", "json",
                   agents=[agent.address])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    [change] = shown.json()["operation"]["config_changes"]
    assert (change["application"], change["key"], change["change"]) == (
        "ex_counter", "greeting", "changed")
    assert change["new_value"] == '"hello from 0.0.1"'
    # Elixir 1.15 prints a charlist as ~c"abc", 1.14 as 'abc'.
    assert change["old_value"] in (
        f'[currency: "GBP", rates: %{{eur: 1.17}}, tag: {{:ok, {chars}}}, mod: Date]'
        for chars in ("'abc'", '~c"abc"')), change
    human = relctl("reload-config", "--show-values", agents=[agent.address])
    assert human.returncode == 0, human.stdout + human.stderr
    assert '"GBP"' in human.stdout and "<<" not in human.stdout, human.stdout
    assert erl_eval(ex_node, "application:get_env(ex_counter, greeting)") == \
        '{ok,<<"hello from 0.0.1">>}'
