"""The bridge against a real node started from the real counter release (no fakes)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from bridge import (
    Atom,
    BadRpc,
    BridgeTimeout,
    ConnectionLost,
    CookieRejected,
    EpmdUnreachable,
    Node,
    NodeNotFound,
    Pid,
)
from bridge.handshake import ClientHandshake
from tests.tools.otp_procs import erl_eval, free_port
from tests.tools.polls import until_async

pytestmark = pytest.mark.otp


def bridge_node(target: Any) -> Node:
    return Node(cookie=target.cookie, epmd_port=target.epmd_port)


async def test_joins_as_a_hidden_node(counter_node: Any) -> None:
    node = bridge_node(counter_node)
    async with node.connect(counter_node.name, timeout=5.0) as conn:
        assert await conn.call("erlang", "node", []) == Atom(counter_node.name)
        assert Atom(node.name) in await conn.call("erlang", "nodes", [Atom("hidden")])
        assert Atom(node.name) not in await conn.call("erlang", "nodes", [])
        # And from an independent Erlang probe, while we are connected:
        seen = await asyncio.to_thread(erl_eval, counter_node, "{erlang:nodes(), erlang:nodes(hidden)}")
        visible, hidden = seen.split("],", 1)
        assert node.name not in visible and node.name in hidden


async def test_epmd_names_lists_the_hosts_nodes(counter_node: Any) -> None:
    names = await bridge_node(counter_node).names("localhost")
    alive = counter_node.name.split("@")[0]
    address = await bridge_node(counter_node).lookup(counter_node.name)
    assert names[alive] == address.port > 0 and not address.hidden and address.highest_version >= 6


async def test_releases_match_what_the_node_reports(counter_node: Any) -> None:
    async with bridge_node(counter_node).connect(counter_node.name) as conn:
        releases = await conn.call("release_handler", "which_releases", [], timeout=30.0)
    assert [(name, vsn, status) for name, vsn, _libs, status in releases] == [
        ("counter", "0.0.1", Atom("permanent"))]
    independent = await asyncio.to_thread(erl_eval, counter_node, "[{N, V, S} || {N, V, _, S} <- release_handler:which_releases()]")
    assert independent.strip() == '[{"counter","0.0.1",permanent}]'


async def test_wrong_cookie_is_reported_as_such(counter_node: Any) -> None:
    with pytest.raises(CookieRejected, match=f"cookie rejected by {counter_node.name}"):
        await Node(cookie="not-the-cookie", epmd_port=counter_node.epmd_port).connect(counter_node.name)
    async with bridge_node(counter_node).connect(counter_node.name) as conn:  # the node is fine
        assert await conn.call("erlang", "is_alive", []) is True


async def test_unknown_node_names_the_epmd_it_asked(counter_node: Any) -> None:
    with pytest.raises(NodeNotFound) as caught:
        await bridge_node(counter_node).connect("nosuch@localhost")
    message = str(caught.value)
    assert f"not registered with epmd on localhost:{counter_node.epmd_port}" in message
    assert counter_node.name.split("@")[0] in message  # lists what is registered there


async def test_epmd_down_is_reported(counter_node: Any) -> None:
    port = free_port()
    with pytest.raises(EpmdUnreachable, match=f"epmd not reachable on localhost:{port}"):
        await Node(cookie="x", epmd_port=port).connect("counter@localhost", timeout=3.0)


async def test_badrpc_becomes_bad_rpc(counter_node: Any) -> None:
    async with bridge_node(counter_node).connect(counter_node.name) as conn:
        with pytest.raises(BadRpc) as caught:
            await conn.call("erlang", "error", [Atom("boom")])
        assert caught.value.reason[0] == Atom("EXIT") and caught.value.reason[1][0] == Atom("boom")
        with pytest.raises(BadRpc, match="nosuchmod:f/0 on .* failed.*undef"):
            await conn.call("nosuchmod", "f", [])
        assert await conn.call("erlang", "abs", [-5]) == 5  # the connection survives


async def test_a_thousand_concurrent_calls_on_one_connection(counter_node: Any) -> None:
    async with bridge_node(counter_node).connect(counter_node.name) as conn:
        results = await asyncio.gather(*(conn.call("erlang", "+", [i, 1000]) for i in range(1000)))
        assert results == [i + 1000 for i in range(1000)]
        echoed = await asyncio.gather(*(conn.call("erlang", "list_to_tuple", [[Atom("n"), i, b"x" * i]])
                                        for i in range(200)))
        assert echoed == [(Atom("n"), i, b"x" * i) for i in range(200)]


SLEEPING = (Atom("current_function"), (Atom("timer"), Atom("sleep"), 1))


async def sleepers(conn: Any) -> list[Pid]:
    """The node's processes in timer:sleep/1, found over the connection itself."""
    pids = await conn.call("erlang", "processes", [])
    where = await asyncio.gather(*(conn.call("erlang", "process_info", [p, Atom("current_function")])
                                   for p in pids))
    return [pid for pid, at in zip(pids, where) if at == SLEEPING]


