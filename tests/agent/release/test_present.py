"""present.py: a node's terms in its own language. Erlang nodes (and a Caller that cannot tell)
get bridge.format_term with no extra RPC; Elixir nodes get Kernel.inspect/1 and
Exception.format/3 on the node, with the Erlang form whenever the node cannot answer."""

from __future__ import annotations

import pytest

from agent.config import FAIL, PRE_INSTALL, Hook
from agent.errors import NodeDown
from agent.release.hooks import run_hooks
from agent.release.present import EXCEPTION_LIMIT, TermStyle, find_exception
from agent.release.core import Steps
from agent.release.values import FAILED_UNCHANGED, Failure
from bridge import Atom, BadRpc, Export

from .scripted import ANY, Expect, ScriptedNode, StepLog, answer, fail, repeatedly

ARGUMENT_ERROR = {Atom("__exception__"): True, Atom("__struct__"): Atom("Elixir.ArgumentError"),
                  Atom("message"): b"cannot build date, reason: :invalid_date"}
STACK = [(Atom("Elixir.Date"), Atom("new!"), 4,
          [(Atom("file"), "lib/calendar/date.ex"), (Atom("line"), 299)]),
         (Atom("Elixir.Date"), Atom("new!"), 3, [])]
RAISED = (Atom("EXIT"), (ARGUMENT_ERROR, STACK))  # {badrpc, R}'s R when the call raised
FORMATTED = (b"** (ArgumentError) cannot build date, reason: :invalid_date\n"
             b"    (elixir 1.14.0) lib/calendar/date.ex:299: Date.new!/4\n"
             b"    (elixir 1.14.0) Date.new!/3\n")
INSPECT = Export(Atom("Elixir.Kernel"), Atom("inspect"), 1)


class ElixirNode(ScriptedNode):
    """A scripted node that says it runs Elixir (NodeLink asks the node; here it is given)."""

    def __init__(self, *script: Expect, down: bool = False) -> None:
        super().__init__(script)
        self.down = down

    async def runs_elixir(self, timeout: float) -> bool:
        if self.down:
            raise NodeDown(self.name, "connection lost")
        return True


def test_find_exception_takes_the_rpc_shapes_and_a_crash_nested_in_release_handlers_reason(
        ) -> None:
    assert find_exception(RAISED) == (Atom("error"), ARGUMENT_ERROR, STACK)
    assert find_exception((Atom("EXIT"), Atom("boom"))) == (Atom("exit"), Atom("boom"), [])
    # install_release's reply when a code_change raised: release_handler_1's badmatch on
    # sys:change_code's {error, {'EXIT', ...}}, with its own stack.
    nested = ((Atom("badmatch"), (Atom("error"), RAISED)),
              [(Atom("release_handler_1"), Atom("eval"), 2, [])])
    assert find_exception(nested) == (Atom("error"), ARGUMENT_ERROR, STACK)
    assert find_exception((Atom("error"), Atom("busy"))) is None
    assert find_exception([1, [2, [3]]]) is None


async def test_a_node_that_cannot_tell_its_language_gets_the_erlang_form_without_an_rpc() -> None:
    node = ScriptedNode()  # no runs_elixir: every RPC would be unscripted
    style = TermStyle(node)
    assert await style.reason(RAISED) == (
        "{'EXIT',{#{'__exception__' => true,'__struct__' => 'Elixir.ArgumentError',"
        "message => <<\"cannot build date, reason: :invalid_date\">>},"
        "[{'Elixir.Date','new!',4,[{file,\"lib/calendar/date.ex\"},{line,299}]},"
        "{'Elixir.Date','new!',3,[]}]}}")
    assert await style.values([b"GBP", Atom("ok")]) == ['<<"GBP">>', "ok"]
    assert await style.reason("no such file or directory") == "no such file or directory"
    node.assert_done()


async def test_an_elixir_crash_reads_as_exception_format_prints_it_with_file_and_line() -> None:
    node = ElixirNode(answer("Elixir.Exception:format", [Atom("error"), ARGUMENT_ERROR, STACK],
                             FORMATTED))
    text = await TermStyle(node).reason(RAISED)
    assert text == FORMATTED.decode().rstrip()
    assert text.startswith("** (ArgumentError) cannot build date")
    assert "lib/calendar/date.ex:299" in text
    node.assert_done()


