"""An operation's call that fails with an error nobody classified (the agent's INTERNAL: a bug of
its own; grpc's UNKNOWN: a handler that raised) before the agent named the operation: relctl
cannot know whether it started, so it exits 70 (never 1, "node unchanged") and says where to
look (the agent's log, relctl operations).

A real agent has no internal error on demand, so a fake servicer answers here, over a real
gRPC server on a Unix socket, to the real `relctl` process."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from relctl.v1 import AGENT_ERROR_METADATA, agent_pb2_grpc
from relctl.v1 import agent_pb2 as pb
from tests.tools.agent_proc import relctl

# What the agent says for an exception of its own (agent/api/service.py _answer), verbatim.
AGENT_SAYS = ("internal error in relctl-agent; its log (journalctl -u relctl-agent) has the "
              "details")
AGENT_MARK = ((AGENT_ERROR_METADATA, "test"),)


class FailingAgent(agent_pb2_grpc.AgentServicer):
    """Fails every operation call before naming an operation: Install and Upgrade as the agent
    does on an internal error, Downgrade as grpc does for a handler that raised (UNKNOWN, no
    agent marker). Records the requests it got."""

    def __init__(self) -> None:
        self.requests: list[object] = []

    def Install(self, request: pb.InstallRequest, context: grpc.ServicerContext
                ) -> pb.OperationResult:
        self.requests.append(request)
        context.set_trailing_metadata(AGENT_MARK)
        context.abort(grpc.StatusCode.INTERNAL, AGENT_SAYS)
        raise AssertionError("abort() raises")

    def Upgrade(self, request: pb.UpgradeRequest, context: grpc.ServicerContext
                ) -> Iterator[pb.ProgressEvent]:
        self.requests.append(request)
        context.set_trailing_metadata(AGENT_MARK)
        context.abort(grpc.StatusCode.INTERNAL, AGENT_SAYS)
        yield pb.ProgressEvent()  # never reached: makes this a generator, as a stream is

    def Downgrade(self, request: pb.DowngradeRequest, context: grpc.ServicerContext
                  ) -> Iterator[pb.ProgressEvent]:
        self.requests.append(request)
        context.abort(grpc.StatusCode.UNKNOWN, "Unexpected <class 'KeyError'>: 'x'")
        yield pb.ProgressEvent()


@pytest.fixture
def failing_agent() -> Iterator[tuple[str, FailingAgent]]:
    servicer = FailingAgent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    agent_pb2_grpc.add_AgentServicer_to_server(servicer, server)
    # A short path: a Unix socket's name has room for 107 bytes, pytest's tmp_path may not fit.
    with tempfile.TemporaryDirectory(prefix="relctl-fake-") as directory:
        address = f"unix:{Path(directory) / 'agent.sock'}"
        server.add_insecure_port(address)
        server.start()
        try:
            yield address, servicer
        finally:
            server.stop(grace=None).wait(10)


@pytest.mark.parametrize(("argv", "what"), [
    (("install", "0.0.2"), "the install"),
    (("upgrade", "0.0.2"), "the upgrade"),
])
def test_an_agents_internal_error_on_an_operation_exits_70_and_says_where_to_look(
        failing_agent: tuple[str, FailingAgent], argv: tuple[str, ...], what: str) -> None:
    address, servicer = failing_agent
    result = relctl(*argv, agents=[address])
    assert result.returncode == 70, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"relctl: agent {address}: {AGENT_SAYS} (during {what}); relctl cannot tell whether the "
        "operation started: relctl operations lists it if it did, and relctl operation N shows "
        "how it ended")
    assert len(servicer.requests) == 1  # asked once; not retried


def test_grpcs_unknown_on_an_operation_exits_70_and_points_at_the_agents_log(
        failing_agent: tuple[str, FailingAgent]) -> None:
    address, servicer = failing_agent
    result = relctl("downgrade", "0.0.1", agents=[address])
    assert result.returncode == 70, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"relctl: agent {address}: unknown: Unexpected <class 'KeyError'>: 'x' (during the "
        "downgrade); the agent's log (journalctl -u relctl-agent) may say why; relctl cannot "
        "tell whether the operation started: relctl operations lists it if it did, and relctl "
        "operation N shows how it ended")
    assert len(servicer.requests) == 1
