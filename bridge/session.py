"""The connected phase of a distribution connection (sans-IO).

Frames are a 32-bit length and a body; an empty frame is a tick. Each message body is
``112, 131 control [, 131 payload]`` because we never negotiate the atom cache or fragments.

``Session`` turns bytes into events, answers what the protocol obliges a node to answer (unlink
acks, monitors and links to processes we do not have, spawn requests, which we refuse), passes
I/O requests for our pid (we are the group leader of the processes our calls spawn) on to the
peer's ``user``, and keeps tick accounting the way OTP's
ticker does: the I/O layer calls ``timer_fired()`` every ``net_ticktime / 4`` seconds; a period
with nothing written gets a tick, four periods with nothing read mean the peer is gone.

Every message decodes within the session's ``DecodeBudget``; a reply over it fails only its
call (an ``Undeliverable`` carrying the call's reference and a ``TermTooLarge``). With
``defer_from`` set, a frame of that many bytes or more, or one that may hold a compressed term,
is not decoded in ``receive_data``: it comes out as a ``Deferred`` event, for the I/O layer to pass to
``decode_frame`` off its event loop (that method only reads the session's state, so it may run
in another thread). Its event may then come after those of frames that arrived later.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from . import codec
from .errors import DecodeError, ProtocolError
from .flags import DFlag
from .terms import Atom, Pid, Port, Reference

__all__ = [
    "Session", "Event", "CallReply", "SpawnedReturn", "SpawnReply", "Message", "Undeliverable", "ExitSignal",
    "MonitorDown", "Unhandled", "TICK",
    "DEFAULT_MAX_FRAME", "DEFAULT_DEFER_FROM", "Deferred", "describe_term",
]

TICK = b"\0\0\0\0"
PASS_THROUGH = 112
DEFAULT_MAX_FRAME = 128 * 1024 * 1024
DEFAULT_DEFER_FROM = 256 * 1024  # frames this big are decoded off the event loop
_VIEW_FROM = 64 * 1024
_COMPRESSED_HEAD = bytes((codec.VERSION, codec.COMPRESSED))
# Enough to decode a reply's tag (a reference) and nothing big.
_TAG_BUDGET = codec.DecodeBudget(max_elements=16, min_elements=16, max_bytes=1024, min_bytes=1024)
SILENT_PERIODS_BEFORE_DOWN = 4

# Control message operations (erts/emulator/beam/dist.h).
LINK, SEND, EXIT, UNLINK, NODE_LINK, REG_SEND, GROUP_LEADER, EXIT2 = 1, 2, 3, 4, 5, 6, 7, 8
SEND_TT, EXIT_TT, REG_SEND_TT, EXIT2_TT = 12, 13, 16, 18
MONITOR_P, DEMONITOR_P, MONITOR_P_EXIT = 19, 20, 21
SEND_SENDER, SEND_SENDER_TT = 22, 23
PAYLOAD_EXIT, PAYLOAD_EXIT_TT, PAYLOAD_EXIT2, PAYLOAD_EXIT2_TT, PAYLOAD_MONITOR_P_EXIT = 24, 25, 26, 27, 28
SPAWN_REQUEST, SPAWN_REQUEST_TT, SPAWN_REPLY, SPAWN_REPLY_TT = 29, 30, 31, 32
ALIAS_SEND, ALIAS_SEND_TT = 33, 34
UNLINK_ID, UNLINK_ID_ACK = 35, 36

_SENDS = {SEND: 2, SEND_TT: 2, SEND_SENDER: 2, SEND_SENDER_TT: 2, REG_SEND: 3, REG_SEND_TT: 3,
          ALIAS_SEND: 2, ALIAS_SEND_TT: 2}  # op -> index of the destination in the control tuple
_EXITS = {EXIT, EXIT_TT, EXIT2, EXIT2_TT}
_PAYLOAD_EXITS = {PAYLOAD_EXIT, PAYLOAD_EXIT_TT, PAYLOAD_EXIT2, PAYLOAD_EXIT2_TT}

_EMPTY_ATOM = Atom("")
_NOPROC = Atom("noproc")
_NOTSUP = Atom("notsup")
_IO_REQUEST = Atom("io_request")
_USER = Atom("user")
# Byte heads of the two frames a spawn-request call gets back (we never negotiate the atom cache,
# so these are fixed): PAYLOAD_MONITOR_P_EXIT {28, Pid, OurPid, OurRef} and SPAWN_REPLY
# {31, OurRef, OurPid, Flags, Result}.
_DOWN_HEAD = b"p\x83h\x04a\x1c"
_SPAWN_REPLY_HEAD = b"p\x83h\x05a\x1f"
_RETURN_ATOM = b"w\x06return"
_NO_PAYLOAD: Any = object()
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Message:
    """A message for one of our pids (or a registered name, or an alias)."""

    to: Pid | Atom | Reference
    message: Any


@dataclass(frozen=True, slots=True)
class CallReply:
    """``{Ref, Reply}`` sent to one of our pids, where Ref is one of our references (an RPC
    answer). ``ref_words`` are the reference's id words as sent (12 bytes), the key of the call."""

    ref_words: bytes
    reply: Any


