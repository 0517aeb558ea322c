"""The agent unpacks, the node only switches (issue 16), on real nodes: the agent's unpack
leaves the very files and RELEASES that release_handler:unpack_release leaves; the upgrade
through it migrates the counter's state; a root the agent may not write (another owner) is
unpacked by the node, with the reason in the steps; a disk that fills up mid-extract leaves
nothing behind. Changing a root's owner and mounting a tmpfs need root: skipped otherwise."""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.needs import require_root, unavailable
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild, make_target_copy

pytestmark = pytest.mark.otp

NOBODY = 65534


def start_for(agents: list[AgentProc], node: NodeProc, where: Path) -> AgentProc:
    agent = start_agent(where, [NodeEntry(node.name, node.cookie, node.epmd_port)])
    agents.append(agent)
    return agent


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under ``root``: files by sha256 and mode, links by target, dirs."""
    out: dict[str, tuple[str, int]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        info = path.lstat()
        if path.is_symlink():
            out[rel] = (f"-> {os.readlink(path)}", 0)
        elif path.is_dir():
            out[rel + "/"] = ("dir", info.st_mode & 0o7777)
        else:
            out[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode & 0o7777)
    return out


def files(node: NodeProc) -> dict[str, tuple[str, int]]:
    """The node's root but RELEASES, which names its root (compared on its own)."""
    return {k: v for k, v in tree(node.root).items() if k != "releases/RELEASES"}


def step(op: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in op["steps"] if s["name"] == name)


def versions(node: NodeProc) -> str:
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


