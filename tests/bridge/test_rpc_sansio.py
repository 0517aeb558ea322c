"""RPC bookkeeping (bridge.rpc) driven with frames, events and a clock passed in: no sockets,
no event loop. Replies go through a real Session, so the byte-level fast path is covered too."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import (
    Atom, BadRpc, BridgeTimeout, ConnectionLost, DecodeError, EncodeError, Pid, Reference, encode,
)
from bridge.codec import decode_prefix
from bridge.flags import OUR_FLAGS, DFlag
from bridge.rpc import CallFailed, CallReturned, Outcome, RpcCalls, call_key
from bridge.session import (
    TICK, CallReply, Event, ExitSignal, Message, MonitorDown, Session, Undeliverable, Unhandled,
)

from .strategies import terms

PEER = "counter@localhost"
ME = Atom("relctl_test@localhost")
OUR_PID = Pid(ME, 1, 0, 7)
PEER_PID = Pid(Atom(PEER), 70, 0, 5)
SALT = 0xC0FFEE


# These are the calls through rex: a session whose negotiated flags lack DFLAG_SPAWN (a peer
# older than OTP 23). The spawn-request path is in test_spawn_calls.py.
REX_FLAGS = int(OUR_FLAGS & ~DFlag.SPAWN)


def calls(salt: int = SALT) -> tuple[RpcCalls, Session]:
    session = Session(flags=REX_FLAGS)
    session.add_local_pid(OUR_PID)
    return RpcCalls(session, OUR_PID, PEER, salt=salt), session


def sent(frame: bytes) -> tuple[Any, Any]:
    """The (control, payload) of a frame we wrote, decoded independently of bridge.rpc."""
    (size,) = struct.unpack_from(">I", frame)
    assert size == len(frame) - 4 and frame[4] == 112
    control, pos = decode_prefix(frame, 5)
    payload, end = decode_prefix(frame, pos)
    assert end == len(frame)
    return control, payload


def ref_of(call_id: bytes) -> Reference:
    return Reference(ME, OUR_PID.creation, struct.unpack(">III", call_id))


def reply_frame(ref: Any, reply: Any, control: tuple[Any, ...] = (2, Atom(""), OUR_PID)) -> bytes:
    body = b"p" + encode(control) + encode((ref, reply))
    return struct.pack(">I", len(body)) + body


def deliver(rpc: RpcCalls, session: Session, frame: bytes) -> tuple[list[Event], list[Outcome | None]]:
    events, _ = session.receive_data(frame)
    return events, [rpc.receive(event) for event in events]


# --- requests -----------------------------------------------------------------------------


def test_a_request_is_a_gen_call_to_rex_with_a_reference_naming_the_call() -> None:
    rpc, _ = calls()
    assert not rpc.spawn  # the peer lacks DFLAG_SPAWN
    call_id, frame = rpc.request("release_handler", Atom("which_releases"), [1, b"x", [Atom("a")]],
                                 timeout=5.0, now=0.0)
    control, payload = sent(frame)
    assert control == (6, OUR_PID, Atom(""), Atom("rex"))  # REG_SEND from our pid to rex
    assert payload == (Atom("$gen_call"), (OUR_PID, ref_of(call_id)),
                       (Atom("call"), Atom("release_handler"), Atom("which_releases"),
                        [1, b"x", [Atom("a")]], Atom("user")))
    assert len(call_id) == 12 and struct.unpack(">III", call_id)[2] == SALT
    assert len(rpc) == 1


def test_no_arguments_is_the_empty_list() -> None:
    rpc, _ = calls()
    _, frame = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    _, payload = sent(frame)
    assert payload[2] == (Atom("call"), Atom("erlang"), Atom("node"), [], Atom("user"))


def test_every_call_gets_its_own_reference() -> None:
    rpc, _ = calls()
    ids = [rpc.request("erlang", "node", (), timeout=1.0, now=0.0)[0] for _ in range(300)]
    assert len(set(ids)) == len(ids) == len(rpc)
    other, _ = calls(salt=SALT + 1)
    assert other.request("erlang", "node", (), timeout=1.0, now=0.0)[0] not in ids


def test_a_request_counts_as_written_so_no_tick_is_due() -> None:
    rpc, session = calls()
    rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    assert session.timer_fired() == (b"", False)
    assert session.timer_fired() == (TICK, False)


def test_arguments_without_an_erlang_form_register_nothing() -> None:
    rpc, _ = calls()
    with pytest.raises(EncodeError):
        rpc.request("erlang", "node", [None], timeout=1.0, now=0.0)
    assert len(rpc) == 0 and rpc.next_deadline() is None


# --- replies ------------------------------------------------------------------------------


def test_a_reply_takes_the_fast_path_and_answers_its_call() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    events, outcomes = deliver(rpc, session, reply_frame(ref_of(call_id), Atom(PEER)))
    assert events == [CallReply(call_id, Atom(PEER))]  # matched on bytes, no Reference built
    assert outcomes == [CallReturned(call_id, Atom(PEER))]
    assert len(rpc) == 0


def test_a_reply_in_another_shape_still_answers_its_call() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    events, outcomes = deliver(rpc, session, reply_frame(ref_of(call_id), [1, 2], (22, PEER_PID, OUR_PID)))
    assert type(events[0]) is Message  # SEND_SENDER: the general path
    assert outcomes == [CallReturned(call_id, [1, 2])]


def test_replies_in_any_order_find_their_calls() -> None:
    rpc, session = calls()
    ids = [rpc.request("erlang", "node", (), timeout=1.0, now=0.0)[0] for _ in range(3)]
    frames = b"".join(reply_frame(ref_of(call_id), n) for n, call_id in reversed(list(enumerate(ids))))
    _, outcomes = deliver(rpc, session, frames)
    assert outcomes == [CallReturned(ids[2], 2), CallReturned(ids[1], 1), CallReturned(ids[0], 0)]


def test_badrpc_becomes_bad_rpc_naming_the_call() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("nosuchmod", "f", [1, 2], timeout=1.0, now=0.0)
    reason: Any = (Atom("EXIT"), (Atom("undef"), [(Atom("nosuchmod"), Atom("f"), [1, 2], [])]))
    _, [outcome] = deliver(rpc, session, reply_frame(ref_of(call_id), (Atom("badrpc"), reason)))
    assert isinstance(outcome, CallFailed) and outcome.call_id == call_id
    error = outcome.error
    assert isinstance(error, BadRpc) and error.reason == reason
    assert error.mfa == "nosuchmod:f/2" and error.node == PEER
    assert str(error).startswith(f"nosuchmod:f/2 on {PEER} failed: {{'EXIT',{{undef,")


def test_a_result_shaped_like_badrpc_only_in_part_is_a_result() -> None:
    rpc, session = calls()
    ids = [rpc.request("m", "f", (), timeout=1.0, now=0.0)[0] for _ in range(2)]
    odd = [(Atom("badrpc"), 1, 2), [Atom("badrpc"), 1]]
    _, outcomes = deliver(rpc, session, b"".join(reply_frame(ref_of(i), r) for i, r in zip(ids, odd)))
    assert outcomes == [CallReturned(ids[0], odd[0]), CallReturned(ids[1], odd[1])]


def test_an_undecodable_reply_fails_its_call_with_decode_error() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    good = reply_frame(ref_of(call_id), Atom("ok"))
    events, [outcome] = deliver(rpc, session, good[:-4] + b"\x01\x01\x01\x01")
    assert type(events[0]) is Undeliverable
    assert isinstance(outcome, CallFailed) and isinstance(outcome.error, DecodeError)
    assert f"the reply from {PEER} could not be decoded" in str(outcome.error)
    assert len(rpc) == 0


def test_an_undecodable_reply_on_the_general_path_names_its_call_too() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    good = reply_frame(ref_of(call_id), Atom("ok"), (22, PEER_PID, OUR_PID))
    events, [outcome] = deliver(rpc, session, good[:-4] + b"\x01\x01\x01\x01")
    assert type(events[0]) is Undeliverable and events[0].tag == ref_of(call_id)
    assert isinstance(outcome, CallFailed) and isinstance(outcome.error, DecodeError)


# --- deadlines ----------------------------------------------------------------------------


def test_a_call_expires_at_its_deadline_and_not_before() -> None:
    rpc, _ = calls()
    call_id, _ = rpc.request("timer", "sleep", [10_000], timeout=5.0, now=100.0)
    assert rpc.next_deadline() == 105.0
    assert rpc.expire(104.999) == [] and len(rpc) == 1
    [failed] = rpc.expire(105.0)
    assert failed.call_id == call_id and isinstance(failed.error, BridgeTimeout)
    assert str(failed.error) == f"timer:sleep/1 on {PEER} did not answer within 5 s"
    assert len(rpc) == 0 and rpc.next_deadline() is None


def test_deadlines_expire_in_order_whatever_order_the_calls_came_in() -> None:
    rpc, _ = calls()
    late, _ = rpc.request("m", "late", (), timeout=30.0, now=0.0)
    early, _ = rpc.request("m", "early", (), timeout=0.5, now=1.0)
    middle, _ = rpc.request("m", "middle", (), timeout=9.0, now=2.0)
    assert rpc.next_deadline() == 1.5
    assert [f.call_id for f in rpc.expire(11.0)] == [early, middle]
    assert rpc.next_deadline() == 30.0
    assert [f.call_id for f in rpc.expire(1e9)] == [late]


def test_a_late_reply_is_dropped() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    assert len(rpc.expire(2.0)) == 1
    events, outcomes = deliver(rpc, session, reply_frame(ref_of(call_id), Atom(PEER)))
    assert events == [CallReply(call_id, Atom(PEER))] and outcomes == [None]


def test_an_answered_call_never_times_out_and_its_deadline_goes() -> None:
    rpc, session = calls()
    first, _ = rpc.request("m", "f", (), timeout=1.0, now=0.0)
    second, _ = rpc.request("m", "g", (), timeout=2.0, now=0.0)
    _, [outcome] = deliver(rpc, session, reply_frame(ref_of(first), 1))
    assert outcome == CallReturned(first, 1)
    rpc.forget(first)
    assert rpc.next_deadline() == 2.0 and rpc.deadlines_held == 1  # the answered call's went
    assert [f.call_id for f in rpc.expire(5.0)] == [second]


def test_deadlines_of_answered_calls_do_not_pile_up() -> None:
    rpc, session = calls()
    oldest, _ = rpc.request("m", "slow", (), timeout=10.0, now=0.0)
    for n in range(100):
        call_id, _ = rpc.request("m", "f", (), timeout=10.0, now=1.0 + n / 1000)
        assert deliver(rpc, session, reply_frame(ref_of(call_id), n))[1] == [CallReturned(call_id, n)]
        rpc.forget(call_id)
    assert len(rpc) == 1 and rpc.deadlines_held == 101  # behind the oldest call's, kept for now
    _, [outcome] = deliver(rpc, session, reply_frame(ref_of(oldest), 0))
    assert outcome == CallReturned(oldest, 0)
    rpc.forget(oldest)
    assert rpc.deadlines_held == 0 and rpc.next_deadline() is None


def test_a_forgotten_call_neither_times_out_nor_takes_a_reply() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("m", "f", (), timeout=1.0, now=0.0)
    rpc.forget(call_id)  # its caller was cancelled
    assert len(rpc) == 0 and rpc.next_deadline() is None and rpc.expire(10.0) == []
    assert deliver(rpc, session, reply_frame(ref_of(call_id), 1))[1] == [None]
    rpc.forget(call_id)  # twice is harmless
    rpc.forget(b"\0" * 12)


# --- the connection goes ------------------------------------------------------------------


def test_a_lost_connection_fails_every_pending_call_at_once_with_the_reason() -> None:
    rpc, session = calls()
    ids = [rpc.request("m", "f", (), timeout=1.0 + n, now=0.0)[0] for n in range(3)]
    failed = rpc.connection_lost("closed by the peer")
    assert [f.call_id for f in failed] == ids
    assert all(isinstance(f.error, ConnectionLost) for f in failed)
    assert str(failed[0].error) == f"connection to {PEER} lost: closed by the peer"
    assert len(rpc) == 0 and rpc.next_deadline() is None and rpc.expire(100.0) == []
    assert rpc.closed_reason == "closed by the peer"
    assert rpc.connection_lost("again") == [] and rpc.closed_reason == "closed by the peer"
    assert deliver(rpc, session, reply_frame(ref_of(ids[0]), 1))[1] == [None]


def test_no_call_starts_on_a_lost_connection() -> None:
    rpc, _ = calls()
    rpc.connection_lost("aborted by us")
    with pytest.raises(ConnectionLost, match=r"connection to counter@localhost is closed \(aborted by us\)"):
        rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    assert len(rpc) == 0


# --- what is not a reply ------------------------------------------------------------------


def test_what_is_not_a_reply_to_a_pending_call_is_ignored_and_the_call_still_waits() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    words = struct.unpack(">III", call_id)
    others: list[Event] = [
        Message(OUR_PID, Atom("hello")),                                # not a tuple
        Message(OUR_PID, (ref_of(call_id),)),                           # a tuple, but not a pair
        Message(OUR_PID, (ref_of(call_id), 1, 2)),
        Message(OUR_PID, (call_id, 1)),                                 # the id as a binary
        Message(OUR_PID, (Reference(ME, 7, words + (0, 0)), 1)),        # five words
        Message(OUR_PID, (Reference(ME, 7, (9, 9, 9)), 1)),             # someone else's call
        Message(Atom("mailbox"), 10**5000),
        CallReply(b"\0" * 12, 1),
        CallReply(b"", 1),
        Undeliverable(None, None, DecodeError("x")),
        Undeliverable(None, b"short", DecodeError("x")),
        Undeliverable(OUR_PID, [1, 2], DecodeError("x")),
        ExitSignal(PEER_PID, OUR_PID, Atom("kill")),
        MonitorDown(PEER_PID, OUR_PID, ref_of(call_id), Atom("noproc")),
        Unhandled((99, 1)),
    ]
    assert [rpc.receive(event) for event in others] == [None] * len(others)
    assert len(rpc) == 1
    assert deliver(rpc, session, reply_frame(ref_of(call_id), 7))[1] == [CallReturned(call_id, 7)]


def test_call_key_reads_references_and_raw_words_only() -> None:
    words = struct.pack(">III", 1, 2, 3)
    assert call_key(Reference(ME, 7, (1, 2, 3))) == words
    assert call_key(words) == words
    assert call_key(Reference(ME, 7, (1, 2))) is None
    assert call_key((1, 2, 3)) is None and call_key(None) is None


@settings(max_examples=300)
@given(tag=terms, reply=terms)
def test_arbitrary_messages_to_us_never_crash_and_never_answer_a_call(tag: Any, reply: Any) -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    for control in ((2, Atom(""), OUR_PID), (22, PEER_PID, OUR_PID)):
        _, outcomes = deliver(rpc, session, reply_frame(tag, reply, control))
        assert outcomes == [None]
    assert len(rpc) == 1


@settings(max_examples=500)
@given(body=st.binary(max_size=120))
def test_garbage_frames_never_crash_it(body: bytes) -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    head = reply_frame(ref_of(call_id), 0)[4:-2]  # the reply up to its last term
    for frame_body in (body, b"p" + body, head + body):
        events, _ = session.receive_data(struct.pack(">I", len(frame_body)) + frame_body)
        for event in events:
            outcome = rpc.receive(event)
            assert outcome is None or outcome.call_id == call_id
