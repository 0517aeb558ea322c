"""Installs that take longer than expected, on a real node (issue 13): the agent never undoes
an install it cannot see the end of, waits for release_handler's own answer and reports what
the node shows; ``install_timeout`` bounds a slow ``code_change`` too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tools.agent_proc import (
    ROOT,
    AgentProc,
    eventually,
    relctl,
    relctl_env,
    start_agent_for,
)
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.mounts import mount_read_only
from tests.tools.release_fixture import ReleaseBuild
from tests.tools.tarball_variants import compile_module, rewrite_tarball

pytestmark = pytest.mark.otp

EXAMPLES = ROOT / "examples" / "counter"
RELUP = "releases/0.0.2/relup"


def versions(agent: AgentProc) -> list[tuple[str, str]]:
    result = relctl("versions", "-o", "json", agents=[agent.address])
    return [(r["version"], r["status"]) for r in result.json()["nodes"][0]["releases"]]


def slow_relup_tarball(build: ReleaseBuild, dest: Path, sleep_ms: int) -> Path:
    """The 0.0.2 tarball whose up script sleeps ``sleep_ms`` after its point of no return."""
    with tarfile.open(build.tarball("0.0.2")) as tar:
        member = tar.extractfile(RELUP)
        assert member is not None
        relup = member.read().decode()
    assert "point_of_no_return" in relup
    slow = relup.replace("point_of_no_return",
                         f"point_of_no_return,{{apply,{{timer,sleep,[{sleep_ms}]}}}}", 1)
    return rewrite_tarball(build.tarball("0.0.2"), dest, {RELUP: slow.encode()})


def tarball_files(tarball: Path, root: Path) -> dict[str, bool]:
    """For each regular file of the release's own lib dir and releases/0.0.2: on disk, same
    bytes as in the tarball."""
    seen = {}
    with tarfile.open(tarball) as tar:
        for m in tar:
            if m.isfile() and (m.name.startswith("lib/counter-0.0.2/")
                               or m.name.startswith("releases/0.0.2/")):
                data = tar.extractfile(m)
                assert data is not None
                path = root / m.name
                seen[m.name] = path.is_file() and path.read_bytes() == data.read()
    return seen


@pytest.fixture
def continue_node() -> Iterator[list[int]]:
    """Pids this test SIGSTOPs: each gets SIGCONT at teardown, so that stop() can end it."""
    stopped: list[int] = []
    yield stopped
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def check_upgraded(agent: AgentProc, node: NodeProc, tarball: Path, op: dict[str, Any]) -> None:
    assert op["outcome"] == "succeeded", op
    assert versions(agent) == [("0.0.2", "permanent"), ("0.0.1", "old")]
    assert erl_eval(node, "maps:get(upgraded_from, sys:get_state(counter))") == '"0.0.1"'
    files = tarball_files(tarball, node.root)
    assert files and all(files.values()), [name for name, ok in files.items() if not ok]


def test_a_relup_slower_than_install_timeout_is_waited_for_not_undone(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    slow = slow_relup_tarball(release_build, tmp_path / "slow.tar.gz", 3000)
    agent = start_agent_for(agents, counter_node, tmp_path / "agent", install_timeout=1)
    result = relctl("upgrade", "0.0.2", "--tarball", str(slow), "-o", "json",
                    agents=[agent.address], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    op = result.json()["operation"]
    install = next(s for s in op["steps"] if s["name"] == "install")
    assert "did not answer within 1 s, then the node finished it" in install["detail"]
    assert "undo_unpack" not in [s["name"] for s in op["steps"]]
    check_upgraded(agent, counter_node, slow, op)


def test_a_node_stopped_during_install_then_resumed_ends_upgraded(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path, continue_node: list[int]) -> None:
    # The script sleeps 6 s: a wide enough window for the poll below to see the install running
    # on a busy machine (2 s was missed once in four CI runs).
    slow = slow_relup_tarball(release_build, tmp_path / "slow.tar.gz", 6000)
    agent = start_agent_for(agents, counter_node, tmp_path / "agent", install_timeout=2)
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(slow), "-o", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=relctl_env())
    try:
        def installing() -> bool:
            shown = relctl("operation", "1", "-o", "json", agents=[agent.address])
            return shown.returncode == 0 and any(
                s["name"] == "install" and s["state"] == "running"
                for s in shown.json()["operation"]["steps"])
        eventually(installing, what="install running", timeout=60)
        continue_node.append(counter_node.pid)
        os.kill(counter_node.pid, signal.SIGSTOP)
        time.sleep(5)  # well past install_timeout
        os.kill(counter_node.pid, signal.SIGCONT)
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 0, out + err
    op = json.loads(out)["operation"]
    assert "release_handler:set_removed" not in out
    check_upgraded(agent, counter_node, slow, op)


def test_a_six_second_code_change_fits_an_install_timeout_of_30(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    source = (EXAMPLES / "0.0.2" / "src" / "counter.erl").read_text()
    head = 'code_change("0.0.1", N, _Extra) when is_integer(N) ->'
    assert head in source
    beam = compile_module(source.replace(head, head + "\n    timer:sleep(6000),"), "counter",
                          tmp_path / "slow-code-change")
    slow = rewrite_tarball(release_build.tarball("0.0.2"), tmp_path / "slow-cc.tar.gz", {
        "lib/counter-0.0.2/ebin/counter.beam": beam})
    erl_eval(counter_node, "counter:incr(), ok")
    agent = start_agent_for(agents, counter_node, tmp_path / "agent", install_timeout=30)
    started = time.monotonic()
    result = relctl("upgrade", "0.0.2", "--tarball", str(slow), "-o", "json",
                    agents=[agent.address], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started >= 6
    op = result.json()["operation"]
    check_upgraded(agent, counter_node, slow, op)
    assert erl_eval(counter_node, "maps:get(count, sys:get_state(counter))") == "1"


def test_a_read_only_release_root_is_a_clear_unchanged_failure(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path, read_only: list[Path]) -> None:
    agent = start_agent_for(agents, counter_node, tmp_path / "agent")
    mount_read_only(read_only, counter_node.root)
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "-o", "json", agents=[agent.address], timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert "internal error" not in op["error"]
    assert str(counter_node.root / "releases") in op["error"]
    assert "nothing was changed" in op["error"]
    assert "(its file system is mounted read-only: remount it read-write)" in op["error"]
    assert versions(agent) == [("0.0.1", "permanent")]
    assert [s["name"] for s in op["steps"]][-1] == "stage"
    # The single unpack says the same.
    unpack = relctl("unpack", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "-o", "json", agents=[agent.address], timeout=120)
    assert unpack.returncode == 1, unpack.stdout + unpack.stderr
    assert "remount it read-write" in unpack.json()["operation"]["error"]
