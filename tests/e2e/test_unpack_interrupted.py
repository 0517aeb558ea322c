"""Unpack is all or nothing, on a real node (issue 13): a node SIGKILLed while it unpacks a
large release leaves a half-written lib dir; the retry removes it first, so that
release_handler's keep_old_files cannot keep a truncated file, and every file on disk then
matches the tarball. The node unpacks when the agent may not write the root (issue 16): the
root is given to another user for that (root only). When the agent unpacks, an agent SIGKILLed
mid-extract leaves only ROOT/.relctl-unpack-XXXX, which the next agent's retry removes."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
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
from tests.tools.needs import require_root, unavailable
from tests.tools.otp_procs import NodeProc
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

BIG = "lib/counter-0.0.2/priv/big.bin"
EXTRACTIONS = (".relctl-upload-*", ".relctl-unpack-*")  # the agent's extraction dirs
BIG_SIZE = 160 * 1024 * 1024


def with_big_file(src: Path, dest: Path) -> Path:
    """``src`` with an incompressible BIG_SIZE file added to lib/counter-0.0.2 (last of it)."""
    data = os.urandom(BIG_SIZE)
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz", compresslevel=1) as tout:
        members = list(tin)
        last = max(i for i, m in enumerate(members) if m.name.startswith("lib/counter-0.0.2/"))
        for i, member in enumerate(members):
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
            if i == last:
                info = tarfile.TarInfo(BIG)
                info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
                tout.addfile(info, io.BytesIO(data))
    return dest


def mismatches(tarball: Path, root: Path) -> list[str]:
    """Regular files of lib/counter-0.0.2 and releases/0.0.2 missing or differing on disk."""
    wrong = []
    with tarfile.open(tarball) as tar:
        for m in tar:
            if m.isfile() and m.name.startswith(("lib/counter-0.0.2/", "releases/0.0.2/")):
                data = tar.extractfile(m)
                assert data is not None
                path = root / m.name
                if not (path.is_file() and path.read_bytes() == data.read()):
                    wrong.append(m.name)
    return wrong


def test_a_retry_after_a_node_killed_mid_unpack_leaves_every_file_as_in_the_tarball(
        agents: list[AgentProc], node_factory: NodeFactory, counter_node: NodeProc,
        release_build: ReleaseBuild, tmp_path: Path) -> None:
    require_root("giving the release root to another user (so the node unpacks)")
    subprocess.run(["chown", "-R", "65534:65534", str(counter_node.root)], check=True,
                   timeout=60)
    big = with_big_file(release_build.tarball("0.0.2"), tmp_path / "big.tar.gz")
    agent = start_agent(tmp_path / "agent", [NodeEntry(counter_node.name, counter_node.cookie,
                                                       counter_node.epmd_port)],
                        extra_agent={"reconnect_max_delay": 1})
    agents.append(agent)
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(big)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=relctl_env())
    partial = counter_node.root / BIG
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.stat().st_size < BIG_SIZE):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the unpack never started writing big.bin"
            time.sleep(0.001)
        os.kill(counter_node.pid, signal.SIGKILL)
        client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    # 6: the unpack failed part-way (what the node wrote is taken back by the next one).
    assert client.returncode == 6, client.returncode
    assert partial.stat().st_size < BIG_SIZE  # what a crash leaves: a truncated file

    node = node_factory("counter@localhost", target=counter_node.root)

    def back() -> bool:
        shown = relctl("versions", "-o", "json", agents=[agent.address])
        return shown.returncode == 0 and [
            (r["version"], r["status"]) for r in shown.json()["nodes"][0]["releases"]] == [
            ("0.0.1", "permanent")]
    eventually(back, what="the agent sees the restarted node", timeout=30)

    retry = relctl("upgrade", "0.0.2", "--tarball", str(big), "-o", "json",
                   agents=[agent.address], timeout=180)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert mismatches(big, node.root) == []
    stage = next(s for s in retry.json()["operation"]["steps"] if s["name"] == "stage")
    assert "removed what an unfinished operation left: " in stage["detail"]
    assert "lib/counter-0.0.2" in stage["detail"]


def test_a_retry_after_an_agent_killed_mid_extract_removes_what_it_left(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    big = with_big_file(release_build.tarball("0.0.2"), tmp_path / "big.tar.gz")
    entry = [NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)]
    agent = start_agent(tmp_path / "agent", entry)
    agents.append(agent)
    # relctl waits for a lost agent to come back: not this one (it is started again below).
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(big)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=relctl_env({"RELCTL_AGENT_RETURN_WAIT": "2"}))
    try:
        deadline = time.monotonic() + 120
        # The agent extracts as the upload arrives (.relctl-upload-ID), or at the stage step
        # (.relctl-unpack-*) when it could not: killed inside whichever extraction runs.
        while not any(p.stat().st_size > 0 for pattern in EXTRACTIONS
                      for p in counter_node.root.glob(f"{pattern}/root/{BIG}")):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the agent never started writing big.bin"
            time.sleep(0.001)
        os.kill(agent.pid, signal.SIGKILL)
        client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    [left] = [p for pattern in EXTRACTIONS for p in counter_node.root.glob(pattern)]
    # Killed during the upload, no operation had started (3, README's table); killed at the
    # stage step, the operation may go on as far as relctl knows (6): never 1 either way.
    assert client.returncode == (3 if left.name.startswith(".relctl-upload-") else 6), \
        client.stdout
    assert not (counter_node.root / "lib" / "counter-0.0.2").exists()  # nothing placed

    # Started again as systemd would, on the same state dir: its journal holds what the
    # killed agent was placing (an upload's extraction dir too), which the retry takes back.
    again = start_agent(tmp_path / "agent", entry)
    agents.append(again)
    retry = relctl("upgrade", "0.0.2", "--tarball", str(big), "-o", "json",
                   agents=[again.address], timeout=180)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert mismatches(big, counter_node.root) == []
    assert not left.exists()
    stage = next(s for s in retry.json()["operation"]["steps"] if s["name"] == "stage")
    assert f"removed what an unfinished operation left: {left.name}" in stage["detail"]


# A process that holds the lock on an extraction dir as a live agent's upload does, until
# killed (agent/release/tarballs/held.py).
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(600)
"""


