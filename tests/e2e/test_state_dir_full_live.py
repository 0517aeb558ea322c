"""A full state_dir, for real: the agent's state_dir is a small tmpfs that the test fills
(issue 13). A full disk is a clear error with the exit code of what happened to the node, and
the journal ends up saying what the node says. Mounting needs root (CAP_SYS_ADMIN); elsewhere
the test is skipped, and tests/agent/operations/test_journal_full.py injects the fault."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from tests.tools.needs import unavailable
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild
from tests.tools.tarball_variants import rewrite_tarball

pytestmark = pytest.mark.otp

RELUP = "releases/0.0.2/relup"


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points of small tmpfs file systems (root only), unmounted after the test (lazily:
    an agent still running on one lets go of it when the agents fixture stops it)."""
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def mount_tmpfs(mounted: list[Path], path: Path, size: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs",
                           str(path)], capture_output=True, timeout=30)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    mounted.append(path)
    return path


def fill(directory: Path) -> int:
    """Write a file in ``directory`` until its file system is full; the bytes written."""
    written = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for block in (1 << 20, 4096, 512):
            try:
                while True:
                    written += os.write(fd, b"\0" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return written


def journal_rows(state: Path) -> list[dict[str, Any]]:
    """The journal as its file says (read-only, beside the agent)."""
    with sqlite3.connect(f"file:{state / 'journal.sqlite3'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, outcome, error, releases_after FROM operations "
                            "ORDER BY id").fetchall()
        steps = conn.execute("SELECT op_id, name, state FROM steps ORDER BY op_id, seq").fetchall()
    conn.close()
    return [{"id": i, "outcome": o, "error": e, "releases_after": json.loads(r),
             "steps": [(n, st) for op, n, st in steps if op == i]} for i, o, e, r in rows]


def versions(agent: AgentProc) -> list[tuple[str, str]]:
    result = relctl("versions", "-o", "json", agents=[agent.address])
    return [(r["version"], r["status"]) for r in result.json()["nodes"][0]["releases"]]


def node_versions(node: NodeProc) -> list[tuple[str, str]]:
    printed = erl_eval(node, 'lists:flatten([io_lib:format("~s ~s;", [V, S]) '
                             '|| {_, V, _, S} <- release_handler:which_releases()])')
    return [tuple(e.split()) for e in printed.strip('"').split(";") if e.strip()]  # type: ignore[misc]


def slow_relup_tarball(build: ReleaseBuild, dest: Path, sleep_ms: int) -> Path:
    """The 0.0.2 tarball whose up script sleeps ``sleep_ms`` after its point of no return."""
    with tarfile.open(build.tarball("0.0.2")) as tar:
        member = tar.extractfile(RELUP)
        assert member is not None
        relup = member.read().decode()
    slow = relup.replace("point_of_no_return",
                         f"point_of_no_return,{{apply,{{timer,sleep,[{sleep_ms}]}}}}", 1)
    assert slow != relup
    return rewrite_tarball(build.tarball("0.0.2"), dest, {RELUP: slow.encode()})


def start_on_tmpfs(agents: list[AgentProc], tmpfs: list[Path], node: NodeProc,
                   workdir: Path) -> tuple[AgentProc, Path]:
    state = mount_tmpfs(tmpfs, workdir / "state", "32m")  # the config's state_dir = "state"
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        extra_agent={"reconnect_max_delay": 1})
    agents.append(agent)
    return agent, state


def test_an_upload_into_a_full_state_dir_is_a_clear_error_and_changes_nothing(
        agents: list[AgentProc], tmpfs: list[Path], counter_node: NodeProc,
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    agent, state = start_on_tmpfs(agents, tmpfs, counter_node, tmp_path / "agent")
    fill(state)
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    agents=[agent.address], timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # failed, node unchanged
    assert result.stderr == (
        f"relctl: agent {agent.address}: the agent cannot store the upload, nothing was changed: "
        f"no space left in {state / 'uploads'} (the file system of the agent's state_dir); free "
        "space there and send it again\n")
    assert list((state / "uploads").iterdir()) == []  # no .part left behind
    assert versions(agent) == [("0.0.1", "permanent")] == node_versions(counter_node)
    assert journal_rows(state) == []  # nothing happened, nothing journaled
    assert "Traceback" not in agent.log_text()


def test_a_state_dir_that_fills_during_the_install_does_not_fail_the_upgrade(
        agents: list[AgentProc], tmpfs: list[Path], counter_node: NodeProc,
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    agent, state = start_on_tmpfs(agents, tmpfs, counter_node, tmp_path / "agent")
    slow = slow_relup_tarball(release_build, tmp_path / "slow.tar.gz", 3000)
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(slow), "-o", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=relctl_env())
    try:
        eventually(lambda: any(s == ("install", "running") for r in journal_rows(state)
                               for s in r["steps"]), what="install running", timeout=60)
        fill(state)  # while release_handler runs the relup
        out, err = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    # The node was upgraded, and that is what relctl says: exit 0, no "internal error".
    assert client.returncode == 0, out + err
    op = json.loads(out)["operation"]
    assert op["outcome"] == "succeeded", op
    assert "internal error" not in out + err
    assert [s["state"] for s in op["steps"]].count("failed") == 0, op["steps"]
    assert node_versions(counter_node) == [("0.0.2", "permanent"), ("0.0.1", "old")]
    log = agent.log_text()
    assert "cannot write the journal" in log and "no space left on the file system" in log
    assert "Traceback" not in log

    # Room again (the upload was deleted when the upgrade ended; the filler goes too): the
    # journal file says what the node says.
    (state / "filler").unlink()

    def journaled() -> dict[str, Any] | None:
        [row] = journal_rows(state)
        return row if row["outcome"] != "running" else None
    row = eventually(journaled, what="the upgrade's end in the journal file", timeout=30)
    assert row["outcome"] == "succeeded" and row["error"] == ""
    assert [(r["version"], r["status"]) for r in row["releases_after"]] == node_versions(
        counter_node)
    assert all(st in ("succeeded", "skipped") for _, st in row["steps"]), row["steps"]
    assert [n for n, _ in row["steps"]] == [s["name"] for s in op["steps"]]
    shown = relctl("operation", str(row["id"]), "-o", "json", agents=[agent.address])
    assert shown.json()["operation"]["outcome"] == "succeeded"
