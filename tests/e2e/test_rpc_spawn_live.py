"""Calls made as erpc makes them, against the real OTP node: the outcomes are the ones the rex
path gives (what the agent relies on), and a call given up on leaves no monitor on the node."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import pytest

from bridge import Atom, BadRpc, BridgeTimeout, Node
from tests.tools.otp_procs import erl_eval
from tests.tools.polls import until_async

pytestmark = pytest.mark.otp

EXIT = Atom("EXIT")


async def equal(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


async def outcome(conn: Any, module: str, function: str, args: list[Any]) -> Any:
    try:
        return ("value", await conn.call(module, function, args, timeout=10))
    except BadRpc as exc:
        return ("badrpc", exc.reason)


async def test_spawned_calls_give_what_rex_gives(counter_node: Any) -> None:
    spawning = Node(cookie=counter_node.cookie, epmd_port=counter_node.epmd_port)
    rex = Node(cookie=counter_node.cookie, epmd_port=counter_node.epmd_port, spawn_calls=False)
    cases: list[tuple[str, str, list[Any]]] = [
        ("erlang", "node", []),
        ("erlang", "throw", [Atom("foo")]),
        ("erlang", "exit", [Atom("bar")]),
        ("erlang", "error", [Atom("baz")]),
        ("erlang", "list_to_tuple", [[EXIT, Atom("x")]]),   # returns {'EXIT', x}: a value
        ("erlang", "atom_to_list", [1]),                    # badarg with its stack
        ("nosuchmod", "f", []),                             # undef
        ("io", "format", ["written by a spawned call~n"]),  # I/O goes to the node's user
    ]
    async with spawning.connect(counter_node.name) as fast, rex.connect(counter_node.name) as slow:
        assert fast.spawn_calls and not slow.spawn_calls  # OTP 25 has DFLAG_SPAWN; the switch forces rex
        got = [await outcome(fast, *case) for case in cases]
        assert got == [await outcome(slow, *case) for case in cases]
    assert got[0] == ("value", Atom(counter_node.name)) and got[1] == ("value", Atom("foo"))
    assert got[2] == ("badrpc", (EXIT, Atom("bar")))
    assert got[3][0] == "badrpc" and got[3][1][0] == EXIT and got[3][1][1][0] == Atom("baz")
    assert got[4] == ("value", (EXIT, Atom("x"))) and got[7] == ("value", Atom("ok"))


async def test_calls_run_side_by_side_on_the_node(counter_node: Any) -> None:
    """Through rex they would too (rex spawns a worker per call), but erpc needs no rex at all:
    with rex suspended, spawned calls still answer."""
    node = Node(cookie=counter_node.cookie, epmd_port=counter_node.epmd_port)
    async with node.connect(counter_node.name) as conn:
        await conn.call("sys", "suspend", [Atom("rex")])
        try:
            sleeps = [conn.call("timer", "sleep", [500]) for _ in range(20)]
            started = asyncio.get_running_loop().time()
            assert await asyncio.gather(*sleeps) == [Atom("ok")] * 20
            assert asyncio.get_running_loop().time() - started < 3.0
        finally:
            await conn.call("sys", "resume", [Atom("rex")])


SLEEPERS = ("length([P || P <- erlang:processes(), "
            "erlang:process_info(P, current_function) =:= {current_function, {timer, sleep, 1}}])")
WATCHED = ("length([M || P <- erlang:processes(), "
           "erlang:process_info(P, current_function) =:= {current_function, {timer, sleep, 1}}, "
           "{monitored_by, Ms} <- [erlang:process_info(P, monitored_by)], M <- Ms, "
           "node(M) =:= '{node}'])")


async def test_a_timed_out_call_leaves_no_monitor_on_the_node(counter_node: Any) -> None:
    node = Node(cookie=counter_node.cookie, epmd_port=counter_node.epmd_port)
    watched = WATCHED.replace("{node}", node.name)
    async with node.connect(counter_node.name) as conn:
        call = asyncio.ensure_future(conn.call("timer", "sleep", [20_000], timeout=6.0))

        async def watching() -> str:
            return (await asyncio.to_thread(erl_eval, counter_node, watched)).strip()
        # The call's process is spawned and monitored by us (the probe is one erl run each).
        await until_async(lambda: equal(watching(), "1"), what="our monitor on the call's process",
                          timeout=5.0, interval=0.05)
        with pytest.raises(BridgeTimeout):
            await call
        # The process runs on (erpc does not kill it either), but we no longer watch it: the
        # DEMONITOR is on its way, so poll for it rather than guess how long it takes.
        await until_async(lambda: equal(watching(), "0"), what="the monitor is taken off",
                          timeout=10.0, interval=0.05)
        assert int((await asyncio.to_thread(erl_eval, counter_node, SLEEPERS)).strip()) >= 1
        assert conn.pending_calls == 0 and conn.spawned_held == 0
        assert await conn.call("erlang", "abs", [-1]) == 1
