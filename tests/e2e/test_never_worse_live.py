"""Issue 20 against real nodes and a real agent: no command deletes what a release uses (a mix
release's first upgrade, dry run and failed upgrade, without RELEASES), and a tarball's identity
is checked before anything changes (another release, an ERTS the host lacks, an ERTS that does
not run here, a relup built for the wrong OTP), `--dry-run` included; the right tarball then
upgrades. Every relctl call also checks the invariants of tests.tools.invariants."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import StartNode
from tests.e2e.test_upgrade_safety import versions
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent, start_agent_for
from tests.tools.elixir_fixture import ElixirBuild
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp


def tree(root: Path, *tops: str) -> dict[str, str]:
    """sha256 of every file under ``tops`` of ``root`` (lib and the ERTS dirs by default)."""
    dirs = [root / t for t in tops] if tops else [root / "lib", *root.glob("erts-*")]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in dirs for p in sorted(d.rglob("*")) if p.is_file() and not p.is_symlink()}


def outcome(result: Any) -> tuple[int, str]:
    assert result.stdout.startswith("{"), result.stdout + result.stderr
    data = result.json()
    return result.returncode, data["operation"]["outcome"]


# --- a mix release, whose release_handler started without RELEASES -----------------------

@pytest.fixture
def ex_agent(agents: list[AgentProc], ex_node: NodeProc, tmp_path: Path) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)],
        extra_agent={"reconnect_max_delay": 1},
        node_extra={"hooks": [{"name": "refuse", "when": "pre_install",
                               "call": "erlang:node"}]})  # returns the node's name: not ok
    agents.append(started)
    return started


def running(node: NodeProc) -> str:
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


def test_a_mix_release_s_first_dry_run_and_refused_upgrade_delete_nothing(
        ex_agent: AgentProc, ex_node: NodeProc, elixir_build: ElixirBuild,
        start_ex_node: StartNode) -> None:
    root = ex_node.root
    assert not (root / "releases" / "RELEASES").exists()  # mix ships none
    before = tree(root)
    assert any(name.startswith("lib/kernel-") for name in before)

    dry = relctl("upgrade", "0.0.2", "--dry-run", "--tarball", str(elixir_build.tarball),
                 "-o", "json", agents=[ex_agent.address], timeout=180)
    assert outcome(dry) == (0, "dry_run"), dry.stdout + dry.stderr
    stage = next(s for s in dry.json()["operation"]["steps"] if s["name"] == "stage")
    assert "removed" not in stage["detail"]  # nothing on disk is guessed to be a leftover
    assert tree(root) == before

    refused = relctl("upgrade", "0.0.2", "--tarball", str(elixir_build.tarball), "-o", "json",
                     agents=[ex_agent.address], timeout=180)
    assert outcome(refused) == (1, "failed_unchanged"), refused.stdout + refused.stderr
    assert refused.json()["operation"]["error"].startswith("hook refuse: ")
    assert tree(root) == before
    assert running(ex_node) == '[{"0.0.1",permanent}]'

    # What `bin/ex_counter rpc` or a restart loads is all there: the node boots again.
    ex_node.stop()
    again = start_ex_node(root)
    assert erl_eval(again, "application:get_key(ex_counter, vsn)") == '{ok,"0.0.1"}'
    assert erl_eval(again, "code:which(lists)") == \
        f'"{root}/lib/stdlib-{stdlib_vsn(root)}/ebin/lists.beam"'


def stdlib_vsn(root: Path) -> str:
    return next(root.glob("lib/stdlib-*")).name.partition("-")[2]


def test_a_mix_release_s_first_upgrade_keeps_every_file_of_the_running_release(
        agents: list[AgentProc], ex_node: NodeProc, elixir_build: ElixirBuild,
        start_ex_node: StartNode, tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "agent", [
        NodeEntry(ex_node.name, ex_node.cookie, ex_node.epmd_port)],
        extra_agent={"reconnect_max_delay": 1})
    agents.append(agent)
    root = ex_node.root
    before = tree(root)
    up = relctl("upgrade", "0.0.2", "--tarball", str(elixir_build.tarball), "-o", "json",
                agents=[agent.address], timeout=180)
    assert outcome(up) == (0, "succeeded"), up.stdout + up.stderr
    after = tree(root)
    # Nothing of 0.0.1 was deleted and put back under the running node: same files, bytes,
    # and inodes of its libraries (a delete and re-extract would give new ones).
    assert {k: v for k, v in after.items() if k in before} == before
    stage = next(s for s in up.json()["operation"]["steps"] if s["name"] == "stage")
    assert "removed" not in stage["detail"]
    ex_node.stop()
    again = start_ex_node(root)
    assert running(again) == '[{"0.0.2",permanent},{"0.0.1",old}]'


# --- a tarball's identity ---------------------------------------------------------------

def rebuild(src: Path, dest: Path, change: Callable[[str, bytes], tuple[str, bytes] | None],
            add: dict[str, tuple[bytes, int]] | None = None) -> Path:
    """``src`` with each member passed through ``change`` (None drops it), plus ``add``
    (name -> data, mode)."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        for member in tin:
            data = tin.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            changed = change(member.name, data) if member.isfile() else (member.name, b"")
            if changed is None:
                continue
            name, data = changed
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = member.type, member.mode, member.mtime
            info.linkname = member.linkname
            info.size = len(data) if member.isfile() else 0
            tout.addfile(info, io.BytesIO(data) if member.isfile() else None)
        for name, (data, mode) in (add or {}).items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tout.addfile(info, io.BytesIO(data))
    return dest


