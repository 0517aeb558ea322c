"""An unpack into a root that has a lib dir of the same name (the running release's
lib/kernel-VSN) adds the files of the tarball's copy that the root's lacks (keep_old_files).
The undo of an operation that stops before install (a dry run, a pre_install hook that says
no, a relup check_install_release refuses) takes back exactly those, each at the deepest level
the root had, whichever unpacks: the agent, or the node's unpack_release (a root the agent may
not write). Every file the root had stays as it was; the invariants are checked around every
relctl call (tests.tools.invariants).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tarfile
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from agent.operations.journal import Journal
from bridge import Atom
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.elixir_fixture import ElixirBuild
from tests.tools.needs import require_root
from tests.tools.node_calls import node_call
from tests.tools.otp_procs import NodeProc
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

NOBODY = 65534
EXTRA = "ebin/relctl_extra.txt"   # a file the root's lib/kernel-VSN/ebin lacks
NEW_DIR = "relctl_new"            # a dir the root's lib/kernel-VSN lacks, with a file in it
LOAD_COUNTER = rb'(\{load_object_code,\s*\{counter,\s*"0\.0\.2",\s*\[)'


def kernel(root: Path) -> str:
    [found] = [p.name for p in (root / "lib").glob("kernel-*")]
    return found


def with_additions(src: Path, dest: Path, lib: str, *, damaged: bool = False,
                   content: bytes = b"added\n") -> Path:
    """``src``, the same members, plus a file in lib/``lib``/ebin (``content``) and a dir in
    lib/``lib``; ``damaged``: its relup entry from 0.0.1 loads a module the release does not
    ship (a well-formed relup, so preflight passes; check_install_release refuses it)."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin:
            data = tin.extractfile(member) if member.isfile() else None
            if damaged and member.name == "releases/0.0.2/relup":
                assert data is not None
                relup, count = re.subn(LOAD_COUNTER, rb"\g<1>relctl_missing_module,",
                                       data.read(), count=1)
                assert count == 1
                member.size, data = len(relup), BytesIO(relup)
            tout.addfile(member, data)
        for name, added in ((f"lib/{lib}/{EXTRA}", content),
                            (f"lib/{lib}/{NEW_DIR}/inner.txt", b"inner\n")):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(added), 0o644
            tout.addfile(info, BytesIO(added))
    return dest


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` but RELEASES (rewritten by set_removed, compared through
    which_releases): files by sha256 and mode, links by target, dirs by mode."""
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        info = path.lstat()
        if rel == "releases/RELEASES":
            continue
        if path.is_symlink():
            out[rel] = f"-> {path.readlink()}"
        elif path.is_dir():
            out[rel + "/"] = f"dir {info.st_mode & 0o7777:o}"
        else:
            out[rel] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {info.st_mode:o}"
    return out



def gated_agent(agents: list[AgentProc], node: NodeProc, workdir: Path) -> AgentProc:
    """An agent whose pre_install hook counter_hooks:run(<<"gate">>) says no (see
    counter_hooks.erl): the upgrade stops after check, with the release unpacked."""
    agent = start_agent(workdir, [NodeEntry(node.name, node.cookie, node.epmd_port)],
                        metrics=False, node_extra={"hooks": [
                            {"name": "gate", "when": "pre_install", "call": "counter_hooks:run",
                             "args": ["gate"]}]})
    agents.append(agent)
    assert node_call(node, "persistent_term", "put",
                     [(Atom("counter_hooks"), b"gate"), (Atom("error"), Atom("not_now"))]) \
        == Atom("ok")
    return agent


def steps(op: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["state"]) for s in op["steps"]]


def detail(op: dict[str, Any], name: str) -> str:
    [found] = [s["detail"] for s in op["steps"] if s["name"] == name]
    return str(found)


def deleted(op: dict[str, Any]) -> set[str]:
    """The paths the undo_unpack step says it deleted."""
    text = detail(op, "undo_unpack")
    listed = text[text.index("deleted ") + len("deleted "):].split("; ")[0]
    return set(listed.split(", "))


def versions(agent: AgentProc) -> list[tuple[str, str]]:
    result = relctl("versions", "-o", "json", agents=[agent.address])
    return [(r["version"], r["status"]) for r in result.json()["nodes"][0]["releases"]]


def upgrade(agent: AgentProc, tarball: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = relctl("upgrade", "0.0.2", "--tarball", str(tarball), *extra, "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.stdout, result.stderr
    return result.returncode, result.json()["operation"]


def taken_back(agent: AgentProc, node: NodeProc, tarball: Path, damaged: Path,
               by_node: bool) -> None:
    """A dry run, an upgrade the gate refuses, and one check_install_release refuses
    (``damaged``): each adds the two paths inside lib/kernel-VSN, and each undo takes back
    exactly them and what it created beside."""
    root, lib = node.root, kernel(node.root)
    before = tree(root)
    assert f"lib/{lib}/{EXTRA}" not in before and f"lib/{lib}/{NEW_DIR}/" not in before
    added = [f"lib/{lib}/{EXTRA}", f"lib/{lib}/{NEW_DIR}"]
    mine = {"lib/counter-0.0.2", "releases/0.0.2", *added}
    if by_node:
        mine.add("releases/counter-0.0.2.tar.gz")  # staged for unpack_release
    where = "unpack_release('counter-0.0.2') -> 0.0.2" if by_node else "the agent unpacked it"

    code, dry = upgrade(agent, tarball, "--dry-run")
    assert (code, dry["outcome"]) == (0, "dry_run"), dry
    assert tree(root) == before, set(tree(root)) ^ set(before)
    assert where in detail(dry, "unpack")
    assert f"; added inside dirs the root had: {', '.join(added)}" in detail(dry, "unpack")
    assert steps(dry)[-1] == ("undo_unpack", "succeeded")
    assert deleted(dry) <= mine and set(added) <= deleted(dry), detail(dry, "undo_unpack")
    assert "kept, being in use" not in detail(dry, "undo_unpack")
    assert versions(agent) == [("0.0.1", "permanent")]

    code, refused = upgrade(agent, tarball)
    assert (code, refused["outcome"]) == (1, "failed_unchanged"), refused
    assert steps(refused)[-2:] == [("pre_install:gate", "failed"), ("undo_unpack", "succeeded")]
    assert set(added) <= deleted(refused), detail(refused, "undo_unpack")
    assert deleted(refused) <= mine
    assert tree(root) == before
    assert versions(agent) == [("0.0.1", "permanent")]

    code, unchecked = upgrade(agent, damaged)
    assert (code, unchecked["outcome"]) == (1, "failed_unchanged"), unchecked
    assert "relctl_missing_module" in unchecked["error"], unchecked["error"]
    assert steps(unchecked)[-2:] == [("check", "failed"), ("undo_unpack", "succeeded")]
    assert set(added) <= deleted(unchecked) <= mine, detail(unchecked, "undo_unpack")
    assert tree(root) == before
    assert versions(agent) == [("0.0.1", "permanent")]


def test_the_agents_unpack_into_an_existing_lib_dir_is_taken_back_exactly(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    src, lib = release_build.tarball("0.0.2"), kernel(counter_node.root)
    tarball = with_additions(src, tmp_path / "added.tar.gz", lib)
    damaged = with_additions(src, tmp_path / "damaged.tar.gz", lib, damaged=True)
    agent = gated_agent(agents, counter_node, tmp_path / "agent")
    taken_back(agent, counter_node, tarball, damaged, by_node=False)


def test_the_nodes_unpack_release_into_an_existing_lib_dir_is_taken_back_exactly(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    require_root("giving the release root to another user")
    src, lib = release_build.tarball("0.0.2"), kernel(counter_node.root)
    tarball = with_additions(src, tmp_path / "added.tar.gz", lib)
    damaged = with_additions(src, tmp_path / "damaged.tar.gz", lib, damaged=True)
    # The agent may not write a root of another user: unpack_release extracts in the node.
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(counter_node.root)], check=True,
                   timeout=60)
    agent = gated_agent(agents, counter_node, tmp_path / "agent")
    taken_back(agent, counter_node, tarball, damaged, by_node=True)


def test_removing_a_release_that_never_ran_names_what_its_unpack_left_in_shared_dirs(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    # Once registered, the additions are the release's files in a dir 0.0.1 uses too:
    # remove_release keeps that dir whole, and relctl says exactly what stays (a release
    # unpacked later may have kept them as its own, so it does not delete them).
    root, lib = counter_node.root, kernel(counter_node.root)
    tarball = with_additions(release_build.tarball("0.0.2"), tmp_path / "added.tar.gz", lib)
    agent = start_agent(tmp_path / "agent", [NodeEntry(counter_node.name, counter_node.cookie,
                                                       counter_node.epmd_port)], metrics=False)
    agents.append(agent)
    before = tree(root)
    added = [f"lib/{lib}/{EXTRA}", f"lib/{lib}/{NEW_DIR}"]
    unpacked = relctl("unpack", "0.0.2", "--tarball", str(tarball), "-o", "json",
                      agents=[agent.address], timeout=120)
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    assert f"; added inside dirs the root had: {', '.join(added)}" in detail(
        unpacked.json()["operation"], "unpack")
    removed = relctl("remove", "0.0.2", "-o", "json", agents=[agent.address], timeout=60)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert detail(removed.json()["operation"], "remove") == (
        f"0.0.2 removed; left as they are: {', '.join(added)} (the unpack of 0.0.2 added them "
        "inside dirs other releases use, which remove_release keeps whole; relctl deletes no "
        "file another release may use: delete them by hand if no release needs them)")
    assert versions(agent) == [("0.0.1", "permanent")]
    after = tree(root)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(set(after) - set(before)) == [added[0], added[1] + "/", added[1] + "/inner.txt"]


def test_replacing_a_release_names_what_its_unpack_left_and_the_new_tarball_keeps(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    root, lib = counter_node.root, kernel(counter_node.root)
    src = release_build.tarball("0.0.2")
    first = with_additions(src, tmp_path / "first.tar.gz", lib)
    fixed = with_additions(src, tmp_path / "fixed.tar.gz", lib, content=b"fixed\n")
    agent = start_agent(tmp_path / "agent", [NodeEntry(counter_node.name, counter_node.cookie,
                                                       counter_node.epmd_port)], metrics=False)
    agents.append(agent)
    unpacked = relctl("unpack", "0.0.2", "--tarball", str(first), agents=[agent.address],
                      timeout=120)
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    again = relctl("unpack", "0.0.2", "--tarball", str(fixed), "--replace", "-o", "json",
                   agents=[agent.address], timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    added = [f"lib/{lib}/{EXTRA}", f"lib/{lib}/{NEW_DIR}"]
    assert detail(again.json()["operation"], "replace") == (
        f"removed 0.0.2 (it was unpacked) and its files, to unpack the given tarball in its "
        f"place; left as they are: {', '.join(added)} (the unpack of 0.0.2 added them inside "
        "dirs other releases use, which remove_release keeps whole; relctl deletes no file "
        "another release may use: delete them by hand if no release needs them; the tarball "
        "unpacked now keeps them as they are (keep_old_files), not its own copies)")
    assert (root / added[0]).read_bytes() == b"added\n"


def test_what_an_operation_that_never_finished_added_to_a_lib_dir_in_use_goes_next_time(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    # An agent killed between placing and registering 0.0.2 left its record in the journal
    # (as this agent writes it) and the files on disk; the next operation, of a new agent on
    # the same state dir, takes back exactly those: the addition to the running release's
    # lib/kernel-VSN by itself, and nothing that dir had.
    root, lib = counter_node.root, kernel(counter_node.root)
    entry = [NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)]
    first = start_agent(tmp_path / "agent", entry, metrics=False)
    agents.append(first)
    first.stop()
    before = tree(root)
    [journal_path] = (tmp_path / "agent").rglob("journal.sqlite3")
    left = [root / "lib" / "counter-0.0.2", root / "releases" / "0.0.2"]
    extra = root / "lib" / lib / EXTRA
    for path in left:
        path.mkdir()
        (path / "half.beam").write_bytes(b"half")
    extra.write_bytes(b"added\n")
    with Journal.open(journal_path) as journal:
        op = journal.start(counter_node.name, "upgrade", "0.0.1", "0.0.2", "killed")
        journal.record_placing(counter_node.name, op, "0.0.2", [str(p) for p in left],
                               added=[str(extra)])
    again = start_agent(tmp_path / "agent", entry, metrics=False)
    agents.append(again)
    code, dry = upgrade(again, release_build.tarball("0.0.2"), "--dry-run")
    assert (code, dry["outcome"]) == (0, "dry_run"), dry
    assert detail(dry, "stage").endswith(
        f"; removed what an unfinished operation left: lib/{lib}/{EXTRA}, lib/counter-0.0.2, "
        "releases/0.0.2"), detail(dry, "stage")
    assert tree(root) == before, set(tree(root)) ^ set(before)
    assert versions(again) == [("0.0.1", "permanent")]


def test_a_mix_releases_dry_run_and_refused_upgrade_take_back_what_they_added(
        agents: list[AgentProc], ex_node: NodeProc, elixir_build: ElixirBuild,
        tmp_path: Path) -> None:
    # A mix release ships no RELEASES (the agent writes it at the first operation) and its
    # tarball, made by relctl make-relup, carries OTP's lib dirs too: the same additions to the
    # running release's lib/kernel-VSN go as on the systools release.
    root, lib = ex_node.root, kernel(ex_node.root)
    tarball = with_additions(elixir_build.tarball, tmp_path / "added.tar.gz", lib)
    agent = start_agent(tmp_path / "agent", [
        NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)], metrics=False,
        node_extra={"hooks": [{"name": "refuse", "when": "pre_install",
                               "call": "erlang:node"}]})  # the node's name: not ok
    agents.append(agent)
    before = tree(root)
    added = [f"lib/{lib}/{EXTRA}", f"lib/{lib}/{NEW_DIR}"]
    assert added[0] not in before and added[1] + "/" not in before

    code, dry = upgrade(agent, tarball, "--dry-run")
    assert (code, dry["outcome"]) == (0, "dry_run"), dry
    assert f"; added inside dirs the root had: {', '.join(added)}" in detail(dry, "unpack")
    assert set(added) <= deleted(dry), detail(dry, "undo_unpack")
    # RELEASES, which the mix release did not ship, is the one file the agent leaves: it
    # registers 0.0.1, which runs (tree() compares RELEASES through which_releases).
    assert tree(root) == before, set(tree(root)) ^ set(before)
    assert versions(agent) == [("0.0.1", "permanent")]

    code, refused = upgrade(agent, tarball)
    assert (code, refused["outcome"]) == (1, "failed_unchanged"), refused
    assert steps(refused)[-2:] == [("pre_install:refuse", "failed"),
                                   ("undo_unpack", "succeeded")]
    assert set(added) <= deleted(refused), detail(refused, "undo_unpack")
    assert tree(root) == before, set(tree(root)) ^ set(before)
    assert versions(agent) == [("0.0.1", "permanent")]
    assert node_call(ex_node, "application", "get_key", [Atom("ex_counter"), Atom("vsn")]) \
        == (Atom("ok"), "0.0.1")
