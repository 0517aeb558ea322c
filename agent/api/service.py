"""The gRPC face of the agent (`relctl.v1.Agent`, grpc.aio): turns requests into calls on the
node manager, agent values into messages, and the agent's errors into status codes.

Only this module and the interceptor (agent/api/interceptor.py) know about grpc.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc

from agent import __version__
from agent.config import ApiTls
from agent.errors import AgentError, Conflict, NodeTimeout, NodeUnavailable, NotFound, RequestError
from agent.nodes import NodeManager
from agent.operations import Operations, UploadStore
from agent.operations import Upload as StoredUpload
from agent.release import (
    ConfigReload,
    Options,
    ReleaseEngine,
    ReloadOptions,
    Requested,
    Result,
    operation_options,
    verify_running,
)
from relctl.v1 import AGENT_ERROR_METADATA, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, agent_pb2_grpc
from relctl.v1 import agent_pb2 as pb

from .audit import AuditLog, AuditRecord
from .interceptor import CALLER
from .messages import node_message, operation_message, ping_message, progress_message, requested
from .limits import HANDSHAKE_TIMEOUT, IDLE_TIMEOUT

log = logging.getLogger("relctl.agent.api.service")

_ERROR_METADATA = ((AGENT_ERROR_METADATA, __version__),)

# Leaves the client's deadline some room for the answer to travel back.
_DEADLINE_MARGIN = 0.25

_Ctx = grpc.aio.ServicerContext[Any, Any]
_T = TypeVar("_T")


class _Claim:
    """An upload an Unpack or Upgrade request names: deleted once the operation that used it
    ends (unpack copied what it needs), or when the request is refused before any operation
    started (a client never reuses an upload; a refused upgrade must not keep its tarball)."""

    def __init__(self, uploads: UploadStore | None, upload_id: str) -> None:
        self._uploads = uploads
        self._id = upload_id
        self._started = False

    def __enter__(self) -> _Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._started:
            self._discard()

    def _discard(self) -> None:
        if self._id and self._uploads is not None:
            self._uploads.discard(self._id)

    def consume(self, work: Callable[[ReleaseEngine], Awaitable[Result]]
                ) -> Callable[[ReleaseEngine], Awaitable[Result]]:
        """``work``, after which the upload is deleted. Once the operation has called it (its
        task is being created), the operation owns the upload."""
        async def run(engine: ReleaseEngine) -> Result:
            try:
                return await work(engine)
            finally:
                self._discard()

        def start(engine: ReleaseEngine) -> Awaitable[Result]:
            self._started = True
            return run(engine)
        return start


def _code_for(exc: AgentError) -> grpc.StatusCode:
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, Conflict):
        return grpc.StatusCode.ABORTED
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


class AgentService:
    """Implements every RPC of relctl.v1.Agent."""

    def __init__(self, nodes: NodeManager, operations: Operations | None = None,
                 uploads: UploadStore | None = None, *, rpc_timeout: float,
                 audit: AuditLog | None = None) -> None:
        self._nodes = nodes
        self._audit = audit
        self._ops = operations
        self._uploads = uploads
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

    # --- read-only ----------------------------------------------------------------------

    async def Ping(self, request: pb.PingRequest, context: _Ctx) -> pb.PingResponse:
        results = await _answer(context, self._nodes.ping(request.node, self._timeout(context)))
        return pb.PingResponse(agent=self._info, nodes=_map(ping_message, results))

    async def ListNodes(self, request: pb.ListNodesRequest, context: _Ctx) -> pb.ListNodesResponse:
        return pb.ListNodesResponse(agent=self._info,
                                    nodes=_map(node_message, self._nodes.snapshot()))

    async def GetReleases(self, request: pb.GetReleasesRequest,
                          context: _Ctx) -> pb.GetReleasesResponse:
        states = await _answer(context, self._nodes.refresh(request.node, self._timeout(context)))
        reply = pb.GetReleasesResponse(nodes=_map(node_message, states))
        if self._ops is not None:
            for node in reply.nodes:
                for rel in node.releases:
                    # Unpacked or old: on disk, and installable again without a tarball.
                    if rel.status in (pb.RELEASE_STATUS_UNPACKED, pb.RELEASE_STATUS_OLD):
                        rel.sha256 = self._ops.journal.unpacked_sha256(node.node,
                                                                       rel.version) or ""
        return reply

    async def Verify(self, request: pb.VerifyRequest, context: _Ctx) -> pb.VerifyResponse:
        async def run() -> pb.VerifyResponse:
            name = self._node_name(request.node)
            found = await verify_running(self._nodes.get(name), timeout=self._timeout(context))
            report = found.report
            return pb.VerifyResponse(
                node=name, release=found.release, version=found.version, mode=report.mode,
                applications=len(report.apps), modules=report.modules,
                mismatch_count=report.problem_count + len(found.processes),
                mismatches=[*(pb.ModuleMismatch(application=f"{p.app}-{p.vsn}",
                                                module=p.module, problem=p.kind, detail=detail)
                              for p, detail in zip(report.problems, found.details)),
                            *(pb.ModuleMismatch(application=what, module=module,
                                                problem=kind, detail=detail)
                              for what, module, kind, detail in found.processes)])
        return await _answer(context, run())

    async def ListOperations(self, request: pb.ListOperationsRequest,
                             context: _Ctx) -> pb.ListOperationsResponse:
        ops = self._operations()
        records = ops.journal.list(node=request.node or None, limit=_list_limit(request.limit),
                                   before_id=request.before_id or None)
        return pb.ListOperationsResponse(operations=_map(operation_message, records))

    async def GetOperation(self, request: pb.GetOperationRequest, context: _Ctx) -> pb.Operation:
        ops = self._operations()
        record = await _answer(context, _now(lambda: ops.get(request.id)))
        return operation_message(record)

    # --- mutating -----------------------------------------------------------------------

    def _operations(self) -> Operations:
        if self._ops is None:
            raise RuntimeError("this AgentService has no operations (read-only test setup)")
        return self._ops

    def _node_name(self, name: str) -> str:
        """The request's node; may be omitted when the agent manages exactly one."""
        if name:
            self._nodes.get(name)
            return name
        names = self._nodes.names
        if len(names) == 1:
            return names[0]
        raise RequestError(f"this agent manages {len(names)} nodes ({', '.join(names) or 'none'}); "
                           "pass --node NAME")

    def _start(self, context: _Ctx, node: str, kind: str, version: str,
               work: Callable[[ReleaseEngine], Awaitable[Result]], needs_version: bool = True
               ) -> int:
        if needs_version and not version:
            raise RequestError("no release version given")
        caller = CALLER.get()
        requested_by = (f"{caller.name} from {caller.peer}" if caller is not None
                        else context.peer() or "unknown")
        return self._operations().begin(node, kind, version, requested_by, work)

    async def _unary(self, context: _Ctx, node: str, kind: str, version: str,
                     work: Callable[[ReleaseEngine], Awaitable[Result]]) -> pb.OperationResult:
        async def run() -> pb.OperationResult:
            op_id = self._start(context, self._node_name(node), kind, version, work)
            return pb.OperationResult(operation=operation_message(
                await self._operations().wait(op_id)))
        return await _answer(context, run())

    async def _stream(self, context: _Ctx, node: str, kind: str, version: str,
                      work: Callable[[ReleaseEngine], Awaitable[Result]],
                      needs_version: bool = True) -> AsyncIterator[pb.ProgressEvent]:
        async def begin() -> int:
            return self._start(context, self._node_name(node), kind, version, work,
                               needs_version)
        op_id = await _answer(context, begin())
        # The id first, alone: a client whose stream breaks before the first step (the agent
        # restarted) can still follow the operation by its id.
        yield pb.ProgressEvent(operation_id=op_id)
        # The operation runs on its own: if this client goes away, it still finishes.
        async for event in self._operations().follow(op_id):
            yield progress_message(event)

    async def Upload(self, request_iterator: AsyncIterator[pb.UploadRequest],
                     context: _Ctx) -> pb.UploadResponse:
        async def receive() -> pb.UploadResponse:
            if self._uploads is None:
                raise RuntimeError("this AgentService has no upload store")
            first = await anext(aiter(request_iterator), None)
            if first is None or not first.HasField("header"):
                raise RequestError("an upload starts with its header (node, version, size, sha256)")
            header = first.header
            uploads = self._uploads
            writer = await uploads.open(self._node_name(header.node), header.version,
                                        header.size, header.sha256)
            try:
                # Each part raced against the upload's expiry: a stalled client is told, and
                # its call ends (agent.upload_idle_expiry), even without a deadline of its own.
                parts = aiter(request_iterator)
                while (part := await writer.receive(anext(parts, None))) is not None:
                    writer.write(part.chunk)
                # Cancelled meanwhile (the client went away), it still removes what it made.
                upload = await uploads.finish(writer)
            finally:
                writer.abort()  # a no-op once finish() has started: it cleans up itself
            tb = upload.tarball
            return pb.UploadResponse(upload_id=upload.id, size=tb.size, sha256=tb.sha256,
                                     release_name=tb.release_name, version=tb.version)
        return await _answer(context, receive())

    def _upload(self, node: str, upload_id: str) -> StoredUpload | None:
        """The upload, claimed: the caller discards it whatever happens (_Claim)."""
        if not upload_id:
            return None
        if self._uploads is None:
            raise RuntimeError("this AgentService has no upload store")
        return self._uploads.get(upload_id, self._node_name(node), claim=True)

    def _options(self, node: str, asked: Requested) -> Options:
        """The operation's options: the node's config, with what the request overrides."""
        return operation_options(self._nodes.config(self._node_name(node)), asked)

    async def Unpack(self, request: pb.UnpackRequest, context: _Ctx) -> pb.OperationResult:
        with _Claim(self._uploads, request.upload_id) as claim:
            upload = await _answer(context, _now(lambda: self._upload(request.node,
                                                                      request.upload_id)))
            if upload is None:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    "unpack needs an uploaded tarball (relctl unpack VSN "
                                    "--tarball F)", _ERROR_METADATA)
            assert upload is not None  # abort() raises

            async def unpack(engine: ReleaseEngine) -> Result:
                return await engine.unpack(request.version, upload.tarball,
                                           replace=requested(request).replace,
                                           ahead=upload.staged)
            work = claim.consume(unpack)
            return await self._unary(context, request.node, "unpack", request.version, work)

    async def CheckInstall(self, request: pb.CheckInstallRequest,
                           context: _Ctx) -> pb.OperationResult:
        return await self._unary(context, request.node, "check_install", request.version,
                                 lambda engine: engine.check(request.version))

    async def Install(self, request: pb.InstallRequest, context: _Ctx) -> pb.OperationResult:
        options = await _answer(context, _now(lambda: self._options(
            request.node, requested(request, permanent=False))))
        return await self._unary(context, request.node, "install", request.version,
                                 lambda engine: engine.install(request.version, options))

    async def MakePermanent(self, request: pb.MakePermanentRequest,
                            context: _Ctx) -> pb.OperationResult:
        return await self._unary(context, request.node, "make_permanent", request.version,
                                 lambda engine: engine.make_permanent(request.version))

    async def Remove(self, request: pb.RemoveRequest, context: _Ctx) -> pb.OperationResult:
        return await self._unary(context, request.node, "remove", request.version,
                                 lambda engine: engine.remove(request.version))

    async def Upgrade(self, request: pb.UpgradeRequest,
                      context: _Ctx) -> AsyncIterator[pb.ProgressEvent]:
        def prepare() -> tuple[StoredUpload | None, Options]:
            return (self._upload(request.node, request.upload_id),
                    self._options(request.node, requested(request)))
        with _Claim(self._uploads, request.upload_id) as claim:
            upload, options = await _answer(context, _now(prepare))
            tarball, ahead = (upload.tarball, upload.staged) if upload else (None, None)
            work = claim.consume(lambda engine: engine.upgrade(request.version, tarball, options,
                                                               ahead=ahead))
            async for event in self._stream(context, request.node, "upgrade", request.version,
                                            work):
                yield event

    async def Downgrade(self, request: pb.DowngradeRequest,
                        context: _Ctx) -> AsyncIterator[pb.ProgressEvent]:
        options = await _answer(context, _now(lambda: self._options(request.node,
                                                                  requested(request))))
        async for event in self._stream(context, request.node, "downgrade", request.version,
                                        lambda engine: engine.downgrade(request.version, options)):
            yield event

    async def ReloadConfig(self, request: pb.ReloadConfigRequest,
                           context: _Ctx) -> AsyncIterator[pb.ProgressEvent]:
        options = ReloadOptions(dry_run=request.dry_run, show_values=request.show_values)

        def work(engine: ReleaseEngine) -> Awaitable[Result]:
            reload = ConfigReload(engine.node, engine.steps, rpc_timeout=engine.rpc_timeout)
            return reload.run(options)
        async for event in self._stream(context, request.node, "reload_config", "", work,
                                        needs_version=False):
            yield event


    async def ListAudit(self, request: pb.ListAuditRequest,
                        context: _Ctx) -> pb.ListAuditResponse:
        audit = self._audit
        if audit is None:
            raise RuntimeError("this AgentService has no audit trail")
        records = await asyncio.to_thread(audit.tail, _list_limit(request.limit),
                                          node=request.node or None)
        return pb.ListAuditResponse(records=_map(_audit_message, records))


