"""An OTP change through relctl, both ways: a release built with OTP 25 (0.0.1) upgraded to
one built with OTP 27 (0.0.2) and back, with the relup `relctl make-relup --erl` (OTP 27's)
makes: OTP's own appups for kernel, stdlib and sasl (restart_new_emulator first going up,
restart_emulator last going down), counter's generated.

This host (Debian 12, glibc 2.36) cannot run OTP 27's ERTS (Debian 13's needs GLIBC_2.38), so
the node runs inside the OTP 27 root (.ci/otp27-run, Debian 13), where OTP 25's binaries run
too: the release root holds both ERTS, as an operator who installs the new ERTS before the
upgrade has it (the agent, on the host, cannot start the new one to check it). The agent, the
bridge and relctl stay on the host. Runs in .ci/run's OTP 27 stage (RELCTL_TEST_OTP=27).

Each way: relctl says done, the node runs the other OTP (erlang:system_info(otp_release)),
which_releases has the target permanent, start_erl.data names its ERTS and version, and a
restart of the node (its own start script, reading start_erl.data) boots it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import current_test_failed
from tests.tools import otp_select
from tests.tools.agent_proc import AgentProc, NodeEntry, relctl, start_agent
from tests.tools.heart_node import emulators_of, install_start, stop_emulators
from tests.tools.otp_procs import EpmdProc, NodeProc, erl_eval, start_node
from tests.tools.release_fixture import ReleaseBuild, build_release, extract_tar, make_target_copy

pytestmark = [
    pytest.mark.otp,
    # The host's OTP (25) alone cannot run this: .ci/run runs it in its OTP 27 stage, where a
    # missing root fails the run under CI (tests/conftest.py), and leaves it out of the OTP 25
    # run.
    pytest.mark.skipif(not otp_select.in_root(),
                       reason="runs against the OTP 27 root: RELCTL_TEST_OTP=27 "
                              "(.ci/run's OTP 27 stage)"),
]

HOST_ERL = "erl"  # the host's OTP (25), on PATH


@pytest.fixture(scope="module")
def otp25_build(tmp_path_factory: pytest.TempPathFactory) -> ReleaseBuild:
    """counter built with the host's OTP 25 (release_build is OTP 27's in this stage)."""
    return build_release(tmp_path_factory.mktemp("counter-otp25"), erl=HOST_ERL,
                         erlc="erlc")


class HeartNodes:
    """Starts the test's node in ``root`` under heart (its start script reading
    start_erl.data, as a restart of the host would), keeping every NodeProc to stop."""

    def __init__(self, root: Path, epmd: EpmdProc, cookie: str, workdir: Path) -> None:
        self.root, self._epmd, self._cookie, self._workdir = root, epmd, cookie, workdir
        self.started: list[NodeProc] = []

    def start(self) -> NodeProc:
        node = start_node(self.root, "counter@localhost", cookie=self._cookie,
                          epmd_port=self._epmd.port, extra_args=["-heart"],
                          workdir=self._workdir / f"node-{len(self.started)}")
        self.started.append(node)
        return node

    def restart(self) -> NodeProc:
        """Stop the node (and the emulators heart started for it), then start it again."""
        for node in self.started:
            node.stop()
        stop_emulators(self.root)
        return self.start()


@pytest.fixture
def heart_nodes(request: pytest.FixtureRequest, epmd: EpmdProc, node_cookie: str,
                tmp_path: Path) -> Iterator[HeartNodes]:
    """Every node started and every emulator of its root (heart starts new ones) is stopped
    at the end; heart's boot log is printed when the test failed."""
    nodes = HeartNodes(tmp_path / "target", epmd, node_cookie, tmp_path)
    yield nodes
    for node in nodes.started:
        node.stop()
    stop_emulators(nodes.root)
    log = nodes.root / "heart-boots.log"
    if current_test_failed(request) and log.is_file():
        print(f"===== {log} =====")
        print(log.read_text(errors="replace"))
    assert not emulators_of(nodes.root)


def releases_of(node: NodeProc) -> str:
    return erl_eval(node, "[{V, S} || {_, V, _, S} <- release_handler:which_releases()]")


