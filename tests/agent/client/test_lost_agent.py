"""What relctl says when the agent goes away mid-operation, or relctl stops waiting for it: that
the operation may go on and how to see how it ended, with no TLS advice for a Unix socket and
no timeout worded as a lost connection (issue 13). The real thing, with an agent killed by
SIGKILL, is tests/e2e/test_lost_agent_live.py."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from agent.client.channel import transport_hint
from agent.client.common import Settings, connection_lost, describe_rpc_error, operation_error
from agent.client.status import CliError, ExitCode
from agent.client.transfer import follow
from relctl.v1 import agent_pb2 as pb
from tests.tools.grpc_errors import FailedCall

SOCKET = "unix:/run/relctl/agent.sock"
TCP = "10.0.0.7:7079"
# What grpc says, seen with a server killed mid-call and with nothing listening.
LOST = "Stream removed (Socket closed)"
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: unix:/run/relctl/agent.sock: "
           "Connection refused")
TLS_MISMATCH = ("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:10.0.0.7:7079: "
                "Socket closed")


def test_a_unix_socket_gets_no_tls_advice() -> None:
    for details in (LOST, "Socket closed", "handshake failed", "certificate verify failed"):
        assert "--ca" not in transport_hint(SOCKET, details), details
    assert "nothing listens on this socket" in transport_hint(SOCKET, REFUSED)
    # TCP keeps its TLS advice: a plain client to a TLS agent sees "Socket closed".
    assert "pass --ca FILE" in transport_hint(TCP, TLS_MISMATCH)
    # A refused handshake through the agent's TCP front may end in a reset instead.
    reset = "recvmsg:Connection reset by peer (104)"
    assert "--cert and --key too" in transport_hint(TCP, reset)
    assert "--ca" not in transport_hint(SOCKET, reset)


def test_a_connection_lost_mid_call_is_told_apart_from_no_connection() -> None:
    assert connection_lost(FailedCall(grpc.StatusCode.UNAVAILABLE, LOST))
    assert not connection_lost(FailedCall(grpc.StatusCode.UNAVAILABLE, REFUSED))
    assert not connection_lost(FailedCall(grpc.StatusCode.UNAVAILABLE, TLS_MISMATCH))
    # The agent's own "node is down" is an answer, not a lost connection.
    assert not connection_lost(FailedCall(grpc.StatusCode.UNAVAILABLE, "node x is down: ...",
                                            from_agent=True))
    assert not connection_lost(FailedCall(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))


def test_a_read_that_lost_the_agent_says_so_without_tls_advice() -> None:
    problem = describe_rpc_error(SOCKET, FailedCall(grpc.StatusCode.UNAVAILABLE, LOST), 10.0)
    assert problem.code == ExitCode.UNAVAILABLE
    assert problem.message == (f"agent {SOCKET} closed the connection before answering ({LOST}): "
                               "it may have stopped or restarted (systemctl status relctl-agent)")


def test_an_operation_that_lost_the_agent_may_go_on_and_names_relctl_operation_n() -> None:
    error = operation_error(SOCKET, FailedCall(grpc.StatusCode.UNAVAILABLE, LOST), 3600.0,
                            op_id=7, what="the upgrade")
    assert error.code == ExitCode.FAILED_CHANGED
    assert str(error) == (
        f"lost the connection to agent {SOCKET} during the upgrade ({LOST}); operation 7 may go "
        "on without relctl; once the agent answers again (after its restart, if it stopped), "
        "see how it ended: relctl operation 7")
    assert "--ca" not in str(error) and "not reachable" not in str(error)


def test_an_operation_whose_id_is_not_known_yet_points_at_the_list() -> None:
    error = operation_error(SOCKET, FailedCall(grpc.StatusCode.UNAVAILABLE, LOST), 3600.0,
                            what="the install")
    assert error.code == ExitCode.FAILED_CHANGED
    assert "during the install" in str(error) and "may have started and go on" in str(error)
    assert "relctl operations lists it and relctl operation N shows how it ended" in str(error)


def test_a_timeout_is_worded_as_a_timeout_with_the_deadline_it_had() -> None:
    error = operation_error(TCP, FailedCall(grpc.StatusCode.DEADLINE_EXCEEDED,
                                              "Deadline Exceeded"), 3600.0, op_id=3,
                            what="the upgrade")
    assert str(error).startswith(f"the upgrade did not end within 3600 s, the time relctl waits "
                                 f"for an operation on agent {TCP}; operation 3 may go on")
    assert "lost" not in str(error) and "connection" not in str(error)


def test_an_answer_of_the_agent_is_passed_on_as_before() -> None:
    error = operation_error(SOCKET, FailedCall(grpc.StatusCode.ABORTED, "operation 1 (upgrade) "
                                                 "is in progress", from_agent=True), 3600.0)
    assert (str(error), error.code) == (f"agent {SOCKET}: operation 1 (upgrade) is in progress",
                                        ExitCode.BUSY)
    refused = operation_error(SOCKET, FailedCall(grpc.StatusCode.UNAVAILABLE, REFUSED), 3600.0)
    assert refused.code == ExitCode.UNAVAILABLE and "not reachable" in str(refused)


def test_following_an_operation_reports_its_id_when_the_stream_breaks() -> None:
    def events() -> Iterator[pb.ProgressEvent]:
        yield pb.ProgressEvent(operation_id=12, step=pb.Step(name="preflight"))
        raise FailedCall(grpc.StatusCode.UNAVAILABLE, LOST)

    with pytest.raises(CliError) as info:
        follow(Settings(output="json"), SOCKET, events(), what="the upgrade")
    assert info.value.code == ExitCode.FAILED_CHANGED
    assert str(info.value).endswith("see how it ended: relctl operation 12")


# --- work that may go on is never 1 (issue 25, item 4) -------------------------------------------

def test_a_failure_after_the_operation_started_may_go_on_whatever_its_status() -> None:
    # The agent named operation 9, then the call failed with the agent's own INTERNAL: the
    # operation was under way, so relctl cannot say the node is unchanged.
    error = operation_error(SOCKET, FailedCall(grpc.StatusCode.INTERNAL, "journal write failed",
                                               from_agent=True), 3600.0, op_id=9,
                            what="the downgrade")
    assert error.code == ExitCode.FAILED_CHANGED
    assert str(error) == (
        f"agent {SOCKET}: journal write failed (during the downgrade); operation 9 may go on "
        "without relctl; once the agent answers, see how it ended: relctl operation 9")


class _RestartedAgent:
    """The agent after its restart, answering GetOperation with ``error``."""

    def __init__(self, error: grpc.RpcError) -> None:
        self.error = error
        self.asked: list[int] = []

    def GetOperation(self, request: pb.GetOperationRequest, timeout: float) -> pb.Operation:
        self.asked.append(request.id)
        raise self.error


def test_an_agent_that_comes_back_refusing_the_operation_read_leaves_it_going_on() -> None:
    def events() -> Iterator[pb.ProgressEvent]:
        yield pb.ProgressEvent(operation_id=12, step=pb.Step(name="preflight"))
        raise FailedCall(grpc.StatusCode.UNAVAILABLE, LOST)

    # Its token was rotated while it restarted: it answers, but not with the operation.
    agent = _RestartedAgent(FailedCall(grpc.StatusCode.UNAUTHENTICATED, "bad token",
                                       from_agent=True))
    with pytest.raises(CliError) as info:
        follow(Settings(output="json"), SOCKET, events(), what="the upgrade",
               stub=agent)  # type: ignore[arg-type]  # only GetOperation is called
    assert agent.asked == [12]
    assert info.value.code == ExitCode.FAILED_CHANGED  # not 8: the upgrade may go on
    assert str(info.value).endswith("operation 12 may go on without relctl; once the agent "
                                    "answers, see how it ended: relctl operation 12")


def test_ctrl_c_before_the_agent_named_the_operation_is_130_and_points_at_the_list() -> None:
    def events() -> Iterator[pb.ProgressEvent]:
        raise KeyboardInterrupt
        yield pb.ProgressEvent()  # a generator: the interrupt comes while waiting for it

    with pytest.raises(CliError) as info:
        follow(Settings(), SOCKET, events(), what="the upgrade")
    assert info.value.code == ExitCode.INTERRUPTED
    assert str(info.value) == ("stopped before the agent named the upgrade; it may have started "
                               "and go on on the agent (relctl operations lists it)")


def test_a_stream_the_agent_ends_early_may_go_on() -> None:
    def events() -> Iterator[pb.ProgressEvent]:
        yield pb.ProgressEvent(operation_id=4, step=pb.Step(name="install"))

    with pytest.raises(CliError) as info:
        follow(Settings(output="json"), SOCKET, events())
    assert info.value.code == ExitCode.FAILED_CHANGED
