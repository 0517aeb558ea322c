"""RPC calls as bookkeeping without I/O (sans-IO): the way ``erpc`` makes them, or through ``rex``.

With a peer that has DFLAG_SPAWN (every OTP 23+ node), a call is what ``erpc:call`` sends: a
SPAWN_REQUEST ``{29, Ref, OurPid, OurPid, {erpc, execute_call, 4}, [monitor]}`` with the
arguments ``[Ref, M, F, A]`` as payload. The node spawns the call, answers SPAWN_REPLY with the
new pid (or an atom: the spawn failed), and the result comes as that process's exit reason in
the monitor's DOWN (PAYLOAD_MONITOR_P_EXIT): ``{Ref, return, V}``, ``{Ref, throw | exit, R}``,
``{Ref, error, R, Stack}``, or a signal's reason. Calls run side by side on the node, not one
after another in its single ``rex`` process. (``{reply, error_only}``, which erpc passes, is an
option of the caller's own runtime: a node refuses it over the wire with ``badopt``.)

Without DFLAG_SPAWN a call is ``{'$gen_call', {OurPid, Ref}, {call, M, F, A, user}}`` sent to
``rex``, answered with ``{Ref, Reply}``.

Either way the outcomes are the same as ``rex`` gives, which the agent relies on: a value;
BadRpc with ``{'EXIT', Reason}`` for an exit, ``{'EXIT', {Reason, Stack}}`` for an error; a
thrown value is the result (rex catches with ``catch``). ``RpcCalls`` keeps the pending calls and
their deadlines and turns what the session delivers into each call's outcome: its result, or
BadRpc, DecodeError, BridgeTimeout or ConnectionLost. It has no clock, socket or future: the I/O
layer passes ``now`` in, writes the frames it gets back, keeps whatever it waits on under the
call id assigned here, and settles it with the outcomes returned.

A call id is the three id words of the call's reference, as sent (12 bytes). The session's
byte-level fast paths hand a result over (``CallReply``, ``SpawnedReturn``) carrying those same
bytes, so a result finds its call with one dict look-up, without a Reference being built.
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
from .flags import SPAWN_CALLS
from .session import (
    DEMONITOR_P, CallReply, Event, Message, MonitorDown, Session, SpawnedReturn, SpawnReply, Undeliverable,
    reference_head,
)
from .terms import Atom, Pid, Reference

__all__ = ["RpcCalls", "CallId", "CallReturned", "CallFailed", "Outcome", "call_key"]

CallId: TypeAlias = bytes

_GEN_CALL = Atom("$gen_call")
_CALL = Atom("call")
_USER = Atom("user")  # rex's group leader for the call: we run no I/O server
_REX = Atom("rex")
_BADRPC = Atom("badrpc")
_EXIT = Atom("EXIT")
_RETURN = Atom("return")
_THROW = Atom("throw")
_ERROR = Atom("error")
_ERPC = Atom("erpc")
_NOTSUP = Atom("notsup")
_WORDS = struct.Struct(">III")
_NIL = b"j"  # an empty argument list, pre-encoded
_LEN = struct.Struct(">I")
_NAMES_KEPT = 1024  # (module, function) pairs whose encoding a connection keeps

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

    ``spawn``: make calls as spawn requests (None: when the session's negotiated flags allow it,
    see ``flags.SPAWN_CALLS``); False sends them to ``rex``.
    """

    def __init__(self, session: Session, pid: Pid, peer: str, *, salt: int | None = None,
                 spawn: bool | None = None) -> None:
        self.peer = peer
        self.pid = pid
        self._session = session
        self.spawn = (session.flags & SPAWN_CALLS == SPAWN_CALLS) if spawn is None else spawn
        self._calls: dict[CallId, _Call] = {}
        # The processes spawned for calls, from SPAWN_REPLY until the caller forgets the call:
        # what a call given up before its DOWN came must demonitor.
        self._spawned: dict[CallId, Pid | bytes] = {}  # a Pid, or its encoding as it came
        # A heap of (when, call id). Removing a finished call's entry from the middle would cost
        # O(n), so it stays until it reaches the top: popped there when calls finish, or skipped
        # when its time comes. The heap holds at most the calls started within one timeout.
        self._deadlines: list[tuple[float, CallId]] = []
        self._numbers = itertools.count(1)
        self._salt = secrets.randbits(32) if salt is None else salt & 0xFFFF_FFFF
        self._closed_reason: str | None = None
        self._names: dict[tuple[str | Atom, str | Atom], tuple[Atom, Atom, bytes]] = {}
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
        # The spawn request, pre-encoded the same way: control up to the reference's words, the
        # rest of the control, and the payload [Ref, M, F, A] up to the words.
        ref_head = reference_head(pid.node, pid.creation)
        self._spawn_head = b"p\x83\x68\x06\x61\x1d" + ref_head  # {29, Ref, ...}
        rest = bytearray()
        codec.encode_term_into(pid, rest)  # the requester
        codec.encode_term_into(pid, rest)  # the group leader: the session passes I/O on to `user`
        codec.encode_term_into((_ERPC, Atom("execute_call"), 4), rest)
        codec.encode_term_into([Atom("monitor")], rest)
        self._spawn_mid = bytes(rest) + b"\x83\x6c\x00\x00\x00\x04" + ref_head

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def spawned_held(self) -> int:
        """Pids kept of processes spawned for calls whose caller has not forgotten them yet."""
        return len(self._spawned)

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
        names = self._names.get((module, function))
        if names is None:
            names = self._names_of(module, function)
        mod, fun, encoded_mf = names
        n = next(self._numbers)
        # Word 1 of a reference carries 18 bits (OTP's layout); the counter never repeats.
        call_id = _WORDS.pack(n & 0x3FFFF, n >> 18 & 0xFFFF_FFFF, self._salt)
        if self.spawn:
            # One reference for the request, its monitor and erpc's result tag.
            if args:
                encoded_args = bytearray()
                codec.encode_term_into(list(args), encoded_args)
                body = b"".join((self._spawn_head, call_id, self._spawn_mid, call_id, encoded_mf,
                                 encoded_args, _NIL))
            else:
                body = b"".join((self._spawn_head, call_id, self._spawn_mid, call_id, encoded_mf, _NIL, _NIL))
            frame = self._session.sent(_LEN.pack(len(body)) + body)
            self._calls[call_id] = (mod, fun, len(args), timeout)
            heapq.heappush(self._deadlines, (now + timeout, call_id))
            return call_id, frame
        payload = bytearray(self._head)
        payload += call_id
        payload += self._mid
        payload += encoded_mf
        if args:
            codec.encode_term_into(list(args), payload)
        else:
            payload += _NIL
        payload += self._tail
        frame = self._session.reg_send_encoded(self.pid, _REX, payload)
        self._calls[call_id] = (mod, fun, len(args), timeout)
        heapq.heappush(self._deadlines, (now + timeout, call_id))
        return call_id, frame

    def _names_of(self, module: str | Atom, function: str | Atom) -> tuple[Atom, Atom, bytes]:
        """The atoms of a call's module and function, and their encoding (kept for the next call)."""
        mod = module if type(module) is Atom else Atom(str(module))
        fun = function if type(function) is Atom else Atom(str(function))
        encoded = bytearray()
        codec.encode_term_into(mod, encoded)
        codec.encode_term_into(fun, encoded)
        names = (mod, fun, bytes(encoded))
        if len(self._names) < _NAMES_KEPT:
            self._names[(module, function)] = names
        return names

    def forget(self, call_id: CallId) -> bytes:
        """The caller stopped waiting (it got its outcome, timed out, or was cancelled): drop the
        call. Call it once for every call. Returns a frame to send, or b"": the DEMONITOR_P of a
        process still running a call given up on, so that the node keeps no monitor for us."""
        calls = self._calls
        calls.pop(call_id, None)
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in calls:
            heapq.heappop(deadlines)
        if self._spawned:
            spawned = self._spawned.pop(call_id, None)
            if spawned is not None and self._closed_reason is None:
                if type(spawned) is bytes:
                    try:
                        spawned = codec.decode_body(spawned, 0)[0]
                    except DecodeError:
                        return b""
                return self._session.control_frame((DEMONITOR_P, self.pid, spawned, self._reference(call_id)))
        return b""

    def _reference(self, call_id: CallId) -> Reference:
        return Reference(self.pid.node, self.pid.creation, _WORDS.unpack(call_id))

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
        if self.spawn:
            if type(event) is SpawnedReturn:
                call_id = event.ref_words
                if self._spawned:
                    self._spawned.pop(call_id, None)  # it ended: nothing to demonitor
                if self._calls.pop(call_id, None) is None:
                    return None
                return CallReturned(call_id, event.value)
            if type(event) is SpawnReply:
                tag = event.tag
                result = event.result
                if type(tag) is bytes and (type(result) is bytes or type(result) is Pid):
                    # Spawned (the byte-level fast path): kept until the call is forgotten or ends.
                    if tag in self._calls:
                        self._spawned[tag] = result
                    return None
                return self._spawn_reply(event)
            if type(event) is MonitorDown:
                return self._down(event)
            if type(event) is not Undeliverable:
                return None  # a spawned call's result comes only as its process's exit
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

    def _spawn_reply(self, event: SpawnReply) -> Outcome | None:
        call_id = call_key(event.tag) or b""
        result = event.result
        if type(result) is Pid or type(result) is bytes:
            if call_id in self._calls:
                self._spawned[call_id] = result
            return None
        call = self._calls.pop(call_id, None)
        if call is None:
            return None
        # The spawn failed (system_limit, badopt...); rpc:call reports notsup bare, others as an exit.
        return self._bad_rpc(call_id, call, result if result == _NOTSUP else (_EXIT, result))

    def _down(self, event: MonitorDown) -> Outcome | None:
        call_id = call_key(event.ref) or b""
        self._spawned.pop(call_id, None)
        call = self._calls.pop(call_id, None)
        if call is None:
            return None
        reason = event.reason
        if (type(reason) is tuple and len(reason) in (3, 4) and type(reason[0]) is Reference
                and call_key(reason[0]) == call_id):
            kind = reason[1]
            if len(reason) == 4 and kind == _ERROR:  # {Ref, error, Reason, Stack}
                return self._bad_rpc(call_id, call, (_EXIT, (reason[2], reason[3])))
            if kind == _RETURN or kind == _THROW:  # rex returns a thrown value, as catch does
                return CallReturned(call_id, reason[2])
            value = reason[2]
            if kind == _ERROR and type(value) is tuple and len(value) == 2 and value[0] == _ERPC:
                value = value[1]  # {Ref, error, {erpc, Reason}}: bad arguments to apply
            return self._bad_rpc(call_id, call, (_EXIT, value))
        # Killed by a signal before it finished (exit(Pid, kill), a linked process's exit).
        return self._bad_rpc(call_id, call, (_EXIT, reason))

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
        self._spawned.clear()
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
