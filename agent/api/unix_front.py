"""The agent's Unix socket, with the caller's uid as its identity.

grpc does not tell a servicer who is at the other end of a Unix socket (no SO_PEERCRED in
its API), so the public socket is served here: each accepted connection's peer credentials
are read from the kernel, and its bytes are relayed to the gRPC server's private socket (in
a 0700 directory) from an abstract address of our choosing. grpc reports that address as the
call's peer, and :meth:`UnixFront.caller` maps it back to the uid. A connection that did not
come through here has no such address and is refused by the interceptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agent.errors import HostError

log = logging.getLogger("relctl.agent.unix")

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
ABSTRACT_PEER = "unix-abstract:"


@dataclass(frozen=True)
class PeerCred:
    pid: int
    uid: int
    gid: int


class SocketError(HostError):
    """The socket cannot be set up; the message says what to fix."""


# Abstract names we bind: random per connection, so that no local process can learn the next
# one and bind it first (every user sees the names in use in /proc/net/unix).
_NAME_TRIES = 8


def abstract_name() -> str:
    return f"relctl-{secrets.token_hex(16)}"


class Relay(asyncio.Protocol):
    """One direction-pair end: what it receives goes to its partner, with flow control.

    Bytes that arrive before the partner exists are kept, not dropped: pause_reading() in
    connection_made is ignored by Python before 3.11.4 (CPython gh-103607), and Debian 12's
    Python is 3.11.2."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.partner: Relay | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.write(data)
        else:
            self._early.append(data)

    def pair(self, partner: Relay) -> None:
        """Relay to ``partner`` from now on, starting with what arrived before it existed."""
        self.partner = partner
        early, self._early = self._early, []
        if early and partner.transport is not None:
            partner.transport.write(b"".join(early))

    def pause_writing(self) -> None:  # our outgoing buffer is full: stop reading the partner
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.resume_reading()

    def eof_received(self) -> bool:
        self._close_partner()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_partner()
        if not self.closed.done():
            self.closed.set_result(None)

    def _close_partner(self) -> None:
        # close() sends what is still buffered first.
        if self.partner is not None and self.partner.transport is not None:
            self.partner.transport.close()


class _Accepted(Relay):
    """A connection to the public socket: it waits (not reading) until its relay exists."""

    def __init__(self, front: UnixFront) -> None:
        super().__init__()
        self._front = front

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self._front._relay_later(self, transport)


class UnixFront:
    """The public Unix socket at ``path`` (mode ``mode``, group ``gid``), relayed to the gRPC
    server listening on :attr:`inner_address`."""

    def __init__(self, path: Path, *, mode: int = 0o660, gid: int | None = None) -> None:
        self.path = path
        self._mode = mode
        self._gid = gid
        self._private = Path(tempfile.mkdtemp(prefix="relctl-agent-"))  # 0700
        self._inner = str(self._private / "grpc.sock")
        self._peers: dict[str, PeerCred] = {}
        self._server: asyncio.AbstractServer | None = None
        self._relays: set[Relay] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._bound = False

    @property
    def inner_address(self) -> str:
        """Where the gRPC server must listen (grpc's "unix:PATH" form)."""
        return f"unix:{self._inner}"

    def caller(self, grpc_peer: str) -> tuple[int, str] | None:
        """The uid of the caller behind a gRPC peer string, and a description of where it
        came from; None when it did not come through this front."""
        if not grpc_peer.startswith(ABSTRACT_PEER):
            return None
        cred = self._peers.get(grpc_peer.removeprefix(ABSTRACT_PEER))
        if cred is None:
            return None
        return cred.uid, f"unix:{self.path} (pid {cred.pid})"

    async def start(self) -> None:
        sock = _bind(self.path, self._mode, self._gid)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._accepted, sock=sock)
        self._bound = True

    def _accepted(self) -> Relay:
        return _Accepted(self)

    def _relay_later(self, outer: Relay, transport: asyncio.Transport) -> None:
        task = asyncio.get_running_loop().create_task(self._connect_inner(outer, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect_inner(self, outer: Relay, transport: asyncio.Transport) -> None:
        self._relays.add(outer)
        raw = transport.get_extra_info("socket")
        name = ""
        inner_sock: socket.socket | None = None
        try:
            pid, uid, gid = _UCRED.unpack(raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                         _UCRED.size))
            inner_sock, name = bind_abstract()
            self._peers[name] = PeerCred(pid, uid, gid)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(inner_sock, self._inner)
            inner = Relay()
            await loop.create_unix_connection(lambda: inner, sock=inner_sock)
        except OSError as exc:
            log.warning("local connection dropped: cannot reach the gRPC server (%s)", exc)
            if inner_sock is not None:
                inner_sock.close()
            self._peers.pop(name, None)
            transport.close()
            self._relays.discard(outer)
            return
        inner.pair(outer)
        outer.pair(inner)
        self._relays.add(inner)
        if outer.closed.done():  # the caller left while we connected: nothing to relay
            if inner.transport is not None:
                inner.transport.close()
        transport.resume_reading()
        await asyncio.gather(outer.closed, inner.closed)
        self._peers.pop(name, None)
        self._relays.discard(outer)
        self._relays.discard(inner)

    def stop_accepting(self) -> None:
        """No new connections; the relayed ones go on until :meth:`stop`."""
        if self._server is not None:
            self._server.close()
        if self._bound:  # only our own socket: never a file or another agent's socket
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def stop(self) -> None:
        self.stop_accepting()
        self._server = None
        for relay in list(self._relays):
            if relay.transport is not None:
                relay.transport.close()
        for task in list(self._tasks):
            task.cancel()
        shutil.rmtree(self._private, ignore_errors=True)


def bind_abstract() -> tuple[socket.socket, str]:
    """A non-blocking socket bound to a fresh random abstract name, and the name."""
    for _ in range(_NAME_TRIES):
        name = abstract_name()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind("\0" + name)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue  # taken: 128 random bits make this a squatter, not chance; pick again
        return sock, name
    raise OSError(errno.EADDRINUSE, f"{_NAME_TRIES} random abstract names were all in use")


def _bind(path: Path, mode: int, gid: int | None) -> socket.socket:
    """A listening socket at ``path`` with its mode and group set before anyone can connect."""
    if not path.parent.is_dir():
        raise SocketError(f"directory {path.parent} does not exist (systemd's "
                          "RuntimeDirectory=relctl creates /run/relctl; or choose another "
                          "path in agent.listen)")
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        if gid is not None:
            try:
                os.chown(path, -1, gid)
            except PermissionError:
                raise SocketError(f"cannot give {path} the group {gid}: the agent's user must "
                                  "be a member of agent.socket_group") from None
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if isinstance(exc, SocketError):
            raise
        raise SocketError(f"cannot listen on {path}: {exc.strerror or exc}") from None
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _remove_stale(path: Path) -> None:
    """Remove a socket left by an agent that died; refuse when one still answers there."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketError(f"{path} exists and is not a socket; remove it or choose another "
                          "path in agent.listen")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketError(f"cannot check {path}: {exc.strerror or exc}") from None
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise SocketError(f"another process listens on {path}; is another agent running?")
