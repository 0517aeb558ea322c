"""A rollout whose agent goes silent mid-switch, and a rollout stopped by SIGTERM, on real
agents and nodes (issue 23, items 1-2).

Silence is made with SIGSTOP on the agent's process: its TCP connection stays open and the
kernel still acknowledges bytes, but nothing answers, as with a host behind a cut link. (The
namespaced version with a real link cut is tests/e2e/test_multihost_live.py.) relctl must say
within --host-timeout which agent went silent during which step of which operation, go on
with the next batch, and, once the agent answers again, report the operation's real outcome.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, eventually, start_agent
from tests.tools.cli_proc import Cli
from tests.tools.otp_procs import NodeProc, erl_eval, pid_exists
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

HOST_TIMEOUT = 3.0


def releases(node: NodeProc) -> str:
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


@pytest.fixture
def stopped_pids() -> Iterator[list[int]]:
    """Pids this test SIGSTOPs: each gets SIGCONT at teardown, so that they can be stopped."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if pid_exists(pid):
            os.kill(pid, signal.SIGCONT)


def _pair(agents: list[AgentProc], node_factory: NodeFactory, tmp_path: Path, i: int,
          soak: float) -> tuple[NodeProc, AgentProc]:
    node = node_factory(f"counter{i}@localhost")
    agent = start_agent(tmp_path / f"agent{i}", [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        metrics=False, extra_agent={"reconnect_max_delay": 1},
                        node_extra={"health_probes": ["counter:health"], "health_soak": soak})
    agents.append(agent)
    return node, agent


def test_an_agent_silent_during_its_switch_is_reported_then_read_back(
        agents: list[AgentProc], node_factory: NodeFactory, tmp_path: Path,
        release_build: ReleaseBuild, stopped_pids: list[int]) -> None:
    n1, a1 = _pair(agents, node_factory, tmp_path, 1, soak=4)
    n2, a2 = _pair(agents, node_factory, tmp_path, 2, soak=2)
    cli = Cli("--agent", a1.address, "--agent", a2.address, "upgrade", "0.0.2", "--tarball",
              str(release_build.tarball("0.0.2")), "--no-prestage", "--max-failures", "1",
              "--host-timeout", str(HOST_TIMEOUT))
    try:
        # Agent 1 is in its health soak once 0.0.2 is current on its node: silence it there.
        eventually(lambda: '{"0.0.2",current}' in releases(n1), timeout=60,
                   what="0.0.2 installed on node 1")
        os.kill(a1.pid, signal.SIGSTOP)
        stopped_pids.append(a1.pid)
        silenced = time.monotonic() - cli.started
        lost = eventually(lambda: cli.seen(rf"^\[{re.escape(a1.address)}\]\s+!! .*lost during"),
                          timeout=3 * HOST_TIMEOUT + 5, what="relctl reports the silent agent")
        # The rollout goes on (--max-failures 1) while agent 1 is silent.
        eventually(lambda: cli.seen(rf"^batch 2/2: {re.escape(a2.address)}$"), timeout=10,
                   what="batch 2 starts")
        os.kill(a1.pid, signal.SIGCONT)
        code, out, err = cli.finish(timeout=90)
    finally:
        print(cli.transcript())
        cli.stop()
    print(f"silenced at +{silenced:.1f} s; relctl printed at +{lost[0]:.1f} s:\n{out}")
    assert lost[0] - silenced <= HOST_TIMEOUT + 2.5, (silenced, lost)
    assert re.search(r"lost during step \w+ of operation 1 \(0\.0\.2\): no answer for 3 s, not "
                     r"even to keepalive pings .*marked unknown", lost[1]), lost[1]
    answered = cli.seen(rf"^\[{re.escape(a1.address)}\]\s+\.\. .*answers again after .*: "
                        r"operation 1 ended succeeded$")
    assert answered is not None, out
    assert code == 0, out + err
    table = out.splitlines()
    row1 = next(line for line in table if line.startswith(a1.address))
    assert row1.split()[:6] == [a1.address, "counter1@localhost", "succeeded", "0.0.1", "->",
                                "0.0.2"], row1
    assert "read back after the agent went silent" in row1
    assert table[-1] == "rollout of 0.0.2 completed: 2 succeeded"
    # What relctl says is what the nodes are.
    assert releases(n1) == '[{"0.0.2",permanent},{"0.0.1",old}]'
    assert releases(n2) == '[{"0.0.2",permanent},{"0.0.1",old}]'


def test_sigterm_mid_rollout_prints_the_table_and_exits_130(
        agents: list[AgentProc], node_factory: NodeFactory, tmp_path: Path,
        release_build: ReleaseBuild) -> None:
    n1, a1 = _pair(agents, node_factory, tmp_path, 1, soak=4)
    n2, a2 = _pair(agents, node_factory, tmp_path, 2, soak=0)
    cli = Cli("--agent", a1.address, "--agent", a2.address, "upgrade", "0.0.2", "--tarball",
              str(release_build.tarball("0.0.2")), "--no-prestage")
    try:
        eventually(lambda: '{"0.0.2",current}' in releases(n1), timeout=60,
                   what="0.0.2 installed on node 1")
        cli.proc.send_signal(signal.SIGTERM)
        code, out, err = cli.finish(timeout=30)
    finally:
        cli.stop()
    assert code == 130, out + err
    table = out.splitlines()
    row1 = next(line for line in table if line.startswith(a1.address))
    assert row1.split()[2] == "in_progress", row1
    assert "interrupted while it ran: operation 1 goes on on the agent" in row1
    row2 = next(line for line in table if line.startswith(a2.address))
    assert row2.split()[2] == "skipped", row2
    assert table[-1].startswith("rollout of 0.0.2 interrupted during batch 1 of 2: no further "
                                f"batch was started; 1 operation(s) may go on on their agents: "
                                f"{a1.address} (operation 1)")
    # The operation did go on, and node 2 was never touched.
    eventually(lambda: releases(n1) == '[{"0.0.2",permanent},{"0.0.1",old}]', timeout=30,
               what="node 1's upgrade ends on its own")
    assert releases(n2) == '[{"0.0.1",permanent}]'
