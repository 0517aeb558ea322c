"""Errors that say what happened, on real nodes and a real agent (issue 13, Why #10): a CLI
that loses its agent mid-operation says the operation may go on and how to see its outcome;
a node restarted with a new cookie is reached again once its cookie file is rewritten, and
SIGHUP re-reads the cookie files at once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import (
    ROOT,
    AgentProc,
    NodeEntry,
    eventually,
    relctl,
    relctl_env,
    start_agent,
)
from tests.tools.otp_procs import NodeProc, free_port, pid_exists

pytestmark = pytest.mark.otp


@pytest.fixture
def stopped_pids() -> Iterator[list[int]]:
    """Pids this test SIGSTOPs: each gets SIGCONT at teardown, so that stop() can end it."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_exists(pid):
            os.kill(pid, signal.SIGCONT)


def _running_operation(journal: Path) -> int:
    if not journal.exists():
        return 0
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT id FROM operations WHERE outcome = 'running'").fetchone()
    return int(row[0]) if row else 0


def test_a_cli_that_lost_its_agent_mid_operation_says_it_may_go_on(
        tmp_path: Path, agents: list[AgentProc], counter_node: NodeProc,
        stopped_pids: list[int]) -> None:
    workdir = tmp_path / "agent"
    socket = f"unix:{tmp_path / 'agent.sock'}"
    extra = {"listen": [socket, f"127.0.0.1:{free_port()}"], "reconnect_max_delay": 1}
    entry = NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)
    agent = start_agent(workdir, [entry], metrics=False, extra_agent=extra)
    agents.append(agent)
    # A stopped node keeps its connection but answers nothing: the reload waits on it.
    os.kill(counter_node.pid, signal.SIGSTOP)
    stopped_pids.append(counter_node.pid)
    cli = subprocess.Popen([sys.executable, "-m", "agent.client", "--agent", socket,
                            "reload-config"], cwd=ROOT,
                           # It waits that long for the agent to come back, then gives up.
                           env=relctl_env({"RELCTL_TOKEN_FILE": "",
                                           "RELCTL_AGENT_RETURN_WAIT": "2"}),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        op_id = eventually(lambda: _running_operation(workdir / "state" / "journal.sqlite3"),
                           what="the reload operation is running")
        os.kill(agent.pid, signal.SIGKILL)
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait(10)
    message = " ".join(err.split())
    # 6, not 1: the node may be changed by the operation that goes on (README, exit codes).
    assert cli.returncode == 6, (cli.returncode, out, err)
    assert "may go on" in message or "may continue" in message, err
    # The id when the stream had brought it before the agent died; else the generic hint.
    assert (f"relctl operation {op_id}" in message
            or "relctl operations lists it and relctl operation N" in message), err
    assert "--ca" not in message and "TLS" not in message, err  # a Unix socket is never TLS
    agent.stop()

    # After the restart, the command the message named tells how it ended.
    os.kill(counter_node.pid, signal.SIGCONT)
    agents.append(start_agent(workdir, [entry], metrics=False, extra_agent=extra))
    shown = relctl("operation", str(op_id), "-o", "json", agents=[socket],
                   env={"RELCTL_TOKEN_FILE": ""})
    assert shown.returncode == 0, shown.stderr  # the operation is found and shown
    assert shown.json()["operation"]["outcome"] == "interrupted", shown.stdout


def test_a_rotated_cookie_is_re_read_on_reconnect_and_on_sighup(
        tmp_path: Path, agents: list[AgentProc], node_factory: NodeFactory,
        counter_node: NodeProc) -> None:
    workdir = tmp_path / "agent"
    agent = start_agent(workdir, [NodeEntry(counter_node.name, counter_node.cookie,
                                            counter_node.epmd_port)], metrics=False,
                        extra_agent={"reconnect_max_delay": 1, "refresh_interval": 1})
    agents.append(agent)
    cookie_file = workdir / "node0.cookie"

    def node_up() -> bool:
        result = relctl("versions", "-o", "json", agents=[agent.address])
        return result.returncode == 0 and all(n["up"] for n in result.json()["nodes"])
    assert node_up()

    # The node comes back with a new cookie; the operator rewrites the agent's cookie file.
    counter_node.stop()
    new_cookie = "rotated" + counter_node.cookie
    restarted = node_factory(counter_node.name, target=counter_node.root, cookie=new_cookie)
    cookie_file.write_text(new_cookie + "\n")
    eventually(node_up, timeout=30, what="the agent reconnects with the re-read cookie")

    # SIGHUP re-reads at once (the log names the node whose cookie changed).
    cookie_file.write_text("third" + new_cookie + "\n")
    agent.send_signal(signal.SIGHUP)
    eventually(lambda: "changed: counter@localhost" in agent.log_text(), timeout=10,
               what="SIGHUP re-read the cookie file")
    assert agent.returncode is None
    restarted.stop()
