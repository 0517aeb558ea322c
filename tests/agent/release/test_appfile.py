"""appfile.py: the modules a .app lists, read in the agent as file:consult and proplists read
them on the node: against every .app of the OTP the tests run, and on the syntax it must read
or decline (None: then the node is asked)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.release.appfile import AppFiles, modules_of
from tests.agent.release.test_beams import otp_lib
from tests.tools import otp_select


@pytest.mark.otp
def test_every_app_file_of_the_otp_lists_what_the_node_reads() -> None:
    expr = ('[io:format("~s ~w~n", [F, proplists:get_value(modules, P, [])]) || F <- '
            'filelib:wildcard("lib/*/ebin/*.app", code:root_dir()), {ok, [{application, _, P}]}'
            ' <- [file:consult(filename:join(code:root_dir(), F))]], halt().')
    out = subprocess.run([otp_select.erl(), "-noshell", "-noinput", "-eval", expr],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    root = otp_lib().parent
    node = {name: mods.strip("[]").split(",") if mods != "[]" else []
            for name, mods in (line.split(" ", 1) for line in out.splitlines())}
    assert len(node) > 8  # every application of it, not a handful
    ours = {name: modules_of((root / name).read_text(encoding="utf-8")) for name in node}
    assert {n: [m.strip("'") for m in ms] for n, ms in node.items()} == ours


@pytest.mark.parametrize(("text", "modules"), [
    ("{application, a, [{modules, [a, 'Elixir.A', 'it''s']}]}.", None),  # '' is no escape
    ("{application, a, [{modules, [a, 'Elixir.A.B', 'q\\'x']}]}.", ["a", "Elixir.A.B", "q'x"]),
    ("% {modules, [fake]}\n{application, a, [{description, \"{modules, [fake]}\"},\n"
     " {env, [{m, #{1 => <<\"x\">>, k := $}}}, {f, 1.5e3}, {h, 16#ff}, {n, -3}]},\n"
     " {modules, [a]}, {modules, [later]}]}.\n", ["a"]),
    ("{application, a, [{vsn, \"1\"}]}.", []),  # proplists:get_value(modules, P, [])
    ("{application, a, [modules, {modules, [a]}]}.", None),  # {modules, true} on the node
    ("{application, a, [{modules, [a | b]}]}.", None),
    ("{application, a, [{modules, [\"a\"]}]}.", None),
    ("{application, a, [{modules, [a]}]}. {application, b, []}.", None),
    ("{application, a, [{modules, [a]}]}", None),  # no dot
    ("{application, a, [{description, \"a\" \"b\"}, {modules, [a]}]}.", None),
    ("{application, A, [{modules, [a]}]}.", None),
])
def test_what_is_read_and_what_is_left_to_the_node(text: str, modules: list[str] | None) -> None:
    assert modules_of(text) == modules


def test_the_files_are_read_once_while_they_are_the_same(tmp_path: Path) -> None:
    path = tmp_path / "a.app"
    path.write_text("{application, a, [{modules, [a]}]}.")
    files = AppFiles()
    assert files.modules(str(path)) == ["a"]
    path.write_text("{application, a, [{modules, [a, b]}]}.")
    assert files.modules(str(path)) == ["a", "b"]
    assert files.modules(str(tmp_path / "missing.app")) is None
