"""An exception raised in a mix release's config/runtime.exs names the file and line of the
expression that raised (Elixir 1.14's stack does not), when relctl runs the config providers
again; nothing is applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import NodeProc, erl_eval

pytestmark = pytest.mark.otp

SOURCE = "application:get_env(ex_counter, source)"


@pytest.fixture
def agent(agents: list[AgentProc], ex_node: NodeProc, tmp_path: Path) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)])
    agents.append(started)
    return started


@pytest.mark.parametrize("body, line, said", [
    ('config :ex_counter, source: "edited"\n\nraise "boom in runtime config"\n', 5,
     "** (RuntimeError) boom in runtime config"),
    ('config :ex_counter,\n  source: "edited",\n  port: System.fetch_env!("RELCTL_NO_SUCH_VAR")'
     '\n', 3, '** (System.EnvError) could not fetch environment variable "RELCTL_NO_SUCH_VAR" '
              "because it is not set"),
])
def test_a_raising_runtime_exs_is_named_with_its_line_and_nothing_applied(
        agent: AgentProc, ex_node: NodeProc, body: str, line: int, said: str) -> None:
    runtime = ex_node.root / "releases" / "0.0.1" / "runtime.exs"
    assert runtime.is_file()
    before = erl_eval(ex_node, SOURCE)
    runtime.write_text("import Config\n\n" + body)
    result = relctl("reload-config", "-o", "json", agents=[agent.address], timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.json()["operation"]["error"]
    assert error.startswith(f"the config provider Config.Reader failed at {runtime}:{line}, "
                            "nothing was applied (fix the runtime config and run relctl "
                            "reload-config again): " + said), error
    assert erl_eval(ex_node, SOURCE) == before
