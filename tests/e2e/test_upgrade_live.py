"""Hot upgrades through relctl and a real agent, on a real node whose state is read back."""

from __future__ import annotations

import hashlib
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc
from tests.tools.agent_proc import (
    ROOT,
    AgentProc,
    CliResult,
    NodeEntry,
    eventually,
    relctl,
    relctl_env,
    start_agent,
)
from tests.tools.otp_procs import NodeProc, erl_eval, free_port
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp


def counter_state(node: NodeProc) -> str:
    return erl_eval(node, "sys:get_state(counter)")


def counter_pid(node: NodeProc) -> str:
    return erl_eval(node, "whereis(counter)")


def incr(node: NodeProc, times: int) -> None:
    erl_eval(node, f"[counter:incr() || _ <- lists:seq(1, {times})], ok")


def step_names(op: dict[str, Any]) -> list[tuple[str, str]]:
    return [(s["name"], s["state"]) for s in op["steps"]]


@pytest.fixture
def agent(agents: list[AgentProc], counter_node: NodeProc, tmp_path: Path) -> AgentProc:
    started = start_agent(tmp_path / "agent", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        extra_agent={"refresh_interval": 2, "reconnect_max_delay": 1,
                     "listen": [f"unix:{tmp_path / 'agent.sock'}", f"127.0.0.1:{free_port()}"]})
    agents.append(started)
    return started


