"""The gRPC face of the agent (`relctl.v1.Agent`, grpc.aio): turns requests into calls on the
node manager, agent values into messages, and the agent's errors into status codes.

Only this module (and later the interceptors) knows about grpc.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from relctl.v1 import AGENT_ERROR_METADATA
from relctl.v1 import agent_pb2 as pb
from relctl.v1 import agent_pb2_grpc

from . import __version__
from .errors import AgentError, NodeTimeout, NodeUnavailable, RequestError, UnknownNode
from .link import NodeState, PingResult
from .nodes import NodeManager
from .releases import Release

log = logging.getLogger("relctl.agent.service")

_STATUS = {
    "permanent": pb.RELEASE_STATUS_PERMANENT,
    "current": pb.RELEASE_STATUS_CURRENT,
    "old": pb.RELEASE_STATUS_OLD,
    "unpacked": pb.RELEASE_STATUS_UNPACKED,
}

_ERROR_METADATA = ((AGENT_ERROR_METADATA, __version__),)

# Leaves the client's deadline some room for the answer to travel back.
_DEADLINE_MARGIN = 0.25

_Ctx = grpc.aio.ServicerContext[Any, Any]
_T = TypeVar("_T")


def _timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def release_message(rel: Release) -> pb.Release:
    return pb.Release(name=rel.name, version=rel.version, status=_STATUS[rel.status],
                      running=rel.running, applications=rel.applications)


def node_message(state: NodeState) -> pb.NodeStatus:
    msg = pb.NodeStatus(node=state.name, up=state.up, error=state.error,
                        since=_timestamp(state.since))
    if state.refreshed_at is not None:
        msg.refreshed_at.CopyFrom(_timestamp(state.refreshed_at))
    if state.up:
        msg.releases.extend(release_message(r) for r in state.releases)
    return msg


def ping_message(result: PingResult) -> pb.NodePing:
    msg = pb.NodePing(node=result.name, up=result.up, error=result.error)
    if result.round_trip is not None:
        msg.round_trip.CopyFrom(_duration(result.round_trip))
    return msg


def _code_for(exc: AgentError) -> grpc.StatusCode:
    if isinstance(exc, UnknownNode):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, NodeTimeout):
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if isinstance(exc, NodeUnavailable):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, RequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


async def _answer(context: _Ctx, work: Awaitable[_T]) -> _T:
    """Await ``work``; the agent's errors become status codes, anything else INTERNAL."""
    try:
        return await work
    except AgentError as exc:
        await context.abort(_code_for(exc), str(exc), _ERROR_METADATA)
    except Exception:
        log.exception("internal error")
        await context.abort(grpc.StatusCode.INTERNAL,
                            "internal error in relctl-agent; its log (journalctl -u relctl-agent) "
                            "has the details", _ERROR_METADATA)


def _not_yet(rpc: str, lands_in: str) -> Callable[[Any, Any, _Ctx], Awaitable[NoReturn]]:
    async def handler(self: Any, request: Any, context: _Ctx) -> NoReturn:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                            f"relctl-agent {__version__} does not implement {rpc} yet "
                            f"({lands_in}); upgrade the agent", _ERROR_METADATA)
    handler.__name__ = rpc
    return handler


class AgentService:
    """Implements every RPC of relctl.v1.Agent; the ones not built yet answer UNIMPLEMENTED."""

    def __init__(self, nodes: NodeManager, *, rpc_timeout: float = 30.0) -> None:
        self._nodes = nodes
        self._rpc_timeout = rpc_timeout
        self._info = pb.AgentInfo(version=__version__, hostname=socket.gethostname())

    def add_to(self, server: grpc.aio.Server) -> None:
        agent_pb2_grpc.add_AgentServicer_to_server(self, server)

    def _timeout(self, context: _Ctx) -> float:
        """The client's remaining deadline (less a margin), capped by the agent's own."""
        remaining = context.time_remaining()
        if remaining is None:
            return self._rpc_timeout
        return max(0.05, min(self._rpc_timeout, remaining - _DEADLINE_MARGIN))

    async def Ping(self, request: pb.PingRequest, context: _Ctx) -> pb.PingResponse:
        results = await _answer(context, self._nodes.ping(request.node, self._timeout(context)))
        return pb.PingResponse(agent=self._info, nodes=_map(ping_message, results))

    async def ListNodes(self, request: pb.ListNodesRequest, context: _Ctx) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(agent=self._info,
                                    nodes=_map(node_message, self._nodes.snapshot()))

    async def GetReleases(self, request: pb.GetReleasesRequest,
                          context: _Ctx) -> pb.GetReleasesResponse:
        states = await _answer(context, self._nodes.refresh(request.node, self._timeout(context)))
        return pb.GetReleasesResponse(nodes=_map(node_message, states))

    ListOperations = _not_yet("ListOperations", "the operation journal comes with upgrades")
    GetOperation = _not_yet("GetOperation", "the operation journal comes with upgrades")
    Upload = _not_yet("Upload", "upgrades are the next milestone")
    Unpack = _not_yet("Unpack", "upgrades are the next milestone")
    CheckInstall = _not_yet("CheckInstall", "upgrades are the next milestone")
    Install = _not_yet("Install", "upgrades are the next milestone")
    MakePermanent = _not_yet("MakePermanent", "upgrades are the next milestone")
    Remove = _not_yet("Remove", "upgrades are the next milestone")
    Upgrade = _not_yet("Upgrade", "upgrades are the next milestone")
    Downgrade = _not_yet("Downgrade", "upgrades are the next milestone")
    ReloadConfig = _not_yet("ReloadConfig", "config reload comes after upgrades")


def _map(fn: Callable[[Any], _T], items: Iterable[Any]) -> list[_T]:
    return [fn(item) for item in items]


class ApiServer:
    """The agent's gRPC server, so that the daemon needs no grpc of its own."""

    def __init__(self, nodes: NodeManager, *, rpc_timeout: float = 30.0) -> None:
        # Without SO_REUSEPORT a second agent on the same port fails to start instead of
        # silently sharing the port with the first.
        self._server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        AgentService(nodes, rpc_timeout=rpc_timeout).add_to(self._server)

    def bind(self, address: str) -> None:
        """Listen on ``address`` (HOST:PORT); raises OSError when it cannot."""
        try:
            self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc reports bind failures this way
            raise OSError(str(exc)) from None

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
