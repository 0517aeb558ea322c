"""systemd/relctl-agent.service: `systemd-analyze verify` has nothing to say about it, its
exposure score (`systemd-analyze security --offline=true`) stays "OK", and it agrees with the
agent's code (exit code, paths, grace periods).

verify needs no running systemd (it loads the units in a manager of its own, in test mode), but
it checks that ExecStart's program exists and that the default dependencies (sysinit.target,
...) load. Both are looked up under ``--root``: a temporary tree holding the unit, a stand-in
/opt/relctl/bin/relctl-agent and a copy of this host's own units. The unit text is unchanged.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.config import DEFAULT_CONFIG, DEFAULT_SOCKET, DEFAULT_STATE_DIR, AgentConfig
from agent.daemon.main import EXIT_CONFIG
from tests.tools.needs import needs_tool

ROOT = Path(__file__).resolve().parent.parent
UNIT_NAME = "relctl-agent.service"
UNIT = ROOT / "systemd" / UNIT_NAME
DROP_IN = ROOT / "systemd" / f"{UNIT_NAME}.d" / "myapp.conf"
NODE_UNIT = ROOT / "systemd" / "examples" / "myapp.service"
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 3.0  # our bar, stricter than what systemd-analyze still calls "OK"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = needs_tool("systemd-analyze", hint="Debian package systemd; .ci/setup installs it")


def make_root(tmp_path: Path, *, unit_text: str | None = None, drop_in: bool = False) -> Path:
    root = tmp_path / "root"
    # The default dependencies that verify loads, from the host's systemd itself.
    shutil.copytree(HOST_UNITS, root / HOST_UNITS.relative_to("/"), symlinks=True)
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    (units / UNIT_NAME).write_text(unit_text if unit_text is not None else UNIT.read_text())
    if drop_in:
        (units / f"{UNIT_NAME}.d").mkdir()
        shutil.copy(DROP_IN, units / f"{UNIT_NAME}.d" / DROP_IN.name)
        # The node's unit the drop-in orders the agent after, with a stand-in program.
        shutil.copy(NODE_UNIT, units / NODE_UNIT.name)
        node_program = root / "opt/myapp/bin/myapp"
        node_program.parent.mkdir(parents=True)
        node_program.write_text("#!/bin/sh\nexit 0\n")
        node_program.chmod(0o755)
        shell = root / "bin/sh"  # the node unit's ExecStartPost= (waits for epmd)
        shell.parent.mkdir(exist_ok=True)
        shell.write_text("#!/bin/sh\nexit 0\n")
        shell.chmod(0o755)
    program = root / "opt/relctl/bin/relctl-agent"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    kill = root / "bin/kill"  # ExecReload's program: verify checks it is there
    kill.parent.mkdir(exist_ok=True)
    kill.write_text("#!/bin/sh\nexit 0\n")
    kill.chmod(0o755)
    return root


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60)


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    return analyze("verify", f"--root={root}", "--man=no", "--generators=no", UNIT_NAME)


@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+drop-in"])
def test_verify_has_nothing_to_say(tmp_path: Path, drop_in: bool) -> None:
    assert HOST_UNITS.is_dir(), f"{HOST_UNITS} is missing: is the systemd package installed?"
    result = verify(make_root(tmp_path, drop_in=drop_in))
    # verify exits 0 on unknown keys and bad values too: any line it prints is a finding.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_the_example_node_unit_verifies_and_keeps_unpacked_files_group_writable(
        tmp_path: Path) -> None:
    root = make_root(tmp_path, drop_in=True)
    result = analyze("verify", f"--root={root}", "--man=no", "--generators=no",
                     NODE_UNIT.name)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    text = NODE_UNIT.read_text()
    assert "\nUMask=0002\n" in text and "\nUser=myapp\n" in text
    drop_in = DROP_IN.read_text()
    assert "\nAfter=myapp.service\n" in drop_in and "\nWants=myapp.service\n" in drop_in


def test_verify_in_this_tree_does_report_mistakes(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter\nFooBar=1")
    result = verify(make_root(tmp_path, unit_text=broken))
    assert "Unknown key 'FooBar' in section [Service]" in result.stderr
    assert "Failed to parse protect system value, ignoring: stricter" in result.stderr


def exposure(output: str) -> float:
    match = re.search(rf"Overall exposure level for {re.escape(UNIT_NAME)}: (\d+\.\d) ", output)
    assert match, f"no overall exposure level in:\n{output}"
    return float(match.group(1))


@pytest.mark.parametrize("drop_in", [False, True], ids=["unit", "unit+drop-in"])
def test_security_exposure_is_ok(tmp_path: Path, drop_in: bool) -> None:
    root = make_root(tmp_path, drop_in=drop_in)
    # --threshold is in tenths: the command itself fails above MAX_EXPOSURE.
    result = analyze("security", "--offline=true", f"--root={root}",
                     f"--threshold={round(MAX_EXPOSURE * 10)}", "--no-pager", UNIT_NAME)
    score = exposure(result.stdout)
    assert score <= MAX_EXPOSURE and result.returncode == 0, result.stdout + result.stderr


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def default_of(name: str) -> float:
    value = next(f.default for f in dataclasses.fields(AgentConfig) if f.name == name)
    assert isinstance(value, int | float), name
    return float(value)


def test_the_unit_agrees_with_the_agent() -> None:
    unit = directives(UNIT.read_text())
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["ExecStart"] == [f"/opt/relctl/bin/relctl-agent --config {DEFAULT_CONFIG}"]
    assert unit["RestartPreventExitStatus"] == [str(EXIT_CONFIG)]
    # systemctl reload sends what the agent takes as "re-read the cookies" (daemon/app.py).
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert "signal.SIGHUP, reload_cookies" in (ROOT / "agent/daemon/app.py").read_text()
    assert Path("/var/lib", *unit["StateDirectory"]) == Path(DEFAULT_STATE_DIR)
    assert Path("/run", *unit["RuntimeDirectory"]) == Path(DEFAULT_SOCKET).parent
    # systemd must not kill a shutdown that is still inside the agent's own grace periods.
    grace = default_of("shutdown_grace") + default_of("operations_grace")
    [stop] = unit["TimeoutStopSec"]
    assert stop.endswith("s") and float(stop[:-1]) > grace
    assert unit["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert "WatchdogSec" in unit and "PrivateUsers" not in unit  # why not: see the unit
