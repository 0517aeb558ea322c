"""The click-free reader of the common command lines (agent/client/fastpath.py) against click:
its option tables are the click commands' options, it accepts only values click accepts and
reads them the same, and on any command line it takes, the command runs with the same
settings and arguments as when click reads it (generated command lines, hypothesis)."""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import agent.client.operate as operate
import agent.client.views as views
from agent.client import fastpath
from agent.client.cli import make_group
from agent.client.common import Settings
from agent.client.main import COMMANDS, load_command, main
from agent.client.status import ExitCode

def _click_options(command: click.Command) -> dict[str, click.Option]:
    return {name: p for p in command.params if isinstance(p, click.Option)
            for name in (*p.opts, *p.secondary_opts)}


def test_the_group_tables_are_the_click_groups_options() -> None:
    group = _click_options(make_group(COMMANDS, load_command))
    assert set(group) - {"--version", "-h", "--help"} == set(fastpath.GROUP) | set(
        fastpath.SHARED)
    for name, opt in {**fastpath.GROUP, **fastpath.SHARED}.items():
        param = group[name]
        assert (opt.read is None) == param.is_flag, name
        assert opt.multiple == param.multiple, name
    assert {p.name: p.envvar for p in group.values() if p.envvar} == {
        dest: var for dest, var in fastpath.GROUP_ENV.items()}


@pytest.mark.parametrize("name", sorted(fastpath.COMMANDS))
def test_a_commands_table_is_its_click_commands_options(name: str) -> None:
    command = load_command(name)
    table = fastpath.COMMANDS[name]
    options = _click_options(command)
    assert set(options) - {"-h", "--help"} == set(table.options) | set(fastpath.SHARED) | set(
        table.left_to_click)
    left = {options[flag].name for flag in table.left_to_click}
    shared_dests = {o.dest for o in fastpath.SHARED.values()} | left
    for flag, opt in table.options.items():
        param = options[flag]
        assert (opt.read is None, opt.multiple, opt.dest) == (
            param.is_flag, param.multiple, param.name), flag
    # What click passes for the options not given: the reader's defaults.
    given = ["0.0.2"] * len(table.arguments)
    with command.make_context(name, given, obj=Settings()) as ctx:
        assert {k: v for k, v in ctx.params.items()
                if k not in table.arguments and k not in left} == dict(table.defaults)
    assert tuple(p.name for p in command.params if isinstance(p, click.Argument)) == (
        table.arguments)
    # Both readers run the same function, whose parameters are the click command's.
    function = getattr({"views": views, "operate": operate}[table.module], table.attr)
    assert set(list(inspect.signature(function).parameters)[1:]) == {
        p.name for p in command.params if p.name not in shared_dests and p.name != "help"}


VALUES = ["0", "1", "2", "0.05", "0.1", "1.5", ".5", "2.", "65535", "65536", "1e3", " 1",
          "1_0", "-1", "+1", "nan", "inf", "x", "", "text", "json", "yaml", "JSON", "١"]


def _all_options() -> Iterator[tuple[str, fastpath.Opt, click.Option]]:
    group = _click_options(make_group(COMMANDS, load_command))
    for name, opt in {**fastpath.GROUP, **fastpath.SHARED}.items():
        yield name, opt, group[name]
    for command, table in fastpath.COMMANDS.items():
        options = _click_options(load_command(command))
        for name, opt in table.options.items():
            yield f"{command} {name}", opt, options[name]


def test_every_value_the_reader_takes_click_takes_and_reads_the_same(tmp_path: Path) -> None:
    readable = tmp_path / "t.tar.gz"
    readable.write_bytes(b"x")
    values = [*VALUES, str(readable), str(tmp_path), str(tmp_path / "missing")]
    checked = 0
    for name, opt, param in _all_options():
        if opt.read is None:
            continue
        for value in values:
            try:
                ours = opt.read(value)
            except ValueError:
                continue  # left to click
            theirs = param.type.convert(value, param, None)
            assert (ours, type(ours)) == (theirs, type(theirs)), (name, value)
            checked += 1
    assert checked > 50  # the reader does take values


# --- whole command lines, both readers ----------------------------------------------------------