def test_otp_25_to_27_and_back_through_make_relup_upgrade_and_downgrade(
        agents: list[AgentProc], heart_nodes: HeartNodes, release_build: ReleaseBuild,
        otp25_build: ReleaseBuild, tmp_path: Path) -> None:
    otp27, otp25 = release_build.otp, otp25_build.otp
    assert (otp25.otp_release, otp27.otp_release) == ("25", "27")
    erts25, erts27 = otp25.erts_vsn, otp27.erts_vsn

    # The relup, made by OTP 27's systools from the OTP 25 0.0.1 and the OTP 27 0.0.2.
    old = otp25_build.target_template
    new = extract_tar(release_build.tarball("0.0.2"), tmp_path / "0.0.2")
    (new / "releases" / "0.0.2" / "relup").unlink()
    tarball = tmp_path / "counter-0.0.2.tar.gz"
    made = relctl("make-relup", str(old), str(new), "--erl", otp_select.erl(),
                  "--no-include-erts", "--tarball", str(tarball), timeout=180)
    assert made.returncode == 0, made.stdout + made.stderr
    print(made.stdout + made.stderr)
    lib27 = otp27.root_dir / "lib"  # as OTP 27's erl sees it, in its root
    assert made.stdout.splitlines()[:4] == [
        f"appup: kernel {otp25.app_vsns['kernel']} -> {otp27.app_vsns['kernel']}: OTP's own "
        f"({lib27}/kernel-{otp27.app_vsns['kernel']}/ebin/kernel.appup)",
        f"appup: stdlib {otp25.app_vsns['stdlib']} -> {otp27.app_vsns['stdlib']}: OTP's own "
        f"({lib27}/stdlib-{otp27.app_vsns['stdlib']}/ebin/stdlib.appup)",
        f"appup: sasl {otp25.app_vsns['sasl']} -> {otp27.app_vsns['sasl']}: OTP's own "
        f"({lib27}/sasl-{otp27.app_vsns['sasl']}/ebin/sasl.appup)",
        "appup: counter 0.0.1 -> 0.0.2: generated"]
    # OTP's appups replace what the beams would give, so the generator's warnings on OTP's
    # modules are moot and not shown; systools' one warning is one line, once.
    assert made.stderr.splitlines() == [
        f'relctl: warning: The ERTS version changed between {{"counter","{erts27}"}} and '
        f'{{"counter", "{erts25}"}}',
        f"relctl: warning: ERTS changes from {erts25} to {erts27} but erts-{erts27} is not in "
        "the tarball: the node must have it already"]
    relup = "".join((new / "releases" / "0.0.2" / "relup").read_text().split())
    assert '[{"0.0.1",[],[restart_new_emulator,' in relup  # up: the new emulator first
    assert relup.endswith(",restart_emulator]}]}.")  # down: the old one, last

    # The node: 0.0.1 on OTP 25, under heart, in a root that also holds OTP 27's ERTS.
    target = make_target_copy(otp25_build, heart_nodes.root, erl=HOST_ERL)
    shutil.copytree(release_build.target_template / f"erts-{erts27}", target / f"erts-{erts27}",
                    symlinks=True)
    install_start(target)
    start_erl = target / "releases" / "start_erl.data"
    node = heart_nodes.start()
    agent = start_agent(tmp_path / "agent", [NodeEntry(node.name, node.cookie, node.epmd_port)])
    agents.append(agent)
    assert erl_eval(node, "erlang:system_info(otp_release)") == '"25"'
    erl_eval(node, "counter:incr()")
    first = erl_eval(node, "os:getpid()")

    # In text, as an operator sees it (printed for the record), then the operation's JSON.
    up = relctl("upgrade", "0.0.2", "--tarball", str(tarball), agents=[agent.address],
                timeout=300)
    print(up.stdout + up.stderr)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "upgrade 0.0.2 on counter@localhost: done (operation 1)" in up.stdout
    op = relctl("operation", "1", "-o", "json", agents=[agent.address]).json()["operation"]
    assert op["outcome"] == "succeeded", op
    steps = {s["name"]: s["detail"] for s in op["steps"]}
    assert steps["install"] == "installed; the node restarted into the new emulator", steps
    assert steps["make_permanent"].startswith("0.0.2 is permanent"), steps
    second = erl_eval(node, "os:getpid()")
    assert second != first
    assert erl_eval(node, "erlang:system_info(otp_release)") == '"27"'
    assert erl_eval(node, "erlang:system_info(version)") == f'"{erts27}"'
    # The emulator restart lost the count; the rest of the script then ran counter's
    # code_change on the new emulator (the state has 0.0.2's shape, migrated from 0.0.1).
    assert erl_eval(node, "sys:get_state(counter)") == '#{count => 0,upgraded_from => "0.0.1"}'
    assert releases_of(node) == '[{"0.0.2",permanent},{"0.0.1",old}]'
    assert start_erl.read_text().split() == [erts27, "0.0.2"]

    # A restart (the node's own start script) boots the permanent release on OTP 27.
    node = heart_nodes.restart()
    assert erl_eval(node, "erlang:system_info(otp_release)") == '"27"'
    assert releases_of(node) == '[{"0.0.2",permanent},{"0.0.1",old}]'
    erl_eval(node, "counter:incr()")
    third = erl_eval(node, "os:getpid()")

    down = relctl("downgrade", "0.0.1", agents=[agent.address], timeout=300)
    print(down.stdout + down.stderr)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "downgrade 0.0.1 on counter@localhost: done (operation 2)" in down.stdout
    op = relctl("operation", "2", "-o", "json", agents=[agent.address]).json()["operation"]
    assert op["outcome"] == "succeeded", op
    steps = {s["name"]: s["detail"] for s in op["steps"]}
    assert steps["install"] == ("0.0.2 -> 0.0.1; the node restarted its emulator "
                                "(restart_emulator)"), steps
    assert steps["make_permanent"].startswith("0.0.1 is permanent"), steps
    assert erl_eval(node, "os:getpid()") != third
    assert erl_eval(node, "erlang:system_info(otp_release)") == '"25"'
    assert erl_eval(node, "erlang:system_info(version)") == f'"{erts25}"'
    assert erl_eval(node, "sys:get_state(counter)") == "0"  # 0.0.1's shape, a fresh emulator
    assert releases_of(node) == '[{"0.0.2",old},{"0.0.1",permanent}]'
    assert start_erl.read_text().split() == [erts25, "0.0.1"]

    node = heart_nodes.restart()
    assert erl_eval(node, "erlang:system_info(otp_release)") == '"25"'
    assert releases_of(node) == '[{"0.0.2",old},{"0.0.1",permanent}]'
    assert erl_eval(node, "sys:get_state(counter)") == "0"
