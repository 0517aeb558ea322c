"""RPC through the peer's ``rex`` server, as bookkeeping without I/O (sans-IO).

``RpcCalls`` builds each request, ``{'$gen_call', {OurPid, Ref}, {call, M, F, A, user}}`` sent
to ``rex``; keeps the pending calls and their deadlines; and turns what the session delivers into
each call's outcome: its result, or BadRpc, DecodeError, BridgeTimeout or ConnectionLost. It has
no clock, socket or future: the I/O layer passes ``now`` in, writes the frames it gets back, keeps
whatever it waits on under the call id assigned here, and settles it with the outcomes returned.

A call id is the three id words of the call's reference, as sent (12 bytes). The session's
byte-level fast path hands a reply over as a ``CallReply`` carrying those same bytes, so a reply
finds its call with one dict look-up, without a Reference being built.
"""

from __future__ import annotations

import heapq
import itertools
import secrets
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeAlias

from . import codec
from .errors import BadRpc, BridgeError, BridgeTimeout, ConnectionLost, DecodeError, TermTooLarge
from .session import CallReply, Event, Message, Session, Undeliverable, reference_head
from .terms import Atom, Pid, Reference

__all__ = ["RpcCalls", "CallId", "CallReturned", "CallFailed", "Outcome", "call_key"]

CallId: TypeAlias = bytes

_GEN_CALL = Atom("$gen_call")
_CALL = Atom("call")
_USER = Atom("user")  # rex's group leader for the call: we run no I/O server
_REX = Atom("rex")
_BADRPC = Atom("badrpc")
_WORDS = struct.Struct(">III")
_NIL = b"j"  # an empty argument list, pre-encoded

# What a pending call keeps for its error messages: module, function, arity, timeout. A tuple,
# not a dataclass: one is made per call on the hot path.
_Call: TypeAlias = tuple[Atom, Atom, int, float]


# The outcomes are named tuples rather than frozen dataclasses: one is made per reply, and a
# frozen dataclass takes twice as long to build, which shows in calls per second.


class CallReturned(NamedTuple):
    """The call answered; ``value`` is the decoded reply (``{badrpc, _}`` never is one)."""

    call_id: CallId
    value: Any


class CallFailed(NamedTuple):
    """The call ended without a result: BadRpc, DecodeError, BridgeTimeout or ConnectionLost."""

    call_id: CallId
    error: BridgeError


Outcome = CallReturned | CallFailed