Call = tuple[str, dict[str, Any], dict[str, Any]]


def _recorder(calls: list[Call], name: str, real: Callable[..., Any]) -> Callable[..., ExitCode]:
    signature = inspect.signature(real)

    def record(*args: Any, **kwargs: Any) -> ExitCode:
        bound = signature.bind(*args, **kwargs).arguments
        settings_ = bound.pop("settings")
        calls.append((name, dict(vars(settings_)), dict(bound)))
        return ExitCode.OK
    return record


def _run_both(args: list[str], env: dict[str, str]) -> tuple[Any, Any]:
    """(exit code, stderr, calls) of `relctl ARGS` read by click, and by the fast path."""
    results = []
    for fast in (False, True):
        calls: list[Call] = []
        with pytest.MonkeyPatch.context() as mp:
            for var in ("RELCTL_AGENT", *fastpath.GROUP_ENV.values()):
                mp.delenv(var, raising=False)
            for var, value in env.items():
                mp.setenv(var, value)
            mp.setattr(views, "versions", _recorder(calls, "versions", views.versions))
            mp.setattr(operate, "upgrade", _recorder(calls, "upgrade", operate.upgrade))
            mp.setattr(operate, "downgrade", _recorder(calls, "downgrade", operate.downgrade))
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                code = main(args, fast_path=fast)
        # With --debug the traceback shows each reader's own frames: the lines relctl says are
        # what must agree.
        said = [line for line in err.getvalue().splitlines() if line.startswith("relctl: ")]
        results.append((code, said, calls))
    return results[0], results[1]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What the <placeholders> of the generated command lines stand for."""
    files = tmp_path_factory.mktemp("fastpath")
    (files / "rel.tar.gz").write_bytes(b"not really a tarball")
    (files / "agents.yml").write_text("- targets: ['h1:9568', 'h2:9568']\n"
                                      "  labels: {env: prod, relctl_agent: '7079'}\n")
    return {"<file>": str(files / "rel.tar.gz"), "<dir>": str(files),
            "<missing>": str(files / "missing.tar.gz"), "<inventory>": str(files / "agents.yml")}


def _fill(words: list[str], paths: dict[str, str]) -> list[str]:
    out = []
    for word in words:
        for placeholder, path in paths.items():
            word = word.replace(placeholder, path)
        out.append(word)
    return out


# Pieces of command lines: an option with its value, mostly ones both readers take, some that
# click alone reads (or refuses), so that both kinds come up.
SHARED_PIECES = [["--debug"], ["-o", "json"], ["-o", "text"], ["--output=json"], ["-o", "yaml"],
                 ["-ojson"], ["--timeout", "5"], ["--timeout", "0.05"], ["--timeout", "1e3"],
                 ["--host-timeout", "2"], ["--host-timeout", "1"], ["--node", "a@h"],
                 ["--node", "--debug"], ["--debug=1"]]
GROUP_PIECES = [*SHARED_PIECES, ["--agent", "h1:7079"], ["--agent", "unix:/tmp/a.sock"],
                ["--agent=h2:7079"], ["--agent", "h1:7079"], ["--token-file", "/tmp/token"],
                ["--token-dir", "/tmp/tokens"], ["--ca", "ca.pem"], ["--cert", "c.pem"],
                ["--key", "k.pem"], ["--agents-file", "<inventory>"],
                ["--selector", "env=prod"], ["--agent-port", "7079"], ["--agent-port", "70000"],
                ["-h"], ["--version"], ["--"], ["--nosuch"]]
COMMAND_PIECES = [*SHARED_PIECES, ["--tarball", "<file>"], ["--tarball=<file>"],
                  ["--tarball", "<dir>"], ["--tarball", "<missing>"], ["--batch", "2"],
                  ["--batch", "0"], ["--max-failures", "1"], ["--stage-parallel", "3"],
                  ["--no-prestage"], ["--dry-run"], ["--no-permanent"], ["--replace"],
                  ["--allow-config-reset"], ["--allow-purge-kill"], ["--health-soak", "0"],
                  ["--health-timeout", "0"],
                  ["--install-timeout", "0.5"], ["--install-timeout", "1"], ["--agent", "x"],
                  ["--help"], ["--"], ["-x"], ["-"], ["0.0.3"]]
ENVS = [{}, {"RELCTL_AGENT": "h3:7079,h4:7079"}, {"RELCTL_TOKEN_FILE": "/tmp/env-token"},
        {"RELCTL_CA": "", "RELCTL_KEY": "k.pem"}, {"RELCTL_AGENTS_FILE": "<inventory>"}]


@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(before=st.lists(st.sampled_from(GROUP_PIECES), max_size=4),
       command=st.sampled_from(["versions", "upgrade", "downgrade", "nodes", "upgradee"]),
       version=st.sampled_from([[], ["0.0.2"]]),
       after=st.lists(st.sampled_from(COMMAND_PIECES), max_size=5),
       order=st.integers(min_value=0, max_value=5),
       env=st.sampled_from(ENVS))
@example(before=[["--agent", "h1:7079"], ["-o", "json"]], command="upgrade", version=["0.0.2"],
         after=[["--tarball", "<file>"], ["--batch", "2"], ["--timeout", "3"]], order=1, env={})
@example(before=[["--agents-file", "<inventory>"], ["--selector", "env=prod"]],
         command="downgrade", version=["0.0.1"], after=[["--dry-run"], ["--node", "b@h"]],
         order=0, env={})
def test_whatever_the_fast_path_takes_runs_as_click_would_run_it(
        paths: dict[str, str], before: list[list[str]], command: str, version: list[str],
        after: list[list[str]], order: int, env: dict[str, str]) -> None:
    # VERSION among the command's options, where ``order`` puts it (click takes it anywhere).
    pieces = [*after[:order], version, *after[order:]]
    args = _fill([*(w for piece in before for w in piece), command,
                  *(w for piece in pieces for w in piece)], paths)
    env = dict(zip(env, _fill(list(env.values()), paths)))
    with pytest.MonkeyPatch.context() as mp:
        for var in ("RELCTL_AGENT", *fastpath.GROUP_ENV.values()):
            mp.delenv(var, raising=False)
        for var, value in env.items():
            mp.setenv(var, value)
        reading = fastpath.read(args)
    event("the fast path reads it" if reading is not None else "left to click")
    if reading is None:
        return  # click reads it: nothing to compare
    by_click, by_fast_path = _run_both(args, env)
    assert by_fast_path == by_click, args


@pytest.mark.parametrize("args", [
    ["versions"],
    ["--agent", "unix:/tmp/a.sock", "versions", "-o", "json", "--timeout", "2.5"],
    ["-o", "json", "--agent=h1:7079", "--agent", "h2:7079", "--debug", "upgrade", "0.0.2",
     "--tarball", "<file>", "--batch", "2", "--max-failures", "1", "--no-prestage"],
    ["downgrade", "0.0.1", "--no-permanent", "--node", "a@h", "--allow-purge-kill"],
    ["--agents-file", "<inventory>", "--agent-port", "7080", "upgrade", "0.0.2"],
])
def test_the_common_command_lines_take_the_fast_path_and_run_as_with_click(
        paths: dict[str, str], args: list[str]) -> None:
    args = _fill(args, paths)
    assert fastpath.read(args, environ={}) is not None
    by_click, by_fast_path = _run_both(args, {})
    assert by_fast_path == by_click
    assert by_fast_path[2], "the command ran"


@pytest.mark.parametrize("args", [
    ["--help"], ["versions", "--help"], ["-h", "versions"], ["--version"], ["nodes"],
    ["versions", "extra"], ["upgrade"], ["upgrade", "0.0.2", "--batch", "0"],
    ["upgrade", "0.0.2", "--tarball", "<missing>"], ["upgrade", "0.0.2", "--tarball",
                                                          "<dir>"],
    ["upgrade", "0.0.2", "--health-timeout", "5"],  # the old name: click warns
    ["versions", "-ojson"], ["versions", "--timeout", "1e3"], ["--", "versions"],
    ["downgrade", "--", "-1"], ["versions", "--dry-run"], ["--debug=1", "versions"],
])
def test_anything_else_is_left_to_click(paths: dict[str, str], args: list[str]) -> None:
    assert fastpath.read(_fill(args, paths), environ={}) is None
