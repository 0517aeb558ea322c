"""Every gRPC call passes here first: who is calling (token, Unix uid, or anonymous on an
insecure loopback listener), whether the role allows the RPC, and an audit record for each
mutating call and each refused call.

The identity is handed to the servicer through :data:`CALLER` (a context variable), so the
journal names the same caller as the audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from agent import __version__
from relctl.v1 import AGENT_ERROR_METADATA
from relctl.v1 import agent_pb2 as pb

from .audit import AuditLog, AuditRecord, without_secrets
from .auth import Authenticator, AuthError, Identity, needs_audit
from .limits import bounded, request_problem

log = logging.getLogger("relctl.agent.access")

CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("relctl_caller",
                                                                          default=None)
_ERROR_METADATA = ((AGENT_ERROR_METADATA, __version__),)
_CODES = {"unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
          "permission_denied": grpc.StatusCode.PERMISSION_DENIED}

_Ctx = grpc.aio.ServicerContext[Any, Any]
# grpc peer -> (uid, where from) of a caller that came through the agent's Unix socket
UnixCaller = Callable[[str], "tuple[int, str] | None"]
# grpc peer -> the caller's own address ("ipv4:HOST:PORT") for a call relayed by a TCP front
TcpPeer = Callable[[str], "str | None"]


def _is_unix(peer: str) -> bool:
    return peer.startswith("unix:") or peer.startswith("unix-abstract:")


def _certificate(context: _Ctx) -> str:
    """The verified client certificate's subject (mTLS), or its common name."""
    auth = context.auth_context()
    for key in ("x509_subject", "x509_common_name"):
        values = list(auth.get(key, ()))
        if values:
            return b", ".join(values).decode("utf-8", "replace")
    return ""


class AuditedCall:
    """What the audit record of one call collects while it runs."""

    def __init__(self, rpc: str, identity: Identity, *, audited: bool | None = None) -> None:
        self.rpc = rpc
        self.identity = identity
        # Reads that got in are not recorded: skip the work. Refusals always are.
        self.audited = needs_audit(rpc) if audited is None else audited
        self.started = time.time()
        self.node = ""
        self.arguments: dict[str, Any] = {}
        self.detail = ""
        self.operation_id = 0
        self.recorded = False  # its record is written (a refused request): not again at the end
        # The last answer (a finished operation) is handed over: a stream that grpc closes
        # after it (the client read it and left) ended as it should.
        self.answered = False

    def request(self, message: Message) -> str | None:
        """Take the request's fields for the audit record; what is wrong with them, if anything
        (checked before anything of them is journaled or logged)."""
        fields = MessageToDict(message, preserving_proto_field_name=True)
        # An upload's header is the part worth keeping; its chunks are not.
        fields = fields.get("header", fields)
        problem = request_problem(fields)
        if problem is not None:
            self.audited = True  # a refusal is always recorded
        if self.audited:
            kept = bounded(fields)
            self.node = str(kept.pop("node", "") or self.node)
            self.arguments = without_secrets(kept)
        return problem

    def response(self, message: Message) -> None:
        if not self.audited:
            return
        op: pb.Operation | None = None
        if isinstance(message, pb.OperationResult):
            op = message.operation
        elif isinstance(message, pb.ProgressEvent):
            self.operation_id = self.operation_id or message.operation_id
            if message.HasField("finished"):
                op = message.finished
        elif isinstance(message, pb.UploadResponse):
            self.detail = (f"upload {message.upload_id}: {message.release_name} "
                           f"{message.version}, {message.size} bytes")
        if op is not None:
            self.answered = True
        if op is not None and op.id:
            self.operation_id = op.id
            self.node = op.node or self.node
            outcome = pb.Outcome.Name(op.outcome).removeprefix("OUTCOME_").lower()
            self.detail = f"operation {op.id}: {outcome}" + (f": {op.error}" if op.error else "")


class AccessInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator, audit: AuditLog | None,
                 unix_caller: UnixCaller = lambda peer: None,
                 tcp_peer: TcpPeer = lambda peer: None) -> None:
        self._auth = authenticator
        self._audit = audit
        self._unix_caller = unix_caller
        # Set by the daemon when it stops: a call cut from then on was cut by the agent.
        self.stopping = False
        self._tcp_peer = tcp_peer

    def identify(self, context: _Ctx) -> Identity:
        peer = context.peer() or "unknown"
        # First: a TCP caller relayed by the agent's TCP front also arrives from a Unix
        # address, and must show its token, never pass as a local uid.
        outside = self._tcp_peer(peer)
        if outside is not None:
            return self._auth.from_token(
                [(k, v) for k, v in (context.invocation_metadata() or ())], outside,
                _certificate(context))
        if _is_unix(peer):
            found = self._unix_caller(peer)
            return self._auth.from_unix_peer(*(found or (None, peer)))
        return self._auth.from_token(
            [(k, v) for k, v in (context.invocation_metadata() or ())], peer,
            _certificate(context))

    async def intercept_service(
            self, continuation: Callable[[grpc.HandlerCallDetails],
                                         Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
            details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(details)
        if handler is None:
            return None
        rpc = str(details.method).rsplit("/", 1)[-1]
        return _wrap(handler, rpc, self)

    # --- the parts each wrapped handler uses -----------------------------------------------

    async def admit(self, rpc: str, context: _Ctx, request: Message | None = None) -> AuditedCall:
        """The call of an allowed caller; a refused one is audited (with its request, when
        there is one before any stream) and aborted."""
        try:
            identity = self.identify(context)
            self._auth.authorize(identity, rpc)
        except AuthError as exc:
            who = exc.identity or Identity("anonymous", "", context.peer() or "unknown")
            refused = AuditedCall(rpc, who, audited=True)
            if request is not None:
                refused.request(request)
            self._record(refused, _CODES[exc.code].name, str(exc))
            log.warning("refused %s from %s (%s): %s", rpc, who.peer, who.name, exc)
            await context.abort(_CODES[exc.code], str(exc), _ERROR_METADATA)
            raise  # abort raised already; this line is for the type checker
        call = AuditedCall(rpc, identity)
        if request is not None:
            await self.check(call, context, request)
        return call

    async def check(self, call: AuditedCall, context: _Ctx, request: Message) -> None:
        """Refuse (audited, INVALID_ARGUMENT) a request whose strings break the limits."""
        problem = call.request(request)
        if problem is None:
            return
        self._record(call, grpc.StatusCode.INVALID_ARGUMENT.name, problem)
        log.warning("refused %s from %s (%s): %s", call.rpc, call.identity.peer,
                    call.identity.name, problem)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem, _ERROR_METADATA)

    def finish(self, call: AuditedCall, context: _Ctx, failed: BaseException | None) -> None:
        if not call.audited or call.recorded:
            return
        left_after_answer = call.answered and isinstance(failed, (GeneratorExit,
                                                                  asyncio.CancelledError))
        if failed is None or left_after_answer:
            result, detail = "ok", call.detail
        else:
            code = context.code()
            if isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK:
                result, detail = code.name, str(context.details() or "")
            elif self.stopping:
                result, detail = "UNAVAILABLE", "the agent stopped before the call ended"
            else:
                result, detail = "CANCELLED", "the client went away"
        self._record(call, result, detail)

    def _record(self, call: AuditedCall, result: str, detail: str) -> None:
        call.recorded = True
        if self._audit is None:
            return
        self._audit.append(AuditRecord(
            time=call.started, peer=call.identity.peer, identity=call.identity.name,
            certificate=call.identity.certificate, rpc=call.rpc, node=call.node,
            result=result, detail=detail, operation_id=call.operation_id,
            arguments=call.arguments))


@contextlib.contextmanager
def serving(access: AccessInterceptor, call: AuditedCall, context: _Ctx) -> Iterator[None]:
    """The caller in CALLER while the handler runs; the audit record when it ends, either way."""
    token = CALLER.set(call.identity)
    failed: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failed = exc
        raise
    finally:
        try:
            access.finish(call, context, failed)
        finally:
            # A streaming handler's generator may be finalised from another task (the client
            # left, or grpc closed it late): its context is not the one we set CALLER in, and
            # reset() would raise there. That context dies with the call, so leaving it is safe.
            with contextlib.suppress(ValueError):
                CALLER.reset(token)


def _wrap(handler: grpc.RpcMethodHandler[Any, Any], rpc: str,
          access: AccessInterceptor) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with admission, the caller in CALLER, and the audit record around it."""
    h: Any = handler  # grpc's stubs type the sync handlers only
    kw = {"request_deserializer": h.request_deserializer,
          "response_serializer": h.response_serializer}

    if h.unary_unary is not None:
        inner_uu = h.unary_unary

        async def unary_unary(request: Message, context: _Ctx) -> Message:
            call = await access.admit(rpc, context, request)
            with serving(access, call, context):
                response: Message = await inner_uu(request, context)
                call.response(response)
                return response
        return grpc.unary_unary_rpc_method_handler(unary_unary, **kw)

    if h.unary_stream is not None:
        inner_us = h.unary_stream

        async def unary_stream(request: Message, context: _Ctx) -> AsyncIterator[Message]:
            call = await access.admit(rpc, context, request)
            with serving(access, call, context):
                async for message in inner_us(request, context):
                    call.response(message)
                    yield message
        return grpc.unary_stream_rpc_method_handler(unary_stream, **kw)

    def watched(call: AuditedCall, requests: AsyncIterator[Message],
                context: _Ctx) -> AsyncIterator[Message]:
        async def first_recorded() -> AsyncIterator[Message]:
            first = True
            async for message in requests:
                if first:  # an upload's header: the part of a stream worth auditing
                    await access.check(call, context, message)
                    first = False
                yield message
        return first_recorded()

    if h.stream_unary is not None:
        inner_su = h.stream_unary

        async def stream_unary(requests: AsyncIterator[Message], context: _Ctx) -> Message:
            call = await access.admit(rpc, context)
            with serving(access, call, context):
                response: Message = await inner_su(watched(call, requests, context), context)
                call.response(response)
                return response
        return grpc.stream_unary_rpc_method_handler(stream_unary, **kw)

    inner_ss = h.stream_stream

    async def stream_stream(requests: AsyncIterator[Message],
                            context: _Ctx) -> AsyncIterator[Message]:
        call = await access.admit(rpc, context)
        with serving(access, call, context):
            async for message in inner_ss(watched(call, requests, context), context):
                call.response(message)
                yield message
    return grpc.stream_stream_rpc_method_handler(stream_stream, **kw)
