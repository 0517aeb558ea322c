"""Request strings are bounded and plain before anything of them is journaled, audited or
logged (issue 13, "Bounded strings"): a real gRPC server on loopback with the access
interceptor, the servicer, a journal and an audit trail; the node is unreachable (no OTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from agent.api.audit import AuditLog
from agent.api.auth import Authenticator
from agent.api.interceptor import AccessInterceptor
from agent.api.limits import MAX_TEXT, bounded, field_problem, request_problem
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
from tests.tools.settings import LINK, UPLOADS, settings


@pytest.mark.parametrize("version", ["0.0.2", "1.2.3-rc.1+build.5", "2024.01.02~x", "v1_0"])
def test_plain_versions_pass(version: str) -> None:
    assert field_problem("version", version) is None


@pytest.mark.parametrize("version", ["0.0.2\nforged", "1" * 129, "../0.0.2", "0.0.2 ", "-1",
                                     "é", "0.0.2\x00"])
def test_other_versions_are_refused_with_a_short_repr(version: str) -> None:
    problem = field_problem("version", version)
    assert problem is not None and "is not a release version" in problem
    assert "\n" not in problem and len(problem) < 300


def test_nodes_names_and_other_strings() -> None:
    assert field_problem("node", "counter@localhost") is None
    assert field_problem("node", "a@10.0.0.5") is None
    assert "is not a node name" in (field_problem("node", "counter") or "")
    assert "is not a node name" in (field_problem("node", "a@b\nc") or "")
    assert field_problem("file_name", "x" * (MAX_TEXT + 1)) is not None
    assert field_problem("file_name", "tab\there") is not None
    assert field_problem("file_name", "counter-0.0.2.tar.gz") is None
    assert "64 hexadecimal" in (field_problem("sha256", "zz") or "")
    assert request_problem({"header": {"version": "x\ny"}}) is not None
    assert bounded({"header": {"file_name": "x" * 5000}})["header"]["file_name"] == \
        "x" * MAX_TEXT + "..."


@dataclass
class Agent:
    stub: agent_pb2_grpc.AgentStub
    journal: Journal
    audit: AuditLog


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[Agent]:
    config = NodeConfig("ghost@localhost", Path("/dev/null"), "cookie", epmd_port=free_port())
    link = NodeLink(config, **settings(LINK, connect_timeout=1.0, reconnect_max_delay=1.0))
    nodes = NodeManager([link])
    journal = Journal.open(tmp_path / "journal.sqlite3")
    audit = AuditLog(tmp_path / "audit.jsonl")
    service = AgentService(nodes, Operations(journal, nodes, rpc_timeout=2.0),
                           UploadStore(tmp_path / "uploads", **settings(UPLOADS)), rpc_timeout=2.0,
                           audit=audit)
    server = grpc.aio.server(interceptors=[
        AccessInterceptor(Authenticator([], insecure_no_auth=True), audit)])
    service.add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}",
                options=[("grpc.max_send_message_length", 4 * 1024**2)]) as channel:
            yield Agent(agent_pb2_grpc.AgentStub(channel), journal, audit)
    finally:
        await server.stop(0)
        await nodes.stop()
        journal.close()
        audit.close()


@pytest.mark.parametrize("version", ["9" * 1024**2, "0.0.2\n2026 INFO relctl.agent: forged"])
async def test_bad_versions_are_refused_before_the_journal(agent: Agent, version: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in agent.stub.Upgrade(pb.UpgradeRequest(node="ghost@localhost",
                                                            version=version), timeout=5):
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details() or ""
    assert "is not a release version" in details and len(details) < 400
    assert agent.journal.list(limit=10) == []
    [record] = agent.audit.tail(10)
    assert (record.rpc, record.result) == ("Upgrade", "INVALID_ARGUMENT")
    assert len(record.arguments["version"]) <= MAX_TEXT + 3  # kept, cut


async def test_an_upload_header_is_checked_too(agent: Agent) -> None:
    async def requests() -> AsyncIterator[pb.UploadRequest]:
        yield pb.UploadRequest(header=pb.UploadHeader(node="ghost@localhost", version="a\nb",
                                                      size=1, sha256="0" * 64))
        yield pb.UploadRequest(chunk=b"x")

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await agent.stub.Upload(requests(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    records = agent.audit.tail(10)
    assert [(r.rpc, r.result) for r in records] == [("Upload", "INVALID_ARGUMENT")]
