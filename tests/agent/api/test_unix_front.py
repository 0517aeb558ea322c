"""The Unix socket front: the caller's uid reaches the servicer through grpc's peer string, the
socket is set up safely, and nothing stays behind."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import grpc
import pytest

from agent.api.unix_front import SocketError, UnixFront
from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc


class _Peers(agent_pb2_grpc.AgentServicer):
    def __init__(self, front: UnixFront) -> None:
        self.front = front
        self.seen: list[tuple[str, tuple[int, str] | None]] = []

    async def ListNodes(self, request: pb.ListNodesRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListNodesResponse:
        self.seen.append((context.peer(), self.front.caller(context.peer())))
        return pb.ListNodesResponse()


async def test_callers_are_named_by_uid_and_forgotten_when_they_leave(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    front = UnixFront(path, mode=0o660)
    server = grpc.aio.server()
    servicer = _Peers(front)
    agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
    server.add_insecure_port(front.inner_address)
    await server.start()
    await front.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
        for _ in range(2):
            # Own subchannels: else grpc's global pool may hand the second channel the first
            # one's still-open connection, and both calls come from one peer.
            async with grpc.aio.insecure_channel(
                    f"unix:{path}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                await agent_pb2_grpc.AgentStub(channel).ListNodes(pb.ListNodesRequest())
        (peer1, found1), (peer2, found2) = servicer.seen
        assert peer1.startswith("unix-abstract:relctl-") and peer1 != peer2
        assert found1 is not None and found1[0] == os.getuid()
        assert found1[1].startswith(f"unix:{path} (pid ")
        # The private socket, reached directly, names nobody: the interceptor refuses it.
        async with grpc.aio.insecure_channel(front.inner_address) as channel:
            await agent_pb2_grpc.AgentStub(channel).ListNodes(pb.ListNodesRequest())
        assert servicer.seen[2][1] is None
        assert front.caller("ipv4:127.0.0.1:1") is None
    finally:
        front.stop_accepting()
        await server.stop(0)
        await front.stop()
    assert not path.exists()
    assert not Path(front.inner_address.removeprefix("unix:")).parent.exists()
    assert front.caller(peer1) is None  # forgotten once the connection ended


async def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # left behind by an agent that died
    first = UnixFront(path)
    await first.start()
    try:
        second = UnixFront(path)
        with pytest.raises(SocketError, match="another process listens on .*another agent"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


async def test_socket_mistakes_say_what_to_fix(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-socket"
    plain.write_text("x")
    front = UnixFront(plain)
    with pytest.raises(SocketError, match="exists and is not a socket"):
        await front.start()
    await front.stop()
    assert plain.exists()  # never deleted: it was not ours
    missing = UnixFront(tmp_path / "no-such-dir" / "agent.sock")
    with pytest.raises(SocketError, match="does not exist .*RuntimeDirectory=relctl"):
        await missing.start()
    await missing.stop()


async def _serve(tmp_path: Path) -> tuple[UnixFront, grpc.aio.Server, _Peers]:
    front = UnixFront(tmp_path / "agent.sock", mode=0o660)
    server = grpc.aio.server()
    servicer = _Peers(front)
    agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
    server.add_insecure_port(front.inner_address)
    await server.start()
    await front.start()
    return front, server, servicer


async def _calls_by_us(front: UnixFront, servicer: _Peers, count: int) -> None:
    """``count`` calls through the public socket, each one named by our own uid."""
    for _ in range(count):
        async with grpc.aio.insecure_channel(f"unix:{front.path}") as channel:
            await agent_pb2_grpc.AgentStub(channel).ListNodes(pb.ListNodesRequest(), timeout=5)
    assert len(servicer.seen) == count
    assert all(found is not None and found[0] == os.getuid() for _, found in servicer.seen)


async def _shut(front: UnixFront, server: grpc.aio.Server) -> None:
    front.stop_accepting()
    await server.stop(0)
    await front.stop()


async def test_bytes_sent_before_the_relay_exists_are_relayed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python before 3.11.4 ignores pause_reading() in connection_made (gh-103607): the caller's
    first bytes then arrive before the inner connection exists. Made so here on purpose."""
    import asyncio.selector_events as selector_events

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "pause_reading",
                        lambda self: None)
    front, server, servicer = await _serve(tmp_path)
    try:
        await _calls_by_us(front, servicer, 20)
    finally:
        await _shut(front, server)


async def test_abstract_names_are_random_and_a_squatted_one_is_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.api import unix_front

    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind("\0relctl-squatted")
    names = iter(["relctl-squatted"])
    real = unix_front.abstract_name
    monkeypatch.setattr(unix_front, "abstract_name", lambda: next(names, None) or real())
    front, server, servicer = await _serve(tmp_path)
    try:
        await _calls_by_us(front, servicer, 5)
        # grpc may share one connection between channels: each connection has its own name.
        peers = {peer.removeprefix("unix-abstract:") for peer, _ in servicer.seen}
        assert "relctl-squatted" not in peers
        # 128 random bits each: nothing in one name tells the next.
        assert all(len(p) == len("relctl-") + 32 for p in peers)
        assert len({p[len("relctl-"):][:8] for p in peers}) == len(peers)
    finally:
        squatter.close()
        await _shut(front, server)