def test_the_agents_unpack_leaves_what_unpack_release_leaves(
        agents: list[AgentProc], node_factory: NodeFactory, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    mine, theirs = node_factory("counter1@localhost"), node_factory("counter2@localhost")
    assert files(mine) == files(theirs)  # two copies of one root
    tarball = release_build.tarball("0.0.2")
    agent = start_for(agents, mine, tmp_path / "agent")

    done = relctl("unpack", "0.0.2", "--tarball", str(tarball), "-o", "json",
                  agents=[agent.address], timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    op = done.json()["operation"]
    assert step(op, "stage")["detail"].startswith(f"extracted by the agent into {mine.root}/"
                                                  ".relctl-unpack-")
    # Checked and extracted in one pass while the upload arrived: the stage only renamed it.
    assert " as the upload arrived (" in step(op, "stage")["detail"]
    unpack = step(op, "unpack")["detail"]
    assert unpack.startswith("the agent unpacked it (the node decompressed nothing): placed "
                             "lib/counter-0.0.2, releases/0.0.2; kept as they were: ")
    assert "lib/kernel-8.5.3" in unpack and "erts-" in unpack
    assert f"set_unpacked('{mine.root}/releases/0.0.2/counter-0.0.2.rel') -> 0.0.2" in unpack

    staged = theirs.root / "releases" / "counter-0.0.2.tar.gz"
    shutil.copyfile(tarball, staged)
    assert erl_eval(theirs, 'release_handler:unpack_release("counter-0.0.2")') == '{ok,"0.0.2"}'

    sha = mine.root / "releases" / "0.0.2" / "relctl.sha256"
    assert sha.read_text() == hashlib.sha256(tarball.read_bytes()).hexdigest() + "\n"
    sha.unlink()  # the agent's record, the one file the two ways differ by
    ours, other = files(mine), files(theirs)
    # RELEASES names the running release's libs by absolute path (its root differs); the
    # unpacked release's entry is the same text: "lib/APP-VSN", relative, as unpack_release.
    releases = [(n.root / "releases" / "RELEASES").read_text().replace(str(n.root), "ROOT")
                for n in (mine, theirs)]
    assert releases[0] == releases[1]
    assert '{counter,"0.0.2","lib/counter-0.0.2"}' in releases[0]
    assert ours == other, sorted(set(ours.items()) ^ set(other.items()))
    assert versions(mine) == versions(theirs) == '[{"0.0.2",unpacked},{"0.0.1",permanent}]'


def test_an_upgrade_through_the_agents_unpack_migrates_the_state_and_goes_back(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_for(agents, counter_node, tmp_path / "agent")
    erl_eval(counter_node, "[counter:incr() || _ <- lists:seq(1, 3)], ok")
    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")), "-o",
                "json", agents=[agent.address], timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    assert step(up.json()["operation"], "unpack")["detail"].startswith("the agent unpacked it")
    assert erl_eval(counter_node, "sys:get_state(counter)") == \
        '#{count => 3,upgraded_from => "0.0.1"}'
    down = relctl("downgrade", "0.0.1", agents=[agent.address], timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert erl_eval(counter_node, "sys:get_state(counter)") == "3"
    assert not list(counter_node.root.glob(".relctl-unpack-*"))


def test_a_root_of_another_owner_is_unpacked_by_the_node_and_says_why(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    require_root("giving the release root to another user")
    # The node runs as root and can still write; the agent must not leave files of its own
    # user in a root that belongs to another one.
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(counter_node.root)], check=True,
                   timeout=60)
    agent = start_for(agents, counter_node, tmp_path / "agent")
    erl_eval(counter_node, "[counter:incr() || _ <- lists:seq(1, 2)], ok")
    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")), "-o",
                "json", agents=[agent.address], timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    op = up.json()["operation"]
    # Users and groups by name (issue 22, point 5), and what to change.
    root = counter_node.root
    stage = step(op, "stage")["detail"]
    why = stage[stage.index(f"; the agent may not write {root} (") + 2:]
    assert why.startswith(f"the agent may not write {root} ({root} belongs to user "
                          f"{pwd.getpwuid(NOBODY).pw_name} and group "), stage
    assert "and the agent runs as user root in groups " in why, why
    assert why.endswith(f"(chgrp GROUP {root}; chmod 2775 {root}; SupplementaryGroups=GROUP)): "
                        "unpacking in the node"), why
    assert step(op, "unpack")["detail"].startswith(
        f"{why}: unpack_release('counter-0.0.2') -> 0.0.2")
    assert erl_eval(counter_node, "sys:get_state(counter)") == \
        '#{count => 2,upgraded_from => "0.0.1"}'
    assert not (counter_node.root / "releases" / "counter-0.0.2.tar.gz").exists()


@pytest.fixture
def tmpfs() -> Iterator[list[Path]]:
    """Small tmpfs mounts (root only), unmounted (lazily) after the test."""
    mounted: list[Path] = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True, timeout=30)


def with_big_file(src: Path, dest: Path, size: int) -> Path:
    """``src`` with an incompressible file of ``size`` bytes in lib/counter-0.0.2/priv."""
    data = os.urandom(size)
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz", compresslevel=1) as tout:
        for member in tin:
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("lib/counter-0.0.2/priv/big.bin")
        info.size, info.mode, info.mtime = size, 0o644, int(time.time())
        tout.addfile(info, io.BytesIO(data))
    return dest


def test_a_disk_that_fills_up_mid_extract_leaves_nothing_behind(
        agents: list[AgentProc], node_factory: NodeFactory, release_build: ReleaseBuild,
        tmpfs: list[Path], tmp_path: Path) -> None:
    mount = tmp_path / "fs"
    mount.mkdir()
    template_bytes = sum(p.stat().st_size for p in release_build.target_template.rglob("*")
                         if p.is_file() and not p.is_symlink())
    size = template_bytes + 24 * 1024**2  # the target, and room for part of big.bin only
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, timeout=30)
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs (needs root): {done.stderr.decode().strip()}")
    tmpfs.append(mount)
    root = make_target_copy(release_build, mount / "counter")
    node = node_factory("counter@localhost", target=root)
    agent = start_for(agents, node, tmp_path / "agent")
    big = with_big_file(release_build.tarball("0.0.2"), tmp_path / "big.tar.gz", 64 * 1024**2)
    before = tree(root)

    result = relctl("upgrade", "0.0.2", "--tarball", str(big), "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert [(s["name"], s["state"]) for s in op["steps"]][-1] == ("stage", "failed")
    assert "No space left on device; nothing was changed" in op["error"]
    assert "(free some space on its file system)" in op["error"]
    assert tree(root) == before  # no .relctl-unpack-*, no lib/counter-0.0.2, same RELEASES
    assert versions(node) == '[{"0.0.1",permanent}]'
