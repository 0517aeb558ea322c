"""The initiating side of the distribution handshake, version 6 (OTP 23+). Sans-IO.

    us   -> 'N' flags:64 creation:32 nlen:16 name            (send_name)
    peer -> 's' status                                       (ok | ok_simultaneous | alive | nok | not_allowed)
    peer -> 'N' flags:64 challenge:32 creation:32 nlen:16 name
    us   -> 'r' our_challenge:32 md5(cookie ++ peer_challenge)
    peer -> 'a' md5(cookie ++ our_challenge)

Every message is prefixed by a 16-bit length. A peer that dislikes our digest does not say so:
it closes the socket. ``connection_closed()`` turns such a close into the error that explains it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from dataclasses import dataclass

from .errors import BridgeError, CookieRejected, HandshakeFailed, NetworkError, ProtocolError, UsageError
from .flags import OUR_FLAGS, REQUIRED_FROM_PEER, describe, expand

__all__ = ["ClientHandshake", "HandshakeResult", "HandshakeState", "digest"]

MAX_HANDSHAKE_MESSAGE = 4096  # real ones are < 300 bytes; refuse to buffer more


class HandshakeState(enum.Enum):
    AWAIT_STATUS = "waiting for the status"
    AWAIT_CHALLENGE = "waiting for the challenge"
    AWAIT_ACK = "waiting for the challenge ack"
    DONE = "connected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    peer_name: str
    peer_creation: int
    peer_flags: int
    flags: int  # what both sides support
    leftover: bytes  # bytes of the connected phase that arrived with the ack


def digest(cookie: bytes, challenge: int) -> bytes:
    return hashlib.md5(cookie + str(challenge).encode("ascii")).digest()


def _frame(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


class ClientHandshake:
    """Drive one handshake: ``start()`` for the first bytes, then ``receive_data()`` per read."""

    def __init__(self, *, our_name: str, peer_name: str, cookie: str, creation: int,
                 flags: int = OUR_FLAGS, challenge: int | None = None) -> None:
        try:
            self._cookie = cookie.encode("latin-1")
        except UnicodeEncodeError:
            raise UsageError("the cookie must be Latin-1 text (Erlang cookies are atoms)") from None
        if not cookie:
            raise UsageError("the cookie is empty")
        self.our_name = our_name
        self.peer_name = peer_name
        self._creation = creation
        self._flags = flags
        self._challenge = secrets.randbits(32) if challenge is None else challenge
        self._buffer = bytearray()
        self.state = HandshakeState.AWAIT_STATUS
        self.result: HandshakeResult | None = None
        self._peer_flags = 0
        self._peer_creation = 0

    @property
    def done(self) -> bool:
        return self.state is HandshakeState.DONE

    def start(self) -> bytes:
        name = self.our_name.encode("utf-8")
        return _frame(b"N" + struct.pack(">QIH", self._flags, self._creation, len(name)) + name)

    def receive_data(self, data: bytes) -> bytes:
        """Consume bytes from the peer; return the bytes to send back (often none).

        Raises HandshakeFailed, CookieRejected or ProtocolError; after that the state is FAILED."""
        if self.state in (HandshakeState.DONE, HandshakeState.FAILED):
            raise ProtocolError(f"handshake is already {self.state.value}")
        self._buffer += data
        out = bytearray()
        try:
            while not self.done and len(self._buffer) >= 2:
                (size,) = struct.unpack_from(">H", self._buffer)
                if size > MAX_HANDSHAKE_MESSAGE:
                    raise ProtocolError(f"{self.peer_name} sent a {size}-byte handshake message; "
                                        "is that port really an Erlang node?")
                if len(self._buffer) < 2 + size:
                    break
                message = bytes(self._buffer[2:2 + size])
                del self._buffer[:2 + size]
                out += self._handle(message)
        except BridgeError:
            self.state = HandshakeState.FAILED
            raise
        if self.done:
            self.result = HandshakeResult(self.peer_name, self._peer_creation, self._peer_flags,
                                          self._flags & self._peer_flags, bytes(self._buffer))
            self._buffer.clear()
        return bytes(out)

    def connection_closed(self, exc: Exception | None = None) -> BridgeError:
        """The error that explains why the peer closed the socket (``exc``: the socket's error)."""
        peer = self.peer_name
        if self.state is HandshakeState.AWAIT_ACK:
            # OTP closes (or resets) without a word when our digest is wrong.
            return CookieRejected(
                f"cookie rejected by {peer}: it closed the connection after checking our digest. "
                "Use the node's cookie (its ~/.erlang.cookie, -setcookie, or RELEASE_COOKIE)")
        if exc is not None:
            return NetworkError(f"connection to {peer} failed during the handshake: {exc}")
        if self.state is HandshakeState.AWAIT_STATUS:
            return HandshakeFailed(
                f"{peer} closed the connection before accepting our name {self.our_name}; "
                "check the node's log (it may refuse our name, or not be an OTP 23+ node)")
        if self.state is HandshakeState.AWAIT_CHALLENGE:
            return HandshakeFailed(f"{peer} closed the connection after accepting our name")
        return HandshakeFailed(f"connection to {peer} closed during the handshake ({self.state.value})")

    # --- one message each -------------------------------------------------------------

    def _handle(self, message: bytes) -> bytes:
        if not message:
            raise ProtocolError(f"{self.peer_name} sent an empty handshake message")
        if self.state is HandshakeState.AWAIT_STATUS:
            return self._on_status(message)
        if self.state is HandshakeState.AWAIT_CHALLENGE:
            return self._on_challenge(message)
        return self._on_ack(message)

    def _on_status(self, message: bytes) -> bytes:
        if message[:1] != b"s":
            raise ProtocolError(f"expected a status from {self.peer_name}, got {message[:16]!r}")
        status = message[1:].decode("latin-1")
        if status in ("ok", "ok_simultaneous"):
            self.state = HandshakeState.AWAIT_CHALLENGE
            return b""
        if status == "alive":
            # The peer still holds a connection from a node of our name: ours, now dead (we
            # would not be here otherwise). "true" tells it to drop that one and take this.
            self.state = HandshakeState.AWAIT_CHALLENGE
            return _frame(b"strue")
        if status == "not_allowed":
            raise HandshakeFailed(f"{self.peer_name} does not allow connections from {self.our_name} "
                                  "(net_kernel:allow/1 on that node)")
        if status == "nok":
            raise HandshakeFailed(f"{self.peer_name} is already connecting to {self.our_name}; retry")
        raise ProtocolError(f"unexpected handshake status {status!r} from {self.peer_name}")

    def _on_challenge(self, message: bytes) -> bytes:
        if message[:1] == b"n":
            raise HandshakeFailed(f"{self.peer_name} speaks distribution version 5 only; OTP 23 or newer is needed")
        if message[:1] != b"N" or len(message) < 19:
            raise ProtocolError(f"expected a challenge from {self.peer_name}, got {message[:16]!r}")
        flags, challenge, creation, nlen = struct.unpack_from(">QIIH", message, 1)
        name = message[19:19 + nlen].decode("utf-8", "replace")
        if name != self.peer_name:
            raise HandshakeFailed(f"the node on that port calls itself {name}, not {self.peer_name}; "
                                  "use its exact name")
        flags = expand(flags)
        missing = REQUIRED_FROM_PEER & ~flags
        if missing:
            raise HandshakeFailed(f"{self.peer_name} lacks distribution features we need: {describe(missing)}")
        self._peer_flags = flags
        self._peer_creation = creation
        self.state = HandshakeState.AWAIT_ACK
        return _frame(b"r" + struct.pack(">I", self._challenge) + digest(self._cookie, challenge))

    def _on_ack(self, message: bytes) -> bytes:
        if message[:1] != b"a" or len(message) != 17:
            raise ProtocolError(f"expected a challenge ack from {self.peer_name}, got {message[:16]!r}")
        if not hmac.compare_digest(message[1:], digest(self._cookie, self._challenge)):
            raise CookieRejected(f"{self.peer_name} answered with a digest of another cookie; "
                                 "it is not the node you think, or its cookie differs")
        self.state = HandshakeState.DONE
        return b""
