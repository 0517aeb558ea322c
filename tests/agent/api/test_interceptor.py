"""The interceptor's bracket around a handler: the audit record is written however the
handler ends, even when grpc finalises a streaming handler from another task, and a stream
whose client left after reading its finished operation is recorded as what it was."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from agent.api.audit import AuditLog
from agent.api.auth import Authenticator, Identity
from agent.api.interceptor import CALLER, AccessInterceptor, AuditedCall, serving
from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc
from tests.tools.polls import until


class _Finishes:
    def __init__(self) -> None:
        self.finished: list[tuple[str, BaseException | None]] = []

    def finish(self, call: AuditedCall, context: Any, failed: BaseException | None) -> None:
        self.finished.append((call.rpc, failed))


async def test_a_stream_closed_from_another_context_is_still_recorded() -> None:
    access = _Finishes()
    call = AuditedCall("Upgrade", Identity("op", "operator", "ipv4:127.0.0.1:1"), audited=True)
    seen: list[Identity | None] = []

    async def handler() -> AsyncIterator[int]:
        with serving(access, call, None):  # type: ignore[arg-type]
            seen.append(CALLER.get())
            yield 1
            yield 2

    stream = handler()
    # Started in one context (grpc's task for the call), closed in another (the loop's
    # async-generator finaliser, or a task grpc spawns when the client leaves).
    await asyncio.create_task(anext(stream), context=contextvars.copy_context())  # type: ignore[call-arg]
    await asyncio.create_task(stream.aclose(), context=contextvars.copy_context())  # type: ignore[call-arg]
    assert seen == [call.identity]
    assert len(access.finished) == 1 and access.finished[0][0] == "Upgrade"
    assert isinstance(access.finished[0][1], GeneratorExit)
    assert CALLER.get() is None


async def test_the_caller_is_cleared_after_a_plain_call() -> None:
    access = _Finishes()
    call = AuditedCall("Upload", Identity("op", "operator", "unix:"), audited=True)
    with serving(access, call, None):  # type: ignore[arg-type]
        assert CALLER.get() is call.identity
    assert CALLER.get() is None and access.finished == [("Upload", None)]


class _Streams(agent_pb2_grpc.AgentServicer):
    """Upgrade answers at once with a finished operation, then has a moment of bookkeeping
    left: the window in which a client that read ``finished`` and left closes the stream."""

    def __init__(self) -> None:
        self.next_id = 0

    async def Upgrade(self, request: pb.UpgradeRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProgressEvent]:
        self.next_id += 1
        op = pb.Operation(id=self.next_id, node=request.node, outcome=pb.OUTCOME_SUCCEEDED)
        yield pb.ProgressEvent(operation_id=op.id, finished=op)
        await asyncio.sleep(0.05)


async def test_streams_whose_clients_leave_after_finished_are_each_recorded_ok(
        tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    server = grpc.aio.server(interceptors=[
        AccessInterceptor(Authenticator([], insecure_no_auth=True), audit)])
    agent_pb2_grpc.add_AgentServicer_to_server(_Streams(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            for _ in range(20):
                call = stub.Upgrade(pb.UpgradeRequest(node="a@h", version="0.0.2"))
                async for event in call:
                    if event.HasField("finished"):
                        call.cancel()  # the client has what it needs and leaves
                        break
        # The server side sees the last ones leave.
        await until(lambda: len(audit.tail(100)) == 20, what="20 streams recorded")
    finally:
        await server.stop(1)
    records = audit.tail(100)
    audit.close()
    assert sorted((r.operation_id, r.result, r.detail) for r in records) == [
        (i, "ok", f"operation {i}: succeeded") for i in range(1, 21)]


class _Endless(agent_pb2_grpc.AgentServicer):
    """Upgrade sends its operation's id, then waits: a stream still running at shutdown."""

    async def Upgrade(self, request: pb.UpgradeRequest,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ProgressEvent]:
        yield pb.ProgressEvent(operation_id=7)
        await asyncio.sleep(60)


async def test_a_stream_cut_by_the_agents_stop_is_not_the_client_going_away(
        tmp_path: Path) -> None:
    """Issue 22: the record says the agent stopped, not "the client went away"."""
    audit = AuditLog(tmp_path / "audit.jsonl")
    access = AccessInterceptor(Authenticator([], insecure_no_auth=True), audit)
    server = grpc.aio.server(interceptors=[access])
    agent_pb2_grpc.add_AgentServicer_to_server(_Endless(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = agent_pb2_grpc.AgentStub(channel)
            left = stub.Upgrade(pb.UpgradeRequest(node="a@h", version="0.0.2"))
            await left.read()
            left.cancel()  # this client does go away
            await until(lambda: len(audit.tail(10)) == 1, what="the left stream recorded")
            cut = stub.Upgrade(pb.UpgradeRequest(node="a@h", version="0.0.2"))
            await cut.read()
            access.stopping = True
            await server.stop(0)
            await until(lambda: len(audit.tail(10)) == 2, what="the cut stream recorded")
    finally:
        await server.stop(0)
    records = audit.tail(10)
    audit.close()
    assert sorted((r.result, r.detail) for r in records) == [
        ("CANCELLED", "the client went away"),
        ("UNAVAILABLE", "the agent stopped before the call ended")]
    assert {r.operation_id for r in records} == {7}
