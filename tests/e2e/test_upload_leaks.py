"""Uploads leave nothing behind: a real `relctl` killed at any point of a big upload through a
real agent leaves no file in state_dir/uploads (issue 13, Why #8: the cancel race between
grpc and the agent's check of the upload)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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
from tests.tools.otp_procs import free_port, pid_exists
from tests.tools.release_fixture import ReleaseBuild

SIZE = 256 * 1024 * 1024


@pytest.fixture
def big_tarball(tmp_path: Path) -> Path:
    path = tmp_path / "big-0.0.2.tar.gz"
    with open(path, "wb") as f:
        f.truncate(SIZE)  # its content never matters: the client is killed before the end
    return path


@pytest.fixture
def client_procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _uploads(agent_dir: Path) -> list[Path]:
    directory = agent_dir / "state" / "uploads"
    return sorted(directory.iterdir()) if directory.exists() else []


def _part_size(agent_dir: Path) -> int:
    size = 0
    for path in _uploads(agent_dir):
        try:  # the agent renames and deletes them as it goes: gone is size 0
            size += path.stat().st_size
        except FileNotFoundError:
            pass
    return size


@pytest.mark.parametrize("over", ["unix", "tcp"])
def test_ten_clients_killed_mid_upload_leave_nothing(
        tmp_path: Path, agents: list[AgentProc], big_tarball: Path,
        client_procs: list[subprocess.Popen[bytes]], over: str) -> None:
    workdir = tmp_path / "agent"
    # The node is configured but never up: an upload only needs its name.
    agent = start_agent(workdir, [NodeEntry("ghost@localhost", "cookie", free_port())],
                        metrics=False, extra_agent={"listen": [
                            f"unix:{tmp_path / 'agent.sock'}", f"127.0.0.1:{free_port()}"]})
    agents.append(agent)
    address = agent.socket if over == "unix" else agent.address
    leaks: list[str] = []
    for run in range(10):
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.client", "--agent", address, "unpack", "0.0.2",
             "--tarball", str(big_tarball), "--node", "ghost@localhost"],
            cwd=ROOT, env=relctl_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        client_procs.append(proc)
        # Killed at a different point each run, the last ones right at the end of the stream.
        target = SIZE * [0.05, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999][run]
        deadline = time.monotonic() + 60
        while _part_size(workdir) < target and proc.poll() is None:
            assert time.monotonic() < deadline, "the upload did not progress"
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        try:
            eventually(lambda: not _uploads(workdir), timeout=10,
                       what=f"run {run}: state_dir/uploads empty after the client was killed")
        except AssertionError:
            leaks.append(f"run {run}: {[p.name for p in _uploads(workdir)]}")
            for p in _uploads(workdir):  # the next run starts clean
                p.unlink(missing_ok=True)
    assert not pid_exists(proc.pid)
    assert leaks == []
    assert agent.returncode is None, agent.log_text()


@pytest.mark.otp
def test_a_refused_upgrade_leaves_no_tarball(tmp_path: Path, agents: list[AgentProc],
                                             release_build: ReleaseBuild) -> None:
    """The upload is accepted, then the upgrade is refused before any operation starts (the
    node is down): the tarball must not stay in state_dir/uploads until the agent restarts."""
    workdir = tmp_path / "agent"
    agent = start_agent(workdir, [NodeEntry("ghost@localhost", "cookie", free_port())],
                        metrics=False)
    agents.append(agent)
    for _ in range(2):
        result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                        "--node", "ghost@localhost", agents=[agent.address])
        assert result.returncode == 3, result.stderr
        assert "node ghost@localhost is down" in result.stderr
        assert "upload" in result.stdout  # it got as far as the upload
        assert _uploads(workdir) == []
