"""The gRPC service over a real loopback socket, with nodes that cannot be reached (no OTP
needed): answers, status codes, and the agent's error metadata."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from agent.api.audit import AuditLog, AuditRecord
from agent.api.service import AgentService
from agent.config import NodeConfig
from agent.nodes.link import NodeLink
from agent.nodes.manager import NodeManager
from agent.operations.journal import Journal
from agent.operations.runner import Operations
from agent.operations.uploads import UploadStore
from relctl.v1 import AGENT_ERROR_METADATA, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, agent_pb2_grpc
from relctl.v1 import agent_pb2 as pb
from tests.tools.otp_procs import free_port
from tests.tools.settings import LINK, UPLOADS, settings


@pytest.fixture
async def stub(tmp_path: Path) -> AsyncIterator[agent_pb2_grpc.AgentStub]:
    # A node whose epmd port has nothing listening: it stays down, with the reason.
    config = NodeConfig("ghost@localhost", Path("/dev/null"), "cookie", epmd_port=free_port())
    link = NodeLink(config, **settings(LINK, connect_timeout=1.0, reconnect_max_delay=1.0))
    nodes = NodeManager([link])
    journal = Journal.open(tmp_path / "journal.sqlite3")
    operations = Operations(journal, nodes, rpc_timeout=2.0)
    uploads = UploadStore(tmp_path / "uploads", **settings(UPLOADS))
    server = grpc.aio.server()
    AgentService(nodes, operations, uploads, rpc_timeout=2.0).add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    nodes.start()
    await nodes.tried(5.0)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield agent_pb2_grpc.AgentStub(channel)
    finally:
        await server.stop(0)
        await nodes.stop()
        journal.close()


async def test_list_nodes_shows_a_down_node_with_its_reason(stub: agent_pb2_grpc.AgentStub) -> None:
    reply = await stub.ListNodes(pb.ListNodesRequest(), timeout=5)
    [node] = reply.nodes
    assert (node.node, node.up) == ("ghost@localhost", False)
    assert node.error.startswith("epmd not reachable on localhost:")
    assert reply.agent.version


async def test_get_releases_of_a_down_node_is_an_answer_not_an_error(
        stub: agent_pb2_grpc.AgentStub) -> None:
    reply = await stub.GetReleases(pb.GetReleasesRequest(node="ghost@localhost"), timeout=5)
    [node] = reply.nodes
    assert not node.up and not node.releases and "epmd not reachable" in node.error


async def test_unknown_node_is_not_found_with_the_agent_metadata(
        stub: agent_pb2_grpc.AgentStub) -> None:
    call = stub.GetReleases(pb.GetReleasesRequest(node="nosuch@localhost"), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == (
        "this agent does not manage node nosuch@localhost (it manages: ghost@localhost); "
        "check --node, or add the node to the agent's config")
    assert AGENT_ERROR_METADATA in dict(info.value.trailing_metadata() or ())


async def test_ping_says_why_the_node_did_not_answer(stub: agent_pb2_grpc.AgentStub) -> None:
    reply = await stub.Ping(pb.PingRequest(), timeout=5)
    [node] = reply.nodes
    assert not node.up and not node.HasField("round_trip")
    assert "epmd not reachable" in node.error


async def test_a_config_reload_of_a_down_node_is_refused(stub: agent_pb2_grpc.AgentStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.ReloadConfig(pb.ReloadConfigRequest(dry_run=True), timeout=5):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "ghost@localhost" in (info.value.details() or "")


async def test_operations_on_a_down_node_are_refused_before_anything_starts(
        stub: agent_pb2_grpc.AgentStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Upgrade(pb.UpgradeRequest(version="0.0.2"), timeout=5):
            pass
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (info.value.details() or "").startswith("node ghost@localhost is down: epmd not reachable")
    listed = await stub.ListOperations(pb.ListOperationsRequest(), timeout=5)
    assert list(listed.operations) == []


async def test_unknown_operation_is_not_found(stub: agent_pb2_grpc.AgentStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetOperation(pb.GetOperationRequest(id=42), timeout=5)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no operation 42" in (info.value.details() or "")


async def test_an_upload_must_start_with_its_header(stub: agent_pb2_grpc.AgentStub) -> None:
    async def parts() -> AsyncIterator[pb.UploadRequest]:
        yield pb.UploadRequest(chunk=b"data")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Upload(parts(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "an upload starts with its header" in (info.value.details() or "")


async def test_an_upload_with_a_wrong_checksum_is_refused_and_not_kept(
        stub: agent_pb2_grpc.AgentStub, tmp_path: Path) -> None:
    async def parts() -> AsyncIterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(node="ghost@localhost", version="0.0.2",
                                                      size=4, sha256="0" * 64))
        yield pb.UploadRequest(chunk=b"data")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Upload(parts(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sha256 mismatch" in (info.value.details() or "")
    assert list((tmp_path / "uploads").iterdir()) == []


async def test_a_list_call_answers_the_contracts_default_and_at_most_its_max(
        tmp_path: Path) -> None:
    """ListAudit and ListOperations: a limit of 0 (relctl sends its --limit, whose default is
    the same constant) is DEFAULT_LIST_LIMIT entries, a larger one than MAX_LIST_LIMIT is cut."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    for i in range(MAX_LIST_LIMIT + 5):
        audit.append(AuditRecord(time=1700000000.0 + i, peer="unix:uid=0", identity="t",
                                 rpc="Upgrade", node="a@h", result="ok"))
    journal = Journal.open(tmp_path / "journal.sqlite3")
    for _ in range(DEFAULT_LIST_LIMIT + 5):
        journal.start("a@h", "upgrade", "1", "2", "t")
    nodes = NodeManager([])
    server = grpc.aio.server()
    AgentService(nodes, Operations(journal, nodes, rpc_timeout=2.0), rpc_timeout=2.0,
                 audit=audit).add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            for limit, expected in ((0, DEFAULT_LIST_LIMIT), (3, 3),
                                    (MAX_LIST_LIMIT + 1, MAX_LIST_LIMIT)):
                trail = await stub.ListAudit(pb.ListAuditRequest(limit=limit), timeout=10)
                assert len(trail.records) == expected, limit
            listed = await stub.ListOperations(pb.ListOperationsRequest(), timeout=10)
            assert len(listed.operations) == DEFAULT_LIST_LIMIT
    finally:
        await server.stop(0)
        audit.close()
        journal.close()
