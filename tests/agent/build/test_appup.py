"""The appup generator and checker (agent/build/appup.py) on beams compiled in the test: no
node, only erlc and erl."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent.build.appup import Beam, Instruction, atom, check, generate, read
from agent.build.relup import RelupResult, build
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

SRV = """-module(srv).
-behaviour(gen_server).
-export([init/1, handle_call/3, handle_cast/2, code_change/3, go/0]).
init(X) -> {ok, X}.
handle_call(_, _, S) -> {reply, lib:f(S), S}.
handle_cast(_, S) -> {noreply, S}.
code_change(_, S, _) -> {ok, S}.
go() -> %s.
"""
PLAIN = """-module(plain).
-behaviour(gen_statem).
-export([init/1, callback_mode/0, go/0]).
init(X) -> {ok, idle, X}.
callback_mode() -> state_functions.
go() -> %s.
"""
SUP = """-module(sup).
-behaviour(supervisor).
-export([init/1]).
init(_) -> {ok, {#{}, [%s]}}.
"""
LIB = "-module(lib).\n-export([f/1]).\nf(X) -> {X, %s}.\n"
SAME = "-module(same).\n-export([f/0]).\nf() -> ok.\n"


def compile_all(dest: Path, sources: dict[str, str]) -> Path:
    dest.mkdir(parents=True)
    for name, text in sources.items():
        (dest / f"{name}.erl").write_text(text)
    erlc = shutil.which("erlc")
    assert erlc is not None
    subprocess.run([erlc, "+debug_info", "-o", str(dest),
                    *sorted(str(p) for p in dest.glob("*.erl"))], check=True, timeout=60)
    return dest


@pytest.fixture(scope="module")
def ebins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("beams")
    old = compile_all(tmp / "old", {"srv": SRV % 1, "plain": PLAIN % 1, "sup": SUP % "",
                                    "lib": LIB % 1, "same": SAME,
                                    "gone": "-module(gone).\n"})
    new = compile_all(tmp / "new", {"srv": SRV % 2, "plain": PLAIN % 2,
                                    "sup": SUP % "#{id => a, start => {srv, go, []}}",
                                    "lib": LIB % 2, "same": SAME,
                                    "fresh": "-module(fresh).\n"})
    return old, new


def test_the_beams_give_md5_behaviours_code_change_and_imports(ebins: tuple[Path, Path]) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    old, new = reading.beams["o"], reading.beams["n"]
    assert set(old) == {"srv", "plain", "sup", "lib", "same", "gone"}
    assert set(new) == {"srv", "plain", "sup", "lib", "same", "fresh"}
    assert old["same"].md5 == new["same"].md5 and old["srv"].md5 != new["srv"].md5
    assert (new["srv"].behaviours, new["srv"].code_change) == (("gen_server",), True)
    assert (new["plain"].behaviours, new["plain"].code_change) == (("gen_statem",), False)
    assert "lib" in new["srv"].imports and "srv" not in new["srv"].imports


def test_generated_from_the_diff_library_before_its_caller_down_mirrors_up(
        ebins: tuple[Path, Path]) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    appup = generate("app", "1", "2", reading.beams["o"], reading.beams["n"])
    assert [i.term() for i in appup.up] == [
        "{add_module, fresh}",
        "{load_module, lib}",
        "{load_module, plain}",
        "{update, srv, {advanced, []}, [lib]}",
        "{update, sup, supervisor}",
        "{delete_module, gone}",
    ]
    assert [i.term() for i in appup.down] == [
        "{add_module, gone}",
        "{load_module, lib}",
        "{load_module, plain}",
        "{update, srv, {advanced, []}, [lib]}",
        "{update, sup, supervisor}",
        "{delete_module, fresh}",
    ]
    warning, unnamed = appup.warnings
    assert unnamed.startswith("app: sup's children change (+a) but it is started without a "
                              "name (supervisor:start_link/2)")
    assert warning.startswith("app: plain is a gen_statem without code_change, so it is loaded "
                              "with load_module and its processes keep their state untouched")
    assert appup.text().splitlines()[1:3] == ['{"2",', ' [{"1",']


def test_the_generated_text_reads_back_as_a_complete_appup(
        ebins: tuple[Path, Path], tmp_path: Path) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    appup = generate("app", "1", "2", reading.beams["o"], reading.beams["n"])
    (tmp_path / "app.appup").write_text(appup.text())
    given = read({}, {"g": (tmp_path / "app.appup", "1")}).appups["g"]
    assert check("app", "1", "2", given, appup) == []


def test_a_given_appup_lacking_a_gen_server_an_add_module_or_the_version_is_named(
        ebins: tuple[Path, Path], tmp_path: Path) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    appup = generate("app", "1", "2", reading.beams["o"], reading.beams["n"])
    (tmp_path / "app.appup").write_text(
        '{"2", [{"1", [{load_module, lib}, {load_module, plain}, {update, sup, supervisor},\n'
        '              {delete_module, gone}]}],\n'
        '      [{<<"0\\\\..*">>, []}]}.\n')
    given = read({}, {"g": (tmp_path / "app.appup", "1")}).appups["g"]
    assert check("app", "1", "2", given, appup) == [
        "fresh needs {add_module, fresh} (up)",
        "srv needs {update, srv, {advanced, []}, [lib]} (up)",
        'no down entry to 1 (it has 0\\..*): {"1", [...]} is needed',
    ]
    # A regular expression that matches, and restart_application, cover everything.
    (tmp_path / "app.appup").write_text(
        '{"2", [{<<"1(\\\\..*)?">>, [{restart_application, app}]}],\n'
        '      [{"1", [restart_new_emulator]}]}.\n')
    given = read({}, {"g": (tmp_path / "app.appup", "1")}).appups["g"]
    assert check("app", "1", "2", given, appup) == []


def test_atoms_are_quoted_when_they_must_be() -> None:
    assert [atom(a) for a in ("counter", "Elixir.ExCounter.Counter", "end", "a'b")] == [
        "counter", "'Elixir.ExCounter.Counter'", "'end'", "'a\\'b'"]
    assert Instruction("update", "Elixir.A", "advanced").term() == \
        "{update, 'Elixir.A', {advanced, []}}"


def test_elixir_behaviours_count_as_process_and_supervisor() -> None:
    old = {m: Beam(m, "00") for m in ("Elixir.S", "Elixir.Sup")}
    new = {"Elixir.S": Beam("Elixir.S", "01", ("Elixir.GenServer",), True),
           "Elixir.Sup": Beam("Elixir.Sup", "01", ("Elixir.Supervisor",))}
    appup = generate("ex", "1", "2", old, new)
    assert [i.term() for i in appup.up] == ["{update, 'Elixir.S', {advanced, []}}",
                                            "{update, 'Elixir.Sup', supervisor}"]


def relup_of(ebins: tuple[Path, Path], tmp_path: Path, release_build: ReleaseBuild
             ) -> tuple[dict[str, Path], RelupResult]:
    """Release roots "old" (app 1) and "new" (app 2) of the two ebins, on the OTP of
    ``release_build``, and what make-relup made of them (the appup generated)."""
    otp = release_build.otp
    roots = {}
    for side, vsn, ebin in (("old", "1", ebins[0]), ("new", "2", ebins[1])):
        root = tmp_path / side
        lib = root / "lib" / f"app-{vsn}" / "ebin"
        shutil.copytree(ebin, lib, ignore=shutil.ignore_patterns("*.erl"))
        mods = ", ".join(sorted(p.stem for p in lib.glob("*.beam")))
        (lib / "app.app").write_text(
            f'{{application, app, [{{description, "t"}}, {{vsn, "{vsn}"}}, '
            f"{{registered, []}}, {{modules, [{mods}]}}, "
            "{applications, [kernel, stdlib]}]}.\n")
        rel = root / "releases" / vsn / "app.rel"
        rel.parent.mkdir(parents=True)
        apps = ", ".join(f'{{{a}, "{otp.app_vsns[a]}"}}' for a in ("kernel", "stdlib", "sasl"))
        rel.write_text(f'{{release, {{"app", "{vsn}"}}, {{erts, "{otp.erts_vsn}"}}, '
                       f'[{apps}, {{app, "{vsn}"}}]}}.\n')
        roots[side] = root
    otp_ebins = [otp.root_dir / "lib" / f"{a}-{otp.app_vsns[a]}" / "ebin"
                 for a in ("kernel", "stdlib", "sasl")]
    return roots, build(roots["old"], roots["new"], extra_paths=otp_ebins)


def test_systools_makes_a_relup_of_the_generated_appup_library_loaded_before_its_caller(
        ebins: tuple[Path, Path], tmp_path: Path, release_build: ReleaseBuild) -> None:
    roots, made = relup_of(ebins, tmp_path, release_build)
    assert [(r.app, r.source) for r in made.appups] == [("app", "generated")]
    assert any("plain is a gen_statem without code_change" in w for w in made.warnings)
    relup = (roots["new"] / "releases" / "2" / "relup").read_text()
    up = relup[:relup.index('[{"1",', relup.index('[{"1",') + 1)]  # the up script only
    assert up.index("{load,{lib,") < up.index("{load,{srv,")
    assert "{code_change,up,[{srv,[]}]}" in up and "{code_change,up,[{sup,[]}]}" in up
    assert "{remove,{gone," in up and "{load,{fresh," in up


def test_a_changed_module_calling_an_added_one_names_it_as_a_dependency() -> None:
    old = {"srv": Beam("srv", "00", ("gen_server",), True)}
    new = {"srv": Beam("srv", "01", ("gen_server",), True, frozenset({"fresh", "lists"})),
           "fresh": Beam("fresh", "02")}
    appup = generate("app", "1", "2", old, new)
    assert [i.term() for i in appup.up] == ["{add_module, fresh}",
                                            "{update, srv, {advanced, []}, [fresh]}"]
    assert [i.term() for i in appup.down] == ["{update, srv, {advanced, []}, [fresh]}",
                                              "{delete_module, fresh}"]
