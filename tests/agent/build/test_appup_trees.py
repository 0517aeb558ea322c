"""The appup generator on the hard cases (agent/build/appup.py): sys special processes,
supervisors whose children are added, removed or started differently (tuple and map child
specs), supervisors whose children are known only at run time; checked against
systools:make_relup on beams compiled in the test. No node: erlc and erl only."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.build.appup import Instruction, check, generate, read
from agent.build.relup import build
from tests.agent.build.test_appup import compile_all, relup_of
from tests.tools.release_fixture import ReleaseBuild

pytestmark = pytest.mark.otp

SP = """-module(sp).
-export([start_link/0, init/1, system_continue/3, system_terminate/4, system_code_change/4]).
start_link() -> proc_lib:start_link(?MODULE, init, [self()]).
init(Parent) -> register(sp, self()), proc_lib:init_ack({ok, self()}), loop(Parent, %s).
loop(Parent, S) ->
    receive {system, From, Msg} -> sys:handle_system_msg(Msg, From, Parent, ?MODULE, [], S);
            _ -> loop(Parent, S) end.
system_continue(Parent, _, S) -> loop(Parent, S).
system_terminate(Reason, _, _, _) -> exit(Reason).
system_code_change(S, _, _, _) -> {ok, S}.
"""
LOOPER = """-module(looper).
-export([start_link/0, init/0]).
start_link() -> {ok, proc_lib:spawn_link(?MODULE, init, [])}.
init() -> receive stop -> %s end.
"""
# Map and tuple specs, a helper function and a record-free literal: what init/1 gives is
# known from the beam.
TOP = """-module(top_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).
init([]) ->
    Flags = #{strategy => one_for_one, intensity => 5, period => 10},
    {ok, {Flags, %s}}.
