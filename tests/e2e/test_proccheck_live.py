"""The process checks on a real node (agent/release/proccheck.py). The held-funs search walks
a state only when its external format names one of the suspect modules, or is too large to
copy (MaxCopy), so the filter may skip work but never a fun it was asked to find; and every
check runs at low priority, in its own process."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from agent.release.proccheck import HELD_FUNS, evaluate
from bridge import Atom, Connection, Node
from tests.tools.otp_procs import NodeProc, erl_eval

pytestmark = pytest.mark.otp

# counter's state becomes {State, Fun, Padding}: Fun is made by erl_eval (the module the
# search is told to suspect or not), Padding a binary of the given size.
HOLD = ("sys:replace_state(counter, fun(S) -> {S, fun(X) -> X end, binary:copy(<<0>>, %d)} end), "
        "ok.")

# Every fun is stale to this search: what it finds is decided by the filter alone.
SEARCH = ("Procs = [whereis(counter)], Stale = fun(_, _) -> true end, "
          + HELD_FUNS + "[M || {_, M, _, _} <- Held].")


class Probe:
    """A bridge connection as the checks' Caller (a probe never waits for a restart)."""

    def __init__(self, conn: Connection, name: str) -> None:
        self._conn = conn
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def call(self, module: str, function: str, args: Sequence[Any] = (), *,
                   timeout: float | None = None) -> Any:
        return await self._conn.call(module, function, list(args), timeout=timeout or 10.0)

    async def wait_for_restart(self, *, down_within: float, up_within: float) -> bool:
        raise AssertionError("the search does not restart the node")


async def held(node: NodeProc, suspects: list[str], max_copy: int) -> Any:
    async with Node(cookie=node.cookie, epmd_port=node.epmd_port).connect(
            node.name, timeout=5.0) as conn:
        return await evaluate(Probe(conn, node.name), SEARCH, [(Atom("Suspects"), [Atom(m) for m in suspects]),
                                             (Atom("MaxCopy"), max_copy)], timeout=10.0)


async def test_a_state_naming_a_suspect_is_walked_and_one_naming_none_is_not(
        counter_node: NodeProc) -> None:
    assert erl_eval(counter_node, HOLD % 10) == "ok"
    assert await held(counter_node, ["erl_eval"], 1 << 20) == [Atom("erl_eval")]
    # The same fun, which this search would call stale, is not looked for: no suspect named.
    assert await held(counter_node, ["counter_sp"], 1 << 20) == []
    assert await held(counter_node, [], 1 << 20) == []


async def test_a_state_too_large_to_copy_is_walked_whatever_it_names(
        counter_node: NodeProc) -> None:
    assert erl_eval(counter_node, HOLD % 4096) == "ok"
    assert await held(counter_node, ["counter_sp"], 1024) == [Atom("erl_eval")]
    assert await held(counter_node, ["counter_sp"], 1 << 20) == []


async def test_the_checks_run_at_low_priority_in_their_own_process(
        counter_node: NodeProc) -> None:
    # They yield to the application's processes; the node's own processes keep theirs.
    async with Node(cookie=counter_node.cookie, epmd_port=counter_node.epmd_port).connect(
            counter_node.name, timeout=5.0) as conn:
        probe = Probe(conn, counter_node.name)
        asked = "{process_info(self(), priority), process_info(whereis(rex), priority)}."
        for _ in range(2):  # parsed on the node, then from the remembered forms
            assert await evaluate(probe, asked, [], timeout=10.0) == (
                (Atom("priority"), Atom("low")), (Atom("priority"), Atom("normal")))
