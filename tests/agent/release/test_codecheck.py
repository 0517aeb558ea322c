"""The pure parts of verify's code check (agent/release/codecheck.py): reading the node's
answer, what an appup names for the way between two versions, and the wording of each
mismatch; and `relctl verify`'s engine side against a scripted node."""

from __future__ import annotations

import pytest

from agent.errors import NodeFault
from agent.release.codecheck import (
    ALL,
    DIFFERS,
    NO_APP,
    NOT_LOADED,
    WOULD_LOAD,
    AppupView,
    ModuleProblem,
    UnexpectedCheckReply,
    appup_modules,
    mismatch_text,
    parse_report,
    problem_text,
    verify_running,
)
from agent.release.proccheck import tree_problems
from bridge import Atom, BadRpc, Pid
from tests.agent.release.scripted import (
    ANY,
    OK,
    ScriptedNode,
    answer,
    code_check,
    code_report,
    evaluated,
    fail,
    which_releases,
)

LIB = "/srv/counter/lib/counter-0.0.2"
OLD_BEAM = "/srv/counter/lib/counter-0.0.1/ebin/counter.beam"


def a(name: str) -> Atom:
    return Atom(name)


def test_a_report_counts_modules_and_keeps_only_the_problems() -> None:
    report = parse_report(code_report("0.0.2", ("counter", "differs", OLD_BEAM)))
    assert (report.mode, report.modules, report.problem_count, report.ok) == (
        "embedded", 187, 1, False)
    assert report.problems == (ModuleProblem("counter", "0.0.2", "counter", DIFFERS, OLD_BEAM,
                                             LIB),)
    assert parse_report(code_report("0.0.2")).ok


def test_an_application_whose_app_file_cannot_be_read_is_one_problem() -> None:
    reply = (a("embedded"), [("counter", "0.0.2", LIB, 0, -1, (a("error"), a("enoent")))])
    [problem] = parse_report(reply).problems
    assert (problem.kind, problem.where) == (NO_APP, "{error,enoent}")
    assert problem_text(problem, None) == (
        f"counter 0.0.2: cannot read {LIB}/ebin/counter.app ({{error,enoent}}); the release's "
        "application is not where release_handler put it")


@pytest.mark.parametrize("reply", [a("ok"), (a("embedded"), [("counter", "0.0.2")]),
                                   (a("embedded"), a("x"))])
def test_a_reply_of_another_shape_is_the_nodes_fault(reply: object) -> None:
    with pytest.raises(UnexpectedCheckReply) as err:
        parse_report(reply)
    assert isinstance(err.value, NodeFault) and "the code check returned" in str(err.value)


APPUP = [("0.0.2",
          [("0.0.1", [(a("load_module"), a("counter_app")), (a("update"), a("counter"),
                                                              (a("advanced"), []))]),
           (b"0\\.0\\.0.*", [(a("restart_application"), a("counter"))])],
          [("0.0.1", [(a("load_object_code"), (a("counter"), "0.0.1", [a("counter_sup")])),
                      (a("load"), (a("counter_sup"), a("brutal_purge"), a("brutal_purge"))),
                      (a("delete_module"), a("counter_extra"))])])]


def test_the_appup_names_the_modules_of_the_entry_for_the_other_version() -> None:
    assert appup_modules(APPUP, "counter", "0.0.2", up_from="0.0.1") == {"counter_app",
                                                                         "counter"}
    # Low-level instructions name modules too; the down entries serve the way down.
    assert appup_modules(APPUP, "counter", "0.0.2", down_to="0.0.1") == {"counter_sup",
                                                                         "counter_extra"}
    # A regular expression version; restart_application reloads everything.
    assert appup_modules(APPUP, "counter", "0.0.2", up_from="0.0.0-rc1") == ALL


@pytest.mark.parametrize(("appup", "vsn", "up_from"), [
    (APPUP, "0.0.2", "0.0.9"),    # no entry for that version
    (APPUP, "0.0.3", "0.0.1"),    # the appup of another version
    (None, "0.0.2", "0.0.1"),     # no appup at all
    ([a("junk")], "0.0.2", "0.0.1"),
])
def test_no_entry_for_the_way_is_none(appup: object, vsn: str, up_from: str) -> None:
    assert appup_modules(appup, "counter", vsn, up_from=up_from) is None


