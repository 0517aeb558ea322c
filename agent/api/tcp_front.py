"""The agent's TCP listeners, kept from being starved by connections that never make a call.

Anyone who can reach a TCP listener can open connections without a token (with TLS, without
even finishing a handshake), and grpc takes every one it is offered: 8,300 idle connections
once used up the agent's descriptors, and the Unix socket and /metrics stopped working too.
So the public TCP socket is ours, and each accepted connection is checked first:

- at most ``per_listener`` connections per listener and ``per_peer`` per peer address
  (:func:`agent.api.limits.connection_caps` fits them to the descriptors, with a reserve for
  the Unix socket, /metrics and the nodes); when a listener is full, the oldest connection
  that has not sent a byte yet makes room for the new one, so a flood of silent connections
  cannot lock out a real client; otherwise the new one is closed at once;
- a connection that sends nothing within FIRST_BYTE_TIMEOUT is closed, and costs one
  descriptor until then (it reaches grpc only once it speaks);
- then its bytes are relayed to the gRPC server's private Unix socket (TLS, if configured, is
  still grpc's, end to end), from an abstract address of our choosing that
  :meth:`TcpFront.peer` maps back to the caller's address (for tokens, the audit trail and the
  logs); grpc closes what does not finish its handshake within HANDSHAKE_TIMEOUT, or holds no
  call for IDLE_TIMEOUT (:data:`agent.api.service.CONNECTION_SERVER_OPTIONS`);
- refusals and accept errors (EMFILE) are logged once per LOG_INTERVAL with a count.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import shutil
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .limits import FIRST_BYTE_TIMEOUT, LOG_INTERVAL, ConnectionCaps
from .unix_front import ABSTRACT_PEER, Relay, SocketError, bind_abstract

log = logging.getLogger("relctl.agent.tcp")

# Accept errors that mean "out of descriptors or memory": wait a little instead of spinning.
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_PAUSE = 0.1


def descriptor_limit() -> int:
    """The descriptors this process may open, after raising the soft limit to the hard one
    (what systemd's LimitNOFILE= sets; a shell's ulimit -n is often lower than allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


class Throttled:
    """A warning logged at most once per ``interval`` seconds, with how often it happened."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self._interval = interval
        self._last = float("-inf")
        self._counts: Counter[str] = Counter()

    def note(self, what: str) -> None:
        self._counts[what] += 1
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        summary = "; ".join(f"{text} ({n}x)" if n > 1 else text
                            for text, n in self._counts.most_common())
        self._counts.clear()
        log.warning("%s", summary)


class _Incoming(Relay):
    """The caller's side: says when its first byte came."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        if not self.first.done():
            self.first.set_result(None)
        super().data_received(data)


@dataclass(eq=False)
class _Conn:
    host: str        # the peer's address, for the per-peer cap
    peer: str        # as grpc would name it: "ipv4:10.0.0.7:53122"
    sock: socket.socket
    accepted: float = field(default_factory=time.monotonic)
    spoke: bool = False
    outer: _Incoming | None = None

    def close(self) -> None:
        if self.outer is not None and self.outer.transport is not None:
            self.outer.transport.close()
        else:
            self.sock.close()


def _grpc_peer(addr: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = addr[0], addr[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


class TcpFront:
    """The public TCP listener at ``host``:``port`` with ``caps``, relayed to the gRPC server
    listening on :attr:`inner_address`."""

    def __init__(self, host: str, port: int, caps: ConnectionCaps) -> None:
        self.host = host
        self.port = port
        self.caps = caps
        self._private = Path(tempfile.mkdtemp(prefix="relctl-agent-tcp-"))  # 0700
        self._inner = str(self._private / "grpc.sock")
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._conns: list[_Conn] = []
        self._per_host: Counter[str] = Counter()
        self._peers: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused = Throttled()
        self._accept_errors = Throttled()

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def inner_address(self) -> str:
        """Where the gRPC server must listen (grpc's "unix:PATH" form)."""
        return f"unix:{self._inner}"

    @property
    def connections(self) -> int:
        """The connections held now (relayed or still silent)."""
        return len(self._conns)

    def peer(self, grpc_peer: str) -> str | None:
        """The caller's address ("ipv4:HOST:PORT") behind a gRPC peer string; None when the
        call did not come through this front."""
        if not grpc_peer.startswith(ABSTRACT_PEER):
            return None
        return self._peers.get(grpc_peer.removeprefix(ABSTRACT_PEER))

    async def start(self) -> None:
        """Listen and accept; SocketError when the address cannot be listened on."""
        try:
            infos = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise SocketError(f"cannot listen on {self} ({exc.strerror or exc})") from None
        try:
            # SO_REUSEADDR (a restart finds the port in TIME_WAIT), never SO_REUSEPORT: a
            # second agent on the same port must fail, not share it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(min(socket.SOMAXCONN, 1024))
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SocketError(f"cannot listen on {self} ({exc.strerror or exc}); is another "
                              "agent running there?") from None
        self._sock = sock
        self._accepting = asyncio.get_running_loop().create_task(
            self._accept_forever(sock), name=f"relctl tcp accept {self}")

    async def _accept_forever(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self._accept_errors.note(f"{self}: cannot accept connections: "
                                             f"{exc.strerror or exc}")
                    await asyncio.sleep(_ACCEPT_PAUSE)
                continue  # ECONNABORTED and the like: that caller left
            self._admit(conn, addr)

    def _admit(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        host = addr[0]
        if self._per_host[host] >= self.caps.per_peer:
            sock.close()
            self._refused.note(f"{self}: refused connections from {host}: it holds "
                               f"{self.caps.per_peer}, the most one address may")
            return
        if len(self._conns) >= self.caps.per_listener:
            silent = next((c for c in self._conns if not c.spoke), None)
            if silent is None:
                sock.close()
                self._refused.note(f"{self}: refused connections: {self.caps.per_listener} "
                                   "open, the most this listener holds")
                return
            self._refused.note(f"{self}: {self.caps.per_listener} connections open: closed "
                               "the oldest that had sent nothing, to admit a new one")
            self._drop(silent)
            silent.close()
        conn = _Conn(host, _grpc_peer(addr), sock)
        self._conns.append(conn)
        self._per_host[host] += 1
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _drop(self, conn: _Conn) -> None:
        if conn in self._conns:
            self._conns.remove(conn)
            self._per_host[conn.host] -= 1
            if self._per_host[conn.host] <= 0:
                del self._per_host[conn.host]

    async def _serve(self, conn: _Conn) -> None:
        loop = asyncio.get_running_loop()
        name = ""
        try:
            outer = conn.outer = _Incoming()
            try:
                transport, _ = await loop.connect_accepted_socket(lambda: outer, sock=conn.sock)
            except OSError:
                conn.sock.close()
                return
            await asyncio.wait([outer.first, outer.closed], timeout=FIRST_BYTE_TIMEOUT,
                               return_when=asyncio.FIRST_COMPLETED)
            if not outer.first.done() or outer.closed.done():
                transport.close()  # said nothing in time, or left
                return
            conn.spoke = True
            inner_sock, name = bind_abstract()
            self._peers[name] = conn.peer
            try:
                await loop.sock_connect(inner_sock, self._inner)
                inner = Relay()
                await loop.create_unix_connection(lambda: inner, sock=inner_sock)
            except OSError as exc:
                inner_sock.close()
                self._accept_errors.note(f"{self}: connection dropped: cannot reach the gRPC "
                                         f"server ({exc.strerror or exc})")
                transport.close()
                return
            inner.pair(outer)
            outer.pair(inner)
            if outer.closed.done() and inner.transport is not None:
                inner.transport.close()  # the caller left while we connected
            await asyncio.gather(outer.closed, inner.closed)
        finally:
            self._peers.pop(name, None)
            self._drop(conn)

    def stop_accepting(self) -> None:
        """No new connections; the relayed ones go on until :meth:`stop`."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def stop(self) -> None:
        self.stop_accepting()
        for conn in list(self._conns):
            conn.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        shutil.rmtree(self._private, ignore_errors=True)
