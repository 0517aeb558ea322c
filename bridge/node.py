"""The asyncio layer: EPMD look-ups, connecting as a hidden node, and RPC (erpc's way, see ``rpc``).

This is the only module of the bridge that does I/O. It drives the sans-IO state machines in
``handshake``, ``session`` and ``rpc``: each pending call has exactly one future, under the id
``rpc`` gave it; one timer serves every deadline ``rpc`` keeps; when the connection goes, ``rpc``
names the calls to fail. With an ``ssl.SSLContext`` the connection to the node runs over TLS,
as with ``-proto_dist inet_tls`` (see ``tls``).

Big messages (see ``session.Deferred``) are decoded in a worker thread, one at a time per
connection, so that ticks and other calls' replies keep flowing while one decodes; a message
over the decode budget fails only the call it answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import socket
import ssl
import typing
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from typing import Any, TypeVar

from . import epmd
from .codec import DEFAULT_BUDGET, DecodeBudget
from .errors import (
    BridgeError,
    BridgeTimeout,
    EpmdUnreachable,
    NetworkError,
    NodeNotFound,
    UsageError,
)
from .handshake import ClientHandshake, HandshakeResult
from .rpc import CallFailed, CallId, CallReturned, Outcome, RpcCalls
from .session import (
    DEFAULT_DEFER_FROM, CallReply, Deferred, Event, ExitSignal, Message, MonitorDown, Session, SpawnedReturn, SpawnReply,
    Undeliverable, describe_term,
)
from .terms import Atom, Pid
from .tls import Packet4Handshake, looks_like_tls, no_tls_answer, requires_tls, tls_failure

__all__ = ["Node", "Connection", "split_node_name"]

log = logging.getLogger("bridge")

_T = TypeVar("_T")


def split_node_name(node: str) -> tuple[str, str]:
    alive, sep, host = node.partition("@")
    if not sep or not alive or not host or "@" in host:
        raise UsageError(f"node name {node!r} must look like name@host")
    return alive, host


async def _within(timeout: float, what: str, work: Awaitable[_T]) -> _T:
    """The one timeout helper: run ``work`` or raise BridgeTimeout naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except TimeoutError:
        raise BridgeTimeout(f"{what} took longer than {timeout:g} s") from None


