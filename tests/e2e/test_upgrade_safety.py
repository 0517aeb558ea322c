"""What goes wrong in real upgrades (DESIGN.md section 7), each against the real node: the
agent refuses or recovers, says what happened, and leaves nothing that blocks a retry."""

from __future__ import annotations

import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.agent_proc import (
    ROOT,
    AgentProc,
    eventually,
    relctl,
    relctl_env,
    start_agent_for,
)
from tests.tools.otp_procs import NodeProc, erl_eval
from tests.tools.release_fixture import ReleaseBuild, make_target_copy
from tests.tools.tarball_variants import compile_module, rewrite_tarball

pytestmark = pytest.mark.otp

EXAMPLES = ROOT / "examples" / "counter"


def release_files(node: NodeProc) -> list[str]:
    return sorted(str(p.relative_to(node.root)) for p in (node.root / "releases").rglob("*"))


def versions(agent: AgentProc) -> list[tuple[str, str]]:
    result = relctl("versions", "-o", "json", agents=[agent.address])
    return [(r["version"], r["status"]) for r in result.json()["nodes"][0]["releases"]]


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> AgentProc:
    return start_agent_for(agents, counter_node, tmp_path / "agent")


@pytest.mark.parametrize("fault", ["not-gzip", "wrong-version", "not-a-release"])
def test_a_refused_tarball_leaves_nothing_behind(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild, tmp_path: Path,
        fault: str) -> None:
    good = release_build.tarball("0.0.2")
    version, tarball, expected = {
        "not-gzip": ("0.0.2", tmp_path / "junk.tar.gz", "not a gzip file"),
        "wrong-version": ("0.0.3", good, "tarball holds release counter 0.0.2, not 0.0.3"),
        "not-a-release": ("0.0.2", tmp_path / "plain.tar.gz", "no release file found"),
    }[fault]
    if fault == "not-gzip":
        tarball.write_bytes(b"PK\x03\x04 this is a zip, not a release")
    elif fault == "not-a-release":  # the same archive without its .rel files
        with tarfile.open(good) as tin, tarfile.open(tarball, "w:gz") as tout:
            for m in tin:
                if not m.name.endswith(".rel"):
                    tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
    before = release_files(counter_node)
    result = relctl("upgrade", version, "--tarball", str(tarball), agents=[agent.address])
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1
    assert release_files(counter_node) == before
    assert list((agent.config.parent / "state" / "uploads").iterdir()) == []
    assert versions(agent) == [("0.0.1", "permanent")]


@pytest.mark.parametrize(("config", "expected"), [
    (b'[{counter,\n  [{greeting "hello"}]}].\n', "does not parse: line 2: syntax error before: "),
    (b'[{counter, [{greeting, "hello"}]}]\n', "does not end with '.'"),
])
def test_a_sys_config_that_does_not_parse_is_refused_before_any_change(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path, config: bytes, expected: str) -> None:
    broken = rewrite_tarball(release_build.tarball("0.0.2"), tmp_path / "broken.tar.gz", {
        "releases/0.0.2/sys.config": config})
    before = release_files(counter_node)
    result = relctl("upgrade", "0.0.2", "--tarball", str(broken), "-o", "json",
                    agents=[agent.address])
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert op["error"].startswith("releases/0.0.2/sys.config in the tarball ")
    assert expected in op["error"]
    assert [s["name"] for s in op["steps"]] == ["preflight"]
    assert release_files(counter_node) == before
    assert versions(agent) == [("0.0.1", "permanent")]


def test_a_relup_that_does_not_match_is_refused_at_preflight_and_a_retry_works(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    wrong = rewrite_tarball(release_build.tarball("0.0.2"), tmp_path / "wrong-relup.tar.gz", {
        "releases/0.0.2/relup": b'{"0.0.2",[{"0.0.0",[],[point_of_no_return]}],'
                                b'[{"0.0.0",[],[point_of_no_return]}]}.\n'})
    result = relctl("upgrade", "0.0.2", "--tarball", str(wrong), "-o", "json",
                    agents=[agent.address])
    assert result.returncode == 1, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "failed_unchanged"
    assert "has no entry from the running 0.0.1" in op["error"]  # issue 14: before staging
    assert [(s["name"], s["state"]) for s in op["steps"]] == [("preflight", "failed")]
    assert versions(agent) == [("0.0.1", "permanent")]
    assert erl_eval(counter_node, "sys:get_state(counter)") == "0"

    # The failed attempt left nothing that makes the good tarball fail (existing_release).
    retry = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                   agents=[agent.address], timeout=180)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert versions(agent) == [("0.0.2", "permanent"), ("0.0.1", "old")]


