"""Issue 14, items 3 and 4, against a real OTP node and agent: a tarball of a version already
unpacked from other bytes is refused, and replaced with --replace; what cannot work is refused
before anything reaches the node (a relup-less tarball, one from `tar -C DIR -czf F .`); and an
unpack that release_handler refuses leaves nothing behind."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.tools.agent_proc import AgentProc, relctl, start_agent_for
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild
from tests.tools.tarball_variants import compile_module, rewrite_tarball

from tests.e2e.test_upgrade_safety import EXAMPLES, versions

pytestmark = pytest.mark.otp

BEAM = "lib/counter-0.0.2/ebin/counter.beam"


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> AgentProc:
    return start_agent_for(agents, counter_node, tmp_path / "agent")


def node_files(node: NodeProc) -> dict[str, bytes]:
    """Every file under releases/ and lib/ with its bytes (RELEASES included)."""
    return {str(p.relative_to(node.root)): p.read_bytes()
            for d in ("releases", "lib") for p in sorted((node.root / d).rglob("*"))
            if p.is_file()} | {str(p.relative_to(node.root)) + "/": b""
                               for d in ("releases", "lib") for p in (node.root / d).rglob("*")
                               if p.is_dir()}


def repack(src: Path, dest: Path, keep: Callable[[str], bool],
           add: dict[str, bytes] | None = None) -> Path:
    """``src`` with only the members ``keep`` accepts, plus ``add``."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin:
            if keep(member.name):
                tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
        for name, data in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tout.addfile(info, io.BytesIO(data))
    return dest


def member(tarball: Path, name: str) -> bytes:
    with tarfile.open(tarball, "r:gz") as tar:
        data = tar.extractfile(name)
        assert data is not None
        return data.read()


