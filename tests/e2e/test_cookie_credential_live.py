"""A cookie given as a systemd credential is a copy systemd makes when the agent starts
(systemd 252 does not refresh it on reload): the agent says so, on SIGHUP and when the node
rejects the cookie, instead of promising that a reload picks up a new one (issue 22, point 3).
The systemd stage (tests/e2e/test_systemd_stage.py) runs the same under a real systemd."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, eventually, relctl, start_agent
from tests.tools.otp_procs import NodeProc

pytestmark = pytest.mark.otp


def test_a_credential_cookie_asks_for_a_restart_not_a_reload(
        tmp_path: Path, agents: list[AgentProc], node_factory: NodeFactory,
        counter_node: NodeProc) -> None:
    workdir = tmp_path / "agent"
    entry = NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port,
                      credential="counter-cookie")
    agent = start_agent(workdir, [entry], metrics=False,
                        extra_agent={"reconnect_max_delay": 1},
                        env={"CREDENTIALS_DIRECTORY": str(workdir / "credentials")})
    agents.append(agent)

    agent.send_signal(signal.SIGHUP)
    eventually(lambda: "credential 'counter-cookie', copied when the agent started: restart "
                       "the agent (systemctl restart relctl-agent) to pick up a new credential"
                       in agent.log_text(), timeout=10, what="SIGHUP names the credential")

    # The node comes back with another cookie: the reason of the down node says what to do.
    counter_node.stop()
    restarted = node_factory(counter_node.name, target=counter_node.root,
                             cookie="rotated" + counter_node.cookie)

    def down_reason() -> str:
        nodes = relctl("nodes", "-o", "json", agents=[agent.address]).json()["nodes"]
        return str(nodes[0].get("error", ""))
    reason = eventually(lambda: "rejected" in (r := down_reason()) and r, timeout=30,
                        what="the node rejects the old cookie")
    assert "systemd credential 'counter-cookie'" in reason, reason
    assert "restart the agent" in reason and "no restart needed" not in reason, reason
    restarted.stop()