def renamed_release(src: Path, dest: Path) -> Path:
    """The same release as ``wto``: its .rel files renamed and naming wto."""
    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name.endswith(".rel"):
            return (name.replace("counter-0.0.2.rel", "wto-0.0.2.rel"),
                    re.sub(rb'\{\s*"counter"\s*,\s*"0\.0\.2"\s*\}', b'{"wto","0.0.2"}', data))
        return name, data
    return rebuild(src, dest, change)


NEW_EMULATOR_RELUP = (b'{"0.0.2",[{"0.0.1",[],[restart_new_emulator,point_of_no_return]}],'
                      b'[{"0.0.1",[],[point_of_no_return,restart_emulator]}]}.\n')


def other_erts(src: Path, dest: Path, erts: str, *, relup: bytes | None = None,
               ship: dict[str, tuple[bytes, int]] | None = None) -> Path:
    """``src`` whose .rel names ERTS ``erts``, with ``relup`` instead of its own, and the
    members ``ship`` added."""
    def change(name: str, data: bytes) -> tuple[str, bytes]:
        if name.endswith(".rel"):
            return name, re.sub(rb'\{erts,\s*"[^"]+"\}', b'{erts,"%s"}' % erts.encode(), data)
        if name == "releases/0.0.2/relup" and relup is not None:
            return name, relup
        return name, data
    return rebuild(src, dest, change, ship)


def real_erts_bin(src: Path, erts: str) -> dict[str, tuple[bytes, int]]:
    """The tarball's own erts-VSN/bin files, under erts-``erts``/bin."""
    shipped: dict[str, tuple[bytes, int]] = {}
    with tarfile.open(src, "r:gz") as tar:
        for member in tar:
            if member.isfile() and re.fullmatch(r"erts-[^/]+/bin/[^/]+", member.name):
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                shipped[f"erts-{erts}/bin/{member.name.rsplit('/', 1)[1]}"] = (data, member.mode)
    return shipped


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> AgentProc:
    return start_agent_for(agents, counter_node, tmp_path / "agent")


def refused_both_ways(agent: AgentProc, node: NodeProc, tarball: Path) -> str:
    """The upgrade with ``tarball`` refused at preflight, as a dry run and for real, with
    nothing on the node changed; the error."""
    before_tree, before_versions = tree(node.root, "releases", "lib"), versions(agent)
    errors = []
    for dry in (["--dry-run"], []):
        result = relctl("upgrade", "0.0.2", "--tarball", str(tarball), *dry, "-o", "json",
                        agents=[agent.address], timeout=120)
        assert outcome(result) == (1, "failed_unchanged"), result.stdout + result.stderr
        op = result.json()["operation"]
        assert [(s["name"], s["state"]) for s in op["steps"]] == [("preflight", "failed")]
        errors.append(op["error"])
        assert tree(node.root, "releases", "lib") == before_tree
        assert versions(agent) == before_versions
    assert errors[0] == errors[1]
    return errors[0]