def problem(module: str, kind: str, where: str) -> ModuleProblem:
    return ModuleProblem("counter", "0.0.2", module, kind, where, LIB)


FORGOT = AppupView(f"{LIB}/ebin/counter.appup", "0.0.1", frozenset({"counter_app"}))
NAMED = AppupView(f"{LIB}/ebin/counter.appup", "0.0.1",
                  frozenset({"counter", "counter_extra"}))


@pytest.mark.parametrize(("p", "appup", "text"), [
    (problem("counter", DIFFERS, OLD_BEAM), FORGOT,
     f"counter changed but the appup has no instruction for it (the node still runs "
     f"{OLD_BEAM})"),
    (problem("counter", DIFFERS, "/tmp/patch/counter.beam"), NAMED,
     f"counter runs other code than {LIB}/ebin/counter.beam (loaded from "
     "/tmp/patch/counter.beam)"),
    (problem("counter", DIFFERS, "/tmp/patch/counter.beam"), None,
     f"counter runs other code than {LIB}/ebin/counter.beam (loaded from "
     "/tmp/patch/counter.beam)"),
    (problem("Elixir.Shop.Cart", DIFFERS, "/x/Elixir.Shop.Cart.beam"),
     AppupView("f", "0.0.1", None),
     "Elixir.Shop.Cart changed but the appup has no instruction for it (the node still runs "
     "/x/Elixir.Shop.Cart.beam)"),
    (problem("counter", DIFFERS, OLD_BEAM), AppupView("f", "0.0.1", ALL),
     f"counter runs other code than {LIB}/ebin/counter.beam (loaded from {OLD_BEAM})"),
    (problem("counter_extra", NOT_LOADED, "embedded"), FORGOT,
     "counter_extra is not loaded (embedded mode): the appup lacks {add_module, counter_extra}"),
    (problem("counter_extra", NOT_LOADED, "embedded"), NAMED,
     "counter_extra is not loaded (embedded mode): calling it fails with undef"),
    (problem("counter_extra", WOULD_LOAD, "/elsewhere/ebin"), None,
     f"counter_extra is not loaded and would load from /elsewhere/ebin, not from {LIB}/ebin"),
    (problem("counter_extra", WOULD_LOAD, "none"), None,
     f"counter_extra is not loaded and is in no directory of the code path, not from "
     f"{LIB}/ebin"),
    (problem("counter_extra", "no_beam", "enoent"), None,
     f"counter_extra is listed in counter.app but {LIB}/ebin/counter_extra.beam cannot be "
     "read (enoent)"),
])
def test_each_mismatch_says_what_runs_and_what_the_appup_lacks(
        p: ModuleProblem, appup: AppupView | None, text: str) -> None:
    assert problem_text(p, appup) == text


def test_the_message_lists_the_first_mismatches_and_counts_the_rest() -> None:
    many = [(f"m{i}", "not_loaded", "embedded") for i in range(12)]
    report = parse_report(code_report("0.0.2", *many))
    text = mismatch_text(report, {"counter": AppupView("/a.appup", "0.0.1", None)}, limit=2)
    assert text == ("m0 is not loaded (embedded mode): the appup lacks {add_module, m0}; "
                    "m1 is not loaded (embedded mode): the appup lacks {add_module, m1} "
                    "(and 10 more); /a.appup has no entry for 0.0.1")


async def test_verify_running_checks_the_running_release_and_reads_no_appup_when_all_match(
        ) -> None:
    node = ScriptedNode([which_releases(("0.0.2", "permanent"), ("0.0.1", "old")),
                         *code_check(code_report("0.0.2")), *code_check([]), *code_check([]),
                         *code_check([])])
    found = await verify_running(node, timeout=1.0)
    assert (found.release, found.version, found.report.ok, found.details, found.processes) == (
        "counter", "0.0.2", True, (), ())
    # The check gets the release's applications as [{Name, Vsn}].
    assert node.calls_to("erl_eval:exprs")[0].args[1] == [
        (a("Apps"), [("kernel", "8.5.3"), ("stdlib", "4.2"), ("counter", "0.0.2")])]
    node.assert_done()


