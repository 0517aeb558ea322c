"""The release fixture and process helpers against real Erlang/OTP (no mocks).

These tests pin down what later tests of relctl rely on: the tarballs have
what release_handler needs, the installed target boots under a private
epmd, and a hot upgrade plus downgrade done with plain ``rpc:call`` keeps
the same emulator process while the counter's state changes shape.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import NodeFactory
from tests.tools.otp_procs import (
    EpmdProc,
    ErlRpcError,
    NodeProc,
    OtpProcessError,
    epmd_names,
    erl_eval,
    erl_rpc,
    free_port,
    pid_exists,
    start_epmd,
    start_node,
)
from tests.tools.release_fixture import ReleaseBuild, make_target_copy

pytestmark = pytest.mark.otp


def _installed_erts_vsn() -> str:
    out = subprocess.run(
        ["erl", "-noshell", "-eval", 'io:format("~s", [erlang:system_info(version)]), halt().'],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


# ---------------------------------------------------------------------------
# build


def test_build_uses_the_installed_otp(release_build: ReleaseBuild) -> None:
    assert release_build.name == "counter"
    assert release_build.erts_vsn == _installed_erts_vsn()
    assert set(release_build.app_vsns) == {"kernel", "stdlib", "sasl"}
    for app, vsn in release_build.app_vsns.items():
        assert (release_build.otp.root_dir / "lib" / f"{app}-{vsn}").is_dir()
    assert release_build.unpack_name("0.0.1") == "counter-0.0.1"
    assert release_build.unpack_name("0.0.2") == "counter-0.0.2"
    assert dict(release_build.unpack_names) == {"0.0.1": "counter-0.0.1", "0.0.2": "counter-0.0.2"}
    assert release_build.tarballs["0.0.2"].name == "counter-0.0.2.tar.gz"


@pytest.mark.parametrize("vsn", ["0.0.1", "0.0.2"])
def test_tarball_members(release_build: ReleaseBuild, vsn: str) -> None:
    erts = release_build.erts_vsn
    with tarfile.open(release_build.tarball(vsn), "r:gz") as tar:
        members = set(tar.getnames())
    assert members == set(release_build.versions[vsn].tar_members)
    expected = {
        # unpack_release/1 first extracts only this one to learn the version
        f"releases/counter-{vsn}.rel",
        f"releases/{vsn}/counter-{vsn}.rel",
        f"releases/{vsn}/start.boot",
        f"releases/{vsn}/sys.config",
        f"releases/{vsn}/vm.args",
        f"lib/counter-{vsn}/ebin/counter.app",
        f"lib/counter-{vsn}/ebin/counter.beam",
        f"lib/counter-{vsn}/ebin/counter_app.beam",
        f"lib/counter-{vsn}/ebin/counter_sup.beam",
        f"erts-{erts}/bin/beam.smp",
        f"erts-{erts}/bin/erlexec",
        f"erts-{erts}/bin/erl_child_setup",
    }
    expected |= {
        f"lib/{app}-{app_vsn}/ebin/{app}.app" for app, app_vsn in release_build.app_vsns.items()
    }
    assert expected <= members, sorted(expected - members)
    assert (f"releases/{vsn}/relup" in members) is (vsn == "0.0.2")
    assert release_build.versions[vsn].has_relup is (vsn == "0.0.2")


def test_relup_goes_both_ways(release_build: ReleaseBuild) -> None:
    with tarfile.open(release_build.tarball("0.0.2"), "r:gz") as tar:
        fh = tar.extractfile("releases/0.0.2/relup")
        assert fh is not None
        relup = fh.read().decode()
    flat = re.sub(r"\s+", "", relup)
    assert flat.startswith('%%coding:utf-8{"0.0.2",[{"0.0.1",[],')
    assert "{code_change,up,[{counter,[]}]}" in flat
    assert "{code_change,down,[{counter,[]}]}" in flat


def test_installed_target_layout(release_build: ReleaseBuild) -> None:
    root = release_build.target_template
    erts = release_build.erts_vsn
    assert (root / "releases" / "start_erl.data").read_text() == f"{erts} 0.0.1\n"
    releases = (root / "releases" / "RELEASES").read_text()
    assert '{release,"counter","0.0.1"' in releases and "permanent" in releases
    assert f'"{root}/lib/counter-0.0.1"' in releases
    for script in ("counter", "erl"):
        assert os.access(root / "bin" / script, os.X_OK)
    vm_args = [
        line
        for line in (root / "releases" / "0.0.1" / "vm.args").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert "-start_epmd false" in vm_args
    assert not [line for line in vm_args if "-sname" in line or "-setcookie" in line]
    assert not (root / "lib" / "counter-0.0.2").exists()


@pytest.mark.parametrize("script", ["bin/erl", "erts/bin/erl"])
def test_target_erl_uses_the_target_root(
    release_build: ReleaseBuild, tmp_path: Path, script: str
) -> None:
    root = make_target_copy(release_build, tmp_path / "target")
    script = script.replace("erts/", f"erts-{release_build.erts_vsn}/")
    out = subprocess.run(
        [str(root / script), "-noshell", "-eval", 'io:format("~s", [code:root_dir()]), halt().'],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert out.stdout == str(root)


def test_target_copy_gets_its_own_releases_file(
    release_build: ReleaseBuild, tmp_path: Path
) -> None:
    root = make_target_copy(release_build, tmp_path / "copy")
    releases = (root / "releases" / "RELEASES").read_text()
    assert f'"{root}/lib/counter-0.0.1"' in releases
    assert str(release_build.target_template) not in releases


# ---------------------------------------------------------------------------
# running nodes


def test_node_starts_on_the_private_epmd(counter_node: NodeProc, epmd: EpmdProc) -> None:
    names = epmd.names()
    assert set(names) == {"counter"}
    assert counter_node.epmd_port == epmd.port != 4369
    # bin/counter execs erlexec, which execs beam.smp: same pid.
    assert erl_eval(counter_node, "os:getpid()") == f'"{counter_node.pid}"'
    assert erl_eval(counter_node, "code:root_dir()") == f'"{counter_node.root}"'
    assert erl_eval(counter_node, "init:get_argument(mode)") == '{ok,[["embedded"]]}'
    # The cookie comes from the private HOME, never from the command line.
    cmdline = Path(f"/proc/{counter_node.pid}/cmdline").read_bytes()
    assert counter_node.cookie.encode() not in cmdline
    assert erl_eval(counter_node, "atom_to_list(erlang:get_cookie())") == f'"{counter_node.cookie}"'
    cookie_file = counter_node.home / ".erlang.cookie"
    assert cookie_file.stat().st_mode & 0o777 == 0o400


def test_which_releases_is_the_installed_one(counter_node: NodeProc) -> None:
    out = erl_rpc(counter_node, "release_handler", "which_releases", "[]")
    assert re.fullmatch(r'\[\{"counter","0\.0\.1",\[[^]]*\],permanent\}\]', out), out


def test_counter_api(counter_node: NodeProc) -> None:
    assert erl_rpc(counter_node, "counter", "get") == "0"
    assert erl_rpc(counter_node, "counter", "incr") == "1"
    assert erl_rpc(counter_node, "counter", "incr") == "2"
    assert erl_eval(counter_node, "counter:get()") == "2"
    assert erl_eval(counter_node, "sys:get_state(counter)") == "2"


def test_probe_is_a_hidden_node(counter_node: NodeProc) -> None:
    assert erl_eval(counter_node, "erlang:nodes()") == "[]"
    assert re.fullmatch(r"\[probe_[0-9a-f]+@localhost\]", erl_eval(counter_node, "erlang:nodes(hidden)"))


def test_probe_reports_badrpc(counter_node: NodeProc) -> None:
    with pytest.raises(ErlRpcError) as info:
        erl_rpc(counter_node, "no_such_module", "f", "[]")
    assert "undef" in str(info.value)
    out = erl_rpc(counter_node, "no_such_module", "f", "[]", check=False)
    assert out.startswith("{badrpc,{'EXIT',{undef,")


def test_full_hot_upgrade_and_downgrade(
    counter_node: NodeProc, release_build: ReleaseBuild, epmd: EpmdProc
) -> None:
    node = counter_node
    dist_port = epmd.names()["counter"]
    for _ in range(3):
        erl_rpc(node, "counter", "incr")
    assert erl_eval(node, "sys:get_state(counter)") == "3"

    # "Upload" the tarball where release_handler looks for it.
    unpack_name = release_build.unpack_name("0.0.2")
    shutil.copy2(release_build.tarball("0.0.2"), node.root / "releases" / f"{unpack_name}.tar.gz")
    assert erl_rpc(node, "release_handler", "unpack_release", f'["{unpack_name}"]') == '{ok,"0.0.2"}'
    assert (node.root / "lib" / "counter-0.0.2" / "ebin" / "counter.beam").is_file()
    assert erl_rpc(node, "release_handler", "install_release", '["0.0.2"]') == '{ok,"0.0.1",[]}'
    assert erl_eval(node, "sys:get_state(counter)") == '#{count => 3,upgraded_from => "0.0.1"}'
    assert erl_rpc(node, "counter", "incr") == "4"
    assert erl_eval(node, "application:get_env(counter, greeting)") == '{ok,"hello from 0.0.2"}'
    assert erl_rpc(node, "release_handler", "make_permanent", '["0.0.2"]') == "ok"
    releases = erl_rpc(node, "release_handler", "which_releases")
    assert re.fullmatch(
        r'\[\{"counter","0\.0\.2",\[[^]]*\],permanent\},\{"counter","0\.0\.1",\[[^]]*\],old\}\]',
        releases,
    ), releases
    erts = release_build.erts_vsn
    assert (node.root / "releases" / "start_erl.data").read_text().split() == [erts, "0.0.2"]

    # Back down through the 0.0.2 relup's down instructions.
    assert erl_rpc(node, "release_handler", "install_release", '["0.0.1"]') == '{ok,"0.0.1",[]}'
    assert erl_eval(node, "sys:get_state(counter)") == "4"
    assert erl_eval(node, "code:which(counter)") == f'"{node.root}/lib/counter-0.0.1/ebin/counter.beam"'
    assert erl_eval(node, "application:get_env(counter, greeting)") == '{ok,"hello"}'

    # Same emulator all along: same OS pid, same distribution listener.
    assert node.running()
    assert erl_eval(node, "os:getpid()") == f'"{node.pid}"'
    assert epmd.names()["counter"] == dist_port


def test_restart_boots_the_permanent_release(
    counter_node: NodeProc, release_build: ReleaseBuild, node_factory: NodeFactory
) -> None:
    node = counter_node
    name = release_build.unpack_name("0.0.2")
    shutil.copy2(release_build.tarball("0.0.2"), node.root / "releases" / f"{name}.tar.gz")
    erl_rpc(node, "release_handler", "unpack_release", f'["{name}"]')
    erl_rpc(node, "release_handler", "install_release", '["0.0.2"]')
    erl_rpc(node, "release_handler", "make_permanent", '["0.0.2"]')
    old_pid = node.pid
    node.stop()
    assert not pid_exists(old_pid)

    # bin/counter follows start_erl.data, so 0.0.2 boots from its own
    # releases/0.0.2/{start.boot,sys.config,vm.args}.
    again = node_factory("counter", target=node.root)
    assert again.pid != old_pid
    assert erl_eval(again, "sys:get_state(counter)") == "#{count => 0,upgraded_from => none}"
    assert re.match(r'\[\{"counter","0\.0\.2",\[[^]]*\],permanent\}', erl_rpc(again, "release_handler", "which_releases"))


def test_node_factory_custom_names_and_args(
    counter_node: NodeProc, node_factory: NodeFactory, epmd: EpmdProc
) -> None:
    other = node_factory("other", extra_args=("-kernel", "net_ticktime", "2"))
    assert set(epmd.names()) == {"counter", "other"}
    assert other.root != counter_node.root
    assert other.cookie == counter_node.cookie
    assert erl_eval(other, "net_kernel:get_net_ticktime()") == "2"
    assert erl_eval(counter_node, "net_kernel:get_net_ticktime()") == "60"
    assert erl_eval(other, "net_adm:ping('counter@localhost')") == "pong"


def test_processes_are_gone_after_stop(release_build: ReleaseBuild, tmp_path: Path) -> None:
    target = make_target_copy(release_build, tmp_path / "target")
    with start_epmd(log_dir=tmp_path) as ep:
        with start_node(target, "gone@localhost", epmd_port=ep.port) as node:
            assert pid_exists(node.pid) and pid_exists(ep.pid)
            assert erl_rpc(node, "counter", "incr") == "1"
        assert node.final_log is not None and not node.workdir.exists()
        assert "gone" not in ep.names()
        node.stop()  # idempotent
    ep.stop()
    for pid in (node.pid, ep.pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(OSError):
        epmd_names(ep.port, timeout=0.5)


def test_epmd_guards() -> None:
    with pytest.raises(ValueError):
        start_epmd(4369)
    port = free_port()
    with socket.socket() as sock:  # a port held by someone else
        sock.bind(("127.0.0.1", port))
        sock.listen()
        with pytest.raises(OtpProcessError, match=f"could not start epmd on port.*{port}"):
            start_epmd(port, timeout=3.0)


def test_failed_boot_is_reported_and_cleaned_up(
    release_build: ReleaseBuild, epmd: EpmdProc, tmp_path: Path
) -> None:
    target = make_target_copy(release_build, tmp_path / "target")
    (target / "releases" / "0.0.1" / "start.boot").unlink()
    with pytest.raises(OtpProcessError, match=r"(?s)exited with 1.*missing .*start\.boot"):
        start_node(target, "broken", epmd_port=epmd.port, workdir=tmp_path / "broken", timeout=20)
    assert epmd.names() == {}
