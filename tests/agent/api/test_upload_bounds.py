"""Upload bounds over gRPC: a client that stops sending loses its upload after the idle
expiry (and hears why if it comes back), and an upload over the total quota is refused with
the config key to change."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.api.service import AgentService
from agent.config import NodeConfig
from agent.nodes.link import NodeLink
from agent.nodes.manager import NodeManager
from agent.operations.journal import Journal
from agent.operations.runner import Operations
from agent.operations.uploads import UploadStore
from relctl.v1 import agent_pb2_grpc
from relctl.v1 import agent_pb2 as pb
from tests.tools.otp_procs import free_port
from tests.tools.polls import until
from tests.tools.settings import LINK, UPLOADS, settings


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[agent_pb2_grpc.AgentStub]:
    config = NodeConfig("ghost@localhost", Path("/dev/null"), "cookie", epmd_port=free_port())
    link = NodeLink(config, **settings(LINK, connect_timeout=1.0, reconnect_max_delay=1.0))
    nodes = NodeManager([link])
    journal = Journal.open(tmp_path / "journal.sqlite3")
    operations = Operations(journal, nodes, rpc_timeout=2.0)
    uploads = UploadStore(tmp_path / "uploads", **settings(UPLOADS, uploads_max_bytes=1000,
                                                                upload_idle_expiry=0.5))
    sweeper = asyncio.create_task(uploads.sweep_forever(0.1))
    server = grpc.aio.server()
    AgentService(nodes, operations, uploads, rpc_timeout=2.0).add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield agent_pb2_grpc.AgentStub(channel)
    finally:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        await server.stop(0)
        journal.close()


def _header(size: int) -> pb.UploadRequest:
    return pb.UploadRequest(header=pb.UploadHeader(node="ghost@localhost", version="0.0.2",
                                                   size=size, sha256="0" * 64))


async def test_an_idle_upload_expires_and_its_client_is_told(
        stub: agent_pb2_grpc.AgentStub, tmp_path: Path) -> None:
    resume = asyncio.Event()

    async def parts() -> AsyncIterator[pb.UploadRequest]:
        yield _header(100)
        yield pb.UploadRequest(chunk=b"x" * 10)
        await resume.wait()
        yield pb.UploadRequest(chunk=b"x" * 10)
    call = asyncio.ensure_future(stub.Upload(parts(), timeout=20))
    await until(lambda: list((tmp_path / "uploads").iterdir()), what="the upload started")
    assert len(list((tmp_path / "uploads").iterdir())) == 1
    started = time.monotonic()
    # Idle past the expiry (0.5 s): its file goes.
    await until(lambda: not list((tmp_path / "uploads").iterdir()), what="the upload expired")
    assert time.monotonic() - started >= 0.2  # not at once: the expiry, not something else
    resume.set()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "agent.upload_idle_expiry" in (info.value.details() or "")
    assert list((tmp_path / "uploads").iterdir()) == []


async def test_a_stalled_upload_without_a_deadline_ends_when_it_expires(
        stub: agent_pb2_grpc.AgentStub, tmp_path: Path) -> None:
    never = asyncio.Event()

    async def parts() -> AsyncIterator[pb.UploadRequest]:
        yield _header(100)
        yield pb.UploadRequest(chunk=b"x" * 10)
        await never.wait()  # stalls for good: only the agent can end this call
        yield pb.UploadRequest(chunk=b"x" * 10)

    started = asyncio.get_running_loop().time()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await asyncio.wait_for(stub.Upload(parts()), 10)  # no deadline on the call itself
    assert asyncio.get_running_loop().time() - started < 5  # expiry 0.5 s, sweep every 0.1 s
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "expired after 0.5 s without data (agent.upload_idle_expiry); the agent removed " \
           "what it had received: send the tarball again" in (info.value.details() or "")
    assert list((tmp_path / "uploads").iterdir()) == []


async def test_an_upload_over_the_quota_is_refused_naming_the_key(
        stub: agent_pb2_grpc.AgentStub, tmp_path: Path) -> None:
    async def parts() -> AsyncIterator[pb.UploadRequest]:
        yield _header(1001)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Upload(parts(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "quota is 1000 bytes (agent.uploads_max_bytes)" in details
    assert list((tmp_path / "uploads").iterdir()) == []
