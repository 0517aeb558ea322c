"""A restart of the agent during an operation loses nothing (issue 22, point 2), on a real node
and a real agent process: the agent lets the running upgrade finish before it exits, its
client sees the real outcome, and the audit trail has the upgrade's record; a client whose
agent died under it waits for the agent to come back and follows the operation to its end."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tools.agent_proc import (
    ROOT,
    AgentProc,
    NodeEntry,
    eventually,
    relctl,
    relctl_env,
    start_agent,
)
from tests.tools.otp_procs import NodeProc, erl_eval, free_port
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

# The soak of the health probe: long enough for the test to act while the upgrade runs.
SOAK = 4


def _step_of_running(journal: Path) -> str:
    """The name of the last step of the running operation ("" when none runs)."""
    if not journal.exists():
        return ""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True) as conn:
        row = conn.execute("SELECT id FROM operations WHERE outcome = 'running'").fetchone()
        if row is None:
            return ""
        step = conn.execute("SELECT name FROM steps WHERE op_id = ? ORDER BY seq DESC",
                            (row[0],)).fetchone()
    return str(step[0]) if step else "started"


def _audit(workdir: Path) -> list[dict[str, object]]:
    path = workdir / "state" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _start(workdir: Path, node: NodeProc, socket: str) -> AgentProc:
    return start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                       metrics=False,
                       extra_agent={"listen": [socket, f"127.0.0.1:{free_port()}"],
                                    "reconnect_max_delay": 1, "refresh_interval": 2,
                                    # Shorter than the soak: the grace of plain calls must not
                                    # cut a stream that follows an operation.
                                    "shutdown_grace": 1},
                       node_extra={"health_probes": ["counter:health"], "health_soak": SOAK})


def _upgrade(socket: str, tarball: Path, env: dict[str, str] | None = None
             ) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", socket, "upgrade", "0.0.2",
         "--tarball", str(tarball)], cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=relctl_env({"RELCTL_TOKEN_FILE": "", **(env or {})}))


def _running(node: NodeProc) -> str:
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases(), "
                          "S =:= current orelse S =:= permanent]")


def test_sigterm_mid_upgrade_lets_it_finish_and_loses_no_record(
        tmp_path: Path, agents: list[AgentProc], counter_node: NodeProc,
        release_build: ReleaseBuild) -> None:
    workdir = tmp_path / "agent"
    socket = f"unix:{tmp_path / 'agent.sock'}"
    agent = _start(workdir, counter_node, socket)
    agents.append(agent)
    cli = _upgrade(socket, release_build.tarball("0.0.2"))
    try:
        eventually(lambda: _step_of_running(workdir / "state" / "journal.sqlite3") == "verify",
                   timeout=60, what="the upgrade is in its verify soak")
        agent.send_signal(signal.SIGTERM)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    # The agent waited for the upgrade: its client saw it succeed.
    assert cli.returncode == 0, out + err
    assert "done" in out, out
    eventually(lambda: agent.returncode is not None, timeout=30, what="the agent exited")
    assert agent.returncode == 0, agent.log_text()
    log = agent.log_text()
    assert "Bad file descriptor" not in log and "cannot write the audit trail" not in log, log
    upgrades = [r for r in _audit(workdir) if r["rpc"] == "Upgrade"]
    assert len(upgrades) == 1, upgrades
    assert upgrades[0]["result"] == "ok", upgrades
    assert upgrades[0]["detail"] == "operation 1: succeeded", upgrades
    assert "0.0.2" in _running(counter_node) and "permanent" in _running(counter_node)

    # After the restart the journal says the same.
    agents.append(_start(workdir, counter_node, socket))
    shown = relctl("operation", "1", "-o", "json", agents=[socket],
                   env={"RELCTL_TOKEN_FILE": ""})
    assert shown.returncode == 0, shown.stderr
    assert shown.json()["operation"]["outcome"] == "succeeded", shown.stdout


def test_a_client_whose_agent_died_follows_the_operation_once_it_is_back(
        tmp_path: Path, agents: list[AgentProc], counter_node: NodeProc,
        release_build: ReleaseBuild) -> None:
    workdir = tmp_path / "agent"
    socket = f"unix:{tmp_path / 'agent.sock'}"
    agent = _start(workdir, counter_node, socket)
    agents.append(agent)
    cli = _upgrade(socket, release_build.tarball("0.0.2"))
    try:
        eventually(lambda: _step_of_running(workdir / "state" / "journal.sqlite3") == "verify",
                   timeout=60, what="the upgrade is in its verify soak")
        # A crash: the operation is cut; the next agent journals it as interrupted, with the
        # node's real releases, and the waiting client reports that outcome.
        agent.send_signal(signal.SIGKILL)
        eventually(lambda: "waiting up to" in (cli.stdout.readline() if cli.stdout else ""),
                   timeout=30, what="relctl says it waits for the agent")
        agents.append(_start(workdir, counter_node, socket))
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    print(out, err)  # what the operator sees (shown with -s)
    assert cli.returncode == 6, out + err  # the outcome's code: interrupted
    assert "answers again" in out and "following operation 1" in out, out
    assert "interrupted" in out, out
    assert "Cancelling all calls" not in out + err, out + err


def test_a_client_gives_up_on_an_agent_that_does_not_come_back(
        tmp_path: Path, agents: list[AgentProc], counter_node: NodeProc,
        release_build: ReleaseBuild) -> None:
    workdir = tmp_path / "agent"
    socket = f"unix:{tmp_path / 'agent.sock'}"
    agent = _start(workdir, counter_node, socket)
    agents.append(agent)
    cli = _upgrade(socket, release_build.tarball("0.0.2"), {"RELCTL_AGENT_RETURN_WAIT": "3"})
    try:
        eventually(lambda: _step_of_running(workdir / "state" / "journal.sqlite3") == "verify",
                   timeout=60, what="the upgrade is in its verify soak")
        agent.send_signal(signal.SIGKILL)
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    message = " ".join(err.split())
    print(out, err)  # what the operator sees (shown with -s)
    assert cli.returncode == 6, out + err
    assert "waiting up to 3 s" in out, out
    assert "did not answer within 3 s" in message and "relctl operation 1" in message, err
