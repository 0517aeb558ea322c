"""A node that answers a hook with ``lists:duplicate(30000000, [])`` (30 MB on the wire, over
2 GB as Python lists), through a real agent managing two real nodes (issue 13, item 7): the
hook fails with "too large" and the upgrade changes nothing, the agent stays small, its
systemd watchdog pings keep coming, and the other node's calls are answered meanwhile."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.tools.agent_proc import ROOT, AgentProc, NodeEntry, relctl, relctl_env, start_agent
from tests.tools.otp_procs import NodeProc
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

WATCHDOG_USEC = 2_000_000  # the agent pings every second


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_decode_bomb_from_a_hook_fails_the_hook_and_nothing_else(
        agents: list[AgentProc], node_factory: Any, counter_node: NodeProc,
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    other = node_factory("other")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(0.2)
    pings: list[float] = []
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            try:
                data = notify.recv(4096)
            except TimeoutError:
                continue
            if b"WATCHDOG=1" in data.split(b"\n"):
                pings.append(time.monotonic())

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    upgrade: subprocess.Popen[str] | None = None
    try:
        bomb = {"name": "bomb", "when": "pre_install", "call": "lists:duplicate",
                "args": [30_000_000, {"charlist": ""}], "timeout": 120}
        agent = start_agent(
            tmp_path / "agent",
            [NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port),
             NodeEntry(other.name, other.cookie, other.epmd_port)],
            metrics=False, node_extra={"hooks": [bomb]},
            env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                 "WATCHDOG_USEC": str(WATCHDOG_USEC)})
        agents.append(agent)
        before = peak_rss_mb(agent.pid)
        upgrade = subprocess.Popen(
            [sys.executable, "-m", "agent.client", "--agent", agent.address, "--node", counter_node.name,
             "upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")), "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
            env=relctl_env())
        answered: list[float] = []
        started = time.monotonic()
        while upgrade.poll() is None and time.monotonic() - started < 170:
            t0 = time.monotonic()
            other_versions = relctl("versions", "--node", other.name, "-o", "json",
                                    agents=[agent.address], timeout=60)
            assert other_versions.returncode == 0, other_versions.stderr
            answered.append(time.monotonic() - t0)
        out, err = upgrade.communicate(timeout=60)
        during = (started, time.monotonic())
    finally:
        if upgrade is not None and upgrade.poll() is None:  # the test failed mid-way
            upgrade.kill()
            upgrade.communicate()
        stop.set()
        listener.join(timeout=5)
        notify.close()

    assert upgrade.returncode == 1, out + err  # failed, node unchanged
    op = json.loads(out)["operation"]
    assert op["outcome"] == "failed_unchanged"
    [hook_step] = [s for s in op["steps"] if s["name"] == "pre_install:bomb"]
    assert hook_step["state"] == "failed"
    assert "too large" in hook_step["detail"] and "max_term_elements" in hook_step["detail"]
    # The agent never held the bomb: its peak RSS stayed far below the 2 GB of lists.
    peak = peak_rss_mb(agent.pid)
    assert peak < 500, f"agent peak RSS {peak:.0f} MB (before the bomb: {before:.0f} MB)"
    # The other node's calls were answered while the bomb went through, and promptly.
    assert answered and max(answered) < 15
    # The watchdog kept pinging (every WATCHDOG_USEC / 2): no gap near the unit's limit.
    window = [p for p in pings if during[0] <= p <= during[1]]
    gaps = [b - a for a, b in zip(window, window[1:], strict=False)]
    print(f"agent peak RSS {peak:.0f} MB (at start {before:.0f} MB); other node's versions: "
          f"{len(answered)} calls, slowest {max(answered):.2f} s; watchdog pings "
          f"{len(window)}, largest gap {max(gaps, default=0.0):.2f} s")
    assert window and max(gaps, default=0.0) < WATCHDOG_USEC / 1e6, gaps
    versions = relctl("versions", "--node", counter_node.name, "-o", "json",
                      agents=[agent.address]).json()
    assert versions["nodes"][0]["releases"][0]["version"] == "0.0.1"
