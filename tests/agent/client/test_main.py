"""The relctl client on its own: start-up imports, command line, errors without an agent."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from agent.client.main import COMMANDS, load_command, main
from agent.client.status import ExitCode
from tests.tools.otp_procs import free_port

ROOT = Path(__file__).resolve().parents[3]


def test_importing_the_client_imports_no_other_agent_package_nor_the_bridge() -> None:
    code = ("import sys, agent.client.main; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('bridge', 'prometheus_client') or (m.startswith('agent.') and "
            "m.split('.')[1] not in ('client', 'relfile'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    assert out.strip() == "[]"


def test_help_documents_the_exit_codes() -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.client", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for code in ExitCode:
        assert f"  {code.value}  " in proc.stdout


def test_usage_errors_exit_2_without_traceback() -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.client", "versions", "-o", "yaml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == ExitCode.USAGE == 2
    assert "Invalid value for '-o' / '--output'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_command_exits_3_when_the_agent_is_unreachable(
        capsys: pytest.CaptureFixture[str]) -> None:
    closed = f"127.0.0.1:{free_port()}"
    for command in ("versions", "nodes", "ping"):
        assert main(["--agent", closed, command, "--timeout", "5"]) == ExitCode.UNAVAILABLE
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"relctl: agent {closed} is not reachable")


def test_an_unreachable_agent_in_json_mode_prints_valid_json() -> None:
    closed = f"127.0.0.1:{free_port()}"
    proc = subprocess.run([sys.executable, "-m", "agent.client", "--agent", closed, "versions",
                           "-o", "json"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert json.loads(proc.stdout) == {"nodes": []}
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"relctl: agent {closed} is not reachable (")
    assert "is relctl-agent running there?" in line


# --- start-up: each command loads what it needs only ---------------------------------------------

def _modules_after(*args: str) -> list[str]:
    """The modules a fresh `relctl ARGS` process has loaded when main() returns."""
    code = ("import sys; from agent.client.main import main; main(sys.argv[1:]); "
            "print(sorted(sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    names: list[str] = ast.literal_eval(proc.stdout.splitlines()[-1])
    return names


def test_versions_loads_its_command_module_only() -> None:
    loaded = _modules_after("--agent", f"127.0.0.1:{free_port()}", "versions", "--timeout", "2")
    ours = {m for m in loaded if m.startswith("agent")}
    assert ours == {"agent", "agent.client", "agent.client.main", "agent.client.fastpath",
                    "agent.client.common", "agent.client.status", "agent.client.channel",
                    "agent.client.output", "agent.client.views"}
    # Nor what only uploads, rollouts, relups or -o json need; nor click and dataclasses,
    # which the plain command lines run without (issue 24).
    assert not {"tarfile", "hashlib", "json", "google.protobuf.json_format", "click",
                "dataclasses"} & set(loaded)


@pytest.mark.parametrize("args", [
    ["upgrade", "0.0.2", "--no-permanent", "--timeout", "2"],
    ["downgrade", "0.0.1", "--dry-run", "-o", "json"],
])
def test_an_upgrade_and_a_downgrade_start_without_click_or_dataclasses(args: list[str]) -> None:
    loaded = set(_modules_after("--agent", f"127.0.0.1:{free_port()}", *args))
    assert "agent.client.operate" in loaded
    assert not {"click", "dataclasses", "agent.client.fleet", "agent.client.commands"} & loaded


def test_a_command_line_the_fast_path_leaves_to_click_is_read_by_click() -> None:
    loaded = set(_modules_after("--agent", f"127.0.0.1:{free_port()}", "nodes", "--timeout",
                                "2"))
    assert {"click", "agent.client.cli", "agent.client.commands.nodes"} <= loaded


def test_help_lists_every_command_without_loading_one() -> None:
    loaded = _modules_after("--help")
    assert not [m for m in loaded if m.startswith("agent.client.commands.")]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_help_table_says_what_the_command_itself_says(name: str) -> None:
    command = load_command(name)
    assert command.name == name
    assert COMMANDS[name].short_help == command.get_short_help_str(limit=10_000)


def test_every_command_of_commands_is_in_the_table() -> None:
    defined = set()
    for path in sorted((ROOT / "agent" / "client" / "commands").glob("[!_]*.py")):
        module = importlib.import_module(f"agent.client.commands.{path.stem}")
        defined |= {(path.stem, attr) for attr, value in vars(module).items()
                    if isinstance(value, click.Command)
                    and getattr(value.callback, "__module__", "") == module.__name__}
    assert defined == {(e.module, e.attr) for e in COMMANDS.values()}


def test_a_bug_is_its_own_exit_code_not_1(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # A fault no real part produces on demand: the command's code raising what it should not.
    import agent.client.views as views

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("unexpected")

    monkeypatch.setattr(views, "ask_agents", broken)
    for fast_path in (True, False):  # the same on either reader of the command line
        assert main(["--agent", "unix:/nonexistent", "versions"],
                    fast_path=fast_path) == ExitCode.INTERNAL == 70
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("relctl: internal error: ValueError('unexpected'); an operation "
                               "already started on an agent may go on there")


@pytest.mark.parametrize("command", ["operations", "audit"])
def test_a_list_commands_limit_defaults_to_the_agents_and_says_so(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--limit's default is the contract's DEFAULT_LIST_LIMIT (what an agent answers for 0),
    not a number of the client's own, and its help shows it with the most an agent gives."""
    from relctl.v1 import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT

    limit = next(p for p in load_command(command).params if p.name == "limit")
    assert limit.default == DEFAULT_LIST_LIMIT == 50
    assert main([command, "--help"]) == ExitCode.OK
    shown = " ".join(capsys.readouterr().out.split())
    assert f"[default: {DEFAULT_LIST_LIMIT}; 1<=x<={MAX_LIST_LIMIT}]" in shown
