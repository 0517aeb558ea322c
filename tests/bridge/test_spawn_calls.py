"""Calls made the way erpc makes them (SPAWN_REQUEST, monitor, result as the exit reason), driven
with frames through a real Session and RpcCalls: no sockets. The frames from the node are the
shapes an OTP 25 node sends (seen on the wire in tests/e2e/test_bridge_live.py)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bridge import Atom, BadRpc, BridgeTimeout, ConnectionLost, Pid, Reference, TermTooLarge, encode
from bridge.codec import DecodeBudget, decode_prefix
from bridge.flags import OUR_FLAGS, DFlag
from bridge.rpc import CallFailed, CallReturned, Outcome, RpcCalls
from bridge.session import Deferred, Event, MonitorDown, Session, SpawnedReturn, SpawnReply

PEER = "counter@localhost"
ME = Atom("relctl_test@localhost")
OUR_PID = Pid(ME, 1, 0, 7)
CHILD = Pid(Atom(PEER), 87, 0, 5)
EXIT = Atom("EXIT")


def calls(flags: int = int(OUR_FLAGS), **session_args: Any) -> tuple[RpcCalls, Session]:
    session = Session(flags=flags, **session_args)
    session.add_local_pid(OUR_PID)
    return RpcCalls(session, OUR_PID, PEER, salt=0xC0FFEE), session


def framed(control: tuple[Any, ...], payload: Any = None) -> bytes:
    body = b"p" + encode(control) + (b"" if payload is None else encode(payload))
    return struct.pack(">I", len(body)) + body


def decoded(frame: bytes) -> tuple[Any, Any]:
    (size,) = struct.unpack_from(">I", frame)
    assert size == len(frame) - 4 and frame[4] == 112
    control, pos = decode_prefix(frame, 5)
    payload = decode_prefix(frame, pos)[0] if pos < len(frame) else None
    return control, payload


def ref_of(call_id: bytes) -> Reference:
    return Reference(ME, OUR_PID.creation, struct.unpack(">III", call_id))


def spawned(call_id: bytes, child: Pid = CHILD) -> bytes:
    return framed((31, ref_of(call_id), OUR_PID, 2, child))  # SPAWN_REPLY, monitor flag set


def down(call_id: bytes, reason: Any, child: Pid = CHILD) -> bytes:
    return framed((28, child, OUR_PID, ref_of(call_id)), reason)  # PAYLOAD_MONITOR_P_EXIT


def deliver(rpc: RpcCalls, session: Session, data: bytes) -> tuple[list[Event], list[Outcome | None]]:
    events, _ = session.receive_data(data)
    return events, [rpc.receive(event) for event in events]


def test_with_dflag_spawn_a_call_is_erpcs_spawn_request() -> None:
    rpc, session = calls()
    assert rpc.spawn
    call_id, frame = rpc.request("release_handler", "which_releases", [1, b"x"], timeout=5.0, now=0.0)
    control, payload = decoded(frame)
    ref = ref_of(call_id)
    # {SPAWN_REQUEST, ReqId, From, GroupLeader, MFA, Opts}; the arguments are the payload.
    assert control == (29, ref, OUR_PID, OUR_PID, (Atom("erpc"), Atom("execute_call"), 4), [Atom("monitor")])
    assert payload == [ref, Atom("release_handler"), Atom("which_releases"), [1, b"x"]]
    assert decoded(rpc.request("erlang", "node", (), timeout=1.0, now=0.0)[1])[1][3] == []
    assert session.timer_fired() == (b"", False)  # the request counts as written


@pytest.mark.parametrize("missing", [DFlag.SPAWN, DFlag.DIST_MONITOR_NAME])
def test_without_spawn_or_monitor_exits_calls_fall_back_to_rex(missing: DFlag) -> None:
    rpc, _ = calls(flags=int(OUR_FLAGS & ~missing))
    assert not rpc.spawn
    control, _ = decoded(rpc.request("erlang", "node", (), timeout=1.0, now=0.0)[1])
    assert control == (6, OUR_PID, Atom(""), Atom("rex"))


def test_the_result_comes_as_the_exit_reason_on_the_byte_level_fast_path() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("erlang", "node", (), timeout=1.0, now=0.0)
    # Both frames usually arrive in one read.
    events, outcomes = deliver(rpc, session, spawned(call_id) + down(call_id, (ref_of(call_id), Atom("return"), Atom(PEER))))
    # Matched on bytes: no Reference built, the pid left encoded.
    assert events == [SpawnReply(call_id, encode(CHILD)[1:]), SpawnedReturn(call_id, Atom(PEER))]
    assert outcomes == [None, CallReturned(call_id, Atom(PEER))]
    assert len(rpc) == 0 and rpc.spawned_held == 0
    assert rpc.forget(call_id) == b""  # it ended: nothing to demonitor


def test_a_value_shaped_like_badrpc_or_exit_is_a_value() -> None:
    rpc, session = calls()
    values = [(Atom("badrpc"), 1), (EXIT, Atom("x")), (Atom("return"), 1)]
    ids = [rpc.request("m", "f", (), timeout=1.0, now=0.0)[0] for _ in values]
    data = b"".join(down(i, (ref_of(i), Atom("return"), v)) for i, v in zip(ids, values))
    assert deliver(rpc, session, data)[1] == [CallReturned(i, v) for i, v in zip(ids, values)]


STACK = [(Atom("t"), Atom("er"), 0, [(Atom("file"), "t.erl"), (Atom("line"), 5)])]


@pytest.mark.parametrize(("kind", "rest", "expected"), [
    # What rex answers for the same failures on OTP 25 (checked against gen_server:call(rex, ...)).
    ("throw", (Atom("foo"),), Atom("foo")),                                  # rex: catch -> the value
    ("exit", (Atom("bar"),), BadRpc((EXIT, Atom("bar")))),
    ("error", (Atom("baz"), STACK), BadRpc((EXIT, (Atom("baz"), STACK)))),
    ("error", ((Atom("erpc"), Atom("badarg")),), BadRpc((EXIT, Atom("badarg")))),
])
def test_exceptions_give_what_rex_gives(kind: str, rest: tuple[Any, ...], expected: Any) -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("t", "f", [], timeout=1.0, now=0.0)
    [event], [outcome] = deliver(rpc, session, down(call_id, (ref_of(call_id), Atom(kind), *rest)))
    assert type(event) is MonitorDown  # not a return: the general path
    if isinstance(expected, BadRpc):
        assert isinstance(outcome, CallFailed) and isinstance(outcome.error, BadRpc)
        assert outcome.error.reason == expected.reason
        assert outcome.error.mfa == "t:f/0" and outcome.error.node == PEER
    else:
        assert outcome == CallReturned(call_id, expected)


def test_a_process_killed_by_a_signal_is_an_exit_and_a_failed_spawn_is_bad_rpc() -> None:
    rpc, session = calls()
    killed, _ = rpc.request("timer", "sleep", [10_000], timeout=1.0, now=0.0)
    refused, _ = rpc.request("m", "f", (), timeout=1.0, now=0.0)
    unsupported, _ = rpc.request("m", "f", (), timeout=1.0, now=0.0)
    data = (down(killed, Atom("killed")) + framed((31, ref_of(refused), OUR_PID, 0, Atom("system_limit")))
            + framed((31, ref_of(unsupported), OUR_PID, 0, Atom("notsup"))))
    _, outcomes = deliver(rpc, session, data)
    reasons = [o.error.reason for o in outcomes if isinstance(o, CallFailed) and isinstance(o.error, BadRpc)]
    assert reasons == [(EXIT, Atom("killed")), (EXIT, Atom("system_limit")), Atom("notsup")]
    assert len(rpc) == 0


def test_a_timed_out_calls_late_result_is_dropped_and_its_monitor_taken_back() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("timer", "sleep", [1500], timeout=0.3, now=0.0)
    assert deliver(rpc, session, spawned(call_id))[1] == [None]
    assert rpc.spawned_held == 1
    [failed] = rpc.expire(0.3)
    assert isinstance(failed.error, BridgeTimeout)
    # The caller lets go: the node is told to drop its monitor, so no DOWN comes for it.
    control, _ = decoded(rpc.forget(call_id))
    assert control == (20, OUR_PID, CHILD, ref_of(call_id))  # DEMONITOR_P
    assert rpc.spawned_held == 0 and len(rpc) == 0 and rpc.deadlines_held == 0
    # Had it come anyway (sent before the demonitor arrived), it answers nothing.
    late = down(call_id, (ref_of(call_id), Atom("return"), Atom("ok")))
    assert deliver(rpc, session, late)[1] == [None]
    assert rpc.forget(call_id) == b""


def test_a_spawn_reply_after_the_deadline_is_not_kept() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("m", "f", (), timeout=0.1, now=0.0)
    rpc.expire(1.0)
    assert deliver(rpc, session, spawned(call_id))[1] == [None]
    assert rpc.spawned_held == 0 and rpc.forget(call_id) == b""


def test_a_result_over_the_budget_fails_its_call_with_term_too_large_on_both_paths() -> None:
    budget = DecodeBudget(max_elements=1000, min_elements=1000, max_bytes=10_000, min_bytes=10_000)
    rpc, session = calls(budget=budget)
    fast, _ = rpc.request("m", "big", (), timeout=1.0, now=0.0)
    general, _ = rpc.request("m", "big", (), timeout=1.0, now=0.0)
    big = list(range(5000))
    data = down(fast, (ref_of(fast), Atom("return"), big)) + down(general, (ref_of(general), Atom("exit"), big))
    _, outcomes = deliver(rpc, session, data)
    assert [type(o.error) for o in outcomes if isinstance(o, CallFailed)] == [TermTooLarge, TermTooLarge]
    assert [o.call_id for o in outcomes if o is not None] == [fast, general]
    assert "the reply to m:big/0 from counter@localhost is too large" in str(outcomes[0].error)  # type: ignore[union-attr]


def test_a_big_result_is_deferred_and_decode_frame_finds_its_call() -> None:
    rpc, session = calls(defer_from=1024)
    call_id, _ = rpc.request("m", "f", (), timeout=1.0, now=0.0)
    events, _ = session.receive_data(down(call_id, (ref_of(call_id), Atom("return"), b"x" * 4000)))
    assert [type(e) for e in events] == [Deferred]
    event, owed = session.decode_frame(events[0].frame)  # type: ignore[union-attr]
    assert owed == b"" and rpc.receive(event) == CallReturned(call_id, b"x" * 4000)  # type: ignore[arg-type]


def test_a_lost_connection_fails_every_spawned_call_and_keeps_nothing() -> None:
    rpc, session = calls()
    ids = [rpc.request("timer", "sleep", [10_000], timeout=5.0, now=0.0)[0] for _ in range(3)]
    deliver(rpc, session, b"".join(spawned(i, Pid(Atom(PEER), 90 + n, 0, 5)) for n, i in enumerate(ids)))
    assert rpc.spawned_held == 3
    failed = rpc.connection_lost("closed by the peer")
    assert [f.call_id for f in failed] == ids and all(isinstance(f.error, ConnectionLost) for f in failed)
    assert rpc.spawned_held == 0 and [rpc.forget(i) for i in ids] == [b"", b"", b""]


def test_io_requests_from_a_spawned_call_go_to_the_peers_user() -> None:
    _, session = calls()
    request = (Atom("io_request"), CHILD, Reference(Atom(PEER), 5, (1, 2, 3)),
               (Atom("put_chars"), Atom("unicode"), b"hello\n"))
    events, owed = session.receive_data(framed((2, Atom(""), OUR_PID), request))
    assert events == []
    control, payload = decoded(owed)
    assert control == (6, OUR_PID, Atom(""), Atom("user")) and payload == request  # user answers CHILD


def test_a_spawn_request_to_us_is_refused() -> None:
    _, session = calls()
    ref = Reference(Atom(PEER), 5, (9, 9, 9))
    request: tuple[Any, ...] = (29, ref, CHILD, CHILD, (Atom("erlang"), Atom("node"), 0), [])
    events, owed = session.receive_data(framed(request, []))
    assert events == [] and decoded(owed) == ((31, ref, CHILD, 0, Atom("notsup")), None)


def test_what_is_not_for_a_pending_call_leaves_it_waiting() -> None:
    rpc, session = calls()
    call_id, _ = rpc.request("m", "f", (), timeout=1.0, now=0.0)
    other = ref_of(b"\0\0\0\1\0\0\0\0\0\0\0\1")
    data = (down(b"\0\0\0\1\0\0\0\0\0\0\0\1", (other, Atom("return"), 1))          # another call
            + down(call_id, (other, Atom("return"), 1))[:0]                          # (nothing)
            + framed((2, Atom(""), OUR_PID), (ref_of(call_id), 1))                   # a rex-style reply
            + framed((31, ref_of(call_id), OUR_PID, 2, CHILD)))                      # the spawn succeeded
    _, outcomes = deliver(rpc, session, data)
    assert outcomes == [None, None, None] and len(rpc) == 1
    # An exit reason tagged with another reference is not erpc's result: the process was killed.
    _, [outcome] = deliver(rpc, session, down(call_id, (other, Atom("return"), 1)))
    assert isinstance(outcome, CallFailed) and isinstance(outcome.error, BadRpc)
    assert outcome.error.reason == (EXIT, (other, Atom("return"), 1))