async def test_elixir_values_are_inspected_on_the_node_all_in_one_call() -> None:
    values = [b"GBP", Atom("ok"), [(Atom("a"), 1)]]
    node = ElixirNode(answer("lists:map", [INSPECT, values], [b'"GBP"', b":ok", b"[a: 1]"]))
    assert await TermStyle(node).values(values) == ['"GBP"', ":ok", "[a: 1]"]
    node.assert_done()


async def test_a_reason_that_is_no_crash_is_an_inspected_value_on_an_elixir_node() -> None:
    reason = (Atom("error"), Atom("busy"))
    node = ElixirNode(answer("lists:map", [INSPECT, [reason]], [b"{:error, :busy}"]))
    assert await TermStyle(node).reason(reason) == "{:error, :busy}"
    node.assert_done()


async def test_an_elixir_node_that_cannot_format_falls_back_to_the_erlang_form() -> None:
    node = ElixirNode(
        fail("Elixir.Exception:format", ANY, BadRpc((Atom("EXIT"), Atom("undef")))),
        repeatedly("lists:map", ANY, Atom("not_a_list")))  # inspect failing too
    style = TermStyle(node)
    assert (await style.reason(RAISED)).startswith("{'EXIT',{#{'__exception__' => true")
    assert await style.value(b"GBP") == '<<"GBP">>'
    node.assert_done()
    # Down before it could say what it runs: the Erlang form, and no RPC tried.
    down = ElixirNode(down=True)
    assert await TermStyle(down).value(b"GBP") == '<<"GBP">>'
    down.assert_done()


async def test_formatted_text_is_bounded() -> None:
    huge = b"** (RuntimeError) " + b"x" * 10 * EXCEPTION_LIMIT
    node = ElixirNode(answer("Elixir.Exception:format", ANY, huge),
                      answer("lists:map", ANY, [b'"' + b"y" * 5000 + b'"']))
    style = TermStyle(node)
    text = await style.reason(RAISED)
    assert len(text) == EXCEPTION_LIMIT and text.endswith("...")
    assert len(await style.value(b"y" * 5000)) == 500
    node.assert_done()


def date_hook() -> Hook:
    return Hook(name="check", when=PRE_INSTALL, module="Elixir.Date", function="new!",
                args=(2024, 13, 1), on_failure=FAIL)


async def run_failing(node: ScriptedNode, hook: Hook) -> str:
    with pytest.raises(Failure) as failed:
        await run_hooks(node, Steps(StepLog()), [hook], PRE_INSTALL, outcome=FAILED_UNCHANGED)
    assert failed.value.outcome == FAILED_UNCHANGED
    return failed.value.message


async def test_a_hook_raising_on_an_elixir_node_is_reported_in_elixir() -> None:
    hook = date_hook()
    node = ElixirNode(
        fail("Elixir.Date:new!", [2024, 13, 1], BadRpc(RAISED)),
        answer("Elixir.Exception:format", [Atom("error"), ARGUMENT_ERROR, STACK], FORMATTED),
        answer("lists:map", [INSPECT, [Atom("Elixir.Date"), 2024, 13, 1]],
               [b"Date", b"2024", b"13", b"1"]))
    message = await run_failing(node, hook)
    assert message == ("hook check: Date.new!(2024, 13, 1) failed on the node: "
                       + FORMATTED.decode().rstrip() + "; the release was not installed")
    node.assert_done()


async def test_a_hook_failing_on_an_erlang_node_reads_as_before() -> None:
    hook = Hook(name="warm", when=PRE_INSTALL, module="counter_hooks", function="run",
                args=(b"warm",), on_failure=FAIL)
    node = ScriptedNode([answer("counter_hooks:run", [b"warm"], (Atom("error"), Atom("cold")))])
    assert await run_failing(node, hook) == (
        'hook warm: counter_hooks:run(<<"warm">>) returned {error,cold}, not ok or {ok, _}; '
        "the release was not installed")
    node.assert_done()
