"""How `relctl` words a finished operation (agent/client/output.py), for the outcomes a script
or a person acts on."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from agent.client.common import Settings
from agent.client.output import (
    Lines,
    Progress,
    operation_json,
    print_operation,
    step_line,
    step_row,
    summary,
)
from agent.client.status import ExitCode, exit_code_for_outcome
from relctl.v1 import agent_pb2 as pb


def _up_to_date() -> pb.Operation:
    return pb.Operation(
        id=2, node="counter@localhost", kind=pb.OPERATION_KIND_UPGRADE, from_version="0.0.2",
        to_version="0.0.2", outcome=pb.OUTCOME_UP_TO_DATE,
        releases_after=[pb.Release(name="counter", version="0.0.2",
                                   status=pb.RELEASE_STATUS_PERMANENT)])


def test_an_up_to_date_upgrade_reads_as_such_and_exits_0() -> None:
    op = _up_to_date()
    lines = summary(op).splitlines()
    assert lines[0] == "upgrade 0.0.2 on counter@localhost: up to date (operation 2)"
    assert lines[1:] == ["RELEASE  VERSION  STATUS", "counter  0.0.2    permanent"]
    assert exit_code_for_outcome(operation_json(op)["outcome"]) == ExitCode.OK


def test_an_up_to_date_upgrade_in_json(capsys: pytest.CaptureFixture[str]) -> None:
    print_operation(Settings(output="json"), _up_to_date())
    data = json.loads(capsys.readouterr().out)["operation"]
    assert (data["outcome"], data["kind"], data["error"]) == ("up_to_date", "upgrade", "")


@pytest.mark.parametrize("name", [k.removeprefix("OUTCOME_").lower() for k in pb.Outcome.keys()
                                  if k not in ("OUTCOME_UNSPECIFIED", "OUTCOME_RUNNING")])
def test_every_final_outcome_has_its_own_words(name: str) -> None:
    op = pb.Operation(id=1, node="n@h", kind=pb.OPERATION_KIND_UPGRADE, to_version="1",
                      outcome=pb.Outcome.Value(f"OUTCOME_{name.upper()}"))
    # The raw name would mean the client forgot the outcome.
    assert not summary(op).splitlines()[0].endswith(f": {name} (operation 1)")


# --- one output path (issue 25, item 5) -----------------------------------------------------------

CLIENT = Path(__file__).resolve().parents[3] / "agent" / "client"


def _writers(tree: ast.AST) -> list[str]:
    """What in a module writes output or asks which output was chosen."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "print":
                found.append(f"line {node.lineno}: print()")
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and (
                    (func.value.id, func.attr) in {("click", "echo"), ("click", "secho"),
                                                   ("json", "dumps"), ("json", "dump")}):
                found.append(f"line {node.lineno}: {func.value.id}.{func.attr}()")
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            if node.attr == "output":
                found.append(f"line {node.lineno}: .output (which output was chosen)")
            elif isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr in (
                    "stdout", "stderr"):
                found.append(f"line {node.lineno}: sys.{node.attr}")
    return found


def test_only_output_py_prints_or_asks_which_output_was_chosen() -> None:
    problems = {}
    for path in sorted(CLIENT.rglob("*.py")):
        if path.name == "output.py":
            continue
        found = _writers(ast.parse(path.read_text(), str(path)))
        if found:
            problems[str(path.relative_to(CLIENT))] = found
    assert problems == {}
    # The check finds what it looks for.
    assert len(_writers(ast.parse("print(1)\nclick.echo(x)\nif settings.output == 'json': "
                                  "json.dumps(d)\nsys.stderr.write('')\n"))) == 5


def test_the_step_row_format_is_written_once() -> None:
    width = "<22}"  # the step name's column
    users = [str(p.relative_to(CLIENT)) for p in sorted(CLIENT.rglob("*.py"))
             if width in p.read_text()]
    assert users == ["output.py"]


def test_the_client_rows_and_the_agent_steps_line_up() -> None:
    step = pb.Step(name="install", state=pb.STEP_STATE_SUCCEEDED, detail="0.0.2")
    step.duration.FromMilliseconds(412)
    assert step_line(step) == "  install                ok        412 ms  0.0.2"
    assert step_row("upload", "ok", "counter 0.0.2", 88.4) == (
        "  upload                 ok         88 ms  counter 0.0.2")
    assert step_row("upload", "skip", "not sent") == "  upload                 skip              not sent"
    long = pb.Step(name="verify", state=pb.STEP_STATE_FAILED, detail="")
    long.duration.FromSeconds(12)
    assert step_line(long) == "  verify                 FAILED    12.0 s"


def test_progress_prints_rows_in_text_and_only_notes_with_json(
        capsys: pytest.CaptureFixture[str]) -> None:
    running = pb.Step(name="install", state=pb.STEP_STATE_RUNNING)
    done = pb.Step(name="install", state=pb.STEP_STATE_SUCCEEDED)
    text = Progress(Settings())
    text.step(running)  # no row until it ended
    text.step(done)
    text.note("lost the agent")
    assert capsys.readouterr().out.splitlines() == ["  install                ok", "lost the agent"]
    quiet = Progress(Settings(output="json"))
    quiet.step(done)
    quiet.row("upload", "ok", "x")
    quiet.note("lost the agent")
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "lost the agent\n")


def test_a_rollouts_lines_carry_the_agent_and_stop_once_muted(
        capsys: pytest.CaptureFixture[str]) -> None:
    lines = Lines(Settings(), ["h1:7079", "web-long:7079"])
    lines.for_agent("h1:7079").row("upload", "ok", "x", 3)
    lines.line("batch 1/1: h1:7079")
    lines.mute()
    lines.for_agent("h1:7079").line("  => succeeded")
    assert capsys.readouterr().out.splitlines() == [
        "[h1:7079]        upload                 ok          3 ms  x", "batch 1/1: h1:7079"]
    assert Lines(Settings(output="json"), ["a"]).for_agent("a").text is False