def test_a_fixed_tarball_of_an_unpacked_version_is_refused_then_replaced(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    good = release_build.tarball("0.0.2")
    # The broken build: the same release, another counter.beam (a crashing code_change).
    source = (EXAMPLES / "0.0.2" / "src" / "counter.erl").read_text().replace(
        'code_change("0.0.1", N, _Extra) when is_integer(N) ->',
        'code_change("0.0.1", _N, _Extra) ->\n    erlang:error(migration_bug);\n'
        'code_change(unused, N, _Extra) when is_integer(N) ->')
    assert "migration_bug" in source
    broken = rewrite_tarball(good, tmp_path / "broken.tar.gz", {
        BEAM: compile_module(source, "counter", tmp_path / "broken")})
    unpacked = relctl("unpack", "0.0.2", "--tarball", str(broken), agents=[agent.address],
                      timeout=120)
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    record = counter_node.root / "releases" / "0.0.2" / "relctl.sha256"
    assert record.read_text().split() == [hashlib.sha256(broken.read_bytes()).hexdigest()]

    before = node_files(counter_node)
    refused = relctl("upgrade", "0.0.2", "--tarball", str(good), "-o", "json",
                     agents=[agent.address], timeout=120)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    op = refused.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert "0.0.2 is already unpacked on counter@localhost, unpacked from other bytes" \
        in op["error"]
    assert "pass --replace to remove it and unpack this tarball in its place" in op["error"]
    assert [s["name"] for s in op["steps"]] == ["preflight"]
    assert node_files(counter_node) == before  # the stale release is still there, untouched

    replaced = relctl("upgrade", "0.0.2", "--tarball", str(good), "--replace", "-o", "json",
                      agents=[agent.address], timeout=180)
    assert replaced.returncode == 0, replaced.stdout + replaced.stderr
    names = [s["name"] for s in replaced.json()["operation"]["steps"]]
    assert names[:5] == ["preflight", "replace", "stage", "unpack", "check"]
    assert versions(agent) == [("0.0.2", "permanent"), ("0.0.1", "old")]
    # keep_old_files kept nothing of the broken build: the good beam runs.
    assert (counter_node.root / BEAM).read_bytes() == member(good, BEAM)
    assert record.read_text().split() == [hashlib.sha256(good.read_bytes()).hexdigest()]
    assert erl_eval(counter_node, "sys:get_state(counter)").startswith("#{count => 0")


@pytest.mark.parametrize("fault", ["no-relup", "no-entry-from-running"])
def test_a_relup_that_cannot_work_is_refused_at_preflight_leaving_nothing(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path, fault: str) -> None:
    good = release_build.tarball("0.0.2")
    if fault == "no-relup":
        bad = repack(good, tmp_path / "bad.tar.gz", lambda n: n != "releases/0.0.2/relup")
        expected = ("the tarball of 0.0.2 has no releases/0.0.2/relup, so release_handler has "
                    "no script to go from 0.0.1 to 0.0.2; build it with `rebar3 relup` or "
                    "`relctl make-relup OLD NEW`")
    else:
        bad = rewrite_tarball(good, tmp_path / "bad.tar.gz", {
            "releases/0.0.2/relup": b'{"0.0.2",[{"0.0.0",[],[point_of_no_return]}],'
                                    b'[{"0.0.0",[],[point_of_no_return]}]}.\n'})
        expected = ("releases/0.0.2/relup in the tarball has no entry from the running 0.0.1 "
                    "(it upgrades from: 0.0.0)")
    before = node_files(counter_node)
    result = relctl("upgrade", "0.0.2", "--tarball", str(bad), "-o", "json",
                    agents=[agent.address], timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert expected in op["error"]
    assert [(s["name"], s["state"]) for s in op["steps"]] == [("preflight", "failed")]
    # No releases/0.0.2, no lib/counter-0.0.2, RELEASES byte for byte as it was.
    assert node_files(counter_node) == before
    assert versions(agent) == [("0.0.1", "permanent")]
    assert list((agent.config.parent / "state" / "uploads").iterdir()) == []


def test_a_dot_slash_tarball_is_refused_at_upload_with_how_to_repack(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    with tarfile.open(release_build.tarball("0.0.2")) as tar:
        tar.extractall(tree, filter="tar")
    dotted = tmp_path / "dotted.tar.gz"
    with tarfile.open(dotted, "w:gz") as tar:
        tar.add(tree, arcname=".")  # what `tar -C tree -czf dotted.tar.gz .` makes
    # The premise, on this OTP: release_handler itself cannot unpack such a tarball (erl_tar
    # finds no "releases/counter-0.0.2.rel" among "./..." names).
    staged = counter_node.root / "releases" / "counter-0.0.2.tar.gz"
    shutil.copyfile(dotted, staged)
    try:
        answer = erl_eval(counter_node, 'release_handler:unpack_release("counter-0.0.2")')
    finally:
        staged.unlink(missing_ok=True)
    assert answer.startswith("{error,"), answer

    before = node_files(counter_node)
    result = relctl("upgrade", "0.0.2", "--tarball", str(dotted), agents=[agent.address],
                    timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "member '.' has a '.' component" in result.stderr
    assert "`tar -C DIR -czf FILE releases lib`" in result.stderr
    assert node_files(counter_node) == before
    assert list((agent.config.parent / "state" / "uploads").iterdir()) == []


def test_an_unpack_that_fails_leaves_no_directory_behind(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    good = release_build.tarball("0.0.2")
    rel = member(good, "releases/counter-0.0.2.rel")
    # relx layout (releases/0.0.2/counter.rel, staged in releases/0.0.2/), and a last member
    # under the file releases/RELEASES: erl_tar extracts the release, then fails on it.
    bad = repack(good, tmp_path / "partial.tar.gz", lambda n: n != "releases/counter-0.0.2.rel",
                 add={"releases/0.0.2/counter.rel": rel, "releases/RELEASES/oops": b"x"})
    before = node_files(counter_node)
    result = relctl("upgrade", "0.0.2", "--tarball", str(bad), "-o", "json",
                    agents=[agent.address], timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    # The agent extracts it, and refuses to place it as erl_tar would fail to write it.
    assert op["error"] == (f"{counter_node.root}/releases/RELEASES is not a directory on the "
                           "node, and the tarball has files below it; nothing was changed: "
                           "rebuild the tarball without what it has below RELEASES")
    assert [(s["name"], s["state"]) for s in op["steps"]][-1] == ("unpack", "failed")
    assert node_files(counter_node) == before  # no releases/0.0.2/, RELEASES as it was
    assert versions(agent) == [("0.0.1", "permanent")]