async def test_verify_running_of_a_current_release_explains_with_the_permanent_ones_appup(
        ) -> None:
    node = ScriptedNode([
        which_releases(("0.0.2", "current"), ("0.0.1", "permanent")),
        *code_check(code_report("0.0.2", ("counter", "differs", OLD_BEAM))),
        answer("file:consult", [f"{LIB}/ebin/counter.appup"], (a("error"), a("enoent"))),
        answer("file:consult", ["/srv/counter/lib/counter-0.0.1/ebin/counter.appup"],
               (OK, [("0.0.1", [], [("0.0.2", [(a("load_module"), a("counter_app"))])])])),
        *code_check([]), *code_check([]), *code_check([])])
    found = await verify_running(node, timeout=1.0)
    assert found.details == (f"counter changed but the appup has no instruction for it (the "
                             f"node still runs {OLD_BEAM})",)
    node.assert_done()


async def test_verify_running_names_children_a_boot_would_not_give_and_old_code_processes(
        ) -> None:
    sp = Pid(a("counter@localhost"), 93, 0, 1)
    node = ScriptedNode([
        which_releases(("0.0.4", "permanent")), *code_check(code_report("0.0.4")),
        *code_check([(a("not_started"), a("counter_sup"), a("ticker"), [a("counter_sp")]),
                     (a("module_gone"), a("counter_sup"), a("extra"), [a("counter_extra")])]),
        # Still there on each of the three looks: not a process passing through old code
        # (parsed once: the node's forms are kept for the next looks).
        *code_check([(sp, a("counter_sp"), a("counter_sp"), (a("counter_sp"), a("init"), 1))]),
        *[e for _ in range(2) for e in evaluated([(sp, a("counter_sp"), a("counter_sp"),
                                                    (a("counter_sp"), a("init"), 1))])],
        *code_check([(sp, a("counter_sp"), a("counter_sp"), (a("counter_sp"), a("init"), 1))])])
    found = await verify_running(node, timeout=1.0)
    assert found.report.ok
    assert found.processes == (
        ("supervision tree", "counter_sp", "not_started",
         "counter_sup: permanent child ticker has a spec and no process (an added child never "
         "started: the appup needs {apply, {supervisor, restart_child, [counter_sup, ticker]}} "
         "after the supervisor's update)"),
        ("supervision tree", "counter_extra", "module_gone",
         "counter_sup: child extra runs, but its module counter_extra is gone from the release "
         "(a removed child still running: the appup needs {apply, {supervisor, "
         "terminate_child, [counter_sup, extra]}} and delete_child before the supervisor's "
         "update)"),
        ("old code", "counter_sp", "old_code",
         "<0.93.0> (counter_sp) started by counter_sp:init/1 runs old counter_sp: "
         "make_permanent's or the next code change's purge kills it"),
        ("old code", "counter_sp", "old_fun",
         "<0.93.0> (counter_sp) started by counter_sp:init/1 holds a fun made by replaced code "
         "of counter_sp in its state: calling it fails with badfun once that code is purged"))
    node.assert_done()


async def test_verify_running_on_a_node_without_a_release_says_so() -> None:
    node = ScriptedNode([which_releases()])
    with pytest.raises(NodeFault, match="runs no release known to release_handler"):
        await verify_running(node, timeout=1.0)


async def test_a_check_is_parsed_once_per_node_and_again_when_its_forms_fail() -> None:
    """Scanning and parsing a check costs the node more than evaluating it: the forms are kept
    per node; forms the node no longer evaluates (restarted on another OTP) are parsed again."""
    node = ScriptedNode([*code_check([]), *evaluated([]),
                         fail("erl_eval:exprs", ANY, BadRpc(a("undef"))), *code_check([])])
    for _ in range(3):
        assert await tree_problems(node, ["counter"], timeout=1.0) == []
    node.assert_done()
    other = ScriptedNode(code_check([]))  # another node parses it for itself
    assert await tree_problems(other, ["counter"], timeout=1.0) == []
    other.assert_done()