def _audit_message(record: AuditRecord) -> pb.AuditRecord:
    message = pb.AuditRecord(peer=record.peer, identity=record.identity,
                             certificate=record.certificate, rpc=record.rpc, node=record.node,
                             arguments=json.dumps(dict(record.arguments), sort_keys=True),
                             result=record.result, detail=record.detail,
                             operation_id=record.operation_id)
    message.time.FromNanoseconds(int(record.time * 1e9))
    return message


def _list_limit(asked: int) -> int:
    """The entries a list call answers with: the contract's default for 0, at most its max."""
    return min(asked if asked > 0 else DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)


async def _now(fn: Callable[[], _T]) -> _T:
    """Run a synchronous check inside _answer, so its errors map to status codes too."""
    return fn()


def _map(fn: Callable[[Any], _T], items: Iterable[Any]) -> list[_T]:
    return [fn(item) for item in items]


# relctl pings its agent while a call is open, to notice a silent host (a cut link) within its
# --host-timeout (agent.client.channel.keepalive_options, at most one ping a second). grpc's
# default takes a ping more often than every 5 minutes on a call that sends no data (a health
# soak) as abuse and closes the connection; these accept relctl's.
KEEPALIVE_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 500),
    ("grpc.keepalive_permit_without_calls", 1),
)

