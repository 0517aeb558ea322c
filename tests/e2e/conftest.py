"""Fixtures shared by the end-to-end tests: agents started as real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import _test_failed
from tests.tools.agent_proc import AgentProc
from tests.tools.otp_procs import pid_exists


@pytest.fixture
def agents(request: pytest.FixtureRequest) -> Iterator[list[AgentProc]]:
    """Agents a test starts (append them here), all stopped by pid at teardown; their logs
    are printed when the test failed."""
    started: list[AgentProc] = []
    yield started
    for agent in started:
        agent.stop()
        if _test_failed(request):
            print(f"===== log of relctl-agent pid {agent.pid} (exit {agent.returncode}) =====")
            print(agent.log_text())
    for agent in started:
        assert not pid_exists(agent.pid), f"agent pid {agent.pid} survived stop()"