def test_upgrade_then_downgrade_keeps_the_state_and_the_process(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    incr(counter_node, 5)
    pid = counter_pid(counter_node)
    tarball = release_build.tarball("0.0.2")

    # On the host, through the agent's Unix socket (no token: the socket's group decides).
    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), "-o", "json",
                agents=[agent.socket], env={"RELCTL_TOKEN_FILE": ""}, timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    op = up.json()["operation"]
    assert op["outcome"] == "succeeded" and op["from_version"] == "0.0.1"
    assert step_names(op) == [("preflight", "succeeded"), ("stage", "succeeded"),
                              ("unpack", "succeeded"), ("check", "succeeded"),
                              ("install", "succeeded"), ("verify", "succeeded"),
                              ("make_permanent", "succeeded")]
    # One pass as the upload arrived; the loaded code compared with the beams in the agent
    # (issue 24; also what the OTP 27 run checks: its beams have a Meta chunk).
    details = {s["name"]: s["detail"] for s in op["steps"]}
    assert " as the upload arrived (" in details["stage"], details["stage"]
    assert "modules match the release's beams (embedded mode, md5s compared in the agent)" in \
        details["verify"], details["verify"]
    assert op["releases_after"] == [
        {"name": "counter", "version": "0.0.2", "status": "permanent"},
        {"name": "counter", "version": "0.0.1", "status": "old"}]
    # The hot upgrade migrated the state in code_change: same process, count carried over.
    assert counter_state(counter_node) == '#{count => 5,upgraded_from => "0.0.1"}'
    assert counter_pid(counter_node) == pid
    versions = relctl("versions", "-o", "json", agents=[agent.address]).json()
    assert versions["nodes"][0]["releases"][0] == {
        "name": "counter", "version": "0.0.2", "status": "permanent"}
    # The tarball staged into releases/ was consumed by unpack_release, the upload deleted.
    assert not (counter_node.root / "releases" / "counter-0.0.2.tar.gz").exists()
    assert list((agent.config.parent / "state" / "uploads").iterdir()) == []

    incr(counter_node, 1)
    down = relctl("downgrade", "0.0.1", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "downgrade 0.0.1 on counter@localhost: done" in down.stdout
    assert counter_state(counter_node) == "6"
    assert counter_pid(counter_node) == pid

    ops = relctl("operations", "-o", "json", agents=[agent.address]).json()["operations"]
    assert [(o["kind"], o["to_version"], o["outcome"]) for o in ops] == [
        ("downgrade", "0.0.1", "succeeded"), ("upgrade", "0.0.2", "succeeded")]
    # The journal and the audit trail name the same callers: the token, and the local user.
    me = f"uid {os.getuid()} ({pwd.getpwuid(os.getuid()).pw_name})"
    assert ops[0]["requested_by"].startswith("test-operator from ipv4:127.0.0.1:")
    assert ops[1]["requested_by"].startswith(f"{me} from unix:")
    trail = relctl("audit", "-o", "json", agents=[agent.address]).json()["records"]
    assert [(r["identity"], r["rpc"], r["result"], r["detail"]) for r in trail] == [
        ("test-operator", "Downgrade", "ok", f"operation {ops[0]['id']}: succeeded"),
        (me, "Upgrade", "ok", f"operation {ops[1]['id']}: succeeded"),
        (me, "Upload", "ok", trail[2]["detail"])]
    assert trail[1]["arguments"]["version"] == "0.0.2" and trail[1]["node"] == counter_node.name
    assert trail[2]["detail"].startswith("upload ") and "counter 0.0.2" in trail[2]["detail"]

    exposition = agent.metrics_text()
    for kind in ("upgrade", "downgrade"):
        assert (f'relctl_operations_total{{node="counter@localhost",operation="{kind}",'
                f'outcome="succeeded"}} 1.0') in exposition
    assert 'relctl_operation_duration_seconds_count{operation="upgrade"} 1.0' in exposition
    assert eventually(lambda: 'release="counter",status="permanent",version="0.0.1"'
                      in agent.metrics_text())


def test_text_output_shows_each_step_with_its_duration(
        agent: AgentProc, release_build: ReleaseBuild) -> None:
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    agents=[agent.address], timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = [line.split()[0] for line in lines if line.startswith("  ")][:8]
    assert steps == ["upload", "preflight", "stage", "unpack", "check", "install", "verify",
                     "make_permanent"]
    assert all(" ms" in line or " s " in line for line in lines[:8])
    assert "upgrade 0.0.2 on counter@localhost: done (operation 1)" in result.stdout


def test_unpack_ahead_then_upgrade_without_a_tarball(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    unpacked = relctl("unpack", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                      "-o", "json", agents=[agent.address], timeout=120)
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    assert unpacked.json()["operation"]["releases_after"][0]["status"] == "unpacked"

    up = relctl("upgrade", "0.0.2", "-o", "json", agents=[agent.address], timeout=120)
    assert up.returncode == 0, up.stdout + up.stderr
    op = up.json()["operation"]
    assert ("stage", "skipped") in step_names(op) and ("unpack", "skipped") in step_names(op)
    assert counter_state(counter_node).startswith("#{count => 0")


def test_no_permanent_then_upgrade_only_makes_it_permanent(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    first = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                   "--no-permanent", "-o", "json", agents=[agent.address], timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.json()["operation"]["releases_after"] == [
        {"name": "counter", "version": "0.0.2", "status": "current"},
        {"name": "counter", "version": "0.0.1", "status": "permanent"}]
    second = relctl("upgrade", "0.0.2", "-o", "json", agents=[agent.address], timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    names = step_names(second.json()["operation"])
    assert ("install", "skipped") in names and ("make_permanent", "succeeded") in names
    assert second.json()["operation"]["releases_after"][0]["status"] == "permanent"


def test_dry_run_checks_everything_and_changes_nothing(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    def files() -> list[str]:
        return sorted(str(p.relative_to(counter_node.root))
                      for d in ("releases", "lib") for p in (counter_node.root / d).rglob("*"))
    before = files()
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "--dry-run", "-o", "json", agents=[agent.address], timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "dry_run"
    assert step_names(op) == [
        ("preflight", "succeeded"), ("stage", "succeeded"), ("unpack", "succeeded"),
        ("check", "succeeded"), ("install", "skipped"), ("verify", "skipped"),
        ("make_permanent", "skipped"), ("undo_unpack", "succeeded")]
    assert op["releases_after"] == [{"name": "counter", "version": "0.0.1", "status": "permanent"}]
    assert files() == before
    assert counter_state(counter_node) == "0"


def test_remove_refuses_the_running_release_and_removes_an_old_one(
        agent: AgentProc, release_build: ReleaseBuild) -> None:
    refused = relctl("remove", "0.0.1", agents=[agent.address])
    assert refused.returncode == 1
    assert "0.0.1 is permanent on counter@localhost; the running or permanent release cannot " \
           "be removed" in refused.stdout
    up = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    removed = relctl("remove", "0.0.1", "-o", "json", agents=[agent.address])
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert removed.json()["operation"]["releases_after"] == [
        {"name": "counter", "version": "0.0.2", "status": "permanent"}]


def test_a_rerun_of_a_done_upgrade_is_up_to_date_and_sends_nothing(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    tarball = str(release_build.tarball("0.0.2"))
    first = relctl("upgrade", "0.0.2", "--tarball", tarball, agents=[agent.address], timeout=180)
    assert first.returncode == 0, first.stdout + first.stderr
    state, pid = counter_state(counter_node), counter_pid(counter_node)

    # A `set -e` deploy script run again: exit 0, the tarball not sent, the journal says so.
    again = relctl("upgrade", "0.0.2", "--tarball", tarball, agents=[agent.address], timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    lines = again.stdout.splitlines()
    assert lines[0].split() == ["upload", "skip", "0.0.2", "already", "runs", "and", "is",
                                "permanent;", "the", "tarball", "was", "not", "sent"]
    assert lines[1].split()[:2] == ["preflight", "ok"]
    assert "upgrade 0.0.2 on counter@localhost: up to date (operation 2)" in lines
    as_json = relctl("upgrade", "0.0.2", "--tarball", tarball, "-o", "json",
                     agents=[agent.address], timeout=60)
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    op = as_json.json()["operation"]
    assert (op["outcome"], op["from_version"], op["to_version"], op["error"]) == (
        "up_to_date", "0.0.2", "0.0.2", "")
    assert step_names(op) == [("preflight", "succeeded")]
    assert op["steps"][0]["detail"] == ("0.0.2 already runs and is permanent on "
                                        "counter@localhost; nothing to do")

    # Proof that nothing was sent: the audit trail has the first run's Upload only.
    trail = relctl("audit", "-o", "json", agents=[agent.address]).json()["records"]
    assert [(r["rpc"], r["detail"]) for r in trail[:3]] == [
        ("Upgrade", "operation 3: up_to_date"), ("Upgrade", "operation 2: up_to_date"),
        ("Upgrade", "operation 1: succeeded")]
    assert [r["rpc"] for r in trail] == ["Upgrade", "Upgrade", "Upgrade", "Upload"]

    # An upload that arrives anyway (an older client) is discarded: still up_to_date.
    data = Path(tarball).read_bytes()
    with grpc.insecure_channel(agent.socket) as channel:
        stub = agent_pb2_grpc.AgentStub(channel)
        upload = stub.Upload(iter([
            pb.UploadRequest(header=pb.UploadHeader(
                node=counter_node.name, version="0.0.2", size=len(data),
                sha256=hashlib.sha256(data).hexdigest(), file_name="counter-0.0.2.tar.gz")),
            *(pb.UploadRequest(chunk=data[i:i + 2 ** 20]) for i in range(0, len(data), 2 ** 20))]),
            timeout=60)
        events = list(stub.Upgrade(pb.UpgradeRequest(
            node=counter_node.name, version="0.0.2", upload_id=upload.upload_id), timeout=60))
    finished = events[-1].finished
    assert finished.outcome == pb.OUTCOME_UP_TO_DATE and not finished.error
    assert [s.detail for s in finished.steps] == [
        "0.0.2 already runs and is permanent on counter@localhost; nothing to do; the "
        "uploaded tarball is not needed"]
    assert list((agent.config.parent / "state" / "uploads").iterdir()) == []
    assert not (counter_node.root / "releases" / "counter-0.0.2.tar.gz").exists()

    journal = relctl("operations", "-o", "json", agents=[agent.address]).json()["operations"]
    assert [(o["kind"], o["to_version"], o["outcome"]) for o in journal] == [
        ("upgrade", "0.0.2", "up_to_date")] * 3 + [("upgrade", "0.0.2", "succeeded")]
    assert ('relctl_operations_total{node="counter@localhost",operation="upgrade",'
            'outcome="up_to_date"} 3.0') in agent.metrics_text()
    assert (counter_state(counter_node), counter_pid(counter_node)) == (state, pid)


def test_unknown_version_without_tarball_changes_nothing(
        agent: AgentProc, counter_node: NodeProc) -> None:
    result = relctl("upgrade", "9.9.9", agents=[agent.address])
    assert result.returncode == 1
    assert ("release 9.9.9 is not on counter@localhost (it has: 0.0.1 (permanent)); "
            "pass --tarball FILE to upload it") \
        in result.stdout
    assert counter_state(counter_node) == "0"


def test_a_failing_health_gate_rolls_back_with_the_state_intact(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "gated", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        node_extra={"health_probes": ["counter:health"], "health_soak": 1})
    agents.append(agent)
    incr(counter_node, 3)
    erl_eval(counter_node, "persistent_term:put({counter, healthy}, false)")
    result = relctl("upgrade", "0.0.2", "--tarball", str(release_build.tarball("0.0.2")),
                    "-o", "json", agents=[agent.address], timeout=180)
    assert result.returncode == 5, result.stdout + result.stderr
    op = result.json()["operation"]
    assert op["outcome"] == "rolled_back"
    assert "health probe counter:health() returned {error,unhealthy}" in op["error"]
    assert ("rollback", "succeeded") in step_names(op)
    assert counter_state(counter_node) == "3"
    statuses = {r["version"]: r["status"] for r in op["releases_after"]}
    assert statuses["0.0.1"] == "permanent"


def test_a_second_operation_on_the_node_is_refused_while_one_runs(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    agent = start_agent(tmp_path / "slow", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        node_extra={"health_probes": ["counter:health"], "health_soak": 4})
    agents.append(agent)
    first = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(release_build.tarball("0.0.2")), "-o", "json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=relctl_env())
    try:
        eventually(lambda: any(o["outcome"] == "running" for o in relctl(
            "operations", "-o", "json", agents=[agent.address]).json()["operations"]),
            what="the first upgrade is running")
        second = relctl("upgrade", "0.0.2", agents=[agent.address])
        assert second.returncode == 7
        assert second.stderr == (f"relctl: agent {agent.address}: operation 1 (upgrade) is in "
                                 "progress on counter@localhost; wait for it (relctl operation 1) "
                                 "and try again\n")
    finally:
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, out + err


def test_client_going_away_does_not_cancel_the_upgrade(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    client = subprocess.Popen(
        [sys.executable, "-m", "agent.client", "--agent", agent.address, "upgrade", "0.0.2",
         "--tarball", str(release_build.tarball("0.0.2"))],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=relctl_env())
    try:  # kill the client as soon as the operation exists on the agent
        eventually(lambda: relctl("operations", "-o", "json", agents=[agent.address])
                   .json()["operations"], what="operation started", timeout=60)
    finally:
        client.kill()
        client.communicate()
    op = eventually(lambda: (o := relctl("operation", "1", "-o", "json", agents=[agent.address])
                             .json()["operation"])["outcome"] != "running" and o,
                    what="operation finished", timeout=120)
    assert op["outcome"] == "succeeded"
    assert counter_state(counter_node).startswith("#{count => 0")


def test_an_upgrade_of_a_release_unpacked_from_the_same_bytes_sends_nothing(
        agent: AgentProc, counter_node: NodeProc, release_build: ReleaseBuild) -> None:
    tarball = str(release_build.tarball("0.0.2"))
    unpacked = relctl("unpack", "0.0.2", "--tarball", tarball, agents=[agent.address],
                      timeout=180)
    assert unpacked.returncode == 0, unpacked.stdout + unpacked.stderr
    releases = relctl("versions", "-o", "json", agents=[agent.address]).json()
    assert ("0.0.2", "unpacked") in [(r["version"], r["status"])
                                     for r in releases["nodes"][0]["releases"]]

    # The agent recorded the tarball's sha256 at unpack: relctl asks before sending.
    up = relctl("upgrade", "0.0.2", "--tarball", tarball, agents=[agent.address], timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    skipped = ["upload", "skip", "0.0.2", "is", "on", "the", "node", "from", "these", "bytes",
               "already", "(same", "sha256);", "the", "tarball", "was", "not", "sent"]
    assert up.stdout.splitlines()[0].split() == skipped
    assert "upgrade 0.0.2 on counter@localhost: done" in up.stdout
    assert counter_state(counter_node).startswith("#{count => ")
    trail = relctl("audit", "-o", "json", agents=[agent.address]).json()["records"]
    assert [r["rpc"] for r in trail] == ["Upgrade", "Unpack", "Upload"]  # one upload in all

    # Downgraded, 0.0.2 is old: a reinstall from the same tarball sends nothing either
    # (issue 22, point 6).
    down = relctl("downgrade", "0.0.1", agents=[agent.address], timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    releases = relctl("versions", "-o", "json", agents=[agent.address]).json()
    assert ("0.0.2", "old") in [(r["version"], r["status"])
                                for r in releases["nodes"][0]["releases"]]
    again = relctl("upgrade", "0.0.2", "--tarball", tarball, agents=[agent.address], timeout=180)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0].split() == skipped
    assert "upgrade 0.0.2 on counter@localhost: done" in again.stdout
    trail = relctl("audit", "-o", "json", agents=[agent.address]).json()["records"]
    assert [r["rpc"] for r in trail] == ["Upgrade", "Downgrade", "Upgrade", "Unpack", "Upload"]


def test_health_soak_is_one_setting_in_the_config_the_api_and_relctl(
        agents: list[AgentProc], counter_node: NodeProc, release_build: ReleaseBuild,
        tmp_path: Path) -> None:
    """agent.toml's health_soak is the default; relctl --health-soak (the API's health_soak)
    overrides it for one upgrade; --health-timeout, its old name, still works with a warning."""
    agent = start_agent(tmp_path / "soak", [
        NodeEntry(counter_node.name, counter_node.cookie, counter_node.epmd_port)],
        node_extra={"health_probes": ["counter:health"], "health_soak": 3})
    agents.append(agent)
    tarball = str(release_build.tarball("0.0.2"))

    def verify_detail(result: CliResult) -> str:
        assert result.returncode == 0, result.stdout + result.stderr
        detail: str = next(s["detail"] for s in result.json()["operation"]["steps"]
                           if s["name"] == "verify")
        return detail

    up = relctl("upgrade", "0.0.2", "--tarball", tarball, "--health-soak", "1", "-o", "json",
                agents=[agent.address], timeout=180)
    assert "over 1 s" in verify_detail(up) and up.stderr == ""
    trail = relctl("audit", "-o", "json", agents=[agent.address]).json()["records"]
    assert trail[0]["rpc"] == "Upgrade" and trail[0]["arguments"]["health_soak"] == "1s"
    down = relctl("downgrade", "0.0.1", "-o", "json", agents=[agent.address], timeout=180)
    assert "over 3 s" in verify_detail(down)  # the config's, as nothing overrides it
    again = relctl("upgrade", "0.0.2", "--health-timeout", "1", "-o", "json",
                   agents=[agent.address], timeout=180)
    assert "over 1 s" in verify_detail(again)
    assert again.stderr == ("relctl: warning: --health-timeout is the old name of --health-soak; "
                            "use --health-soak (the old name will go away)\n")
