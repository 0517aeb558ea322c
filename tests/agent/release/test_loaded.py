"""loaded.py, the code check of verify compared in the agent: against a scripted node and a
release root on disk holding real beams. It says yes only where the node's own check would;
everything else is left to that check (None), without a wrong answer."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.release.beams import beam_md5
from agent.release.loaded import loaded_matches
from bridge import Atom, BadRpc, Export
from tests.agent.release.scripted import ANY, OK, ScriptedNode, answer, fail
from tests.agent.release.test_beams import otp_lib

pytestmark = pytest.mark.otp  # the beams are the host OTP's

APPS = [("stdlib", "4.2"), ("counter", "0.0.2")]


def write_app(root: Path, lib: str, name: str, modules: list[str]) -> None:
    (root / "lib" / lib / "ebin" / f"{name}.app").write_text(
        f"%% the {name} application\n{{application, {name},\n [{{description, \"{name}, 1.0\"}},"
        f" {{vsn, \"1\"}}, {{modules, [{', '.join(modules)}]}},\n  {{env, [{{k, #{{a => <<\"b\">>}}}}]}}]}}.\n")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """lib/stdlib-4.2 with lists and maps, lib/counter-0.0.2 with counter (a copy of queue),
    and their .app files."""
    [stdlib] = otp_lib().glob("stdlib-*/ebin")
    for app, beams in (("stdlib-4.2", {"lists": "lists", "maps": "maps"}),
                       ("counter-0.0.2", {"counter": "queue"})):
        ebin = tmp_path / "lib" / app / "ebin"
        ebin.mkdir(parents=True)
        for name, source in beams.items():
            shutil.copyfile(stdlib / f"{source}.beam", ebin / f"{name}.beam")
    write_app(tmp_path, "stdlib-4.2", "stdlib", ["lists", "maps"])
    write_app(tmp_path, "counter-0.0.2", "counter", ["counter"])
    return tmp_path


def md5(root: Path, app: str, module: str) -> bytes:
    found = beam_md5((root / "lib" / app / "ebin" / f"{module}.beam").read_bytes())
    assert found is not None
    return found


def app_file(name: str, modules: list[str]) -> Any:
    return (OK, [(Atom("application"), Atom(name),
                  [(Atom("vsn"), "1"), (Atom("modules"), [Atom(m) for m in modules])])])


def loaded_from(root: Path, app: str, module: str) -> tuple[Atom, str]:
    return (Atom("file"), str(root / "lib" / app / "ebin" / f"{module}.beam"))


def script(root: Path, *, loaded: list[Any] | None = None, md5s: list[Any] | None = None
           ) -> list[Any]:
    """The first round trip (the mode, what is loaded; modules sorted: counter, lists, maps)
    and the md5s of the loaded ones; the .app files are read in the agent."""
    loaded = loaded if loaded is not None else [
        loaded_from(root, "counter-0.0.2", "counter"), loaded_from(root, "stdlib-4.2", "lists"),
        loaded_from(root, "stdlib-4.2", "maps")]
    steps = [answer("code:get_mode", [], Atom("embedded")), answer("lists:map", ANY, loaded)]
    if md5s is not None:
        steps.append(answer("lists:zipwith", ANY, md5s))
    return steps


def good_md5s(root: Path) -> list[bytes]:
    return [md5(root, "counter-0.0.2", "counter"), md5(root, "stdlib-4.2", "lists"),
            md5(root, "stdlib-4.2", "maps")]


async def test_a_node_that_runs_every_beam_passes_in_two_round_trips(root: Path) -> None:
    node = ScriptedNode(script(root, md5s=[md5(root, "stdlib-4.2", "lists"),
                                           md5(root, "stdlib-4.2", "maps"),
                                           md5(root, "counter-0.0.2", "counter")]))
    report = await loaded_matches(node, str(root), APPS, timeout=5)
    node.assert_done()
    assert report is not None and report.ok and report.mode == "embedded"
    assert [(a.app, a.vsn, a.lib_dir, a.modules) for a in report.apps] == [
        ("stdlib", "4.2", f"{root}/lib/stdlib-4.2", 2),
        ("counter", "0.0.2", f"{root}/lib/counter-0.0.2", 1)]
    _, is_loaded, zipwith = node.calls
    assert is_loaded.args == [Export(Atom("code"), Atom("is_loaded"), 1),
                              [Atom("counter"), Atom("lists"), Atom("maps")]]
    assert zipwith.args == [Export(Atom("erlang"), Atom("get_module_info"), 2),
                            [Atom("lists"), Atom("maps"), Atom("counter")], [Atom("md5")] * 3]


async def test_a_preloaded_module_needs_no_md5(root: Path) -> None:
    node = ScriptedNode(script(root, loaded=[
        loaded_from(root, "counter-0.0.2", "counter"), (Atom("file"), Atom("preloaded")),
        loaded_from(root, "stdlib-4.2", "maps")],
        md5s=[md5(root, "stdlib-4.2", "maps"), md5(root, "counter-0.0.2", "counter")]))
    report = await loaded_matches(node, str(root), APPS, timeout=5)
    node.assert_done()
    assert report is not None and report.modules == 3


async def test_a_module_not_loaded_is_left_to_the_nodes_check(root: Path) -> None:
    node = ScriptedNode(script(root, loaded=[
        Atom("false"), loaded_from(root, "stdlib-4.2", "lists"),
        loaded_from(root, "stdlib-4.2", "maps")]))
    assert await loaded_matches(node, str(root), APPS, timeout=5) is None
    node.assert_done()  # no md5 asked


async def test_a_module_the_app_lists_without_a_beam_is_left_to_the_nodes_check(
        root: Path) -> None:
    write_app(root, "counter-0.0.2", "counter", ["counter", "counter_gone"])
    node = ScriptedNode([])  # seen on the disk: nothing to ask
    assert await loaded_matches(node, str(root), APPS, timeout=5) is None
    node.assert_done()


async def test_a_lib_without_its_app_file_asks_the_node_nothing(root: Path) -> None:
    (root / "lib" / "counter-0.0.2" / "ebin" / "counter.app").unlink()
    node = ScriptedNode([])
    assert await loaded_matches(node, str(root), APPS, timeout=5) is None
    node.assert_done()


async def test_an_app_file_the_agent_does_not_read_is_consulted_on_the_node(
        root: Path) -> None:
    app = root / "lib" / "counter-0.0.2" / "ebin" / "counter.app"
    app.write_text('{application, counter, [{description, "two" "strings"}, '
                   '{modules, [counter]}]}.\n')  # adjacent strings: not read here
    node = ScriptedNode([*script(root), answer("lists:map", ANY, [app_file("counter",
                                                                          ["counter"])]),
                         answer("lists:zipwith", ANY, [md5(root, "stdlib-4.2", "lists"),
                                                       md5(root, "stdlib-4.2", "maps"),
                                                       md5(root, "counter-0.0.2", "counter")])])
    report = await loaded_matches(node, str(root), APPS, timeout=5)
    node.assert_done()
    assert report is not None and report.modules == 3
    assert node.calls[2].args == [Export(Atom("file"), Atom("consult"), 1), [str(app)]]


async def test_other_code_loaded_from_the_release_ebin_is_left_to_the_nodes_check(
        root: Path) -> None:
    md5s = good_md5s(root)
    node = ScriptedNode([*script(root, md5s=[md5s[1], md5s[2], b"\0" * 16]),
                         answer("code:get_path", [], [str(root / "lib" / a / "ebin")
                                                      for a in ("counter-0.0.2", "stdlib-4.2")])])
    assert await loaded_matches(node, str(root), APPS, timeout=5) is None
    node.assert_done()


@pytest.mark.parametrize("earlier", [True, False])
async def test_code_from_an_earlier_path_dir_passes_when_that_beam_has_it(
        root: Path, earlier: bool) -> None:
    """A mix release's consolidated protocols: loaded from releases/VSN/consolidated, which
    comes before the app's ebin on the code path, with that file's md5."""
    consolidated = root / "releases" / "0.0.2" / "consolidated"
    consolidated.mkdir(parents=True)
    [other] = otp_lib().glob("stdlib-*/ebin/sets.beam")
    shutil.copyfile(other, consolidated / "maps.beam")
    there = beam_md5((consolidated / "maps.beam").read_bytes())
    ebins = [str(root / "lib" / a / "ebin") for a in ("counter-0.0.2", "stdlib-4.2")]
    path = [str(consolidated), *ebins] if earlier else [*ebins, str(consolidated)]
    node = ScriptedNode([
        *script(root, loaded=[loaded_from(root, "counter-0.0.2", "counter"),
                              loaded_from(root, "stdlib-4.2", "lists"),
                              (Atom("file"), str(consolidated / "maps.beam"))],
                md5s=[md5(root, "stdlib-4.2", "lists"), there,
                      md5(root, "counter-0.0.2", "counter")]),
        answer("code:get_path", [], path)])
    report = await loaded_matches(node, str(root), APPS, timeout=5)
    node.assert_done()
    assert (report is not None) is earlier


async def test_a_lib_dir_the_agent_cannot_read_asks_the_node_nothing(root: Path) -> None:
    node = ScriptedNode([])
    assert await loaded_matches(node, str(root), [*APPS, ("sasl", "4.2")], timeout=5) is None
    node.assert_done()


async def test_a_module_unloaded_between_the_two_calls_is_left_to_the_nodes_check(
        root: Path) -> None:
    node = ScriptedNode([*script(root), fail("lists:zipwith", ANY, BadRpc("badarg"))])
    assert await loaded_matches(node, str(root), APPS, timeout=5) is None
    node.assert_done()