class Node:
    """Our side of the cluster: a hidden node that only connects out.

    ``name`` defaults to ``relctl_<random>@<this host>``. ``tick_time`` is our net_ticktime; use
    at least the peers' value (OTP's default is 60 s) or we may think a quiet peer is gone.

    ``tls``: a client context to reach nodes started with ``-proto_dist inet_tls`` (EPMD stays
    plain TCP). Its name check, when on, uses ``tls_server_name``, by default the host part of
    the node name, which is what OTP nodes send as SNI and check.

    ``decode_budget``: how much one message from a peer may decode to (elements and bytes,
    relative to its size on the wire); a reply over it fails its call with TermTooLarge.

    ``spawn_calls``: make calls as erpc does (a spawn request per call) when the peer allows it;
    False sends every call through the peer's ``rex``, as for a peer without DFLAG_SPAWN.
    """

    def __init__(self, cookie: str, name: str | None = None, epmd_port: int = epmd.DEFAULT_PORT, *,
                 tick_time: float = 60.0, tls: ssl.SSLContext | None = None,
                 tls_server_name: str | None = None, decode_budget: DecodeBudget = DEFAULT_BUDGET,
                 spawn_calls: bool = True) -> None:
        if not cookie:
            raise UsageError("the cookie is empty")
        if tls is not None and tls.protocol == ssl.PROTOCOL_TLS_SERVER:
            raise UsageError("the TLS context is a server context; make it with "
                             "ssl.create_default_context() or ssl.PROTOCOL_TLS_CLIENT")
        self.tls = tls
        self.tls_server_name = tls_server_name or None
        self._cookie = cookie
        self.name = name or f"relctl_{secrets.token_hex(4)}@{socket.gethostname().split('.')[0]}"
        split_node_name(self.name)
        self.epmd_port = epmd_port
        self.tick_time = tick_time
        self.decode_budget = decode_budget
        self.spawn_calls = spawn_calls
        # Non-zero and distinct from earlier incarnations of a same-named node (OTP uses >= 4).
        self.creation = 4 + secrets.randbelow(0xFFFF_FFFF - 4)
        self.atom = Atom(self.name)
        self._pid_ids = itertools.count(1)

    def __repr__(self) -> str:  # never show the cookie
        tls = ", tls=True" if self.tls is not None else ""
        return f"Node(name={self.name!r}, epmd_port={self.epmd_port}{tls})"

    def connect(self, node: str, timeout: float = 5.0) -> _Connecting:
        """Connect to ``node`` as a hidden node. Await it, or use it as ``async with``.

        Raises NodeNotFound, EpmdUnreachable, CookieRejected, HandshakeFailed, NetworkError or
        BridgeTimeout; TlsHandshakeFailed (a HandshakeFailed) for TLS failures either way."""
        return _Connecting(self._connect(node, timeout))

    async def names(self, host: str = "localhost", timeout: float = 5.0) -> dict[str, int]:
        """The alive names registered with EPMD on ``host``, and their ports (discovery)."""
        reply = await _within(timeout, f"asking epmd on {host}:{self.epmd_port} for names",
                              self._epmd_exchange(host, epmd.names_request()))
        return epmd.parse_names_reply(reply)

    async def lookup(self, node: str, timeout: float = 5.0) -> epmd.NodeAddress:
        alive, host = split_node_name(node)
        return await _within(timeout, f"looking up {node} in epmd", self._lookup(alive, host, node))

    async def _lookup(self, alive: str, host: str, node: str) -> epmd.NodeAddress:
        reply = await self._epmd_exchange(host, epmd.port_please2_request(alive))
        address = epmd.parse_port_please2_reply(reply)
        if address is not None:
            return address
        try:
            known = ", ".join(sorted(epmd.parse_names_reply(await self._epmd_exchange(host, epmd.names_request()))))
        except BridgeError:
            known = ""
        raise NodeNotFound(f"node {node} is not registered with epmd on {host}:{self.epmd_port}"
                           f" (registered there: {known or 'none'}); check the name and that the node runs")

    async def _epmd_exchange(self, host: str, request: bytes) -> bytes:
        try:
            reader, writer = await asyncio.open_connection(host, self.epmd_port)
        except OSError as exc:
            raise EpmdUnreachable(f"epmd not reachable on {host}:{self.epmd_port}: {exc.strerror or exc}; "
                                  "is the host up and epmd running on that port (ERL_EPMD_PORT)?") from None
        try:
            writer.write(request)
            return await reader.read()  # epmd answers, then closes
        except OSError as exc:
            raise EpmdUnreachable(f"epmd on {host}:{self.epmd_port} dropped the request: {exc}") from None
        finally:
            writer.close()

    async def _connect(self, node: str, timeout: float) -> Connection:
        alive, host = split_node_name(node)
        attempt = _Attempt()
        try:
            return await _within(timeout, f"connecting to {node}", self._open(node, alive, host, attempt))
        except BridgeTimeout:
            if attempt.tls_port is None:
                raise
            # A node without TLS waits in silence for the rest of what it takes as a long message.
            raise no_tls_answer(node, attempt.tls_port, timeout) from None

    async def _open(self, node: str, alive: str, host: str, attempt: _Attempt) -> Connection:
        address = await self._lookup(alive, host, node)
        loop = asyncio.get_running_loop()
        handshake = ClientHandshake(our_name=self.name, peer_name=node, cookie=self._cookie,
                                    creation=self.creation)
        pid = Pid(self.atom, next(self._pid_ids), 0, self.creation)
        tls = self.tls
        server_name = self.tls_server_name or host
        protocol = _DistProtocol(handshake if tls is None else Packet4Handshake(handshake), self, pid)
        try:
            # With TLS the TCP connection comes first, so that a timeout can tell which step hung.
            transport, _ = await loop.create_connection(
                (lambda: protocol) if tls is None else asyncio.Protocol, host, address.port)
        except OSError as exc:
            raise NetworkError(f"{node} is registered with epmd at port {address.port}, but connecting "
                               f"there failed: {exc.strerror or exc}") from None
        if tls is not None:
            attempt.tls_port = address.port
            try:
                secured = await loop.start_tls(transport, protocol, tls, server_hostname=server_name,
                                               ssl_shutdown_timeout=_TLS_SHUTDOWN_TIMEOUT)
            except BaseException as exc:
                # start_tls tells our protocol too; only the error raised here is to be seen.
                protocol.connected.cancel()
                if isinstance(exc, OSError | ssl.CertificateError):  # SSLError is an OSError
                    raise tls_failure(exc, node=node, port=address.port,
                                      server_name=server_name) from None
                raise
            attempt.tls_port = None  # kept when a timeout cancels start_tls: _connect reads it
            protocol.tls_failure = lambda exc: tls_failure(exc, node=node, port=address.port,
                                                           server_name=server_name)
            if secured is None:  # never, by asyncio's docs; typeshed allows it
                transport.abort()
                raise NetworkError(f"TLS with {node} (port {address.port}) could not be set up")
            protocol.connection_made(secured)  # start_tls leaves that to us
        try:
            return await protocol.connected
        except BaseException:
            protocol.abort_transport()
            raise


