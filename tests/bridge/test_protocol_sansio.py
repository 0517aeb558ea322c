"""Handshake, session and EPMD state machines, driven with bytes only (no sockets)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import Atom, CookieRejected, HandshakeFailed, Pid, ProtocolError, Reference, UsageError, encode
from bridge import epmd
from bridge.flags import MANDATORY_25, OUR_FLAGS, DFlag
from bridge.handshake import ClientHandshake, HandshakeState
from bridge.session import (
    TICK, CallReply, ExitSignal, Message, Session, Undeliverable, reference_head,
)

PEER = "counter@localhost"
ME = "relctl_test@localhost"


def framed(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def challenge(flags: int = int(OUR_FLAGS), number: int = 12345, name: str = PEER) -> bytes:
    raw = name.encode()
    return framed(b"N" + struct.pack(">QIIH", flags, number, 99, len(raw)) + raw)


def handshake() -> ClientHandshake:
    return ClientHandshake(our_name=ME, peer_name=PEER, cookie="monster", creation=7, challenge=424242)


def test_full_handshake_and_digests() -> None:
    hs = handshake()
    first = hs.start()
    (size,) = struct.unpack(">H", first[:2])
    assert first[2:3] == b"N" and size == len(first) - 2
    flags, creation, nlen = struct.unpack(">QIH", first[3:17])
    assert flags & DFlag.HANDSHAKE_23 and not flags & DFlag.PUBLISHED and creation == 7
    assert first[17:].decode() == ME and nlen == len(ME)
    assert not flags & (DFlag.FRAGMENTS | DFlag.DIST_HDR_ATOM_CACHE)

    assert hs.receive_data(framed(b"sok")) == b""
    reply = hs.receive_data(challenge())
    assert reply[2:3] == b"r"
    assert struct.unpack(">I", reply[3:7]) == (424242,)
    assert reply[7:] == hashlib.md5(b"monster12345").digest()
    # The ack arrives with the first bytes of the connected phase glued to it.
    assert hs.receive_data(framed(b"a" + hashlib.md5(b"monster424242").digest()) + TICK) == b""
    assert hs.state is HandshakeState.DONE and hs.result is not None
    assert hs.result.leftover == TICK and hs.result.peer_creation == 99


def test_byte_at_a_time() -> None:
    hs = handshake()
    stream = framed(b"sok") + challenge() + framed(b"a" + hashlib.md5(b"monster424242").digest())
    for i in range(len(stream)):
        hs.receive_data(stream[i:i + 1])
    assert hs.done


def test_close_after_our_digest_means_cookie_rejected() -> None:
    hs = handshake()
    hs.receive_data(framed(b"sok") + challenge())
    error = hs.connection_closed(ConnectionResetError("reset"))
    assert isinstance(error, CookieRejected) and "cookie rejected by counter@localhost" in str(error)


def test_a_wrong_ack_digest_is_cookie_rejected() -> None:
    hs = handshake()
    with pytest.raises(CookieRejected, match="digest of another cookie"):
        hs.receive_data(framed(b"sok") + challenge() + framed(b"a" + b"\0" * 16))
    assert hs.state is HandshakeState.FAILED


@pytest.mark.parametrize(
    ("stream", "error", "message"),
    [
        (framed(b"snot_allowed"), HandshakeFailed, "does not allow connections"),
        (framed(b"snok"), HandshakeFailed, "already connecting"),
        (framed(b"swhat"), ProtocolError, "unexpected handshake status"),
        (framed(b"sok") + challenge(name="other@host"), HandshakeFailed, "calls itself other@host"),
        (framed(b"sok") + challenge(flags=int(DFlag.HANDSHAKE_23)), HandshakeFailed, "lacks distribution features"),
        (framed(b"sok") + framed(b"n\x00\x05"), HandshakeFailed, "version 5"),
        (b"\xff\xff" + b"x" * 10, ProtocolError, "really an Erlang node"),
    ],
)
def test_refusals_name_the_cause(stream: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        handshake().receive_data(stream)


def test_alive_status_takes_over_our_stale_connection() -> None:
    assert handshake().receive_data(framed(b"salive")) == framed(b"strue")


def test_mandatory_digest_flag_stands_for_the_otp25_set() -> None:
    hs = handshake()
    hs.receive_data(framed(b"sok") + challenge(flags=int(DFlag.MANDATORY_25_DIGEST | DFlag.UNLINK_ID)))
    assert hs.state is HandshakeState.AWAIT_ACK


def test_cookie_must_be_latin1() -> None:
    with pytest.raises(UsageError, match="Latin-1"):
        ClientHandshake(our_name=ME, peer_name=PEER, cookie="\u65e5", creation=1)


@settings(max_examples=1500)
@given(st.binary(max_size=120))
def test_handshake_survives_arbitrary_bytes(data: bytes) -> None:
    hs = handshake()
    try:
        hs.receive_data(data)
    except (HandshakeFailed, ProtocolError):
        assert hs.state is HandshakeState.FAILED


# --- session ------------------------------------------------------------------------------

ME_ATOM = Atom(ME)
OUR_PID = Pid(ME_ATOM, 1, 0, 7)
PEER_PID = Pid(Atom(PEER), 80, 0, 99)


def message_frame(control: tuple[object, ...], payload: object = None) -> bytes:
    body = b"p" + encode(control) + (encode(payload) if payload is not None else b"")
    return struct.pack(">I", len(body)) + body


def session() -> Session:
    s = Session(flags=int(OUR_FLAGS))
    s.add_local_pid(OUR_PID)
    return s


def test_rpc_reply_is_recognised_by_its_reference_bytes() -> None:
    s = session()
    ref = Reference(ME_ATOM, 7, (5, 6, 7))
    events, owed = s.receive_data(message_frame((2, Atom(""), OUR_PID), (ref, [Atom("ok")])))
    assert events == [CallReply(struct.pack(">III", 5, 6, 7), [Atom("ok")])] and owed == b""
    assert reference_head(ME_ATOM, 7) == encode(ref)[1:-12]


def test_other_messages_and_exits_become_events() -> None:
    s = session()
    frames = message_frame((6, PEER_PID, Atom(""), Atom("mailbox")), "hi")
    frames += message_frame((24, PEER_PID, OUR_PID), Atom("killed"))
    events, _ = s.receive_data(frames)
    assert events == [Message(Atom("mailbox"), "hi"), ExitSignal(PEER_PID, OUR_PID, Atom("killed"))]


def test_ticks_are_answered_and_frames_may_split_anywhere() -> None:
    s = session()
    stream = TICK + message_frame((2, Atom(""), OUR_PID), (Atom("x"),))
    owed_total = b""
    events = []
    for i in range(len(stream)):
        got, owed = s.receive_data(stream[i:i + 1])
        events += got
        owed_total += owed
    assert owed_total == TICK and events == [Message(OUR_PID, (Atom("x"),))]


def test_protocol_obligations_are_answered() -> None:
    s = session()
    ref = Reference(Atom(PEER), 99, (1, 2, 3))
    other = Pid(ME_ATOM, 999, 0, 7)
    _, owed = s.receive_data(message_frame((35, 17, PEER_PID, OUR_PID)))
    assert owed == message_frame((36, 17, OUR_PID, PEER_PID))
    _, owed = s.receive_data(message_frame((19, PEER_PID, other, ref)))
    assert owed == message_frame((28, other, PEER_PID, ref), Atom("noproc"))
    _, owed = s.receive_data(message_frame((1, PEER_PID, other)))
    assert owed == message_frame((24, other, PEER_PID), Atom("noproc"))
    _, owed = s.receive_data(message_frame((1, PEER_PID, OUR_PID)))
    assert owed == b""  # a link to us is fine


def test_undecodable_reply_still_names_its_call() -> None:
    s = session()
    ref = Reference(ME_ATOM, 7, (5, 6, 7))
    good = message_frame((2, Atom(""), OUR_PID), (ref, Atom("ok")))
    bad = good[:-4] + b"\x01\x01\x01\x01"  # the reply is now an unknown tag
    events, _ = s.receive_data(bad)
    assert len(events) == 1 and isinstance(events[0], Undeliverable)
    assert events[0].tag == struct.pack(">III", 5, 6, 7)


def test_oversized_frame_breaks_the_stream() -> None:
    s = Session(flags=0, max_frame=100)
    with pytest.raises(ProtocolError, match="frame of 101 bytes"):
        s.receive_data(struct.pack(">I", 101))


def test_tick_accounting_follows_otp() -> None:
    s = session()
    assert s.timer_fired() == (TICK, False)  # nothing written: tick; nothing read: 1 silent
    s.reg_send(OUR_PID, Atom("rex"), Atom("x"))
    assert s.timer_fired() == (b"", False)  # we wrote, so no tick
    assert s.timer_fired() == (TICK, False)
    assert s.timer_fired() == (TICK, True)  # four silent periods: the peer is gone
    s.receive_data(TICK)
    assert s.timer_fired()[1] is False


@settings(max_examples=1500)
@given(st.binary(max_size=200))
def test_session_survives_arbitrary_frames(body: bytes) -> None:
    s = session()
    try:
        s.receive_data(struct.pack(">I", len(body)) + body)
        s.receive_data(struct.pack(">I", len(body) + 1) + b"p" + body)
    except ProtocolError:
        pass


# --- epmd ---------------------------------------------------------------------------------


def test_epmd_messages() -> None:
    assert epmd.port_please2_request("counter") == b"\x00\x08zcounter"
    reply = b"w\x00" + struct.pack(">HBBHHH", 40001, 77, 0, 6, 6, 7) + b"counter" + b"\x00\x00"
    address = epmd.parse_port_please2_reply(reply)
    assert address is not None and address.port == 40001 and address.name == "counter" and not address.hidden
    assert epmd.parse_port_please2_reply(b"w\x01") is None
    names = struct.pack(">I", 4369) + b"name counter at port 40001\nname other at port 5\n"
    assert epmd.parse_names_reply(names) == {"counter": 40001, "other": 5}
    with pytest.raises(ProtocolError):
        epmd.parse_port_please2_reply(b"w\x00\x01")


def test_our_flags_never_publish_and_cover_otp26() -> None:
    assert not OUR_FLAGS & (DFlag.PUBLISHED | DFlag.FRAGMENTS | DFlag.DIST_HDR_ATOM_CACHE | DFlag.ATOM_CACHE)
    assert OUR_FLAGS & MANDATORY_25 == MANDATORY_25
    assert OUR_FLAGS & DFlag.V4_NC and OUR_FLAGS & DFlag.UNLINK_ID and OUR_FLAGS & DFlag.MANDATORY_25_DIGEST