def test_a_missing_RELEASES_file_is_created_first(
        agents: list[AgentProc], node_factory: NodeFactory, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    target = make_target_copy(release_build, tmp_path / "no-releases-target")
    (target / "releases" / "RELEASES").unlink()
    node = node_factory("counter@localhost", target=target)
    agent = start_agent_for(agents, node, tmp_path / "agent")
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "-o", "json", agents=[agent.address], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    preflight = result.json()["operation"]["steps"][0]
    assert f"created {target}/releases/RELEASES from" in preflight["detail"]
    assert (target / "releases" / "RELEASES").is_file()
    # The created file lists the running release's libraries, so the way back works too.
    down = relctl("downgrade", "0.0.1", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert versions(agent) == [("0.0.2", "old"), ("0.0.1", "permanent")]


def test_a_crashing_code_change_is_rolled_back_by_node_restart(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    source = (EXAMPLES / "0.0.2" / "src" / "counter.erl").read_text().replace(
        'code_change("0.0.1", N, _Extra) when is_integer(N) ->',
        'code_change("0.0.1", N, _Extra) when is_integer(N), N < 0 ->\n'
        '    {ok, N};\ncode_change("0.0.1", _N, _Extra) ->\n    erlang:error(migration_bug);\n'
        'code_change(unused, N, _Extra) ->')
    assert "migration_bug" in source
    beam = compile_module(source, "counter", tmp_path / "crashing")
    crashing = rewrite_tarball(release_build.tarball("0.0.2"), tmp_path / "crashing.tar.gz", {
        "lib/counter-0.0.2/ebin/counter.beam": beam})
    erl_eval(counter_node, "counter:incr(), ok")
    result = relctl("upgrade", "0.0.2", "--tarball", str(crashing), "-o", "json",
                    agents=[agent.address], timeout=180)
    assert result.returncode == 5, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "rolled_back"
    assert "rolled back by node restart" in op["error"]
    assert counter_node.running()  # init:restart: same OS process, rebooted in place
    assert eventually(lambda: dict(versions(agent)).get("0.0.1") == "permanent")
    assert erl_eval(counter_node, "sys:get_state(counter)") == "0"  # a fresh start, on 0.0.1


def test_an_agent_killed_mid_upgrade_journals_it_as_interrupted(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    workdir = tmp_path / "agent"
    agent = start_agent_for(agents, counter_node, workdir, health_probes=["counter:health"],
                      health_soak=30)
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(release_build.tarball("0.0.2"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=relctl_env({"RELCTL_AGENT_RETURN_WAIT": "2"}))  # not back within 2 s: exit 6
    try:
        def installed() -> bool:
            shown = relctl("operation", "1", "-o", "json", agents=[agent.address])
            return shown.returncode == 0 and any(
                s["name"] == "install" and s["state"] == "succeeded"
                for s in shown.json()["operation"]["steps"])
        eventually(installed, what="install done, verify soaking", timeout=120)
        agent.send_signal(signal.SIGKILL)
        agent.stop()
    finally:
        client.communicate(timeout=60)
    assert client.returncode == 6  # the operation may go on: never 1

    again = start_agent_for(agents, counter_node, workdir)
    shown = relctl("operation", "1", "-o", "json", agents=[again.address])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    op = shown.json()["operation"]
    assert op["outcome"] == "interrupted"
    assert "the agent stopped while it ran; counter@localhost now runs 0.0.2 (current)" \
        in op["error"]
    assert [r["version"] for r in op["releases_after"]] == ["0.0.2", "0.0.1"]
    assert "operation 1 (upgrade on counter@localhost)" in again.log_text()