# How long closing waits for the node's close_notify before it drops the socket.
_TLS_SHUTDOWN_TIMEOUT = 2.0


class _Attempt:
    """How far one connection attempt got: the port while its TLS handshake runs."""

    def __init__(self) -> None:
        self.tls_port: int | None = None


class _Connecting:
    """What ``Node.connect`` returns: awaitable, or an async context manager that closes."""

    def __init__(self, opening: Awaitable[Connection]) -> None:
        self._opening = opening
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._opening.__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._opening
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        if self._conn is not None:
            await self._conn.close()


class Connection:
    """One hidden-node connection to a peer. Many calls may run on it at once."""

    def __init__(self, protocol: _DistProtocol, result: HandshakeResult, pid: Pid, node: Node) -> None:
        self._protocol = protocol
        self.peer = result.peer_name
        self.peer_creation = result.peer_creation
        self.flags = result.flags
        self.pid = pid
        self.local_node = node.name
        self._loop = asyncio.get_running_loop()
        self._session = Session(flags=result.flags, budget=node.decode_budget, defer_from=DEFAULT_DEFER_FROM)
        self._session.add_local_pid(pid)
        self._rpc = RpcCalls(self._session, pid, self.peer, spawn=None if node.spawn_calls else False)
        self._pending: dict[CallId, asyncio.Future[Any]] = {}
        # One timer for every deadline, set for the earliest one ``self._rpc`` keeps.
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._closed_reason: str | None = None
        self._closed = self._loop.create_future()
        self._tick_period = node.tick_time / 4
        self._timer = self._loop.call_later(self._tick_period, self._on_timer)
        # Frames to decode off the loop, in order, one at a time (each may take the budget).
        self._deferred: deque[bytes] = deque()
        self._decoding: asyncio.Future[tuple[Event | None, bytes]] | None = None

    def __repr__(self) -> str:
        state = f"closed: {self._closed_reason}" if self._closed_reason else "open"
        return f"<Connection {self.local_node} -> {self.peer} ({state}, {len(self._rpc)} pending)>"

    @property
    def is_closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def pending_calls(self) -> int:
        """How many calls wait for their reply."""
        return len(self._rpc)

    @property
    def spawn_calls(self) -> bool:
        """True when calls are spawn requests (erpc's way); False when they go through ``rex``."""
        return self._rpc.spawn

    @property
    def spawned_held(self) -> int:
        """Processes spawned for calls that are still watched (0 once every call has ended:
        a timed-out call leaves no monitor on the node)."""
        return self._rpc.spawned_held

    @property
    def tls_version(self) -> str | None:
        """The TLS version of the link ("TLSv1.2"), or None over plain TCP."""
        return self._protocol.tls_version()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- RPC ----------------------------------------------------------------------------

    async def call(self, module: str | Atom, function: str | Atom, args: Sequence[Any] = (), *,
                   timeout: float = 30.0) -> Any:
        """``rpc:call(Peer, Module, Function, Args)``, made as erpc makes it (or through ``rex``).

        Raises BadRpc for ``{badrpc, Reason}``, BridgeTimeout past ``timeout`` (a reply that
        comes later is dropped), ConnectionLost when the link goes first."""
        loop = self._loop
        now = loop.time()
        call_id, frame = self._rpc.request(module, function, args, timeout=timeout, now=now)
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[call_id] = future
        # Inline rather than _arm_deadline_timer(): this runs for every call.
        timer = self._deadline_timer
        if timer is None or now + timeout < timer.when():
            self._arm_deadline_timer()
        self._protocol.write(frame)
        try:
            return await future
        finally:
            self._pending.pop(call_id, None)
            owed = self._rpc.forget(call_id)
            if owed:  # a demonitor: the call was given up while its process ran
                self._protocol.write(owed)

    def _settle(self, outcome: Outcome) -> bool:
        """Complete the call's future; False when no one waits for that call any more."""
        future = self._pending.pop(outcome.call_id, None)
        if future is None or future.done():
            return False
        if isinstance(outcome, CallReturned):
            future.set_result(outcome.value)
        else:
            future.set_exception(outcome.error)
        return True

    def _arm_deadline_timer(self) -> None:
        when = self._rpc.next_deadline()
        if when is None:
            return
        timer = self._deadline_timer
        if timer is None or when < timer.when():
            if timer is not None:
                timer.cancel()
            self._deadline_timer = self._loop.call_at(when, self._on_deadline)

    def _on_deadline(self) -> None:
        self._deadline_timer = None
        for failed in self._rpc.expire(self._loop.time()):
            self._settle(failed)
        self._arm_deadline_timer()

    # --- closing ------------------------------------------------------------------------

    async def close(self) -> None:
        """Flush what we wrote, close the socket, fail pending calls; wait until it is closed."""
        self._protocol.close_transport()
        self._mark_closed("closed by us")
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Drop the socket now, without flushing."""
        self._protocol.abort_transport()
        self._mark_closed("aborted by us")

    async def wait_closed(self) -> str:
        """Wait until the connection is gone; return why."""
        await asyncio.shield(self._closed)
        return self._closed_reason or ""

    def _mark_closed(self, reason: str) -> None:
        if self._closed_reason is not None:
            return
        self._closed_reason = reason
        self._timer.cancel()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        for failed in self._rpc.connection_lost(reason):
            self._settle(failed)

    # --- called by the protocol ---------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes of the connected phase, as the socket delivered them (any split): the
        protocol passes them on; a test may feed frames here without a socket. Raises
        BridgeError when the stream is broken beyond one message."""
        events, owed = self._session.receive_data(data)
        if owed:
            self._protocol.write(owed)
        self._on_events(events)

    def _on_events(self, events: Sequence[Event]) -> None:
        rpc = self._rpc
        pending = self._pending
        for event in events:
            kind = type(event)
            if (kind is SpawnedReturn or kind is SpawnReply or kind is MonitorDown or kind is CallReply
                    or kind is Message or kind is Undeliverable):
                outcome = rpc.receive(event)
                # _settle inlined for the common case: this runs for every reply.
                future = None if outcome is None else pending.pop(outcome.call_id, None)
                if future is None or future.done():
                    if kind is not SpawnReply:  # a successful spawn settles nothing
                        self._log_dropped(event)
                elif type(outcome) is CallReturned:
                    future.set_result(outcome.value)
                else:
                    assert isinstance(outcome, CallFailed)
                    future.set_exception(outcome.error)
            elif type(event) is Deferred:
                self._deferred.append(event.frame)
                if self._decoding is None:
                    self._decode_next()
            elif type(event) is ExitSignal:
                # Terms from the peer are described, not repr()'d: no size or digit limit there.
                log.info("exit signal from %s on %s: %s", event.sender, self.peer,
                         describe_term(event.reason))
            else:
                log.debug("ignored from %s: %s", self.peer, type(event).__name__)

    def _decode_next(self) -> None:
        if not self._deferred or self._closed_reason is not None:
            self._deferred.clear()
            self._decoding = None
            return
        frame = self._deferred.popleft()
        self._decoding = self._loop.run_in_executor(None, self._session.decode_frame, frame)
        self._decoding.add_done_callback(self._decoded)

    def _decoded(self, future: asyncio.Future[tuple[Event | None, bytes]]) -> None:
        try:
            event, owed = future.result()
        except Exception as exc:  # decode_frame raises nothing but a bug; keep the link going
            log.error("decoding a message from %s failed: %r", self.peer, exc)
            event, owed = None, b""
        if self._closed_reason is None:
            if owed:
                self._protocol.write(owed)
            if event is not None:
                self._on_events((event,))
        self._decode_next()

    def _log_dropped(self, event: Event) -> None:
        if isinstance(event, CallReply | SpawnedReturn | MonitorDown):
            log.debug("late reply from %s dropped", self.peer)
        elif isinstance(event, Message):
            log.debug("message from %s for %s dropped: %s", self.peer, event.to, describe_term(event.message))
        elif isinstance(event, Undeliverable):
            log.warning("undecodable message from %s dropped: %s", self.peer, event.error)

    def _on_timer(self) -> None:
        tick, peer_gone = self._session.timer_fired()
        if peer_gone:
            self._protocol.abort_transport()
            self._mark_closed(f"no data from {self.peer} for {self._tick_period * 4:g} s (net_ticktime)")
            return
        if tick:
            self._protocol.write(tick)
        self._timer = self._loop.call_later(self._tick_period, self._on_timer)

    def _on_lost(self, exc: Exception | None) -> None:
        self._mark_closed(f"{exc}" if exc else "closed by the peer")
        if not self._closed.done():
            self._closed.set_result(None)


