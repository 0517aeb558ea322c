"""Pytest fixtures for tests that need a real Erlang/OTP.

Responsibility: wire :mod:`tests.tools.release_fixture` (build the counter
release once per session) and :mod:`tests.tools.otp_procs` (private epmd,
release nodes) into fixtures whose teardown always stops what they started
by pid, even when the test fails, and prints the node logs of failed tests.

Every run works in its own pytest temp dirs and on free ports, so runs can
repeat and overlap. Tests needing OTP carry ``pytest.mark.otp``; they are
skipped with a reason when erl/erlc/epmd are not on PATH, or when the OTP 27
root a ``RELCTL_TEST_OTP=27`` run asks for is missing (see
:mod:`tests.tools.otp_select`); under CI (``CI`` set) the run fails instead.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import pytest

from tests.tools import failures, needs, otp_select
from tests.tools.otp_procs import EpmdProc, NodeProc, pid_exists, start_epmd, start_node
from tests.tools.release_fixture import ReleaseBuild, build_release, make_target_copy

OTP_TOOLS: tuple[str, ...] = ("erl", "erlc", "epmd")


def otp_missing_reason() -> str | None:
    missing = [tool for tool in OTP_TOOLS if shutil.which(tool) is None]
    if not missing:
        return otp_select.missing_reason()
    return f"needs Erlang/OTP: {', '.join(missing)} not found on PATH (run .ci/setup)"


def _require_otp() -> None:
    reason = otp_missing_reason()
    if reason is not None:
        pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = otp_missing_reason()
    if reason is None:
        return
    if needs.under_ci():
        # CI installs OTP itself (.ci/setup, .ci/otp27-root); a skip there would hide that the
        # real tests never ran, so the run fails with the reason.
        raise pytest.UsageError(f"{reason}; CI must run the tests against real OTP")
    for item in items:
        if item.get_closest_marker("otp") is not None:
            item.add_marker(pytest.mark.skip(reason=reason))


_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def pytest_configure(config: pytest.Config) -> None:
    failures.install()


def pytest_runtest_setup(item: pytest.Item) -> None:
    needs.check_marks(item)  # a missing tool or privilege: a skip, or a failure under CI


@pytest.fixture(autouse=True)
def _nothing_unnoticed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test after which asyncio reported an unhandled exception in this process, or an
    agent it started logged a traceback. Set up first, so torn down last: after the fixtures
    that stop agents and close loops."""
    # Each teardown collects its own test's garbage, so what is here came from session
    # fixtures between tests: reported too, marked so.
    before = [f"(before this test) {e}" for e in failures.take_loop_errors()]
    yield
    loop_errors = before + failures.take_loop_errors()
    tracebacks = failures.take_agent_tracebacks()
    if request.node.get_closest_marker("agent_traceback_expected") is not None:
        tracebacks = []
    problems = [f"unhandled asyncio exception: {e}" for e in loop_errors] + [
        f"traceback in the log of an agent: {t}" for t in tracebacks]
    assert not problems, "\n\n".join(problems)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Lets teardown code know whether the test failed (to print node logs).
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def current_test_failed(request: pytest.FixtureRequest) -> bool:
    reports = request.node.stash.get(_REPORTS, {})
    return any(r.failed for r in reports.values())


@pytest.fixture(scope="session")
def release_build(tmp_path_factory: pytest.TempPathFactory) -> ReleaseBuild:
    """The counter release (0.0.1 + 0.0.2), built once per session."""
    _require_otp()
    return build_release(tmp_path_factory.mktemp("counter-release"), erl=otp_select.erl(),
                         erlc=otp_select.erlc())


@pytest.fixture
def epmd(tmp_path: Path) -> Iterator[EpmdProc]:
    """A private epmd on a free loopback port, stopped by pid afterwards."""
    _require_otp()
    proc = start_epmd(log_dir=tmp_path / "epmd")
    try:
        yield proc
    finally:
        proc.stop()
    assert not pid_exists(proc.pid), f"epmd pid {proc.pid} survived stop()"


@pytest.fixture
def node_cookie() -> str:
    """The cookie of this test's nodes (never on any command line)."""
    return secrets.token_hex(16)


class NodeFactory:
    """Starts release nodes on the test's epmd; stops all of them at teardown."""

    def __init__(
        self, build: ReleaseBuild, epmd: EpmdProc, base_dir: Path, cookie: str
    ) -> None:
        self._build = build
        self._epmd = epmd
        self._base_dir = base_dir
        self._cookie = cookie
        self.nodes: list[NodeProc] = []

    def __call__(
        self,
        name: str,
        *,
        target: Path | None = None,
        cookie: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> NodeProc:
        """Start ``name`` (``alive`` or ``alive@host``).

        Without ``target`` the node gets a fresh copy of the installed 0.0.1
        target (upgrades mutate it); pass a node's ``root`` to restart a
        node on the same, possibly upgraded, installation.
        """
        alive = name.partition("@")[0]
        index = len(self.nodes)
        if target is None:
            target = make_target_copy(self._build, self._base_dir / f"{alive}-{index}-target",
                                      erl=otp_select.erl())
        node = start_node(
            target,
            name if "@" in name else f"{name}@localhost",
            cookie=self._cookie if cookie is None else cookie,
            epmd_port=self._epmd.port,
            extra_args=extra_args,
            workdir=self._base_dir / f"{alive}-{index}-node",
            timeout=timeout,
        )
        self.nodes.append(node)
        return node

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@pytest.fixture
def node_factory(
    request: pytest.FixtureRequest,
    release_build: ReleaseBuild,
    epmd: EpmdProc,
    node_cookie: str,
    tmp_path: Path,
) -> Iterator[NodeFactory]:
    factory = NodeFactory(release_build, epmd, tmp_path / "nodes", node_cookie)
    try:
        yield factory
    finally:
        factory.stop_all()
        if current_test_failed(request):
            for node in factory.nodes:
                print(f"===== log of {node.name} (pid {node.pid}, root {node.root}) =====")
                print(node.log_text())
    survivors = [n.pid for n in factory.nodes if pid_exists(n.pid)]
    assert not survivors, f"node pids survived stop(): {survivors}"


@pytest.fixture
def counter_node(node_factory: NodeFactory) -> NodeProc:
    """counter@localhost booted from a fresh copy of the installed 0.0.1 target.

    Stopped (SIGTERM, then SIGKILL) by ``node_factory``'s teardown.
    """
    return node_factory("counter@localhost")