@dataclass(frozen=True, slots=True)
class SpawnedReturn:
    """The process spawned for one of our calls ended with ``{Ref, return, Value}``, where Ref is
    the call's reference (the monitor's too): ``ref_words`` are its id words as sent."""

    ref_words: bytes
    value: Any


@dataclass(frozen=True, slots=True)
class SpawnReply:
    """SPAWN_REPLY for one of our spawn requests: ``result`` is the new process's Pid (or, from
    the byte-level fast path, its encoding as bytes), or an atom naming why the spawn failed.
    ``tag`` is the request's reference, or its id words (12 bytes)."""

    tag: Reference | bytes
    result: Any


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A message whose payload (or control) could not be decoded. ``tag`` is the payload's first
    tuple element when that much decoded (for an RPC reply: the call's reference)."""

    to: Pid | Atom | Reference | None
    tag: Any
    error: DecodeError


@dataclass(frozen=True, slots=True)
class ExitSignal:
    sender: Any
    to: Pid
    reason: Any


@dataclass(frozen=True, slots=True)
class MonitorDown:
    process: Any
    to: Pid
    ref: Reference
    reason: Any


@dataclass(frozen=True, slots=True)
class Unhandled:
    """A control message we have no use for (kept for logging)."""

    control: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A frame left undecoded (big, or maybe compressed): give it to ``Session.decode_frame``."""

    frame: bytes


Event = (CallReply | SpawnedReturn | SpawnReply | Message | Undeliverable | ExitSignal | MonitorDown | Unhandled
         | Deferred)


class Session:
    """State of one connected distribution link, independent of any socket."""

    def __init__(self, *, flags: int, max_frame: int = DEFAULT_MAX_FRAME,
                 budget: codec.DecodeBudget = codec.DEFAULT_BUDGET,
                 defer_from: int | None = None) -> None:
        self.flags = flags
        self.max_frame = max_frame
        self.budget = budget
        self.defer_from = defer_from
        self._buffer = bytearray()
        self._local_pids: set[Pid] = set()
        self._read_since_timer = False
        self._wrote_since_timer = False
        self._silent_periods = 0
        self._reg_send_controls: dict[tuple[Pid, Atom], bytes] = {}
        # Bytes that start a reply to one of our calls: SEND to our pid, then {OurRef, ...}.
        self._reply_heads: list[bytes] = []
        # Per local pid: (our pid + the head of our references, the head of our references).
        self._spawn_tails: list[tuple[bytes, bytes]] = []

    # --- our processes ------------------------------------------------------------------

    def add_local_pid(self, pid: Pid) -> None:
        self._local_pids.add(pid)
        control = bytearray(b"p\x83")
        codec.encode_term_into((SEND, _EMPTY_ATOM, pid), control)
        ref_head = reference_head(pid.node, pid.creation)
        self._reply_heads.append(bytes(control) + b"\x83\x68\x02" + ref_head)
        pid_bytes = bytearray()
        codec.encode_term_into(pid, pid_bytes)
        self._spawn_tails.append((bytes(pid_bytes) + ref_head, ref_head))

    # --- incoming -----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> tuple[list[Event], bytes]:
        """Feed bytes read from the socket. Returns the events, and bytes we owe the peer.

        Raises ProtocolError only when the stream itself is broken (an oversized frame)."""
        if data:
            self._read_since_timer = True
        buffer = self._buffer
        # With nothing buffered (the usual case: whole frames per read), frames are cut out of
        # ``data`` itself, without first copying it into the buffer.
        direct = not buffer and type(data) is bytes
        if direct:
            source: bytes | bytearray = data
        else:
            buffer += data
            source = buffer
        events: list[Event] = []
        out = bytearray()
        pos = 0
        end = len(source)
        defer_from = self.defer_from
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(source, pos)
            if size == 0:  # a tick: answer it, so a peer with a short net_ticktime keeps us
                pos += 4
                out += TICK
                continue
            if size > self.max_frame:
                raise ProtocolError(f"peer sent a frame of {size} bytes (limit {self.max_frame})")
            if end - pos - 4 < size:
                break
            if direct:
                frame = data[pos + 4:pos + 4 + size]
            elif size < _VIEW_FROM:
                frame = bytes(buffer[pos + 4:pos + 4 + size])
            else:
                with memoryview(buffer) as view:  # one copy of a big frame, not two
                    frame = bytes(view[pos + 4:pos + 4 + size])
            pos += 4 + size
            if defer_from is not None and (size >= defer_from or _COMPRESSED_HEAD in frame):
                events.append(Deferred(frame))
                continue
            event = self._on_frame(frame, out)
            if event is not None:
                events.append(event)
        if direct:
            if pos < end:
                buffer += data[pos:]
        elif pos:
            del buffer[:pos]
        if out:
            self._wrote_since_timer = True
            return events, bytes(out)
        return events, b""

    def decode_frame(self, frame: bytes) -> tuple[Event | None, bytes]:
        """Decode a ``Deferred`` frame: its event (or None) and bytes we owe the peer. It only
        reads what ``add_local_pid`` set up (and marks that we wrote), so it may run in a worker
        thread while the event loop goes on with ``receive_data`` and ``timer_fired``."""
        out = bytearray()
        return self._on_frame(frame, out), bytes(out)

    def _on_frame(self, frame: bytes, out: bytearray) -> Event | None:
        budget = self.budget
        if frame.startswith(_DOWN_HEAD):
            event = self._fast_down(frame)
            if event is not None:
                return event
        elif frame.startswith(_SPAWN_REPLY_HEAD):
            event = self._fast_spawn_reply(frame)
            if event is not None:
                return event
        for head in self._reply_heads:
            if frame.startswith(head):
                n = len(head)
                words = frame[n:n + 12]
                try:
                    reply, end = codec.decode_body(frame, n + 12, budget=budget)
                    if end != len(frame):
                        raise DecodeError(f"{len(frame) - end} bytes after the reply")
                except DecodeError as exc:
                    return Undeliverable(None, words, exc)
                return CallReply(words, reply)
        if frame[0] != PASS_THROUGH:
            return Undeliverable(None, None, DecodeError(f"frame type {frame[0]} (only 112 was negotiated)"))
        try:
            control, pos = codec.decode_prefix(frame, 1, budget=budget)
        except DecodeError as exc:
            return Undeliverable(None, None, exc)
        if type(control) is not tuple or not control or type(control[0]) is not int:
            problem = f"control message is not an operation tuple: {describe_term(control)}"
            return Undeliverable(None, None, DecodeError(problem))
        op = control[0]
        try:
            dest_index = _SENDS.get(op)
            if dest_index is not None:
                return self._on_send(control[dest_index], frame, pos, out)
            return self._on_control(op, control, frame, pos, out)
        except (IndexError, ValueError, TypeError):
            return Undeliverable(None, None, DecodeError(f"malformed control message: {describe_term(control)}"))

    def _fast_down(self, frame: bytes) -> Event | None:
        """``{28, Pid, OurPid, OurRef}`` + ``{OurRef, return, Value}`` matched on bytes, so only
        Value is decoded; None for any other shape (the general path then takes the frame)."""
        if len(frame) < 9 or frame[6] != codec.NEW_PID_EXT or frame[7] != codec.SMALL_ATOM_UTF8_EXT:
            return None
        pos = 9 + frame[8] + 12  # past the spawned process's pid: node atom, id, serial, creation
        for tail, ref_head in self._spawn_tails:
            if frame.startswith(tail, pos):
                start = pos + len(tail)
                words = frame[start:start + 12]
                result_head = b"\x83\x68\x03" + ref_head + words + _RETURN_ATOM
                start += 12
                if not frame.startswith(result_head, start):
                    return None
                try:
                    value, end = codec.decode_body(frame, start + len(result_head), budget=self.budget)
                    if end != len(frame):
                        raise DecodeError(f"{len(frame) - end} bytes after the result")
                except DecodeError as exc:
                    return Undeliverable(None, words, exc)
                return SpawnedReturn(words, value)
        return None

    def _fast_spawn_reply(self, frame: bytes) -> Event | None:
        """A successful ``{31, OurRef, OurPid, Flags, Pid}`` without decoding the control."""
        n = len(_SPAWN_REPLY_HEAD)
        for tail, ref_head in self._spawn_tails:
            if frame.startswith(ref_head, n):
                start = n + len(ref_head)
                words = frame[start:start + 12]
                pid_at = start + 12 + len(tail) - len(ref_head) + 2  # our pid, then a small int
                if (not frame.startswith(tail[:len(tail) - len(ref_head)], start + 12)
                        or frame[pid_at - 2] != codec.SMALL_INTEGER_EXT or frame[pid_at:pid_at + 1] != b"X"):
                    return None
                # The pid stays encoded: it is needed only to demonitor a call given up on.
                return SpawnReply(words, frame[pid_at:]) if len(frame) - pid_at < 300 else None
        return None

    def _on_send(self, to: Any, frame: bytes, pos: int, out: bytearray) -> Event | None:
        try:
            message, end = codec.decode_prefix(frame, pos, budget=self.budget)
            if end != len(frame):
                raise DecodeError(f"{len(frame) - end} bytes after the message payload")
        except DecodeError as exc:
            return Undeliverable(to, _first_element(frame, pos), exc)
        if (type(message) is tuple and len(message) == 4 and message[0] == _IO_REQUEST
                and to in self._local_pids):
            # We are the group leader of the processes our calls spawn: the peer's `user` (where
            # rex sends a call's output) serves the request and answers its sender directly.
            out += self.reg_send_encoded(to, _USER, frame[pos:])
            return None
        return Message(to, message)

    def _on_control(self, op: int, control: tuple[Any, ...], frame: bytes, pos: int, out: bytearray) -> Event | None:
        if op in _EXITS:
            return ExitSignal(control[1], control[2], control[3])
        if op in _PAYLOAD_EXITS or op == PAYLOAD_MONITOR_P_EXIT:
            try:
                reason, _ = codec.decode_prefix(frame, pos, budget=self.budget)
            except DecodeError as exc:
                # A monitor's reference names the call whose result did not decode.
                return Undeliverable(control[2], control[3] if op == PAYLOAD_MONITOR_P_EXIT else None, exc)
            if op == PAYLOAD_MONITOR_P_EXIT:
                return MonitorDown(control[1], control[2], control[3], reason)
            return ExitSignal(control[1], control[2], reason)
        if op == MONITOR_P_EXIT:
            return MonitorDown(control[1], control[2], control[3], control[4])
        if (op == SPAWN_REPLY or op == SPAWN_REPLY_TT) and type(control[1]) is Reference:
            return SpawnReply(control[1], control[4])
        if (op == SPAWN_REQUEST or op == SPAWN_REQUEST_TT) and type(control[1]) is Reference and type(control[2]) is Pid:
            # We run no processes for others: refuse, or the requester would wait forever.
            out += self._frame((SPAWN_REPLY, control[1], control[2], 0, _NOTSUP))
            return None
        if op == UNLINK_ID:
            _, unlink_id, sender, to = control
            out += self._frame((UNLINK_ID_ACK, unlink_id, to, sender))
            return None
        if op == LINK:
            _, sender, to = control
            if to not in self._local_pids:
                out += self._exit_frame(to, sender, _NOPROC)
            return None
        if op == MONITOR_P:
            _, sender, target, ref = control
            if target not in self._local_pids:
                out += self._monitor_exit_frame(target, sender, ref, _NOPROC)
            return None
        if op in (DEMONITOR_P, UNLINK, UNLINK_ID_ACK, NODE_LINK, GROUP_LEADER):
            return None
        return Unhandled(control)

    # --- outgoing -----------------------------------------------------------------------

    def reg_send(self, sender: Pid, name: Atom, payload: Any) -> bytes:
        """A message to the process registered as ``name`` on the peer (``{Name, Node} ! Msg``)."""
        encoded = bytearray((codec.VERSION,))
        codec.encode_term_into(payload, encoded)
        return self.reg_send_encoded(sender, name, encoded)

    def reg_send_encoded(self, sender: Pid, name: Atom, payload: bytes | bytearray) -> bytes:
        """Like ``reg_send`` for a payload already encoded (with its version byte)."""
        control = self._reg_send_controls.get((sender, name))
        if control is None:
            encoded = bytearray(b"p\x83")
            codec.encode_term_into((REG_SEND, sender, _EMPTY_ATOM, name), encoded)
            control = self._reg_send_controls[(sender, name)] = bytes(encoded)
        self._wrote_since_timer = True
        return _LEN.pack(len(control) + len(payload)) + control + payload

    def sent(self, frame: bytearray | bytes) -> bytes:
        """A whole frame built elsewhere (an RPC request), counted as written for the ticks."""
        self._wrote_since_timer = True
        return bytes(frame)

    def control_frame(self, control: tuple[Any, ...]) -> bytes:
        """A control message without payload (DEMONITOR_P...), framed."""
        return self._frame(control)

    def _exit_frame(self, sender: Any, to: Any, reason: Any) -> bytes:
        if self.flags & DFlag.EXIT_PAYLOAD:
            return self._frame((PAYLOAD_EXIT, sender, to), reason)
        return self._frame((EXIT, sender, to, reason))

    def _monitor_exit_frame(self, process: Any, to: Any, ref: Any, reason: Any) -> bytes:
        if self.flags & DFlag.EXIT_PAYLOAD:
            return self._frame((PAYLOAD_MONITOR_P_EXIT, process, to, ref), reason)
        return self._frame((MONITOR_P_EXIT, process, to, ref, reason))

    def _frame(self, control: tuple[Any, ...], payload: Any = _NO_PAYLOAD) -> bytes:
        body = bytearray(b"\0\0\0\0p\x83")
        codec.encode_term_into(control, body)
        if payload is not _NO_PAYLOAD:
            body.append(codec.VERSION)
            codec.encode_term_into(payload, body)
        _LEN.pack_into(body, 0, len(body) - 4)
        self._wrote_since_timer = True
        return bytes(body)

    # --- liveness -----------------------------------------------------------------------

    def timer_fired(self) -> tuple[bytes, bool]:
        """Call every net_ticktime/4. Returns (a tick to send or b"", whether the peer is gone)."""
        if self._read_since_timer:
            self._silent_periods = 0
        else:
            self._silent_periods += 1
        tick = b"" if self._wrote_since_timer else TICK
        self._read_since_timer = False
        self._wrote_since_timer = False
        return tick, self._silent_periods >= SILENT_PERIODS_BEFORE_DOWN


def reference_head(node: Atom, creation: int) -> bytes:
    """The encoding of a 3-word reference of ``node`` up to its id words."""
    head = bytearray(b"\x5a\x00\x03")
    codec.encode_term_into(node, head)
    return bytes(head + _LEN.pack(creation))


def describe_term(term: Any, depth: int = 0) -> str:
    """A short picture of a term from the peer, for messages and logs. Not repr(): that is as
    big and as deep as the term, and raises ValueError for an int of more than 4300 digits."""
    kind = type(term)
    if kind is tuple or kind is list:
        if depth >= 2:
            return "(...)" if kind is tuple else "[...]"
        inner = ", ".join(describe_term(item, depth + 1) for item in term[:4]) + (", ..." if len(term) > 4 else "")
        return f"({inner})" if kind is tuple else f"[{inner}]"
    if kind is int:
        return repr(term) if term.bit_length() <= 64 else f"<integer of {term.bit_length()} bits>"
    if kind in (bool, float, Atom, Pid, Reference, Port):
        return repr(term)  # bounded: atoms have at most 255 characters
    if kind is str or kind is bytes:
        return repr(term[:40]) + ("..." if len(term) > 40 else "")
    return f"<{kind.__name__}>"


def _first_element(frame: bytes, pos: int) -> Any:
    """The first element of the tuple payload at ``pos``, if that much decodes; else None."""
    try:
        if frame[pos] != codec.VERSION or frame[pos + 1] not in (codec.SMALL_TUPLE_EXT, codec.LARGE_TUPLE_EXT):
            return None
        skip = 2 if frame[pos + 1] == codec.SMALL_TUPLE_EXT else 5
        first, _ = codec.decode_body(frame, pos + 1 + skip, budget=_TAG_BUDGET)
        return first
    except (DecodeError, IndexError):
        return None