class _Handshake(typing.Protocol):
    """A ClientHandshake, or one that frames its messages for TLS (tls.Packet4Handshake)."""

    result: HandshakeResult | None
    peer_name: str

    def start(self) -> bytes: ...
    def receive_data(self, data: bytes) -> bytes: ...
    def connection_closed(self, exc: Exception | None = None) -> BridgeError: ...


class _DistProtocol(asyncio.Protocol):
    """Bytes from the socket go to the handshake until it completes, then to the Connection."""

    def __init__(self, handshake: _Handshake, node: Node, pid: Pid) -> None:
        self._handshake: _Handshake | None = handshake
        self._peer = handshake.peer_name
        # Set when the socket is TLS: explains a TLS error that ends the handshake (with TLS
        # 1.3 the node judges our certificate after our side of the TLS handshake is done).
        self.tls_failure: Callable[[Exception], BridgeError] | None = None
        self._first_data = True
        self._node = node
        self._pid = pid
        self._transport: asyncio.Transport | None = None
        self._conn: Connection | None = None
        self._corked: list[bytes] | None = None
        self.connected: asyncio.Future[Connection] = asyncio.get_running_loop().create_future()
        self._on_data: Callable[[bytes], None] = self._handshake_data

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        assert self._handshake is not None
        transport.write(self._handshake.start())

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def _handshake_data(self, data: bytes) -> None:
        handshake = self._handshake
        assert handshake is not None and self._transport is not None
        if self._first_data:
            self._first_data = False
            if self.tls_failure is None and looks_like_tls(data):
                self._fail_handshake(requires_tls(self._peer))
                return
        try:
            reply = handshake.receive_data(data)
        except BridgeError as exc:
            self._fail_handshake(exc)
            return
        if reply:
            self._transport.write(reply)
        if handshake.result is None:
            return
        self._handshake = None
        conn = self._conn = Connection(self, handshake.result, self._pid, self._node)
        self._on_data = self._connected_data
        if not self.connected.done():
            self.connected.set_result(conn)
        if handshake.result.leftover:
            self._connected_data(handshake.result.leftover)

    def _connected_data(self, data: bytes) -> None:
        assert self._conn is not None
        try:
            self._conn.data_received(data)
        except BridgeError as exc:  # the stream is broken beyond one message
            log.error("protocol error from %s, closing: %s", self._conn.peer, exc)
            self.abort_transport()
            self._conn._mark_closed(f"protocol error: {exc}")

    def _fail_handshake(self, exc: BaseException) -> None:
        if not self.connected.done():
            self.connected.set_exception(exc)
        self.abort_transport()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._handshake is not None:
            if self.tls_failure is not None and isinstance(exc, ssl.SSLError):
                self._fail_handshake(self.tls_failure(exc))
            else:
                self._fail_handshake(self._handshake.connection_closed(exc))
            return
        if self._conn is not None:
            self._conn._on_lost(exc)

    def write(self, data: bytes) -> None:
        # The first write of a loop iteration goes out at once (latency); while other calls are
        # in flight, the writes that follow in the same iteration are joined into one send
        # (throughput under many callers). A lone call costs no extra loop turn.
        if self._corked is not None:
            self._corked.append(data)
            return
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            conn = self._conn
            if conn is None or len(conn._pending) > 1:
                self._corked = []
                asyncio.get_running_loop().call_soon(self._uncork)

    def _uncork(self) -> None:
        corked, self._corked = self._corked, None
        transport = self._transport
        if corked and transport is not None and not transport.is_closing():
            transport.write(b"".join(corked))

    def tls_version(self) -> str | None:
        info = self._transport.get_extra_info("ssl_object") if self._transport is not None else None
        return info.version() if isinstance(info, ssl.SSLObject) else None

    def close_transport(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort_transport(self) -> None:
        if self._transport is not None:
            self._transport.abort()