def test_an_upload_dir_of_an_agent_killed_with_its_journal_lost_goes_at_the_next_upgrade(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    """The agent is killed while it extracts an upload as it arrives, and comes back on a
    fresh state dir (its journal, which recorded the dir, is lost): the dir's lock died with
    the agent, so the next upgrade's stage removes it anyway; a dir whose lock a live process
    holds (another agent's upload, arriving) is kept."""
    big = with_big_file(release_build.tarball("0.0.2"), tmp_path / "big.tar.gz")
    entry = [NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)]
    agent = start_agent(tmp_path / "agent", entry)
    agents.append(agent)
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(big)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=relctl_env({"RELCTL_AGENT_RETURN_WAIT": "2"}))
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size > 0
                      for p in counter_node.root.glob(f".relctl-upload-*/root/{BIG}")):
            assert client.poll() is None, client.communicate()
            assert time.monotonic() < deadline, "the upload's extraction never wrote big.bin"
            time.sleep(0.001)
        os.kill(agent.pid, signal.SIGKILL)
        client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 3, client.stdout  # killed during the upload: nothing started
    [left] = counter_node.root.glob(".relctl-upload-*")
    assert not list(counter_node.root.glob(".relctl-unpack-*"))

    live = counter_node.root / ".relctl-upload-live"
    (live / "root").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        # A fresh state dir: no journal names the dir; only its free lock says it is a leftover.
        again = start_agent(tmp_path / "fresh-agent", entry)
        agents.append(again)
        retry = relctl("upgrade", "0.0.2", "--tarball", str(big), "-o", "json",
                       agents=[again.address], timeout=180)
        assert retry.returncode == 0, retry.stdout + retry.stderr
        assert live.is_dir()  # held: never taken
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    op = retry.json()["operation"]
    assert op["outcome"] == "succeeded", op
    assert mismatches(big, counter_node.root) == []
    assert not left.exists()
    stage = next(s for s in op["steps"] if s["name"] == "stage")
    assert f"removed what an unfinished operation left: {left.name}" in stage["detail"]
    assert live.name not in stage["detail"]
    assert [p.name for p in counter_node.root.glob(".relctl-u*")] == [live.name]


def test_a_leftover_dir_the_agent_cannot_delete_is_refused_by_name_and_nothing_changes(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    """A stray upload dir (its lock free) that the agent cannot delete, here because a dir in
    it is immutable (chattr +i: root itself may not delete in it): the upgrade stops at
    stage, naming the dir and what to do, and the node is as before; once it can be
    deleted, the next upgrade removes it and ends done."""
    require_root("making a dir immutable (chattr +i)")
    stray = counter_node.root / ".relctl-upload-0123abcd"
    stuck = stray / "root" / "lib" / "counter-0.0.2" / "ebin"
    stuck.mkdir(parents=True)
    (stuck / "counter.beam").write_bytes(b"half a beam")
    made = subprocess.run(["chattr", "+i", str(stuck)], capture_output=True, text=True,
                          timeout=30)
    if made.returncode != 0:
        unavailable(f"chattr +i {stuck} failed (needs root and a file system with the "
                    f"immutable flag): {made.stderr.strip()}")
    try:
        agent = start_agent(tmp_path / "agent", [NodeEntry(
            counter_node.name, counter_node.cookie, counter_node.epmd_port)])
        agents.append(agent)
        before = sorted(str(p.relative_to(counter_node.root))
                        for p in counter_node.root.rglob("*") if not p.is_relative_to(stray))
        refused = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                         "-o", "json", agents=[agent.address], timeout=180)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        op = refused.json()["operation"]
        assert op["outcome"] == "failed_unchanged"
        assert [(s["name"], s["state"]) for s in op["steps"]][-1] == ("stage", "failed")
        assert op["error"].startswith(f"cannot delete {stray} (Operation not permitted: "
                                      f"{stuck}/counter.beam): "), op["error"]
        assert op["error"].endswith(
            "left by an extraction of a relctl agent that no longer runs (no process holds its "
            "lock), and the agent may not delete it; nothing was changed. Delete it by hand "
            "(rm -rf, as a user who may), then retry"), op["error"]

        def unchanged() -> bool:  # the upload's own dir goes in a thread, after the answer
            return sorted(str(p.relative_to(counter_node.root))
                          for p in counter_node.root.rglob("*")
                          if not p.is_relative_to(stray)) == before
        eventually(unchanged, what="the root as before the refused upgrade", timeout=10)
        shown = relctl("versions", "-o", "json", agents=[agent.address])
        assert [(r["version"], r["status"]) for r in shown.json()["nodes"][0]["releases"]] == [
            ("0.0.1", "permanent")]
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True, timeout=30)

    done = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                  "-o", "json", agents=[agent.address], timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert not stray.exists()
    stage = next(s for s in done.json()["operation"]["steps"] if s["name"] == "stage")
    assert f"removed what an unfinished operation left: {stray.name}" in stage["detail"]
