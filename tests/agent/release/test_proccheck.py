"""The Python side of the process checks (agent/release/proccheck.py) against a scripted node:
what check_held_funs makes of the holders the node names, and which processes killed_text
reports as killed by the purge. The Erlang expressions themselves run on real nodes in
tests/e2e/test_appup_trees_live.py."""

from __future__ import annotations

import pytest

from agent.release.proccheck import OldCodeProcess, check_held_funs, killed_text
from agent.release.values import FAILED_UNCHANGED, Failure
from bridge import Atom, Pid
from tests.agent.release.scripted import ScriptedNode, answer, code_check

NODE = Atom("counter@localhost")
SP = Pid(NODE, 93, 0, 1)
COUNTER = Pid(NODE, 90, 0, 1)
RELUP = "/srv/counter/releases/0.0.4/relup"


def a(name: str) -> Atom:
    return Atom(name)


def holder(pid: Pid, name: str, fun_module: str, changes: bool) -> tuple[object, ...]:
    return (pid, a(fun_module), a(name), (a(name), a("init"), 1), a(name), changes)


async def test_a_holder_whose_code_the_relup_does_not_change_is_refused_before_install() -> None:
    node = ScriptedNode(code_check([holder(COUNTER, "counter", "counter_sp", False),
                                    holder(SP, "counter_sp", "counter_sp", True)]))
    with pytest.raises(Failure) as failed:
        await check_held_funs(node, RELUP, "0.0.3", ["counter"], timeout=1.0)
    assert failed.value.outcome == FAILED_UNCHANGED
    assert failed.value.message == (
        "processes keep in their state funs of modules the relup replaces, and the relup does "
        "not change those processes' code: after the install the funs are made by replaced "
        "code and fail with badfun once it is purged (at the end of the install): <0.90.0> "
        "(counter) started by counter:init/1 holds a fun of counter_sp. Have the appup update "
        "counter ({update, counter, {advanced, []}}) with a code_change that rebuilds the funs")
    node.assert_done()


async def test_a_holder_whose_code_change_runs_is_named_and_let_through() -> None:
    node = ScriptedNode(code_check([holder(SP, "counter_sp", "counter_sp", True)]))
    detail = await check_held_funs(node, RELUP, "0.0.3", ["counter"], timeout=1.0)
    assert detail == ("; <0.93.0> (counter_sp) started by counter_sp:init/1 holds a fun of "
                      "counter_sp, which the relup replaces: their code_change must rebuild "
                      "these funs (verify checks it)")
    node.assert_done()


async def test_no_holder_adds_nothing() -> None:
    node = ScriptedNode(code_check([]))
    assert await check_held_funs(node, RELUP, "0.0.3", ["counter"], timeout=1.0) == ""
    node.assert_done()


async def test_only_the_processes_the_purge_killed_are_reported_killed() -> None:
    doomed = [OldCodeProcess(SP, "counter_sp", "counter_sp", "counter_sp:init/1"),
              OldCodeProcess(COUNTER, "counter", "", "counter:init/1")]
    # The bridge gives Erlang's true and false as Python's booleans.
    node = ScriptedNode([answer("erlang:is_process_alive", [SP], False),
                         answer("erlang:is_process_alive", [COUNTER], True)])
    assert await killed_text(node, doomed, timeout=1.0) == (
        "; killed by the purge: <0.93.0> (counter_sp) started by counter_sp:init/1")
    node.assert_done()
