"""Fixtures shared by the end-to-end tests: agents started as real processes, the Elixir
(mix release) fixture's build and nodes, and the rebar3-built relx release."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import current_test_failed
from tests.tools.agent_proc import AgentProc
from tests.tools.elixir_fixture import (
    ElixirBuild,
    build_elixir_release,
    elixir_missing_reason,
    make_target_copy,
    start_elixir_node,
)
from tests.tools.mounts import unmount_all
from tests.tools.needs import unavailable
from tests.tools.otp_procs import EpmdProc, NodeProc, pid_exists
from tests.tools.rebar3_fixture import Rebar3Build, build_rebar3_release, rebar3_missing_reason

NODE = "ex_counter@localhost"


@pytest.fixture
def agents(request: pytest.FixtureRequest) -> Iterator[list[AgentProc]]:
    """Agents a test starts (append them here), all stopped by pid at teardown; their logs
    are printed when the test failed."""
    started: list[AgentProc] = []
    yield started
    for agent in started:
        agent.stop()
        if current_test_failed(request):
            print(f"===== log of relctl-agent pid {agent.pid} (exit {agent.returncode}) =====")
            print(agent.log_text())
    for agent in started:
        assert not pid_exists(agent.pid), f"agent pid {agent.pid} survived stop()"


@pytest.fixture(scope="session")
def elixir_build(tmp_path_factory: pytest.TempPathFactory) -> ElixirBuild:
    """Both mix releases, the relup and the upgrade tarball, built once per session."""
    reason = elixir_missing_reason()
    if reason is not None:
        unavailable(reason)  # CI installs Elixir (.ci/setup): a failure there
    return build_elixir_release(tmp_path_factory.mktemp("ex-counter-release"))


StartNode = Callable[[Path | None], NodeProc]


@pytest.fixture
def start_ex_node(request: pytest.FixtureRequest, elixir_build: ElixirBuild, epmd: EpmdProc,
                  node_cookie: str, tmp_path: Path) -> Iterator[StartNode]:
    """Starts ex_counter@localhost from a fresh copy of the 0.0.1 target (or from ``root`` to
    restart a node on its own, possibly upgraded, installation); all stopped by pid after."""
    started: list[NodeProc] = []

    def start(root: Path | None = None) -> NodeProc:
        target = root or make_target_copy(elixir_build, tmp_path / "target")
        node = start_elixir_node(target, NODE, cookie=node_cookie, epmd_port=epmd.port,
                                 workdir=tmp_path / f"node-{len(started)}")
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()
        if current_test_failed(request):
            print(f"===== log of {node.name} (pid {node.pid}, root {node.root}) =====")
            print(node.log_text())
    assert not [n.pid for n in started if pid_exists(n.pid)], "a node survived stop()"


@pytest.fixture
def ex_node(start_ex_node: StartNode) -> NodeProc:
    return start_ex_node(None)


@pytest.fixture
def read_only() -> Iterator[list[Path]]:
    """Paths a test made read-only with tests.tools.mounts.mount_read_only, unmounted after."""
    mounted: list[Path] = []
    yield mounted
    unmount_all(mounted)


@pytest.fixture(scope="session")
def rebar3_build(tmp_path_factory: pytest.TempPathFactory) -> Rebar3Build:
    """The counter example as a relx release built by Debian's rebar3 (0.0.1 installed, the
    0.0.2 tarball with rebar3's relup), built once per session."""
    reason = rebar3_missing_reason()
    if reason is not None:
        unavailable(reason)  # CI installs rebar3 (.ci/setup): a failure there
    return build_rebar3_release(tmp_path_factory.mktemp("rebar3-counter-release"))