async def test_deadline_and_late_reply(counter_node: Any) -> None:
    async with bridge_node(counter_node).connect(counter_node.name) as conn:
        started = time.monotonic()
        with pytest.raises(BridgeTimeout, match="timer:sleep/1 on .* did not answer within 0.3 s"):
            await conn.call("timer", "sleep", [1500], timeout=0.3)
        assert time.monotonic() - started < 1.0
        [sleeper] = await sleepers(conn)  # the call's process runs on
        # Once it has ended, its late reply (if the node still sends one) came before the
        # answer to any call made after: one stream, in order.
        await until_async(lambda: negated(conn.call("erlang", "is_process_alive", [sleeper])),
                          what="the timed-out call's process ends")
        assert await conn.call("erlang", "abs", [-1]) == 1
        assert conn.pending_calls == 0


async def sleeping_count(conn: Any, count: int) -> bool:
    return len(await sleepers(conn)) == count


async def negated(answer: Awaitable[Any]) -> bool:
    return not await answer


async def test_killed_node_fails_every_pending_call_at_once(counter_node: Any) -> None:
    conn = await bridge_node(counter_node).connect(counter_node.name)
    calls = [asyncio.ensure_future(conn.call("timer", "sleep", [30_000], timeout=60)) for _ in range(5)]
    await until_async(lambda: sleeping_count(conn, 5), what="the five calls run on the node")
    started = time.monotonic()
    os.kill(counter_node.pid, signal.SIGKILL)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert time.monotonic() - started < 2.0
    assert all(isinstance(r, ConnectionLost) for r in results), results
    assert "connection to" in str(results[0])
    with pytest.raises(ConnectionLost):
        await conn.call("erlang", "node", [])


async def test_ticks_keep_an_idle_link_up(node_factory: Any) -> None:
    target = node_factory(name="ticky@localhost", extra_args=("-kernel", "net_ticktime", "2"))
    async with Node(cookie=target.cookie, epmd_port=target.epmd_port, tick_time=2).connect(target.name) as conn:
        await asyncio.sleep(8)  # four net_ticktime periods of silence from the application
        assert not conn.is_closed
        assert Atom(conn.local_node) in await conn.call("erlang", "nodes", [Atom("hidden")])


async def test_without_ticks_the_peer_drops_us(node_factory: Any) -> None:
    """The control for the test above: it would fail if ticks did not matter. A hidden node
    that completes the handshake (the bridge's own, sans-IO) and then sends nothing, not even
    an answer to the node's ticks, is dropped after net_ticktime."""
    target = node_factory(name="strict@localhost", extra_args=("-kernel", "net_ticktime", "2"))
    us = bridge_node(target)
    address = await us.lookup(target.name)
    reader, writer = await asyncio.open_connection("localhost", address.port)
    try:
        handshake = ClientHandshake(our_name=us.name, peer_name=target.name,
                                    cookie=target.cookie, creation=us.creation)
        writer.write(handshake.start())
        while handshake.result is None:
            data = await asyncio.wait_for(reader.read(4096), timeout=5)
            assert data, "the node closed the connection during the handshake"
            writer.write(handshake.receive_data(data))
        connected = time.monotonic()
        ticks = 0
        while await asyncio.wait_for(reader.read(4096), timeout=10):  # b"": the node closed it
            ticks += 1
        silent_for = time.monotonic() - connected
    finally:
        writer.close()
    # Dropped for the silence (about net_ticktime), not at once for a bad handshake.
    assert ticks >= 1 and 1.0 <= silent_for <= 6.0, (ticks, silent_for)


async def test_full_hot_upgrade_and_downgrade_through_release_handler(counter_node: Any, release_build: Any) -> None:
    """0.0.1 -> 0.0.2 -> 0.0.1 on a running node: state migrated up and down, count kept."""
    root = Path(counter_node.root)
    tarball = release_build.tarballs["0.0.2"]
    unpack_name = release_build.unpack_names["0.0.2"]
    shutil.copy(tarball, root / "releases" / f"{unpack_name}.tar.gz")

    async with bridge_node(counter_node).connect(counter_node.name) as conn:
        pid_before = await conn.call("erlang", "whereis", [Atom("counter")])
        for _ in range(5):
            await conn.call("counter", "incr", [])
        assert await conn.call("sys", "get_state", [Atom("counter")]) == 5

        assert await conn.call("release_handler", "unpack_release", [unpack_name], timeout=60) == (Atom("ok"), "0.0.2")
        assert await conn.call("release_handler", "check_install_release", ["0.0.2"], timeout=60) == (
            Atom("ok"), "0.0.1", [])
        assert await conn.call("release_handler", "install_release", ["0.0.2", [(Atom("update_paths"), True)]],
                               timeout=120) == (Atom("ok"), "0.0.1", [])
        state = await conn.call("sys", "get_state", [Atom("counter")])
        assert isinstance(state, dict) and state[Atom("count")] == 5
        assert await conn.call("counter", "incr", []) == 6
        assert await conn.call("release_handler", "make_permanent", ["0.0.2"], timeout=60) == Atom("ok")
        statuses = {vsn: status for _, vsn, _, status in await conn.call("release_handler", "which_releases", [])}
        assert statuses == {"0.0.2": Atom("permanent"), "0.0.1": Atom("old")}

        assert await conn.call("release_handler", "install_release", ["0.0.1"], timeout=120) == (
            Atom("ok"), "0.0.1", [])
        assert await conn.call("sys", "get_state", [Atom("counter")]) == 6
        assert await conn.call("release_handler", "make_permanent", ["0.0.1"], timeout=60) == Atom("ok")
        # The same process served throughout: a hot upgrade, not a restart.
        assert await conn.call("erlang", "whereis", [Atom("counter")]) == pid_before
    assert counter_node.running()