class RpcCalls:
    """The calls in flight on one connection, from request to outcome.

    ``session`` frames the requests (and so counts them as written, for its ticks); replies come
    back as the session's events through ``receive``. ``salt``, random unless given, is the last
    word of every call reference: the call counter starts at 1 on every connection, and a reply
    meant for another connection's call must not pass for one of ours.
    """

    def __init__(self, session: Session, pid: Pid, peer: str, *, salt: int | None = None) -> None:
        self.peer = peer
        self.pid = pid
        self._session = session
        self._calls: dict[CallId, _Call] = {}
        # A heap of (when, call id). Removing a finished call's entry from the middle would cost
        # O(n), so it stays until it reaches the top: popped there when calls finish, or skipped
        # when its time comes. The heap holds at most the calls started within one timeout.
        self._deadlines: list[tuple[float, CallId]] = []
        self._numbers = itertools.count(1)
        self._salt = secrets.randbits(32) if salt is None else salt & 0xFFFF_FFFF
        self._closed_reason: str | None = None
        # The request, pre-encoded around what varies: the reference's words, M, F and A.
        head = bytearray(b"\x83\x68\x03")
        codec.encode_term_into(_GEN_CALL, head)
        head += b"\x68\x02"
        codec.encode_term_into(pid, head)
        self._head = bytes(head) + reference_head(pid.node, pid.creation)
        mid = bytearray(b"\x68\x05")
        codec.encode_term_into(_CALL, mid)
        self._mid = bytes(mid)
        tail = bytearray()
        codec.encode_term_into(_USER, tail)
        self._tail = bytes(tail)

    def __len__(self) -> int:
        return len(self._calls)

    def __repr__(self) -> str:
        state = f"closed: {self._closed_reason}" if self._closed_reason is not None else "open"
        return f"<RpcCalls to {self.peer} ({state}, {len(self._calls)} pending)>"

    @property
    def deadlines_held(self) -> int:
        """Deadlines kept: those of pending calls, and those of finished calls that have not
        reached the top of the heap yet (none stays past its own time)."""
        return len(self._deadlines)

    @property
    def closed_reason(self) -> str | None:
        """Why the connection was lost, once ``connection_lost`` was called; else None."""
        return self._closed_reason

    # --- calls out ----------------------------------------------------------------------

    def request(self, module: str | Atom, function: str | Atom, args: Sequence[Any] = (), *,
                timeout: float, now: float) -> tuple[CallId, bytes]:
        """Start ``rpc:call(Peer, Module, Function, Args)``: returns its id and the frame to send.

        Its deadline is ``now + timeout``, in the clock that ``expire`` is given. Raises
        ConnectionLost after ``connection_lost``, EncodeError when ``args`` has no Erlang form
        (nothing is registered then)."""
        if self._closed_reason is not None:
            raise ConnectionLost(f"connection to {self.peer} is closed ({self._closed_reason})")
        mod = module if type(module) is Atom else Atom(str(module))
        fun = function if type(function) is Atom else Atom(str(function))
        n = next(self._numbers)
        # Word 1 of a reference carries 18 bits (OTP's layout); the counter never repeats.
        call_id = _WORDS.pack(n & 0x3FFFF, n >> 18 & 0xFFFF_FFFF, self._salt)
        payload = bytearray(self._head)
        payload += call_id
        payload += self._mid
        codec.encode_term_into(mod, payload)
        codec.encode_term_into(fun, payload)
        if args:
            codec.encode_term_into(list(args), payload)
        else:
            payload += _NIL
        payload += self._tail
        frame = self._session.reg_send_encoded(self.pid, _REX, payload)
        self._calls[call_id] = (mod, fun, len(args), timeout)
        heapq.heappush(self._deadlines, (now + timeout, call_id))
        return call_id, frame

    def forget(self, call_id: CallId) -> None:
        """The caller stopped waiting (it got its outcome, or was cancelled): drop the call."""
        calls = self._calls
        calls.pop(call_id, None)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in calls:
            heapq.heappop(deadlines)

    # --- time ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When ``expire`` has work next (it may find that call finished), or None."""
        deadlines = self._deadlines
        return deadlines[0][0] if deadlines else None

    def expire(self, now: float) -> list[CallFailed]:
        """Fail, with BridgeTimeout, every call whose deadline is at or before ``now``."""
        deadlines = self._deadlines
        calls = self._calls
        expired: list[CallFailed] = []
        while deadlines and deadlines[0][0] <= now:
            _, call_id = heapq.heappop(deadlines)
            call = calls.pop(call_id, None)
            if call is not None:
                mod, fun, arity, timeout = call
                expired.append(CallFailed(call_id, BridgeTimeout(
                    f"{mod.name}:{fun.name}/{arity} on {self.peer} did not answer within {timeout:g} s")))
        return expired

    # --- replies in ---------------------------------------------------------------------

    def receive(self, event: Event) -> Outcome | None:
        """The outcome a session event brings to one of our calls, or None when it is for none
        (a late reply, a message that is not a reply, another event type)."""
        if type(event) is CallReply:
            call_id = event.ref_words
            call = self._calls.pop(call_id, None)
            if call is None:
                return None
            reply = event.reply
            if type(reply) is tuple and len(reply) == 2 and reply[0] == _BADRPC:
                return self._bad_rpc(call_id, call, reply[1])
            return CallReturned(call_id, reply)
        if type(event) is Message:
            # A reply in a shape the session's fast path does not take (another encoding of
            # the control, SEND_SENDER...) still answers its call.
            message = event.message
            if type(message) is not tuple or len(message) != 2 or type(message[0]) is not Reference:
                return None
            call_id = call_key(message[0]) or b""
            call = self._calls.pop(call_id, None)
            if call is None:
                return None
            reply = message[1]
            if type(reply) is tuple and len(reply) == 2 and reply[0] == _BADRPC:
                return self._bad_rpc(call_id, call, reply[1])
            return CallReturned(call_id, reply)
        if type(event) is Undeliverable:
            call_id = call_key(event.tag) or b""
            call = self._calls.pop(call_id, None)
            if call is None:
                return None
            if isinstance(event.error, TermTooLarge):
                mod, fun, arity, _ = call
                return CallFailed(call_id, TermTooLarge(
                    f"the reply to {mod.name}:{fun.name}/{arity} from {self.peer} is too large: {event.error}"))
            return CallFailed(call_id, DecodeError(
                f"the reply from {self.peer} could not be decoded: {event.error}"))
        return None

    def _bad_rpc(self, call_id: CallId, call: _Call, reason: Any) -> CallFailed:
        mod, fun, arity, _ = call
        return CallFailed(call_id, BadRpc(reason, mfa=f"{mod.name}:{fun.name}/{arity}", node=self.peer))

    # --- the end ------------------------------------------------------------------------

    def connection_lost(self, reason: str) -> list[CallFailed]:
        """Fail every pending call with ConnectionLost naming ``reason``; refuse new calls.
        Only the first call counts: the link is lost once."""
        if self._closed_reason is not None:
            return []
        self._closed_reason = reason
        calls, self._calls = self._calls, {}
        self._deadlines.clear()
        return [CallFailed(call_id, ConnectionLost(f"connection to {self.peer} lost: {reason}"))
                for call_id in calls]


def call_key(tag: Any) -> CallId | None:
    """The call id a reply's tag stands for: our reference's three id words, as sent. ``tag``
    is a Reference, or the raw words the session's fast path cut out of an undecodable reply."""
    if type(tag) is bytes:
        return tag
    if type(tag) is Reference and len(tag.ids) == 3:
        return _WORDS.pack(*tag.ids)
    return None
