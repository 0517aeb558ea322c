"""Runtime config is part of the release (DESIGN.md section 4, step 5), on real nodes.

relx-style releases built from the counter fixture without rebar3: a target whose
releases/VSN/ holds ``sys.config.src``, or a ``${VAR}`` sys.config on a node started with
RELX_REPLACE_OS_VARS. relx's start script renders those at boot; the fixture's start script
does not, so :func:`tests.tools.relx_fixture.render_at_boot` emulates that render before the
node starts. The agent gets a different GREETING in its own environment than the node: the
value that must win is the node's.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import current_test_failed
from tests.tools import otp_select
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.otp_procs import EpmdProc, NodeProc, erl_eval, pid_exists, start_node
from tests.tools.release_fixture import ReleaseBuild, make_target_copy
from tests.tools.relx_fixture import config_variant, render_at_boot

pytestmark = pytest.mark.otp

NODE_GREETING = "hello from the node's environment"
TEMPLATE_001 = '[{counter, [{greeting, "${GREETING}"}]}, {kernel, [{logger_level, notice}]}].\n'
TEMPLATE_002 = ('[{counter, [{greeting, "${GREETING} (0.0.2)"}, {mode, normal}]},\n'
                ' {kernel, [{logger_level, notice}]}].\n')


class RelxNodes:
    """Counter nodes booted from relx-style targets; all stopped by pid at teardown."""

    def __init__(self, build: ReleaseBuild, epmd: EpmdProc, cookie: str, base: Path) -> None:
        self.build, self.epmd, self.cookie, self.base = build, epmd, cookie, base
        self.nodes: list[NodeProc] = []

    def start(self, *, replace_os_vars: bool = False,
              env: Mapping[str, str] = {"GREETING": NODE_GREETING}) -> NodeProc:
        """0.0.1 with its config as relx ships it: sys.config.src, or a ${VAR} sys.config
        rendered because the node runs with RELX_REPLACE_OS_VARS."""
        root = make_target_copy(self.build, self.base / f"target-{len(self.nodes)}",
                                erl=otp_select.erl())
        rel_dir = root / "releases" / "0.0.1"
        (rel_dir / "sys.config").unlink()
        if replace_os_vars:
            (rel_dir / "sys.config").write_text(TEMPLATE_001)
            env = {**env, "RELX_REPLACE_OS_VARS": "true"}
        else:
            (rel_dir / "sys.config.src").write_text(TEMPLATE_001)
        render_at_boot(root, env)
        node = start_node(root, "counter@localhost", cookie=self.cookie,
                          epmd_port=self.epmd.port, workdir=self.base / f"node-{len(self.nodes)}",
                          env=env)
        self.nodes.append(node)
        return node


@pytest.fixture
def relx_nodes(request: pytest.FixtureRequest, release_build: ReleaseBuild, epmd: EpmdProc,
               node_cookie: str, tmp_path: Path) -> Iterator[RelxNodes]:
    nodes = RelxNodes(release_build, epmd, node_cookie, tmp_path)
    yield nodes
    for node in nodes.nodes:
        node.stop()
        if current_test_failed(request):
            print(f"===== log of {node.name} (pid {node.pid}) =====\n{node.log_text()}")
    assert not [n.pid for n in nodes.nodes if pid_exists(n.pid)], "a node survived stop()"


def agent_for(agents: list[AgentProc], node: NodeProc, workdir: Path) -> AgentProc:
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        metrics=False, env={"GREETING": "the agent's own value, never used"})
    agents.append(agent)
    return agent


def run(agent: AgentProc, *args: str) -> tuple[int, dict[str, Any]]:
    result = relctl(*args, "-o", "json", agents=[agent.address], timeout=180)
    assert result.stdout, result.stderr
    op: dict[str, Any] = result.json()["operation"]
    return result.returncode, op


def step(op: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = [s for s in op["steps"] if s["name"] == name][-1]
    return found


def greeting(node: NodeProc) -> str:
    return erl_eval(node, "application:get_env(counter, greeting)")


def test_sys_config_src_is_rendered_with_the_nodes_environment_up_and_down(
        agents: list[AgentProc], relx_nodes: RelxNodes, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    node = relx_nodes.start()
    assert greeting(node) == f'{{ok,"{NODE_GREETING}"}}'
    agent = agent_for(agents, node, tmp_path / "agent")
    tarball = config_variant(release_build.tarball("0.0.2"), tmp_path / "src-0.0.2.tar.gz",
                             "0.0.2", src=TEMPLATE_002)

    code, op = run(agent, "upgrade", "0.0.2", "--tarball", str(tarball))
    assert code == 0 and op["outcome"] == "succeeded", op
    assert step(op, "preflight")["detail"] == (
        "releases/0.0.2/sys.config.src renders with the node's GREETING and parses; "
        "running 0.0.1")
    rel_dir = node.root / "releases" / "0.0.2"
    assert step(op, "write_config")["detail"] == (
        f"wrote {rel_dir}/sys.config from sys.config.src with the node's GREETING")
    names = [s["name"] for s in op["steps"]]
    assert names.index("write_config") < names.index("install") < names.index(
        "runtime_config") < names.index("verify")
    assert step(op, "runtime_config")["detail"].startswith(
        "rendered from sys.config.src, applied by install_release; no changes")
    # release_handler applied the rendered file (without it: greeting undefined).
    assert greeting(node) == f'{{ok,"{NODE_GREETING} (0.0.2)"}}'
    assert erl_eval(node, "application:get_env(counter, mode)") == "{ok,normal}"
    assert (rel_dir / "sys.config").read_text() == TEMPLATE_002.replace(
        "${GREETING}", NODE_GREETING)

    code, down = run(agent, "downgrade", "0.0.1")
    assert code == 0 and down["outcome"] == "succeeded", down
    assert greeting(node) == f'{{ok,"{NODE_GREETING}"}}'
    assert erl_eval(node, "application:get_env(counter, mode)") == "undefined"


def test_relx_replace_os_vars_renders_and_keeps_the_template(
        agents: list[AgentProc], relx_nodes: RelxNodes, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    node = relx_nodes.start(replace_os_vars=True)
    assert greeting(node) == f'{{ok,"{NODE_GREETING}"}}'
    agent = agent_for(agents, node, tmp_path / "agent")
    tarball = config_variant(release_build.tarball("0.0.2"), tmp_path / "vars-0.0.2.tar.gz",
                             "0.0.2", sys_config=TEMPLATE_002)

    code, op = run(agent, "upgrade", "0.0.2", "--tarball", str(tarball))
    assert code == 0 and op["outcome"] == "succeeded", op
    assert step(op, "preflight")["detail"] == (
        "releases/0.0.2/sys.config (RELX_REPLACE_OS_VARS is set on the node) renders with the "
        "node's GREETING and parses; running 0.0.1")
    rel_dir = node.root / "releases" / "0.0.2"
    assert step(op, "write_config")["detail"] == (
        f"wrote {rel_dir}/sys.config from the template with the node's GREETING; "
        f"kept the template as {rel_dir}/sys.config.orig")
    assert greeting(node) == f'{{ok,"{NODE_GREETING} (0.0.2)"}}'  # not the literal ${GREETING}
    # As relx leaves it: the template in sys.config.orig, so the next boot renders it again.
    assert (rel_dir / "sys.config.orig").read_text() == TEMPLATE_002

    code, down = run(agent, "downgrade", "0.0.1")
    assert code == 0 and down["outcome"] == "succeeded", down
    assert greeting(node) == f'{{ok,"{NODE_GREETING}"}}'


def test_an_unset_variable_is_refused_before_any_change_unless_the_reset_is_allowed(
        agents: list[AgentProc], relx_nodes: RelxNodes, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    node = relx_nodes.start()
    agent = agent_for(agents, node, tmp_path / "agent")
    template = ('[{counter, [{greeting, "${GREETING}"}, {farewell, "${RELCTL_TEST_FAREWELL}"},'
                " {mode, '${RELCTL_TEST_MODE:-normal}'}]}].\n")
    tarball = config_variant(release_build.tarball("0.0.2"), tmp_path / "unset-0.0.2.tar.gz",
                             "0.0.2", src=template)

    def files() -> list[str]:
        return sorted(str(p.relative_to(node.root))
                      for d in ("releases", "lib") for p in (node.root / d).rglob("*"))
    before = files()

    code, op = run(agent, "upgrade", "0.0.2", "--tarball", str(tarball))
    assert code == 1, op
    assert op["outcome"] == "failed_unchanged"
    # Named, with what to do; ${VAR:-default} needs no variable.
    assert op["error"].startswith(
        "releases/0.0.2/sys.config.src uses ${RELCTL_TEST_FAREWELL}, not set in the "
        f"environment of {node.name}: the install would render it empty")
    assert "--allow-config-reset" in op["error"] and "RELCTL_TEST_MODE" not in op["error"]
    assert [(s["name"], s["state"]) for s in op["steps"]] == [("preflight", "failed")]
    assert files() == before
    assert greeting(node) == f'{{ok,"{NODE_GREETING}"}}'

    code, op = run(agent, "upgrade", "0.0.2", "--tarball", str(tarball), "--allow-config-reset")
    assert code == 0 and op["outcome"] == "succeeded", op
    assert "--allow-config-reset: RELCTL_TEST_FAREWELL unset, rendered empty" in \
        step(op, "preflight")["detail"]
    assert erl_eval(node, "application:get_env(counter, farewell)") == '{ok,[]}'
    assert erl_eval(node, "application:get_env(counter, mode)") == "{ok,normal}"