def upgrades(agent: AgentProc, node: NodeProc, build: ReleaseBuild) -> None:
    good = relctl("upgrade", "0.0.2", "--tarball", str(build.tarball("0.0.2")), "-o", "json",
                  agents=[agent.address], timeout=180)
    assert outcome(good) == (0, "succeeded"), good.stdout + good.stderr
    assert erl_eval(node, "application:get_key(counter, vsn)") == '{ok,"0.0.2"}'


def test_a_tarball_of_another_release_is_refused_before_anything_changes(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    other = renamed_release(release_build.tarball("0.0.2"), tmp_path / "wto-0.0.2.tar.gz")
    error = refused_both_ways(agent, counter_node, other)
    assert error == ("the tarball holds release wto 0.0.2, but counter@localhost runs release "
                     "counter: release_handler only switches between versions of one release. "
                     "Give relctl the tarball of counter 0.0.2, or the node that runs wto")
    upgrades(agent, counter_node, release_build)


def test_a_tarball_for_an_erts_the_host_lacks_is_refused(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    erts = release_build.erts_vsn
    lacking = other_erts(release_build.tarball("0.0.2"), tmp_path / "erts99.tar.gz", "99.0.0",
                         relup=NEW_EMULATOR_RELUP)
    error = refused_both_ways(agent, counter_node, lacking)
    assert error == (
        'release counter 0.0.2 needs ERTS 99.0.0 (its .rel says {erts, "99.0.0"}), which is '
        f"neither in the tarball nor in {counter_node.root}; counter@localhost runs ERTS "
        f"{erts}. Build the release with its ERTS included (relx: include_erts; "
        "systools:make_tar: {erts, Dir}), or for the node's OTP")
    upgrades(agent, counter_node, release_build)


def test_a_tarball_whose_erts_does_not_run_here_is_refused(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    # What another architecture gives: an erlexec this kernel cannot execute.
    foreign = other_erts(release_build.tarball("0.0.2"), tmp_path / "foreign.tar.gz", "99.0.0",
                         relup=NEW_EMULATOR_RELUP,
                         ship={"erts-99.0.0/bin/erlexec": (b"\x7fELF\x02\x01\x01" + bytes(57),
                                                           0o755)})
    error = refused_both_ways(agent, counter_node, foreign)
    assert error.startswith("the tarball's erts-99.0.0 does not run on this host: its "
                            "erts-99.0.0/bin/erlexec cannot be started here: Exec format error.")
    assert error.endswith("build the release on (or for) this host's architecture and system")
    upgrades(agent, counter_node, release_build)


def test_an_erts_change_with_a_relup_that_does_not_restart_the_emulator_is_refused(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    src = release_build.tarball("0.0.2")
    wrong = other_erts(src, tmp_path / "wrong-otp.tar.gz", "99.0.0",
                       ship=real_erts_bin(src, "99.0.0"))
    error = refused_both_ways(agent, counter_node, wrong)
    assert error == (f"the ERTS changes ({release_build.erts_vsn} -> 99.0.0) but "
                     "releases/0.0.2/relup goes from 0.0.1 without restart_new_emulator: the "
                     "relup was built for the wrong OTP. Build it with the new release's OTP "
                     "(build it with `rebar3 relup` or `relctl make-relup OLD NEW`), so that it "
                     "starts with restart_new_emulator")


def test_a_shipped_erts_that_runs_here_passes_preflight_and_the_dry_run_changes_nothing(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    src = release_build.tarball("0.0.2")
    new = other_erts(src, tmp_path / "new-erts.tar.gz", "99.0.0", relup=NEW_EMULATOR_RELUP,
                     ship=real_erts_bin(src, "99.0.0"))
    before = tree(counter_node.root, "releases", "lib")
    dry = relctl("upgrade", "0.0.2", "--dry-run", "--tarball", str(new), "-o", "json",
                 agents=[agent.address], timeout=180)
    op = dry.json()["operation"]
    preflight = next(s for s in op["steps"] if s["name"] == "preflight")
    assert preflight["state"] == "succeeded", dry.stdout
    assert f"ERTS {release_build.erts_vsn} -> 99.0.0 (shipped, runs on this host)" in \
        preflight["detail"]
    assert op["outcome"] in ("dry_run", "failed_unchanged"), dry.stdout  # per its made-up relup
    assert tree(counter_node.root, "releases", "lib") == before
    assert not (counter_node.root / "erts-99.0.0").exists()
    assert versions(agent) == [("0.0.1", "permanent")]