# A connection that finishes no TLS handshake and HTTP/2 preface in time (grpc's default: 120 s),
# or holds no call for long, is closed: each one holds descriptors (agent.api.tcp_front).
CONNECTION_SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.server_handshake_timeout_ms", int(HANDSHAKE_TIMEOUT * 1000)),
    ("grpc.max_connection_idle_ms", int(IDLE_TIMEOUT * 1000)),
)


class ApiServer:
    """The agent's gRPC server, so that the daemon needs no grpc of its own."""

    def __init__(self, service: AgentService,
                 interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> None:
        # Without SO_REUSEPORT a second agent on the same port fails to start instead of
        # silently sharing the port with the first.
        self._server = grpc.aio.server(interceptors=list(interceptors),
                                       options=[("grpc.so_reuseport", 0),
                                                *KEEPALIVE_SERVER_OPTIONS,
                                                *CONNECTION_SERVER_OPTIONS])
        service.add_to(self._server)

    def bind(self, address: str, tls: ApiTls | None = None) -> None:
        """Listen on ``address`` (HOST:PORT or unix:PATH), with TLS when ``tls`` is given;
        raises OSError when it cannot."""
        try:
            if tls is None:
                self._server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.key, tls.cert)], root_certificates=tls.client_ca,
                    require_client_auth=tls.client_ca is not None)
                self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc reports bind failures this way
            raise OSError(str(exc)) from None

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float) -> None:
        await self._server.stop(grace)
