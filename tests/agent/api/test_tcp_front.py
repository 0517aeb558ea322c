"""The TCP front (issue 23, item 7): calls pass through it with the caller's own address as
their peer; a listener and a peer address hold at most their caps; silent connections make
room for new ones and are closed after FIRST_BYTE_TIMEOUT; the caps leave descriptors for the
rest of the agent. A flood against a whole agent is tests/e2e/test_agent_flood_live.py."""

from __future__ import annotations

import asyncio
import logging
import socket

import grpc
import pytest

from agent.api import tcp_front
from agent.api.limits import (
    FDS_PER_CONNECTION,
    MAX_PER_PEER,
    MAX_TCP_CONNECTIONS,
    RESERVED_FDS,
    ConnectionCaps,
    connection_caps,
)
from agent.api.tcp_front import TcpFront, Throttled
from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc
from tests.tools.otp_procs import free_port


class _Peers(agent_pb2_grpc.AgentServicer):
    def __init__(self, front: TcpFront) -> None:
        self.front = front
        self.seen: list[str | None] = []

    async def ListNodes(self, request: pb.ListNodesRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListNodesResponse:
        self.seen.append(self.front.peer(context.peer()))
        return pb.ListNodesResponse()


async def _serve(caps: ConnectionCaps) -> tuple[TcpFront, grpc.aio.Server, _Peers]:
    front = TcpFront("127.0.0.1", free_port(), caps)
    server = grpc.aio.server()
    servicer = _Peers(front)
    agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
    server.add_insecure_port(front.inner_address)
    await server.start()
    await front.start()
    return front, server, servicer


async def _shut(front: TcpFront, server: grpc.aio.Server) -> None:
    front.stop_accepting()
    await server.stop(0)
    await front.stop()


async def _call(front: TcpFront) -> None:
    async with grpc.aio.insecure_channel(
            f"127.0.0.1:{front.port}", options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        await agent_pb2_grpc.AgentStub(ch).ListNodes(pb.ListNodesRequest(), timeout=5)


def _silent(front: TcpFront, source: str) -> socket.socket:
    """A connection from ``source`` (any 127/8 address is this host) that sends nothing."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", front.port))
    except BlockingIOError:
        pass
    return sock


async def _closed_by_front(sock: socket.socket, within: float = 3.0) -> bool:
    """Whether the front closed ``sock`` (EOF or reset) within ``within`` seconds."""
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1), within)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return data == b""


async def _settle(front: TcpFront, count: int) -> None:
    for _ in range(100):
        if front.connections == count:
            return
        await asyncio.sleep(0.02)
    assert front.connections == count


async def test_a_call_through_the_front_is_named_by_the_callers_address() -> None:
    front, server, servicer = await _serve(ConnectionCaps(8, 4))
    try:
        await _call(front)
        [peer] = servicer.seen
        assert peer is not None and peer.startswith("ipv4:127.0.0.1:")
        # grpc's own peer (the relay's abstract address) is not a TCP caller's.
        assert front.peer("ipv4:127.0.0.1:1") is None
    finally:
        await _shut(front, server)
    await _settle(front, 0)


async def test_one_address_holds_at_most_its_cap_and_others_still_get_in() -> None:
    front, server, servicer = await _serve(ConnectionCaps(per_listener=16, per_peer=3))
    held: list[socket.socket] = []
    try:
        held += [_silent(front, "127.0.0.2") for _ in range(3)]
        await _settle(front, 3)
        extra = _silent(front, "127.0.0.2")
        held.append(extra)
        assert await _closed_by_front(extra)
        assert front.connections == 3
        await _call(front)  # from 127.0.0.1: not that address's cap
        assert len(servicer.seen) == 1
    finally:
        for sock in held:
            sock.close()
        await _shut(front, server)


async def test_a_full_listener_closes_its_oldest_silent_connection_for_a_new_one() -> None:
    front, server, servicer = await _serve(ConnectionCaps(per_listener=4, per_peer=4))
    held: list[socket.socket] = []
    try:
        held += [_silent(front, f"127.0.0.{i}") for i in range(2, 6)]
        await _settle(front, 4)
        await _call(front)  # the listener was full of silent connections; a real call gets in
        assert len(servicer.seen) == 1
        assert await _closed_by_front(held[0])  # the oldest silent one made room
        assert front.connections <= 4
    finally:
        for sock in held:
            sock.close()
        await _shut(front, server)


async def test_a_connection_that_says_nothing_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tcp_front, "FIRST_BYTE_TIMEOUT", 0.5)
    front, server, _ = await _serve(ConnectionCaps(8, 8))
    sock = _silent(front, "127.0.0.2")
    try:
        await _settle(front, 1)
        assert await _closed_by_front(sock, within=5)
        await _settle(front, 0)
    finally:
        sock.close()
        await _shut(front, server)


async def test_a_taken_port_is_a_clear_error() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    front = TcpFront("127.0.0.1", taken.getsockname()[1], ConnectionCaps(8, 8))
    try:
        with pytest.raises(tcp_front.SocketError,
                           match=r"cannot listen on 127\.0\.0\.1:\d+ \(Address already in use\); "
                                 "is another agent running there\\?"):
            await front.start()
    finally:
        taken.close()
        await front.stop()


def test_the_caps_fit_the_descriptors_with_a_reserve() -> None:
    full = RESERVED_FDS + FDS_PER_CONNECTION * MAX_TCP_CONNECTIONS * 2
    assert connection_caps(full, 2) == ConnectionCaps(MAX_TCP_CONNECTIONS, MAX_PER_PEER)
    small = connection_caps(1024, 1)  # (1024 - 512) // 3 = 170
    assert (small.per_listener, small.per_peer) == (170, MAX_PER_PEER)
    assert small.per_listener * FDS_PER_CONNECTION + RESERVED_FDS <= 1024
    assert "raise LimitNOFILE to 2048 or more" in small.warning
    assert connection_caps(100, 1).per_listener == 1  # never 0: the listener still works


def test_repeated_warnings_are_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    throttled = Throttled(interval=3600)
    with caplog.at_level(logging.WARNING, logger="relctl.agent.tcp"):
        for _ in range(1000):
            throttled.note("cannot accept connections: Too many open files")
    assert [r.getMessage() for r in caplog.records] == [
        "cannot accept connections: Too many open files"]