worker(Id, Args) -> #{id => Id, start => {Id, start_link, Args}, modules => [Id]}.
"""
TOP_OLD = ("[worker(sp, []), {gone, {gone, start_link, []}, permanent, 5000, worker, [gone]}, "
           "worker(moved, [1]), worker(same, [])]")
TOP_NEW = "[worker(sp, []), worker(moved, [2]), worker(same, []), worker(fresh, [])]"
# Its children come from the application environment: known only at run time.
ENV_SUP = """-module(env_sup).
-behaviour(supervisor).
-export([start_link/0, init/1]).
start_link() -> supervisor:start_link({local, ?MODULE}, ?MODULE, []).
init([]) -> {ok, {{one_for_one, %s, 1}, application:get_env(app, children, [])}}.
"""
WORKER = "-module(%s).\n-export([start_link/1, start_link/0]).\n" \
         "start_link() -> start_link(0).\nstart_link(_) -> ignore.\n"


@pytest.fixture(scope="module")
def ebins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tree-beams")
    workers = {m: WORKER % m for m in ("moved", "same")}
    old = compile_all(tmp / "old", {"sp": SP % "0", "looper": LOOPER % "ok", "top_sup": TOP
                                    % TOP_OLD, "env_sup": ENV_SUP % 1, "gone": WORKER % "gone",
                                    **workers})
    new = compile_all(tmp / "new", {"sp": SP % "1", "looper": LOOPER % "done",
                                    "top_sup": TOP % TOP_NEW, "env_sup": ENV_SUP % 2,
                                    "fresh": WORKER % "fresh", **workers})
    return old, new


def test_the_beams_give_the_children_and_name_of_each_supervisor(
        ebins: tuple[Path, Path]) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    old, new = reading.beams["o"], reading.beams["n"]
    assert new["sp"].special and not new["looper"].special and "proc_lib" in new["looper"].imports
    tree = old["top_sup"].sup
    assert tree is not None and tree.name == "top_sup" and tree.children is not None
    assert [(c.id, c.start, c.restart, c.type, c.modules) for c in tree.children] == [
        ("sp", "{sp,start_link,[]}", "permanent", "worker", "[sp]"),
        ("gone", "{gone,start_link,[]}", "permanent", "worker", "[gone]"),
        ("moved", "{moved,start_link,[1]}", "permanent", "worker", "[moved]"),
        ("same", "{same,start_link,[]}", "permanent", "worker", "[same]")]
    env = new["env_sup"].sup
    assert env is not None and env.children is None
    assert env.unknown == ("its init/1 calls application:get_env/3, so its child specs are "
                           "known only at run time")


def test_children_added_removed_and_restarted_around_the_supervisor_update_both_ways(
        ebins: tuple[Path, Path]) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    appup = generate("app", "1", "2", reading.beams["o"], reading.beams["n"])
    sup = "{apply, {supervisor, %s, [top_sup, %s]}}"
    assert [i.term() for i in appup.up] == [
        "{add_module, fresh}",
        sup % ("terminate_child", "gone"), sup % ("delete_child", "gone"),
        "{update, env_sup, supervisor}",
        "{load_module, looper}",
        "{update, sp, {advanced, []}}",
        "{update, top_sup, supervisor}",
        sup % ("restart_child", "fresh"),
        sup % ("terminate_child", "moved"), sup % ("restart_child", "moved"),
        "{delete_module, gone}",
    ]
    assert [i.term() for i in appup.down] == [
        "{add_module, gone}",
        sup % ("terminate_child", "fresh"), sup % ("delete_child", "fresh"),
        "{update, env_sup, supervisor}",
        "{load_module, looper}",
        "{update, sp, {advanced, []}}",
        "{update, top_sup, supervisor}",
        sup % ("restart_child", "gone"),
        sup % ("terminate_child", "moved"), sup % ("restart_child", "moved"),
        "{delete_module, fresh}",
    ]
    env, looper = appup.warnings
    assert env.startswith("app: env_sup is a supervisor whose children make-appup cannot know "
                          "(its init/1 calls application:get_env/3, so its child specs are "
                          "known only at run time): the appup only has {update, env_sup, "
                          "supervisor}, which starts no added child and stops no removed one")
    assert looper.startswith("app: looper starts processes with proc_lib but exports no "
                             "system_code_change/4, so it is loaded with load_module")


def test_a_given_appup_loading_a_special_process_or_missing_restart_child_is_named(
        ebins: tuple[Path, Path], tmp_path: Path) -> None:
    reading = read({"o": ebins[0], "n": ebins[1]}, {})
    appup = generate("app", "1", "2", reading.beams["o"], reading.beams["n"])
    (tmp_path / "app.appup").write_text(appup.text())
    assert check("app", "1", "2", read({}, {"g": (tmp_path / "app.appup", "1")}).appups["g"],
                 appup) == []
    # What generators without these cases write: load_module and the bare update.
    (tmp_path / "app.appup").write_text(
        '{"2", [{"1", [{add_module, fresh}, {load_module, sp}, {load_module, looper},\n'
        '              {update, env_sup, supervisor}, {update, top_sup, supervisor},\n'
        '              {delete_module, gone}]}],\n'
        '      [{"1", [restart_new_emulator]}]}.\n')
    given = read({}, {"g": (tmp_path / "app.appup", "1")}).appups["g"]
    assert check("app", "1", "2", given, appup) == [
        "top_sup's child gone needs {apply, {supervisor, terminate_child, [top_sup, gone]}} "
        "(up)",
        "top_sup's child gone needs {apply, {supervisor, delete_child, [top_sup, gone]}} (up)",
        "sp needs {update, sp, {advanced, []}} (up) (a special process: load_module leaves it "
        "on the old code, and the purge kills it)",
        "top_sup's child fresh needs {apply, {supervisor, restart_child, [top_sup, fresh]}} "
        "(up)",
        "top_sup's child moved needs {apply, {supervisor, terminate_child, [top_sup, moved]}} "
        "(up)",
        "top_sup's child moved needs {apply, {supervisor, restart_child, [top_sup, moved]}} "
        "(up)",
    ]


def test_unnamed_and_simple_one_for_one_supervisors() -> None:
    from agent.build.appup import Beam, Child, SupTree
    one = (Child("a", "{a,start_link,[]}"),)
    two = (*one, Child("b", "{b,start_link,[]}"))
    sup = ("supervisor",)
    old = {"s": Beam("s", "00", sup, sup=SupTree("", one)),
           "d": Beam("d", "00", sup, sup=SupTree("d", (), dynamic=True))}
    new = {"s": Beam("s", "01", sup, sup=SupTree("", two)),
           "d": Beam("d", "01", sup, sup=SupTree("d", (), dynamic=True))}
    appup = generate("app", "1", "2", old, new)
    assert [i.term() for i in appup.up] == ["{update, d, supervisor}",
                                            "{update, s, supervisor}"]
    [warning] = appup.warnings
    assert warning.startswith("app: s's children change (+b) but it is started without a name "
                              "(supervisor:start_link/2), so the appup cannot reach it")
    assert Instruction("apply", "s", "restart_child", sup_ref="{global,s}", child="b").term() \
        == "{apply, {supervisor, restart_child, [{global,s}, b]}}"


def test_systools_makes_a_relup_with_the_supervisor_calls_after_the_point_of_no_return(
        ebins: tuple[Path, Path], tmp_path: Path, release_build: ReleaseBuild) -> None:
    roots, made = relup_of(ebins, tmp_path, release_build)
    assert any("env_sup is a supervisor whose children" in w for w in made.warnings)
    relup = (roots["new"] / "releases" / "2" / "relup").read_text()
    split = relup.index('[{"1",', relup.index('[{"1",') + 1)
    up, down = relup[:split], relup[split:]
    # systools keeps the calls where the appup puts them, after the point of no return:
    # removed child stopped before the supervisor's code change, added one started after it,
    # the special process suspended and changed by sys like a gen_server.
    assert up.index("point_of_no_return") < up.index(
        "{apply,{supervisor,terminate_child,[top_sup,gone]}}") < up.index(
        "{code_change,up,[{top_sup,[]}]}") < up.index(
        "{apply,{supervisor,restart_child,[top_sup,fresh]}}") < up.index("{remove,{gone,")
    assert "{suspend,[sp]}" in up and "{code_change,up,[{sp,[]}]}" in up
    assert down.index("{apply,{supervisor,delete_child,[top_sup,fresh]}}") < down.index(
        "{code_change,down,[{top_sup,[]}]}") < down.index(
        "{apply,{supervisor,restart_child,[top_sup,gone]}}")


def test_an_otp_application_takes_the_appup_its_otp_ships_and_the_relup_restarts_the_emulator(
        tmp_path: Path, release_build: ReleaseBuild) -> None:
    """kernel changes version (a copy of this OTP's kernel posing as the version before): its
    appup is not generated from the beams but taken from the OTP that makes the relup, whose
    entries say restart_new_emulator, and systools puts that first in the relup."""
    otp = release_build.otp
    kernel = otp.app_vsns["kernel"]
    major, minor, patch = (kernel.split(".") + ["0", "0"])[:3]
    before = f"{major}.{minor}.{int(patch) - 1}" if int(patch) > 0 else f"{major}.{minor}"
    real = otp.root_dir / "lib" / f"kernel-{kernel}" / "ebin"
    assert (real / "kernel.appup").is_file()
    roots = {}
    for side, vsn, kvsn in (("old", "1", before), ("new", "2", kernel)):
        root = tmp_path / side
        ebin = root / "lib" / f"kernel-{kvsn}" / "ebin"
        # As release roots have them: the beams and kernel.app, no appup.
        shutil.copytree(real, ebin, ignore=shutil.ignore_patterns("*.appup"))
        app = (ebin / "kernel.app").read_text()
        (ebin / "kernel.app").write_text(app.replace(f'"{kernel}"', f'"{kvsn}"'))
        rel = root / "releases" / vsn / "app.rel"
        rel.parent.mkdir(parents=True)
        rel.write_text(f'{{release, {{"app", "{vsn}"}}, {{erts, "{otp.erts_vsn}"}}, '
                       f'[{{kernel, "{kvsn}"}}, {{stdlib, "{otp.app_vsns["stdlib"]}"}}, '
                       f'{{sasl, "{otp.app_vsns["sasl"]}"}}]}}.\n')
        roots[side] = root
    others = [otp.root_dir / "lib" / f"{a}-{otp.app_vsns[a]}" / "ebin" for a in ("stdlib", "sasl")]
    made = build(roots["old"], roots["new"], extra_paths=others)
    assert [(r.app, r.old_vsn, r.new_vsn, r.source, r.path) for r in made.appups] == [
        ("kernel", before, kernel, "OTP's own", real / "kernel.appup")]
    relup = (roots["new"] / "releases" / "2" / "relup").read_text()
    # Up: the new emulator first; down: the old emulator, after everything else (relctl waits
    # for that restart).
    assert "".join(relup.split()).endswith(
        '{"2",[{"1",[],[restart_new_emulator,point_of_no_return]}],'
        '[{"1",[],[point_of_no_return,restart_emulator]}]}.'), relup
