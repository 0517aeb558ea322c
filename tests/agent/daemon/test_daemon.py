"""relctl-agent as a process, without nodes: start-up failures and a clean SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.tools.agent_proc import start_agent
from tests.tools.otp_procs import free_port

ROOT = Path(__file__).resolve().parents[3]


def run_agent(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "--config", str(config)], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


def test_a_taken_grpc_port_is_a_clear_start_failure(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nlisten = "127.0.0.1:{port}"\ninsecure_no_auth = true\n'
                          'metrics_listen = ""\n'
                          'state_dir = "state"\n')
        proc = run_agent(config)
    assert proc.returncode == 1
    assert f"cannot start: {config}: agent.listen: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_second_agent_on_the_same_port_does_not_share_it(tmp_path: Path) -> None:
    first = start_agent(tmp_path / "first", [], metrics=False)
    try:
        config = tmp_path / "second.toml"
        config.write_text(f'[agent]\nlisten = "127.0.0.1:{first.grpc_port}"\ninsecure_no_auth = true\n'
                          'metrics_listen = ""\nstate_dir = "state"\n')
        proc = run_agent(config)
        assert proc.returncode == 1
        assert "agent.listen: cannot listen on" in proc.stderr
    finally:
        first.stop()
    assert first.returncode == 0


def test_a_taken_metrics_port_is_a_clear_start_failure(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "agent.toml"
        config.write_text(f'[agent]\nlisten = "127.0.0.1:{free_port()}"\ninsecure_no_auth = true\n'
                          f'metrics_listen = "127.0.0.1:{port}"\nstate_dir = "state"\n')
        proc = run_agent(config)
    assert proc.returncode == 1
    assert f"agent.metrics_listen: cannot listen on 127.0.0.1:{port} (Address already in use)" \
        in proc.stderr


def test_an_unwritable_state_dir_is_a_clear_start_failure(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nlisten = "127.0.0.1:{free_port()}"\ninsecure_no_auth = true\n'
                      'metrics_listen = ""\n'
                      'state_dir = "file/state"\n')
    proc = run_agent(config)
    assert proc.returncode == 1
    assert f"agent.state_dir: cannot create {tmp_path / 'file' / 'state'}" in proc.stderr


def test_sigint_stops_an_agent_without_nodes(tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "agent", [])
    try:
        assert "nodes: none" in agent.log_text()
        agent.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while agent.running() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        agent.stop()
    assert agent.returncode == 0, agent.log_text()
